"""Accuracy against the privacy budget: DP-SGD (train.privacy) at several epsilons beside the same
config trained without privacy, over seeds; the wall time of an epoch with and without DP; and the
epsilon crossfuse reports beside the one Opacus' RDP analysis computes independently from the same
sampling rate, noise and steps.

    python benchmarks/privacy.py                                    # Tux Paint, frozen presets
    python benchmarks/privacy.py --config my.yaml --epsilons 8 3 1 --seeds 0 1 2

Build the Tux Paint data first: make tuxpaint && python benchmarks/datasets/tuxpaint.py data/tuxpaint.
Prints a table and writes the curve to --plot (PNG). Needs crossfuse[privacy].
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from crossfuse.config import apply_overrides, parse_config
from crossfuse.config.io import load_yaml
from crossfuse.engine.pipeline import train

HERE = Path(__file__).resolve().parent


def independent_epsilon(noise: float, q: float, steps: int, delta: float) -> float:
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    return float(get_privacy_spent(orders=orders, rdp=compute_rdp(q=q, noise_multiplier=noise, steps=steps,
                                                                   orders=orders), delta=delta)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=HERE / "configs" / "tuxpaint.yaml")
    ap.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 3.0, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--plot", type=Path, default=HERE.parent / "docs" / "images" / "privacy_tuxpaint.png")
    ap.add_argument("overrides", nargs="*", help="key.sub=value applied to every run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    raw = load_yaml(args.config)  # a relative manifest path is relative to the config file
    raw = apply_overrides(raw, args.overrides + ["train.progress=false"])
    rows = []
    for eps in [None] + args.epsilons:
        scores, per_epoch, checks = [], [], []
        for seed in args.seeds:
            over = [f"train.seed={seed}"] + ([f"train.privacy.target_epsilon={eps}"] if eps else [])
            cfg = parse_config(apply_overrides(raw, over))
            clock = time.perf_counter()
            result = train(cfg, save=False)
            seconds = time.perf_counter() - clock
            scores.append(result.metrics["accuracy"])
            per_epoch.append(np.mean([r["train_seconds"] for r in result.train.history]))
            dp = result.metrics.get("privacy")
            if dp:
                checks.append((dp["epsilon"], independent_epsilon(dp["noise_multiplier"], dp["sample_rate"],
                                                                  dp["steps"], dp["delta"]), dp["noise_multiplier"]))
            print(f"epsilon {eps or 'none'} seed {seed}: test accuracy {scores[-1]:.4f}, "
                  f"{len(result.train.history)} epochs in {seconds:.1f} s" +
                  (f", epsilon spent {dp['epsilon']:.4f} (independent RDP: {checks[-1][1]:.4f}), noise "
                   f"{dp['noise_multiplier']:.3f}" if dp else ""), flush=True)
        rows.append((eps, np.mean(scores), np.std(scores), np.mean(per_epoch), checks))
    print(f"\n{args.config.name}, seeds {' '.join(map(str, args.seeds))} (mean +- std)\n")
    print("| target epsilon | test accuracy | seconds per epoch | epsilon spent (crossfuse / independent) |")
    print("|---|---|---|---|")
    for eps, mean, std, sec, checks in rows:
        spent = ", ".join(f"{a:.3f} / {b:.3f}" for a, b, _ in checks) if checks else "-"
        print(f"| {eps if eps else 'none (not private)'} | {mean:.4f} +- {std:.4f} | {sec:.2f} | {spent} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    private = [r for r in rows if r[0]]
    ax.errorbar([r[0] for r in private], [r[1] for r in private], yerr=[r[2] for r in private], marker="o",
                label="DP-SGD")
    ax.axhline(rows[0][1], color="gray", linestyle="--", label="not private")
    ax.set_xscale("log")
    ax.set_xticks([r[0] for r in private], [f"{r[0]:g}" for r in private])
    ax.minorticks_off()
    ax.set_xlabel("epsilon (delta = 1/N)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{args.config.stem}: accuracy against epsilon")
    ax.legend()
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=120)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
