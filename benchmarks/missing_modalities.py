"""Missing modalities: does one model serve every subset, by leaving absent modalities out
(modality dropout) or by imagining them from the present ones (missing.imagine)?

AV-digits (default) = scikit-learn's real handwritten digits (occluded, noisy), a caption giving
only parity and size, and the digit's word spoken by espeak-ng in 28 voices inside white noise at
-10..0 dB SNR. For each seed this trains the single-modality models, the full model without
modality dropout, with it, and with it plus each imagination kind, then scores the full models on
the test split with modalities removed through the presence mask (the same path inference uses).

    python benchmarks/missing_modalities.py                  # attention fusion, dropout 0.3 and 0.6, seeds 0 1
    python benchmarks/missing_modalities.py --fusion late --seeds 0 1 2
    python benchmarks/missing_modalities.py --imagine mlp cvae gan --imagine-dropout 0.3
    python benchmarks/missing_modalities.py --dropout 0.3 --imagine mlp --aux-weight 0.5 --no-plain --no-single
    python benchmarks/missing_modalities.py --config benchmarks/configs/tuxpaint.yaml --fusion concat

Needs espeak-ng for AV-digits (`make espeak-ng` installs it from Debian); Tux Paint: `make
data/tuxpaint/manifest.csv`.
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
from crossfuse.config.schema import Component, ImagineConfig, MissingConfig
from crossfuse.data import read_manifest, split_frame
from crossfuse.data.demo import build_av_digits
from crossfuse.engine import train

CONFIG = Path(__file__).resolve().parents[1] / "src" / "crossfuse" / "resources" / "av_digits.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=CONFIG, help="the data set's config (default: AV-digits)")
    p.add_argument("--data", type=Path, default=Path("data/av_digits"), help="AV-digits' folder (built if absent)")
    p.add_argument("--fusion", default="attention")
    p.add_argument("--dropout", type=float, nargs="+", default=[0.3, 0.6], help="modality dropout rates to try")
    p.add_argument("--imagine", nargs="*", default=["mlp", "cvae", "gan"], help="imagination kinds to try (none: --imagine)")
    p.add_argument("--imagine-dropout", type=float, default=0.3, help="modality dropout beside imagination")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--no-single", action="store_true", help="skip the single-modality models (a quicker look)")
    p.add_argument("--no-plain", action="store_true", help="skip the full model without modality dropout")
    p.add_argument("--aux-weight", type=float, default=0.0,
                   help="train.balance.aux_weight of the full models (each modality's own head and loss)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    raw = load_yaml(args.config)
    if args.config == CONFIG:
        if not (args.data / "manifest.csv").is_file():
            print(f"building AV-digits in {args.data} ...", flush=True)
            build_av_digits(args.data)
        raw["data"]["manifest"] = str(args.data / "manifest.csv")
    raw["train"]["progress"] = False
    base = parse_config(raw)
    mods = list(base.modalities)
    manifest = Path(base.data.manifest)
    df = read_manifest(manifest)

    results: dict = {}
    start = time.perf_counter()
    variants = ([] if args.no_plain else [("plain", 0.0, None)]) + [(f"dropout{d}", d, None) for d in args.dropout] \
        + [(f"imagine-{k}", args.imagine_dropout, k) for k in args.imagine]
    for seed in args.seeds:
        def run(modalities, dropout, imagine=None):
            balance = dataclasses.replace(base.train.balance, aux_weight=args.aux_weight if len(modalities) > 1
                                          else base.train.balance.aux_weight)
            cfg = dataclasses.replace(base, modalities={m: base.modalities[m] for m in modalities},
                                      fusion=Component(args.fusion, dict(base.fusion.params)),
                                      train=dataclasses.replace(base.train, seed=seed, modality_dropout=dropout,
                                                                balance=balance),
                                      missing=MissingConfig(ImagineConfig(kind=imagine) if imagine else None))
            return train(cfg, save=False)

        test = split_frame(df, base.data.split, base.data.target, stratify=True)["test"]
        for m in [] if args.no_single else mods:
            results.setdefault(f"single:{m}", []).append(run([m], 0.0).metrics["accuracy"])
        for name, dropout, imagine in variants:
            full = run(mods, dropout, imagine)
            rob = subset_scores(full.predictor, test, manifest.parent, mods)
            results.setdefault(f"{name}:all", []).append(rob["clean"])
            for m in mods:
                results.setdefault(f"{name}:only:{m}", []).append(rob["only"][m])
                results.setdefault(f"{name}:without:{m}", []).append(rob["removed"][m])
            print(f"seed {seed} {name}: clean {rob['clean']:.4f}, only "
                  + ", ".join(f"{m} {rob['only'][m]:.4f}" for m in mods)
                  + "; without " + ", ".join(f"{m} {rob['removed'][m]:.4f}" for m in mods), flush=True)
        print(f"seed {seed} done ({time.perf_counter() - start:.0f} s)", flush=True)

    def cell(key):
        v = np.array(results[key])
        return f"{v.mean():.4f} +- {v.std():.4f}" if len(v) > 1 else f"{v.mean():.4f}"

    single = {} if args.no_single else {m: np.mean(results[f"single:{m}"]) for m in mods}
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"{manifest}, fusion {args.fusion}, seeds {args.seeds}; aux_weight {args.aux_weight}; "
          f"{len(df)} items, test {len(test)}; total {time.perf_counter() - start:.0f} s; peak memory "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    names = [v[0] for v in variants]
    heads = ([] if args.no_plain else ["full model, no dropout"]) + [f"full model, dropout {d}" for d in args.dropout] \
        + [f"dropout {args.imagine_dropout} + imagine {k}" for k in args.imagine]
    print(f"\n| modalities present at test time | {' | '.join(heads)} | single-modality model(s) |")
    print("|---|" + "---|" * len(heads) + "---|")

    def best_of(candidates):
        if not single:
            return "-"
        b = max(candidates, key=single.get)
        return f"best single ({b}): {cell('single:' + b)}"

    def row(label, key, reference):
        print(f"| {label} | {' | '.join(cell(n + ':' + key) for n in names)} | {reference} |")

    row(f"all: {', '.join(mods)}", "all", best_of(mods))
    for m in mods:
        row(f"{m} only", f"only:{m}", f"{m} model: {cell('single:' + m)}" if single else "-")
    for m in mods:
        rest = [x for x in mods if x != m]
        row(f"{' + '.join(rest)} ({m} missing)", f"without:{m}", best_of(rest))

def subset_scores(predictor, test, base_dir: Path, mods) -> dict:
    """Accuracy with every modality, with each alone and with each left out: the left-out cells are
    missing for every row, served through the presence mask as inference serves them (frozen
    encoders' features from the cache; a model that imagines fills them in)."""
    def accuracy(absent) -> float:
        missing = {(int(r), m) for r in test.index for m in absent}
        out = predictor.outputs(test, base_dir, missing, with_target=True)
        return float(np.mean(out["logits"].argmax(1) == out["targets"].reshape(-1)))

    return {"clean": accuracy([]), "only": {m: accuracy([x for x in mods if x != m]) for m in mods},
            "removed": {m: accuracy([m]) for m in mods}}


if __name__ == "__main__":
    main()
