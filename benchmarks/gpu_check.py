"""The GPU figures README quotes, measured in one run (benchmarks/gpu_check.sh calls this).

Needs no network and no data: it draws its own JPEG collection (shapes on noise, a caption and two
numbers per item) and uses a torchvision backbone with random weights (throughput and numerical
agreement do not depend on what the weights learnt). Prints, for the GPU it runs on:

1. Extraction: items/s of the bare frozen encoder on ready tensors (bf16 autocast) against the end
   to end path `train` takes the first time (content keys, decoding, resizing, forward, cache
   writes), with JPEGs decoded on the device (torchvision.io.decode_jpeg, nvjpeg) and with PIL in
   DataLoader workers; the ratio end to end / bare for each.
2. Cached training: samples/s of crossfuse's training pass on the cached features (dataset,
   collate, Fabric loop) against a bare PyTorch loop over the same vectors in GPU memory.
3. bf16 against fp32: cosine similarity of the frozen encoder's features computed both ways, and
   the same fusion model trained with `train.precision` bf16-mixed and 32-true (same seed): test
   accuracy of each and the share of test items where their predictions agree.

    python benchmarks/gpu_check.py                 # on a GPU machine, about 4 minutes on an H100
    python benchmarks/gpu_check.py --cpu --items 64 --epochs 1   # the same steps on the CPU, to check the script
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SHAPES = ("circle", "square", "triangle", "cross")


def draw(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """n JPEGs of one of four shapes on coloured noise, with a caption and two numbers; manifest.csv."""
    import pandas as pd
    from PIL import Image, ImageDraw

    (root / "img").mkdir(parents=True, exist_ok=True)

    def one(i: int) -> dict:
        rng = np.random.default_rng([seed, i])
        label = int(rng.integers(len(SHAPES)))
        img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        d = ImageDraw.Draw(img)
        c, r = rng.integers(size // 4, 3 * size // 4, 2), int(rng.integers(size // 8, size // 4))
        box = [int(c[0] - r), int(c[1] - r), int(c[0] + r), int(c[1] + r)]
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        if label == 0:
            d.ellipse(box, fill=colour)
        elif label == 1:
            d.rectangle(box, fill=colour)
        elif label == 2:
            d.polygon([(box[0], box[3]), (box[2], box[3]), (int(c[0]), box[1])], fill=colour)
        else:
            d.rectangle([box[0], int(c[1] - r // 3), box[2], int(c[1] + r // 3)], fill=colour)
            d.rectangle([int(c[0] - r // 3), box[1], int(c[0] + r // 3), box[3]], fill=colour)
        img.save(root / "img" / f"{i}.jpg", quality=90)
        return {"id": i, "image": f"img/{i}.jpg", "caption": f"item {i} drawn at {r} pixels",
                "x": float(label + rng.normal(scale=2.0)), "size": float(r), "label": SHAPES[label]}

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as pool:
        rows = list(pool.map(one, range(n)))
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


class _Model(torch.nn.Module):  # the one-encoder model cache_modalities walks
    def __init__(self, enc):
        super().__init__()
        self.encoders = torch.nn.ModuleDict({"image": enc})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def extraction(manifest: Path, arch: str, batch: int, workers: int, device: torch.device) -> dict:
    from crossfuse.data import read_manifest
    from crossfuse.data.processors import ImageProcessor
    from crossfuse.encoders import ENCODERS
    from crossfuse.engine.extract import cache_modalities
    from crossfuse.engine.placement import inference_precision

    enc = ENCODERS.build("torchvision", arch=arch, trainable=False).to(device).eval()
    proc = ImageProcessor(["image"])
    proc.configure(enc)
    df = read_manifest(manifest)
    size = proc.params["size"]
    precision, autocast = inference_precision(device)
    x = torch.randn(batch, 3, size, size, device=device)
    with torch.inference_mode(), autocast:
        for _ in range(3):
            enc(x)  # warm-up (cuDNN picks its kernels)
        sync(device)
        start, done = time.perf_counter(), 0
        while done < len(df):
            enc(x)
            done += batch
        sync(device)
        bare = done / (time.perf_counter() - start)
    with torch.inference_mode():  # features of one batch in fp32 and under the inference autocast
        fp32 = enc(x[:32]).float()
        with autocast:
            low = enc(x[:32]).float()
    cosine = torch.nn.functional.cosine_similarity(fp32, low, dim=1)
    out = {"arch": arch, "size": size, "items": len(df), "precision": precision, "bare_items_per_s": bare,
           "feature_cosine_min": float(cosine.min()), "feature_cosine_mean": float(cosine.mean())}
    for name, on_device in (("device_decode", True), ("pil_workers", False)):
        if on_device and device.type != "cuda":
            continue  # nvjpeg is the GPU's; on the CPU both paths are PIL's
        with tempfile.TemporaryDirectory() as cache:
            sync(device)
            start = time.perf_counter()
            cache_modalities(_Model(enc), {"image": proc}, df, manifest.parent, Path(cache), batch, workers,
                             device=device, progress=False, device_decode=on_device)
            sync(device)
            out[f"{name}_items_per_s"] = len(df) / (time.perf_counter() - start)
            out[f"{name}_ratio"] = out[f"{name}_items_per_s"] / bare
    return out


def config(manifest: Path, out: Path, arch: str, epochs: int, precision: str, device: torch.device) -> dict:
    return {"data": {"manifest": str(manifest), "target": "label", "id_column": "id",
                     "split": {"val_size": 0.15, "test_size": 0.15, "seed": 0}},
            "modalities": {"image": {"kind": "image", "columns": ["image"],
                                     "encoder": {"name": "torchvision", "arch": arch, "trainable": False}},
                           "tabular": {"kind": "tabular", "columns": ["x", "size"]}},
            "fusion": {"name": "concat"},
            "train": {"epochs": epochs, "batch_size": 256, "lr": 1e-3, "progress": False, "precision": precision,
                      "accelerator": "cuda" if device.type == "cuda" else "cpu", "baseline": False,
                      "early_stopping": {"patience": epochs, "min_epochs": epochs}},
            "output_dir": str(out)}


def training(manifest: Path, arch: str, epochs: int, device: torch.device, cache: Path) -> dict:
    sys.path.insert(0, str(HERE))
    from train_cached import bare_loop  # the same bare loop the CPU benchmark compares against

    from crossfuse.config import parse_config
    from crossfuse.data import read_manifest
    from crossfuse.engine import train
    from crossfuse.engine.extract import cache_modalities

    os.environ["CROSSFUSE_CACHE"] = str(cache)
    runs, preds = {}, {}
    for precision in ("bf16-mixed", "32-true") if device.type == "cuda" else ("32-true",):
        cfg = parse_config(config(manifest, cache.parent / precision, arch, epochs, precision, device))
        result = train(cfg, save=False)
        hist = result.train.history
        ours = sum(h["samples_per_s"] * h["train_seconds"] for h in hist) / sum(h["train_seconds"] for h in hist)
        predictor = result.predictor
        runs[precision] = {"samples_per_s": ours, "test_accuracy": result.metrics["accuracy"],
                           "epochs": len(hist), "extract_seconds": result.timings.get("extract_seconds")}
        df = read_manifest(manifest)
        preds[precision] = predictor.predict_frame(df, manifest.parent)["prediction"].to_numpy()
        if precision == "32-true":  # the bare loop over the same cached vectors, in device memory
            train_df = df.iloc[: int(len(df) * 0.7)]
            cached = cache_modalities(predictor.model, predictor.processors, train_df, manifest.parent, cache,
                                      progress=False, device=device)
            rows = [{"__row__": int(i)} for i in train_df.index]
            features, masks = {}, {}
            for m, c in cached.items():
                feats, mask = c.collate([c.load(r, manifest.parent, False) for r in rows])
                features[m], masks[m] = feats.values.to(device), mask.to(device)
            tab = predictor.processors["tabular"]
            batch = tab.collate([tab.load(r, manifest.parent, False) for r in train_df.to_dict("records")])
            features["tabular"], masks["tabular"] = batch[0]["numeric"].to(device), batch[1].to(device)
            model = predictor.model.to(device)
            model.fuse = _fuse_with_tabular(model)
            targets = torch.tensor(predictor.task.encode(train_df["label"]), device=device)
            bare = bare_loop(model, features, targets, masks, epochs, 256, 1e-3)
            runs[precision]["bare_samples_per_s"] = bare
    out = {"runs": runs}
    if len(preds) == 2:
        out["prediction_agreement"] = float(np.mean(preds["bf16-mixed"] == preds["32-true"]))
    return out


def _fuse_with_tabular(model):
    """bare_loop hands raw tabular inputs to fuse(): encode them first, as the model's forward does."""
    fuse = model.fuse

    def fused(encoded, mask):
        feats = dict(encoded.features)
        numeric = feats["tabular"]  # the config's tabular columns are numbers: no categorical part
        feats["tabular"] = model.encoders["tabular"]({"numeric": numeric,
                                                      "categorical": numeric.new_zeros(len(numeric), 0).long()})
        return fuse(type(encoded)(feats, None), mask)
    return fused


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=8000)
    p.add_argument("--image-size", type=int, default=256, help="side of the JPEGs drawn")
    p.add_argument("--arch", default="resnet50", help="torchvision backbone (random weights)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 2))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--cpu", action="store_true", help="run the steps on the CPU (checks the script, no GPU figures)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device is visible to torch (use --cpu to check the script on a CPU)")
    device = torch.device("cpu" if args.cpu else "cuda")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "none (--cpu)"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, GPU {gpu}; torch {torch.__version__}; "
          f"{args.items} JPEGs of {args.image_size}px, {args.arch}, batch {args.batch_size}, {args.workers} workers",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = draw(Path(tmp) / "data", args.items, args.image_size)
        print(f"drew the data in {time.perf_counter() - start:.1f} s", flush=True)
        ext = extraction(manifest, args.arch, args.batch_size, args.workers, device)
        print(f"\n1. extraction ({ext['arch']} at {ext['size']}px, {ext['precision']}):")
        print(f"   bare encoder on ready tensors: {ext['bare_items_per_s']:9.1f} items/s")
        for name, label in (("device_decode", "JPEGs decoded on the device (nvjpeg)"),
                            ("pil_workers", "PIL decoding in DataLoader workers")):
            if f"{name}_ratio" in ext:
                print(f"   end to end, {label}: {ext[f'{name}_items_per_s']:9.1f} items/s, "
                      f"ratio {ext[f'{name}_ratio']:.3f}")
        print(f"   features bf16 vs fp32: cosine similarity mean {ext['feature_cosine_mean']:.5f}, "
              f"min {ext['feature_cosine_min']:.5f}", flush=True)
        tr = training(manifest, args.arch, args.epochs, device, Path(tmp) / "cache")
        print(f"\n2./3. training a concat fusion head on the cached features, {args.epochs} epochs, batch 256:")
        for precision, r in tr["runs"].items():
            bare = r.get("bare_samples_per_s")
            print(f"   {precision:10s}: crossfuse {r['samples_per_s']:10.1f} samples/s"
                  + (f", bare loop {bare:10.1f} (ratio {r['samples_per_s'] / bare:.3f})" if bare else "")
                  + f"; test accuracy {r['test_accuracy']:.4f}")
        if "prediction_agreement" in tr:
            print(f"   bf16-mixed and 32-true predict the same label for {tr['prediction_agreement']:.4f} of the items")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2 ** 20:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"gpu": gpu, "extraction": ext, "training": tr}, indent=2))


if __name__ == "__main__":
    main()
