"""`crossfuse compare`: every fusion method and each single modality, same encoders and budget,
several seeds; a table of mean +- std and a bar plot with error bars."""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from crossfuse.atomic import atomic_write
from crossfuse.config.schema import Component, Config
from crossfuse.engine import train
from crossfuse.fusion import FUSIONS

log = logging.getLogger(__name__)


def variants(base: Config, fusions: Sequence[str], singles: bool) -> List[tuple]:
    """(label, modalities, fusion component) for each run of the comparison."""
    runs = []
    if singles and len(base.modalities) > 1:
        runs += [(f"{m} only", {m: base.modalities[m]}, Component("concat")) for m in base.modalities]
    for f in fusions:
        FUSIONS.get(f)  # unknown names fail before any training
        params = dict(base.fusion.params) if f == base.fusion.name else {}
        runs.append((f"{f} fusion", dict(base.modalities), Component(f, params)))
    return runs


def run_comparison(base: Config, out: str | Path, fusions: Optional[Sequence[str]] = None,
                   seeds: Sequence[int] = (0, 1, 2), singles: bool = True, save_runs: bool = False) -> List[Dict]:
    """Train every variant once per seed (seed drives init, split order and dropout) and test it.

    Each run keeps its metrics.json and history.json under out/<variant>/seed<k> (a few KB);
    with ``save_runs`` also its model directory and full report.
    """
    out = Path(out)
    fusions = list(fusions or FUSIONS.names())
    rows = []
    for label, modalities, fusion in variants(base, fusions, singles):
        runs = []
        for seed in seeds:
            run_dir = out / label.replace(" ", "_") / f"seed{seed}"
            cfg = dataclasses.replace(base, modalities=modalities, fusion=fusion,
                                      train=dataclasses.replace(base.train, seed=seed), output_dir=str(run_dir))
            start = time.perf_counter()
            result = train(cfg, save=save_runs)
            if not save_runs:
                atomic_write(run_dir / "metrics.json", json.dumps(result.metrics, indent=2))
                atomic_write(run_dir / "history.json", json.dumps(result.train.history, indent=2))
            runs.append({"seed": seed, "accuracy": result.metrics.get("accuracy"),
                         "f1_macro": result.metrics.get("f1_macro"), "rmse": result.metrics.get("rmse"),
                         "r2": result.metrics.get("r2"), "epochs": len(result.train.history),
                         "seconds": time.perf_counter() - start,
                         "extract_seconds": result.timings.get("extract_seconds", 0.0),
                         "train_seconds": result.timings.get("train_seconds", 0.0)})
            log.info("%s, seed %d: %s", label, seed, ", ".join(f"{k} {v:.4g}" for k, v in runs[-1].items()
                                                                 if k != "seed" and v is not None))
        rows.append(summarise(label, "+".join(modalities), runs))
    write_comparison(out, rows)
    return rows


def summarise(label: str, modalities: str, runs: List[Dict]) -> Dict:
    row = {"model": label, "modalities": modalities, "runs": runs,
           "seconds": float(np.mean([r["seconds"] for r in runs])),
           "extract_seconds": float(np.mean([r.get("extract_seconds", 0.0) for r in runs])),
           "train_seconds": float(np.mean([r.get("train_seconds", r["seconds"]) for r in runs])),
           "epochs": float(np.mean([r["epochs"] for r in runs]))}
    for key in ("accuracy", "f1_macro", "rmse", "r2"):
        values = [r[key] for r in runs if r[key] is not None]
        if values:
            row[key], row[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
    return row


def comparison_table(rows: List[Dict]) -> str:
    keys = [k for k in ("accuracy", "f1_macro", "rmse", "r2") if k in rows[0]]
    n = len(rows[0]["runs"])
    head = " | ".join(f"test {k} ({'mean +- std over ' + str(n) + ' seeds' if n > 1 else 'seed ' + str(rows[0]['runs'][0]['seed'])})"
                      for k in keys)
    # extraction (frozen encoders into the cache, once per item) is reported apart from training
    lines = [f"| model | modalities | {head} | epochs | extract seconds | train seconds |",
             "|---|---|" + "---|" * len(keys) + "---|---|---|"]
    for r in rows:
        cells = " | ".join(f"{r[k]:.4f} +- {r[k + '_std']:.4f}" if n > 1 else f"{r[k]:.4f}" for k in keys)
        lines.append(f"| {r['model']} | {r['modalities']} | {cells} | {r['epochs']:.0f} | "
                     f"{r.get('extract_seconds', 0.0):.1f} | {r.get('train_seconds', r['seconds']):.1f} |")
    return "\n".join(lines)


def write_comparison(out: Path, rows: List[Dict], title: str = "crossfuse comparison") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "comparison.json", json.dumps(rows, indent=2))
    atomic_write(out / "comparison.md", f"# {title}\n\n{comparison_table(rows)}\n")
    key = "accuracy" if "accuracy" in rows[0] else "r2"
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    colors = ["tab:gray" if "only" in r["model"] else "tab:blue" for r in rows]
    ax.barh([r["model"] for r in rows], [r[key] for r in rows], xerr=[r[f"{key}_std"] for r in rows],
            color=colors, capsize=3)
    for i, r in enumerate(rows):
        ax.text(r[key] + r[f"{key}_std"] + 0.01, i, f"{r[key]:.3f}", va="center")
    ax.set(xlim=(0, 1.1), xlabel=f"test {key}", title="Single modalities (grey) vs fusion methods (blue)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=110)
    plt.close(fig)
