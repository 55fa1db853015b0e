"""Peak memory of one training epoch as the number of items grows: it must stay flat.

Builds N random 96x96 PNG images with a caption and a number each, trains one epoch of an
image + text + tabular model with 2 DataLoader workers, and reports the peak resident memory of
the main process and of the workers. Each N runs in a fresh process so peaks do not mix.

    python benchmarks/streaming_memory.py            # N = 1000, 4000, 16000
    python benchmarks/streaming_memory.py --sizes 500 2000
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build(root: Path, n: int) -> Path:
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = i % 4
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "caption": f"item {i} of group {label} with words",
                     "x": float(label + rng.normal()), "label": label})
    pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
    return root / "m.csv"


def one(n: int) -> dict:
    from crossfuse.config import parse_config
    from crossfuse.engine import train

    with tempfile.TemporaryDirectory() as tmp:
        manifest = build(Path(tmp), n)
        cfg = parse_config({
            "data": {"manifest": str(manifest), "check_files": False, "split": {"val_size": 0.05, "test_size": 0.05}},
            "modalities": {
                "image": {"kind": "image", "columns": ["image"],
                          "encoder": {"name": "small_cnn", "channels": [8, 16], "image_size": 64}},
                "text": {"kind": "text", "columns": ["caption"], "encoder": {"name": "gru", "embed_dim": 16,
                                                                              "hidden": 16}},
                "tabular": {"kind": "tabular", "columns": ["x"], "encoder": "mlp"}},
            "train": {"epochs": 1, "batch_size": 64, "num_workers": 2, "progress": False},
            "output_dir": str(Path(tmp) / "out")})
        start = time.perf_counter()
        train(cfg, save=False)
        seconds = time.perf_counter() - start
    return {"items": n, "seconds": round(seconds, 1), "items_per_s": round(n * 0.9 / seconds, 1),
            "peak_main_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_worker_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, "
          f"python {platform.python_version()}")
    print("| items | epoch seconds | items/s | peak main MiB | peak worker MiB |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['items']} | {r['seconds']} | {r['items_per_s']} | {r['peak_main_mib']} | {r['peak_worker_mib']} |",
              flush=True)


if __name__ == "__main__":
    main()
