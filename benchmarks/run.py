"""Accuracy and macro-F1 of each single modality and each fusion method, several seeds, one table.

    python benchmarks/run.py                                   # Tux Paint (frozen EfficientNet-Lite0 + MiniLM)
    python benchmarks/run.py --config benchmarks/configs/tuxpaint.yaml --seeds 0 1 2 --out runs/bench-tuxpaint
    python benchmarks/run.py --config src/crossfuse/resources/av_digits.yaml data.manifest=data/av_digits/manifest.csv

Frozen encoders read their features from the embedding cache after the first run. Prints the
machine, the wall time and the peak memory with the table (written to OUT/comparison.md too).
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import time
from pathlib import Path

from crossfuse.compare import comparison_table, run_comparison
from crossfuse.config import load_config

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=HERE / "configs" / "tuxpaint.yaml")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fusions", help="comma-separated (default: every registered method)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.config, list(args.overrides) + ["train.progress=false"])
    if not Path(cfg.data.manifest).is_file():
        raise SystemExit(f"{cfg.data.manifest} not found; build it first (see benchmarks/datasets/)")
    out = args.out or Path(f"runs/bench-{args.config.stem}")
    start = time.perf_counter()
    rows = run_comparison(cfg, out, fusions=args.fusions.split(",") if args.fusions else None, seeds=args.seeds)
    print(f"{args.config.name}: {cfg.data.manifest}; machine {platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; wall {time.perf_counter() - start:.0f} s; peak memory "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB\n")
    print(comparison_table(rows))


if __name__ == "__main__":
    main()
