"""Missing modalities on AV-digits: does modality dropout let one model serve every subset?

AV-digits = scikit-learn's real handwritten digits (occluded, noisy), a caption giving only
parity and size, and the digit's word spoken by espeak-ng in 28 voices inside white noise at
-10..0 dB SNR. For each seed this trains the three single-modality models, the full model
without modality dropout and the full model with it, then scores the full models on the test
split with modalities removed through the presence mask (the same path inference uses).

    python benchmarks/missing_modalities.py                  # attention fusion, dropout 0.3 and 0.6, seeds 0 1
    python benchmarks/missing_modalities.py --fusion late --seeds 0 1 2

Needs espeak-ng (`make espeak-ng` installs it from Debian).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

from crossfuse.config import load_yaml, parse_config
from crossfuse.config.schema import Component
from crossfuse.data import read_manifest, split_frame
from crossfuse.data.demo import build_av_digits
from crossfuse.engine import train

CONFIG = Path(__file__).resolve().parents[1] / "src" / "crossfuse" / "resources" / "av_digits.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/av_digits"))
    p.add_argument("--fusion", default="attention")
    p.add_argument("--dropout", type=float, nargs="+", default=[0.3, 0.6], help="modality dropout rates to try")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not (args.data / "manifest.csv").is_file():
        print(f"building AV-digits in {args.data} ...", flush=True)
        build_av_digits(args.data)
    raw = load_yaml(CONFIG)
    raw["data"]["manifest"] = str(args.data / "manifest.csv")
    raw["train"]["progress"] = False
    base = parse_config(raw)
    mods = list(base.modalities)
    df = read_manifest(args.data / "manifest.csv")

    results: dict = {}
    start = time.perf_counter()
    for seed in args.seeds:
        def run(modalities, dropout):
            cfg = dataclasses.replace(base, modalities={m: base.modalities[m] for m in modalities},
                                      fusion=Component(args.fusion, dict(base.fusion.params)),
                                      train=dataclasses.replace(base.train, seed=seed, modality_dropout=dropout))
            return train(cfg, save=False)

        test = split_frame(df, base.data.split, "label", stratify=True)["test"]
        for m in mods:
            results.setdefault(f"single:{m}", []).append(run([m], 0.0).metrics["accuracy"])
        for name, dropout in [("plain", 0.0)] + [(f"dropout{d}", d) for d in args.dropout]:
            full = run(mods, dropout)
            rob = full.predictor.evaluate_frame(test, args.data, robustness=True, attribution=False)["robustness"]
            results.setdefault(f"{name}:all", []).append(rob["clean"])
            for m in mods:
                results.setdefault(f"{name}:only:{m}", []).append(rob["only"][m])
                results.setdefault(f"{name}:without:{m}", []).append(rob["removed"][m])
        print(f"seed {seed} done ({time.perf_counter() - start:.0f} s)", flush=True)

    def cell(key):
        v = np.array(results[key])
        return f"{v.mean():.4f} +- {v.std():.4f}" if len(v) > 1 else f"{v.mean():.4f}"

    single = {m: np.mean(results[f"single:{m}"]) for m in mods}
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"fusion {args.fusion}, seeds {args.seeds}; "
          f"{len(df)} items, test {len(test)}; total {time.perf_counter() - start:.0f} s; peak memory "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    names = ["plain"] + [f"dropout{d}" for d in args.dropout]
    heads = ["full model, no dropout"] + [f"full model, dropout {d}" for d in args.dropout]
    print(f"\n| modalities present at test time | {' | '.join(heads)} | single-modality model(s) |")
    print("|---|" + "---|" * len(heads) + "---|")
    best = max(single, key=single.get)

    def row(label, key, reference):
        print(f"| {label} | {' | '.join(cell(n + ':' + key) for n in names)} | {reference} |")

    row(f"all: {', '.join(mods)}", "all", f"best single ({best}): {cell('single:' + best)}")
    for m in mods:
        row(f"{m} only", f"only:{m}", f"{m} model: {cell('single:' + m)}")
    for m in mods:
        rest = [x for x in mods if x != m]
        b = max(rest, key=single.get)
        row(f"{' + '.join(rest)} ({m} missing)", f"without:{m}", f"best single ({b}): {cell('single:' + b)}")


if __name__ == "__main__":
    main()
