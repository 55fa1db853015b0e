"""Trust under shift on AV-digits: one modality drifts at test time; does the fused model follow it down?

The model is trained on AV-digits spoken by *seen* voices only. Its test split is then scored three
ways, always the same items (same images, captions, labels and split):

- unshifted: spoken by the seen voices, as in training;
- audio shifted: the same words re-spoken by voices and variants training never heard;
- image shifted: the same digits with heavier pixel noise and a larger occluded block.

For each, the table gives the plain model (trust gate off), the trust-aware model (a modality whose
trust is below alpha removed per item through the presence mask: crossfuse's default) and the
model with the shifted modality removed for every item, plus each modality's mean trust and the
share of items flagged, and the expected calibration error with and without the temperature.

    python benchmarks/shift.py                         # attention and late fusion, seeds 0 1 2
    python benchmarks/shift.py --fusion trusted --seeds 0

Needs espeak-ng (`make espeak-ng`). Each seed trains one model per fusion method (about a minute
on 2 cores) and builds nothing twice: the three data sets are written once under --data.
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

from crossfuse.config import load_yaml, parse_config
from crossfuse.config.schema import Component
from crossfuse.data import read_manifest, split_frame
from crossfuse.data.demo import VARIANTS, VOICES, build_av_digits
from crossfuse.engine import train

CONFIG = Path(__file__).resolve().parents[1] / "src" / "crossfuse" / "resources" / "av_digits.yaml"
SEEN_VOICES, SEEN_VARIANTS = ["en-us", "en-gb", "en-gb-x-rp", "en-gb-x-gbclan"], ["", "+m3"]
UNSEEN_VOICES, UNSEEN_VARIANTS = ["en-gb-scotland", "en-029", "en-gb-x-gbcwmd"], ["+f2", "+f4"]
assert set(SEEN_VOICES + UNSEEN_VOICES) <= set(VOICES) and set(SEEN_VARIANTS + UNSEEN_VARIANTS) <= set(VARIANTS)
SETS = {  # name -> build_av_digits options; every set shares the seed, so the items are the same
    "unshifted": dict(voices=SEEN_VOICES, variants=SEEN_VARIANTS),
    "audio shifted": dict(voices=UNSEEN_VOICES, variants=UNSEEN_VARIANTS),
    "image shifted": dict(voices=SEEN_VOICES, variants=SEEN_VARIANTS, image_noise=0.45, occlusion=0.45),
}
SHIFTED = {"unshifted": None, "audio shifted": "audio", "image shifted": "image"}


def build(root: Path) -> dict:
    paths = {}
    for name, options in SETS.items():
        out = root / name.replace(" ", "_")
        if not (out / "manifest.csv").is_file():
            print(f"building {name} AV-digits in {out} ...", flush=True)
            build_av_digits(out, **options)
        paths[name] = out
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/av_digits_shift"))
    p.add_argument("--fusion", nargs="+", default=["attention", "late"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    dirs = build(args.data)
    raw = load_yaml(CONFIG)
    raw["data"]["manifest"] = str(dirs["unshifted"] / "manifest.csv")
    raw["train"]["progress"] = False
    base = parse_config(raw)
    tests = {}
    for name, d in dirs.items():
        tests[name] = split_frame(read_manifest(d / "manifest.csv"), base.data.split, "label", stratify=True)["test"]
    ids = tests["unshifted"]["id"].tolist()
    assert all(t["id"].tolist() == ids for t in tests.values()), "the shifted sets must hold the same test items"

    results: dict = {}
    start = time.perf_counter()
    for fusion in args.fusion:
        for seed in args.seeds:
            params = dict(base.fusion.params) if fusion == base.fusion.name else {}
            cfg = dataclasses.replace(base, fusion=Component(fusion, params),
                                      train=dataclasses.replace(base.train, seed=seed))
            run = train(cfg, save=False)
            add = lambda key, v: results.setdefault((fusion, key), []).append(v)  # noqa: E731
            add("temperature", run.predictor.temperature)
            for name, test in tests.items():
                m = run.predictor.evaluate_frame(test, dirs[name], attribution=False)
                s = m["shift"]
                add(f"{name}:plain", s["plain"])
                add(f"{name}:trust", s["trust_aware"])
                add(f"{name}:ece", m["ece"])
                add(f"{name}:ece_raw", m.get("ece_without_temperature", m["ece"]))
                for mod, r in s["modalities"].items():
                    add(f"{name}:removed:{mod}", r["accuracy_removed"])
                    add(f"{name}:trust:{mod}", r["mean_trust"])
                    add(f"{name}:flagged:{mod}", r["flagged_share"])
            got = {k[1]: round(v[-1], 4) for k, v in results.items() if k[0] == fusion and k[1].endswith(
                ("plain", "trust", f"removed:{SHIFTED['audio shifted']}"))}
            print(f"{fusion} seed {seed} done ({time.perf_counter() - start:.0f} s): {got}", flush=True)

    def cell(fusion, key, fmt=".4f"):
        v = np.array(results[(fusion, key)], dtype=float)
        return f"{v.mean():{fmt}} +- {v.std():{fmt}}" if len(v) > 1 else f"{v.mean():{fmt}}"

    mods = sorted(base.modalities)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; seeds "
          f"{args.seeds} (mean +- std over seeds); {len(ids)} test items; seen voices {SEEN_VOICES} x "
          f"{SEEN_VARIANTS}; unseen {UNSEEN_VOICES} x {UNSEEN_VARIANTS}; alpha {base.trust.alpha}; total "
          f"{time.perf_counter() - start:.0f} s")
    print("\n| fusion | test set | plain model | trust-aware | shifted modality removed | ECE without T | ECE with T |")
    print("|---|---|---|---|---|---|---|")
    for fusion in args.fusion:
        for name in SETS:
            shifted = SHIFTED[name]
            removed = cell(fusion, f"{name}:removed:{shifted}") if shifted else "-"
            print(f"| {fusion} | {name} | {cell(fusion, f'{name}:plain')} | {cell(fusion, f'{name}:trust')} | "
                  f"{removed} | {cell(fusion, f'{name}:ece_raw')} | {cell(fusion, f'{name}:ece')} |")
    print("\n| fusion | test set | " + " | ".join(f"{m}: mean trust / flagged" for m in mods) + " |")
    print("|---|---|" + "---|" * len(mods))
    for fusion in args.fusion:
        for name in SETS:
            cells = [f"{cell(fusion, f'{name}:trust:{m}', '.3f')} / {cell(fusion, f'{name}:flagged:{m}', '.3f')}"
                     for m in mods]
            print(f"| {fusion} | {name} | " + " | ".join(cells) + " |")
    for fusion in args.fusion:
        print(f"{fusion}: temperature {cell(fusion, 'temperature', '.3f')}")


if __name__ == "__main__":
    main()
