"""Training on cached embeddings: crossfuse's loop vs a bare PyTorch loop, and first run vs re-run.

1. Samples/s of the training pass of a fusion head on cached features, as crossfuse runs it
   (dataset + collate + Fabric loop, from the memory-mapped cache) vs a bare PyTorch loop over the
   same vectors held in one tensor, with the same model, optimizer and batch size.
   Target ratio >= 0.5.
2. Wall time of `crossfuse train CONFIG` run twice with an empty cache: the first run extracts
   the frozen encoders' features, the re-run reads them. Target >= 20x faster.

    python benchmarks/train_cached.py            # Tux Paint, frozen EfficientNet-Lite0 + MiniLM
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from crossfuse.config import load_config
from crossfuse.engine import train
from crossfuse.models.fusion_model import Encoded

HERE = Path(__file__).resolve().parent


def bare_loop(model, features, targets, masks, epochs, batch_size, lr) -> float:
    """The same fusion + head, trained by a plain loop over tensors already in memory."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    n = len(targets)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(n).split(batch_size):
            feats = {m: f[idx] for m, f in features.items()}
            out = model.fuse(Encoded(feats, None), {m: k[idx] for m, k in masks.items()})
            loss = loss_fn(out.logits, targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    return epochs * n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=HERE / "configs" / "tuxpaint.yaml")
    p.add_argument("--epochs", type=int, default=30)
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"torch {torch.__version__}; config {args.config}")

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CROSSFUSE_CACHE": str(Path(tmp) / "cache")}
        walls = []
        for run in ("first", "re-run"):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "crossfuse", "-q", "train", str(args.config), "train.progress=false",
                            f"output_dir={tmp}/{run}"], check=True, env=env, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - start)
            print(f"`crossfuse train` {run}: {walls[-1]:.1f} s wall", flush=True)
        print(f"re-run speed-up: {walls[0] / walls[1]:.1f}x (target >= 20x)\n", flush=True)

        os.environ["CROSSFUSE_CACHE"] = str(Path(tmp) / "cache")
        cfg = load_config(args.config, ["train.progress=false", f"train.epochs={args.epochs}",
                                        f"train.early_stopping.patience={args.epochs}", f"output_dir={tmp}/speed"])
        result = train(cfg, save=False)
        hist = result.train.history
        ours = sum(h["samples_per_s"] * h["train_seconds"] for h in hist) / sum(h["train_seconds"] for h in hist)

        # the same vectors, read once from the cache into memory, through the same model's fusion + head
        from crossfuse.data import read_manifest
        from crossfuse.engine.extract import cache_modalities

        predictor = result.predictor
        df = read_manifest(Path(cfg.data.manifest))
        train_df = df[df["split"] == "train"]
        base = Path(cfg.data.manifest).parent
        cached = cache_modalities(predictor.model, predictor.processors, train_df, base, Path(tmp) / "cache",
                                  progress=False)
        rows = [{"__row__": int(i)} for i in train_df.index]
        features, masks = {}, {}
        for m, c in cached.items():
            vecs = [c.load(r, base, False) for r in rows]
            feats, mask = c.collate(vecs)
            features[m], masks[m] = feats.values, mask
        targets = torch.tensor(predictor.task.encode(train_df[cfg.data.target]))
        model = predictor.model
        for enc in model.encoders.values():
            enc.requires_grad_(False)
        bare = bare_loop(model, features, targets, masks, args.epochs, cfg.train.batch_size, cfg.train.lr)

    print(f"training pass on cached features, {len(targets)} items x {args.epochs} epochs, batch {cfg.train.batch_size}:")
    print(f"  crossfuse (dataset + collate + Fabric loop): {ours:9.1f} samples/s")
    print(f"  bare PyTorch loop over in-memory tensors:    {bare:9.1f} samples/s")
    print(f"  ratio (target >= 0.5): {ours / bare:.3f}")
    print(f"peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (main process)")


if __name__ == "__main__":
    main()
