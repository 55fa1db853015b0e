"""Feature-extraction throughput: end to end from files vs the bare encoder on ready tensors.

End to end = what `train` does for a frozen encoder the first time: content keys (file hashes),
decoding and resizing in DataLoader workers, the forward pass in inference mode (bf16 autocast on
a GPU), and writing the cache. Bare = the same encoder on pre-made tensors of the same batch size.
The ratio shows how much the data pipeline costs; the target is >= 0.85 on a 2-core CPU.

    python benchmarks/extract.py                                   # Tux Paint, efficientnet_lite0
    python benchmarks/extract.py --manifest data/tuxpaint/manifest.csv --encoder resnet18 --workers 2
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch

from crossfuse.data import read_manifest
from crossfuse.data.processors import ImageProcessor
from crossfuse.encoders import ENCODERS
from crossfuse.engine.extract import cache_modalities


class _Model(torch.nn.Module):  # the one-encoder model cache_modalities walks
    def __init__(self, enc):
        super().__init__()
        self.encoders = torch.nn.ModuleDict({"image": enc})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, default=Path("data/tuxpaint/manifest.csv"))
    p.add_argument("--column", default="image")
    p.add_argument("--encoder", default="efficientnet_lite0")
    p.add_argument("--batch-size", type=int, default=32)
    # one core stays with the forward pass: on 2 cores, 2 workers oversubscribe (0.76 vs 0.95 measured)
    p.add_argument("--workers", type=int, default=min(4, max(1, (os.cpu_count() or 2) - 1)))
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    enc = ENCODERS.build(args.encoder, trainable=False).to(device).eval()
    proc = ImageProcessor([args.column])
    proc.configure(enc)
    df = read_manifest(args.manifest)
    n = len(df)
    size = proc.params["size"]

    x = torch.randn(args.batch_size, 3, size, size, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), autocast:
        enc(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, done = time.perf_counter(), 0
        while done < n:
            enc(x)
            done += args.batch_size
        if device.type == "cuda":
            torch.cuda.synchronize()
        bare = done / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        cache_modalities(_Model(enc), {"image": proc}, df, args.manifest.parent, Path(cache), args.batch_size,
                         args.workers, device=device, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        e2e = n / (time.perf_counter() - start)

    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "none"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, GPU {gpu}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; encoder {args.encoder} at {size}px, batch {args.batch_size}, "
          f"{args.workers} workers; {n} images from {args.manifest}")
    print(f"bare encoder forward:      {bare:8.1f} items/s")
    print(f"end to end from files:     {e2e:8.1f} items/s")
    print(f"ratio (target >= 0.85 CPU, >= 0.7 GPU): {e2e / bare:.3f}")
    print(f"peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (main process)")


if __name__ == "__main__":
    main()
