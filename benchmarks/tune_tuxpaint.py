"""Default config vs `crossfuse tune` vs the ensemble of the best trials, on Tux Paint.

    python benchmarks/tune_tuxpaint.py                       # 40 trials, ensemble of 5, seeds 0 1 2
    python benchmarks/tune_tuxpaint.py --trials 20 --seeds 0 # quicker
    python benchmarks/tune_tuxpaint.py --cv 5                # each trial scored by 5-fold cross-validation
    python benchmarks/tune_tuxpaint.py --cv 5 --metric accuracy   # search (and early-stop) on what is reported

Per seed: the default config (benchmarks/configs/tuxpaint.yaml, train.seed=SEED) trained once;
then a study of --trials trials over the default space (learning rate, weight decay, head dropout,
modality dropout, fusion method) with the TPE sampler seeded SEED, the best trial refit, and the
greedy ensemble of the best --ensemble trials weighted on the validation split. Test accuracy on
the data set's fixed test split (never used by the search), mean +- std over seeds, and trials
per minute with a warm embedding cache. Build the data first: make data/tuxpaint/manifest.csv.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    from crossfuse.cli.main import main as cli

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "benchmarks/configs/tuxpaint.yaml")
    ap.add_argument("--out", type=Path, default=ROOT / "runs/tune-bench")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--ensemble", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cv", type=int, default=0, help="tune.cv: folds over train + val per trial (0: the val split)")
    ap.add_argument("--metric", help="train.early_stopping.metric of the default run and of every trial, so the "
                    "objective of the search (default: the config's, f1_macro)")
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        out = args.out / f"seed{seed}"
        common = [f"train.seed={seed}", "train.progress=false"] + \
            ([f"train.early_stopping.metric={args.metric}"] if args.metric else [])
        assert cli(["-q", "train", str(args.config), *common, f"output_dir={out / 'default'}"]) == 0
        default = json.loads((out / "default" / "metrics.json").read_text())["accuracy"]
        clock = time.perf_counter()
        assert cli(["-q", "tune", str(args.config), *common, f"output_dir={out}", f"tune.trials={args.trials}",
                    f"tune.seed={seed}", f"tune.ensemble={args.ensemble}", f"tune.study=tux-seed{seed}",
                    f"tune.cv={args.cv}"]) == 0
        wall = time.perf_counter() - clock
        summary = json.loads((out / "tune" / "tune.json").read_text())
        ens = summary["ensemble"]
        rows.append({"seed": seed, "default": default, "tuned": summary["refit_test"]["accuracy"],
                     "ensemble": ens["test_ensemble"], "trials_per_minute": summary["trials_per_minute"],
                     "tune_wall_minutes": wall / 60, "best_params": summary["best_params"],
                     "trials": summary["trials"]})
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"\n| model | test accuracy (mean +- std over seeds {' '.join(map(str, args.seeds))}) |\n|---|---|")
    how = f", {args.cv}-fold cross-validated trials" if args.cv else ""
    for key, name in (("default", "default config (concat)"), ("tuned", f"tune, {args.trials} trials{how}, best refit"),
                      ("ensemble", f"greedy ensemble of the best {args.ensemble}")):
        v = np.array([r[key] for r in rows])
        print(f"| {name} | {v.mean():.4f} +- {v.std():.4f} |")
    tpm = np.array([r["trials_per_minute"] for r in rows])
    print(f"\ntrials per minute (warm cache, trial seconds only): {tpm.mean():.1f}; "
          f"whole tune command incl. refits: {np.mean([r['tune_wall_minutes'] for r in rows]):.1f} min per seed")


if __name__ == "__main__":
    main()
