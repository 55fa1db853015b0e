"""`crossfuse compare`: every fusion method and each single modality, same encoders and budget,
several seeds, and the linear baseline on the same split; a table of validation and test scores
(mean +- std), the model validation would pick, and a bar plot with error bars."""
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
METRICS = ("accuracy", "f1_macro", "rmse", "r2")


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
                   seeds: Sequence[int] = (0, 1, 2), singles: bool = True, save_runs: bool = False,
                   ensemble: bool = False) -> List[Dict]:
    """Train every variant once per seed (seed drives init, split order and dropout) and test it.

    Each run keeps its metrics.json and history.json under out/<variant>/seed<k> (a few KB);
    with ``save_runs`` also its model directory and full report. With ``ensemble`` (which saves
    the runs) each seed's fusion models are also combined by greedy selection, weighted on that
    seed's validation rows, and tested: one more row.
    """
    out = Path(out)
    fusions = list(fusions or FUSIONS.names())
    save_runs = save_runs or ensemble
    rows, baseline = [], None
    fusion_dirs: Dict[int, List[Path]] = {}
    for label, modalities, fusion in variants(base, fusions, singles):
        runs = []
        for seed in seeds:
            run_dir = out / label.replace(" ", "_") / f"seed{seed}"
            # the linear baseline depends on the split and the features, not on the seed or the fusion
            # method: the first run over every modality fits it, once
            wants_baseline = base.train.baseline and baseline is None and len(modalities) == len(base.modalities)
            cfg = dataclasses.replace(base, modalities=modalities, fusion=fusion, output_dir=str(run_dir),
                                      train=dataclasses.replace(base.train, seed=seed, baseline=wants_baseline))
            start = time.perf_counter()
            result = train(cfg, save=save_runs)
            if not save_runs:
                atomic_write(run_dir / "metrics.json", json.dumps(result.metrics, indent=2))
                atomic_write(run_dir / "history.json", json.dumps(result.train.history, indent=2))
            if wants_baseline:
                baseline = result.metrics.get("baseline")
            if len(modalities) == len(base.modalities) and result.model_dir is not None:
                fusion_dirs.setdefault(seed, []).append(result.model_dir)
            best = result.train.history[result.train.best_epoch - 1] if result.train.best_epoch else {}
            runs.append({"seed": seed, **{k: result.metrics.get(k) for k in METRICS},
                         **{f"val_{k}": best.get(f"val_{k}") for k in METRICS},
                         "epochs": len(result.train.history), "seconds": time.perf_counter() - start,
                         "extract_seconds": result.timings.get("extract_seconds", 0.0),
                         "train_seconds": result.timings.get("train_seconds", 0.0)})
            log.info("%s, seed %d: %s", label, seed, ", ".join(f"{k} {v:.4g}" for k, v in runs[-1].items()
                                                                 if k != "seed" and v is not None))
        rows.append(summarise(label, "+".join(modalities), runs))
    if ensemble and all(len(d) >= 2 for d in fusion_dirs.values()) and fusion_dirs:
        rows.append(summarise(f"greedy ensemble of {len(next(iter(fusion_dirs.values())))} fusion methods",
                              "+".join(base.modalities), [ensemble_run(base, dirs, out / "ensemble" / f"seed{seed}",
                                                                       seed) for seed, dirs in fusion_dirs.items()]))
    rows += baseline_rows(baseline, base)
    write_comparison(out, rows)
    return rows


def ensemble_run(base: Config, dirs: List[Path], out: Path, seed: int) -> Dict:
    """The greedy ensemble of one seed's fusion models, weighted on its validation rows, tested."""
    from crossfuse.engine.ensemble import build_ensemble
    from crossfuse.engine.predictor import Predictor
    from crossfuse.engine.run import load_table, read_split

    start = time.perf_counter()
    df, base_dir, file = load_table(base)
    part = read_split(dirs[0].parent, df)
    outside = base.data.allow_outside_paths
    report = build_ensemble(dirs, Path(file), out, method="greedy", frame=(part["val"], base_dir),
                            allow_outside_paths=outside)
    p = Predictor.load(out)
    p.allow_outside_paths = outside
    val = p.evaluate_frame(part["val"], base_dir, file, attribution=False)
    test = p.evaluate_frame(part["test"], base_dir, file, attribution=False)
    weights = ", ".join(f"{Path(d).parent.parent.name} {w:.2f}" for d, w in report["weights"].items() if w > 0)
    log.info("greedy ensemble, seed %d: weights %s; test %s", seed, weights, test.get("accuracy", test.get("rmse")))
    return {"seed": seed, **{k: test.get(k) for k in METRICS}, **{f"val_{k}": val.get(k) for k in METRICS},
            "epochs": 0, "seconds": time.perf_counter() - start, "weights": report["weights"]}


def baseline_rows(baseline: Optional[Dict], base: Config) -> List[Dict]:
    """The linear baseline (crossfuse.engine.baseline) as comparison rows: one deterministic fit each."""
    if not baseline:
        return []
    extra = "f1_macro" if baseline["metric"] == "accuracy" else "r2"
    rows = []
    for name, r in baseline["rows"].items():
        mods = "+".join(base.modalities) if name == "all modalities" else name.removesuffix(" only")
        row = {"model": f"{baseline['model']}, {name}", "modalities": mods, "baseline": True, "runs": [],
               "epochs": None, "seconds": None}
        for key, value in ((baseline["metric"], r.get("test")), (extra, r.get(f"test_{extra}")),
                           (f"val_{baseline['metric']}", r.get("val")), (f"val_{extra}", r.get(f"val_{extra}"))):
            if value is not None:
                row[key], row[f"{key}_std"] = value, 0.0
        rows.append(row)
    return rows


def picked_on_validation(rows: List[Dict]) -> Optional[Dict]:
    """The row with the best mean validation score (accuracy, or RMSE for regression), or None."""
    key, sign = ("val_accuracy", 1.0) if any("val_accuracy" in r for r in rows) else ("val_rmse", -1.0)
    scored = [r for r in rows if r.get(key) is not None]
    return max(scored, key=lambda r: sign * r[key]) if scored else None


def summarise(label: str, modalities: str, runs: List[Dict]) -> Dict:
    row = {"model": label, "modalities": modalities, "runs": runs,
           "seconds": float(np.mean([r["seconds"] for r in runs])),
           "extract_seconds": float(np.mean([r.get("extract_seconds", 0.0) for r in runs])),
           "train_seconds": float(np.mean([r.get("train_seconds", r["seconds"]) for r in runs])),
           "epochs": float(np.mean([r["epochs"] for r in runs]))}
    for key in (*METRICS, *(f"val_{k}" for k in METRICS)):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            row[key], row[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
    return row


def comparison_table(rows: List[Dict]) -> str:
    """Markdown: validation beside test for every model, the linear baseline's rows last, and the
    model validation would pick."""
    keys = [k for k in METRICS if k in rows[0]]
    fitted = [r for r in rows if not r.get("baseline")]
    n = len(fitted[0]["runs"]) if fitted else 1
    over = f"mean +- std over {n} seeds" if n > 1 else f"seed {fitted[0]['runs'][0]['seed']}" if fitted else "one fit"
    cols = [f"val {keys[0]}"] + [f"test {k}" for k in keys]
    # extraction (frozen encoders into the cache, once per item) is reported apart from training
    lines = [f"| model | modalities | {' | '.join(cols)} | epochs | extract seconds | train seconds |",
             "|---|---|" + "---|" * len(cols) + "---|---|---|"]
    for r in rows:
        def cell(k):
            if r.get(k) is None:
                return "-"
            return f"{r[k]:.4f} +- {r[k + '_std']:.4f}" if n > 1 and not r.get("baseline") else f"{r[k]:.4f}"
        cells = " | ".join(cell(k) for k in [f"val_{keys[0]}", *keys])
        timing = ("- | - | -" if r.get("baseline") else
                  f"{r['epochs']:.0f} | {r.get('extract_seconds', 0.0):.1f} | {r.get('train_seconds', r['seconds']):.1f}")
        lines.append(f"| {r['model']} | {r['modalities']} | {cells} | {timing} |")
    lines.append("")
    lines.append(f"Scores: {over}; validation at each run's best epoch; the linear baseline is one "
                 "deterministic fit on the same split." if any(r.get("baseline") for r in rows) else
                 f"Scores: {over}; validation at each run's best epoch.")
    pick = picked_on_validation(rows)
    if pick is not None:
        metric = keys[0]
        lines.append(f"Picked on validation: {pick['model']} (val {metric} {pick[f'val_{metric}']:.4f}, "
                     f"test {pick[metric]:.4f}).")
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
    colors = ["tab:orange" if r.get("baseline") else "tab:gray" if "only" in r["model"] else "tab:blue" for r in rows]
    ax.barh([r["model"] for r in rows], [r[key] for r in rows], xerr=[r[f"{key}_std"] for r in rows],
            color=colors, capsize=3)
    for i, r in enumerate(rows):
        ax.text(r[key] + r[f"{key}_std"] + 0.01, i, f"{r[key]:.3f}", va="center")
    ax.set(xlim=(0, 1.1), xlabel=f"test {key}", title="Single modalities (grey), fusion methods (blue), linear baseline (orange)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=110)
    plt.close(fig)
