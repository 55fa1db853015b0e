"""What trust and temperature cost on data that has not shifted: demo digits and Tux Paint.

For each data set, fusion method and seed this trains the model as `crossfuse train` does (trust
and temperature fitted after training, the defaults) and reads, on the test split, the accuracy of
the plain model (trust gate off) and of the trust-aware model (gate forced on: these configs train
without modality dropout, so the default `gate: auto` leaves it off), the share of items
each modality is flagged on (trust below alpha; the gate removes at most one per item), and the
expected calibration error without and with the temperature. (AV-digits with seen voices is the `unshifted` row of benchmarks/shift.py.)

    python benchmarks/trust_unshifted.py                       # demo and tuxpaint, 3 fusions, seeds 0 1 2
    python benchmarks/trust_unshifted.py --sets demo --fusions concat --seeds 0

Tux Paint needs `make tuxpaint` and `python benchmarks/datasets/tuxpaint.py data/tuxpaint`.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

from crossfuse.config import load_config
from crossfuse.config.schema import Component
from crossfuse.data.demo import build_digits_demo
from crossfuse.engine import train

ROOT = Path(__file__).resolve().parents[1]
SETS = {"demo": (ROOT / "src" / "crossfuse" / "resources" / "demo.yaml", ["data.manifest=data/demo/manifest.csv"]),
        "tuxpaint": (ROOT / "benchmarks" / "configs" / "tuxpaint.yaml", [])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument("--fusions", nargs="+", default=["concat", "attention", "late"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if "demo" in args.sets and not Path("data/demo/manifest.csv").is_file():
        build_digits_demo("data/demo")
    results: dict = {}
    start = time.perf_counter()
    for name in args.sets:
        config, overrides = SETS[name]
        for fusion in args.fusions:
            for seed in args.seeds:
                cfg = load_config(config, overrides + [f"train.seed={seed}", "train.progress=false",
                                                       "train.baseline=false", "trust.gate=true"])
                params = dict(cfg.fusion.params) if fusion == cfg.fusion.name else {}  # the base method's own
                cfg = dataclasses.replace(cfg, fusion=Component(fusion, params))
                m = train(cfg, save=False).metrics
                add = lambda key, v: results.setdefault((name, fusion, key), []).append(v)  # noqa: E731
                add("plain", m["shift"]["plain"])
                add("trust", m["accuracy"])
                add("change", m["accuracy"] - m["shift"]["plain"])
                add("ece_raw", m.get("ece_without_temperature", m["ece"]))
                add("ece", m["ece"])
                add("temperature", m.get("temperature", 1.0))
                shares = [r["flagged_share"] for r in m["shift"]["modalities"].values() if r.get("flagged_share") is not None]
                add("flagged", float(np.mean(shares)) if shares else 0.0)
            print(f"{name} {fusion} done ({time.perf_counter() - start:.0f} s)", flush=True)

    def cell(key, fmt=".4f"):
        v = np.array(results[key], dtype=float)
        return f"{v.mean():{fmt}} +- {v.std():{fmt}}" if len(v) > 1 else f"{v.mean():{fmt}}"

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; seeds "
          f"{args.seeds} (mean +- std over seeds); total {time.perf_counter() - start:.0f} s")
    print("\n| data | fusion | plain model | trust-aware | change | flagged per modality | ECE without T | ECE with T | T |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.sets:
        for fusion in args.fusions:
            k = lambda key: (name, fusion, key)  # noqa: E731
            print(f"| {name} | {fusion} | {cell(k('plain'))} | {cell(k('trust'))} | {cell(k('change'), '+.4f')} | {cell(k('flagged'), '.3f')} | "
                  f"{cell(k('ece_raw'))} | {cell(k('ece'))} | {cell(k('temperature'), '.3f')} |")


if __name__ == "__main__":
    main()
