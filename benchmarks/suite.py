"""The benchmark suite: crossfuse's default configuration, untouched, on every data set the project
can build offline, beside the best fusion method (picked on validation) and a linear baseline.

    python benchmarks/suite.py                                  # every set, seeds 0 1 2
    python benchmarks/suite.py --sets demo tuxpaint --seeds 0 1 2
    python benchmarks/suite.py --sets demo_noisy --fusions concat,late,gated
    python benchmarks/suite.py --sets demo train.balance.aux_weight=0.5   # a candidate default
    for s in 0 1 2; do python benchmarks/suite.py --sets demo --seeds $s train.threads=1 & done; wait
    python benchmarks/suite.py --sets demo --collect          # one table from those three processes
    python benchmarks/suite.py --sets tuxpaint --fusions concat --presets fast best   # the presets too

A set's config names only its data and which column is which modality (and, for the Tux Paint
sets, the frozen pretrained encoders); everything else is crossfuse's default. Overrides after the
set names change every set alike: that is how a candidate default is judged, on the validation
column of every set, never on one set's test split. Data are built under --data on first use
(AV-digits needs espeak-ng, Tux Paint the Debian package tuxpaint-stamps-default).

Prints per set: the default's val and test score, the fusion method with the best mean val score
and its test score, the best single modality, the logistic-regression baseline on all modalities,
and whether every fusion method beat the best single modality; mean +- std over seeds. With
--presets, also each named preset's run of the set's config (``preset: NAME``, nothing else
changed): its model's val and test score and, for ``best``, its ensemble's (whose weights are fitted
on the validation rows, so its val score is optimistic: judge it on test only against the others).
Writes OUT/suite.md and OUT/suite.json, and each set's comparison under OUT/<set>/.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pandas as pd

from crossfuse.atomic import atomic_write
from crossfuse.compare import METRICS, baseline_rows, run_comparison, summarise, variants, write_comparison
from crossfuse.config import apply_overrides, parse_config
from crossfuse.config.schema import Config
from crossfuse.data.demo import build_av_digits, build_digits_demo

HERE = Path(__file__).resolve().parent
DIGIT_MODALITIES = {"image": {"kind": "image", "columns": ["image"]},
                    "text": {"kind": "text", "columns": ["caption"]},
                    "tabular": {"kind": "tabular", "columns": ["remainder", "loops"]}}


def _imbalanced(root: Path) -> Path:
    """The demo digits with class k keeping 0.7^k of its items (digit 9: about 4 %)."""
    source = build_digits_demo(root / "full") if not (root / "full" / "manifest.csv").is_file() \
        else root / "full" / "manifest.csv"
    df = pd.read_csv(source)
    rng = np.random.default_rng(0)
    keep = [i for i, label in enumerate(df["label"]) if rng.uniform() < 0.7 ** int(label)]
    df = df.iloc[keep].copy()
    df["image"] = "full/" + df["image"]
    path = root / "manifest.csv"
    df.to_csv(path, index=False)
    return path


def _tuxpaint(root: Path) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("tuxpaint_data", HERE / "datasets" / "tuxpaint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(root)


TUX_DATA = {"target": "label", "id_column": "id", "split": {"column": "split"}, "allow_outside_paths": True}
# name -> (builder of the manifest under a folder, data keys, modalities)
SETS: Dict[str, tuple] = {
    "demo": (lambda d: build_digits_demo(d), {}, DIGIT_MODALITIES),
    "demo_small": (lambda d: build_digits_demo(d, limit=600), {}, DIGIT_MODALITIES),
    "demo_noisy": (lambda d: build_digits_demo(d, occlusion=0.45, noise=0.35), {}, DIGIT_MODALITIES),
    "demo_imbalanced": (_imbalanced, {}, DIGIT_MODALITIES),
    "av_digits": (lambda d: build_av_digits(d), {}, {
        "image": {"kind": "image", "columns": ["image"]}, "text": {"kind": "text", "columns": ["caption"]},
        "audio": {"kind": "audio", "columns": ["audio"]}}),
    "tuxpaint": (_tuxpaint, TUX_DATA, {
        "image": {"kind": "image", "columns": ["image"], "encoder": {"name": "efficientnet_lite0"}},
        "text": {"kind": "text", "columns": ["caption"], "encoder": {"name": "minilm"}}}),
    # about one stamp in twelve has a recorded description: the rest are items without audio
    "tuxpaint_speech": (_tuxpaint, {**TUX_DATA, "on_bad_item": "missing"}, {
        "image": {"kind": "image", "columns": ["image"], "encoder": {"name": "efficientnet_lite0"}},
        "text": {"kind": "text", "columns": ["caption"], "encoder": {"name": "minilm"}},
        "audio": {"kind": "audio", "columns": ["audio"], "encoder": {"name": "whisper_tiny_en"}}}),
}
SHARED_DATA = {"tuxpaint_speech": "tuxpaint"}  # sets that read another set's files
METRIC = {"demo_imbalanced": "f1_macro"}  # accuracy elsewhere


def manifest_for(name: str, data_root: Path) -> Path:
    folder = data_root / SHARED_DATA.get(name, name)
    path = folder / "manifest.csv"
    if not path.is_file():  # built aside and moved in whole, so processes started together never
        logging.getLogger("suite").warning("building %s in %s", name, folder)  # read a half-built set
        staging = folder.with_name(f"{folder.name}.building-{os.getpid()}")
        built = Path(SETS[name][0](staging))
        try:
            os.replace(staging, folder)
        except OSError:  # another process got there first: use its copy
            shutil.rmtree(staging, ignore_errors=True)
        path = folder / built.relative_to(staging)
    return path


def set_config(name: str, data_root: Path, out: Path, overrides: List[str]) -> Config:
    _, data, modalities = SETS[name]
    raw = {"data": {"manifest": str(manifest_for(name, data_root).resolve()), "target": "label", "id_column": "id",
                    **data},
           "modalities": modalities, "output_dir": str(out)}
    return parse_config(apply_overrides(raw, list(overrides) + ["train.progress=false"]))


def collect_comparison(cfg: Config, out: Path, fusions: List[str], seeds: List[int]) -> List[Dict]:
    """A set's comparison rows from the runs already under ``out`` (metrics.json and history.json
    per run), so seeds trained by separate processes, or machines, make one table."""
    monitor = cfg.train.early_stopping.metric or ("rmse" if cfg.data.task == "regression" else "f1_macro")
    rows, baseline = [], None
    for label, modalities, _ in variants(cfg, fusions, singles=True):
        runs = []
        for seed in seeds:
            run_dir = out / label.replace(" ", "_") / f"seed{seed}"
            if not (run_dir / "metrics.json").is_file():
                raise SystemExit(f"--collect: {run_dir} has no metrics.json; train seed {seed} of {label} first")
            metrics = json.loads((run_dir / "metrics.json").read_text())
            history = json.loads((run_dir / "history.json").read_text())
            scores = [h.get(f"val_{monitor}", np.nan) for h in history]
            best = history[int(np.nanargmin(scores) if monitor in ("rmse", "mae", "loss") else np.nanargmax(scores))]
            baseline = baseline or metrics.get("baseline")
            train_seconds = float(sum(h.get("train_seconds", 0.0) for h in history))
            runs.append({"seed": seed, **{k: metrics.get(k) for k in METRICS},
                         **{f"val_{k}": best.get(f"val_{k}") for k in METRICS}, "epochs": len(history),
                         "seconds": train_seconds, "extract_seconds": 0.0, "train_seconds": train_seconds})
        rows.append(summarise(label, "+".join(modalities), runs))
    return rows + baseline_rows(baseline, cfg)


def preset_rows(name: str, data_root: Path, out: Path, overrides: List[str], presets: List[str],
                seeds: List[int], metric: str, collect: bool) -> List[Dict]:
    """Per preset, the set's config with ``preset`` set, once per seed: the run's model and, where the
    preset ensembles, its ensemble, as val and test scores."""
    from crossfuse.engine import train

    rows = []
    for preset in presets:
        runs = []
        for seed in seeds:
            run_dir = out / f"preset_{preset}" / f"seed{seed}"
            cfg = set_config(name, data_root, run_dir, list(overrides) + [f"preset={preset}", f"train.seed={seed}",
                                                                         "train.baseline=false"])
            if collect:
                metrics = json.loads((run_dir / "metrics.json").read_text())
            else:
                t0 = time.perf_counter()
                metrics = train(cfg).metrics
                metrics["seconds"] = time.perf_counter() - t0
            history = json.loads((run_dir / "history.json").read_text())
            monitor = cfg.train.early_stopping.metric or "f1_macro"  # the epoch early stopping kept
            best = history[int(np.nanargmax([h.get(f"val_{monitor}", np.nan) for h in history]))]
            ens = metrics.get("ensemble") or {}
            runs.append({"val": best.get(f"val_{metric}"), "test": metrics.get(metric),
                         "ens_val": (ens.get("val") or {}).get(metric), "ens_test": (ens.get("test") or {}).get(metric),
                         "seconds": metrics.get("seconds"), "fusion": cfg.fusion.name if cfg.fusion.name != "auto"
                         else json.loads((run_dir / "auto_fusion.json").read_text())["chosen"]})
        rows.append({"set": name, "preset": preset, "runs": runs})
    return rows


def preset_table(rows: List[Dict], seeds: List[int]) -> str:
    out = ["| set | preset | model val | model test | ensemble val (fitted there) | ensemble test | fusion per seed | "
           "seconds per seed |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def col(k):
            return mean_std([x[k] for x in r["runs"]])
        secs = [x["seconds"] for x in r["runs"] if x.get("seconds") is not None]
        out.append(f"| {r['set']} | {r['preset']} | {col('val')} | {col('test')} | {col('ens_val')} | {col('ens_test')} "
                   f"| {', '.join(x['fusion'] for x in r['runs'])} | {f'{np.mean(secs):.0f}' if secs else '-'} |")
    out.append(f"\nMean +- std over seeds {' '.join(map(str, seeds))}.")
    return "\n".join(out)


def mean_std(values: List[float]) -> str:
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.4f} +- {np.std(values):.4f}" if values else "-"


def summarise_set(name: str, rows: List[Dict], default_fusion: str, metric: str) -> Dict:
    """One line of the suite table from a set's comparison rows."""
    def values(row, key):
        return [r.get(key) for r in row["runs"]]

    fusions = [r for r in rows if r["model"].endswith(" fusion")]
    singles = [r for r in rows if r["model"].endswith(" only") and not r.get("baseline")]
    default = next(r for r in fusions if r["model"] == f"{default_fusion} fusion")
    best = max(fusions, key=lambda r: np.mean(values(r, f"val_{metric}")))
    best_single = max(singles, key=lambda r: np.mean(values(r, metric))) if singles else None
    linear = next((r for r in rows if r.get("baseline") and r["model"].endswith("all modalities")), None)
    floor = np.mean(values(best_single, metric)) if best_single else -np.inf
    return {
        "set": name, "metric": metric,
        "default": {"fusion": default_fusion, "val": values(default, f"val_{metric}"), "test": values(default, metric)},
        "best": {"fusion": best["model"].removesuffix(" fusion"), "val": values(best, f"val_{metric}"),
                 "test": values(best, metric)},
        "best_single": None if best_single is None else {"model": best_single["model"],
                                                           "test": values(best_single, metric)},
        "linear": None if linear is None else {"val": linear.get(f"val_{metric}"), "test": linear.get(metric)},
        "all_fusions_beat_single": bool(all(np.mean(values(r, metric)) > floor for r in fusions)),
        "default_within_001_on_val": bool(np.mean(values(default, f"val_{metric}"))
                                          >= np.mean(values(best, f"val_{metric}")) - 0.01),
    }


def suite_table(lines: List[Dict], seeds: List[int]) -> str:
    out = [f"| set | metric | default ({lines[0]['default']['fusion']}) val | default test | best on val | its test | "
           "best single (test) | linear, all (val / test) | every fusion > best single | default within 0.01 on val |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for s in lines:
        single = f"{s['best_single']['model']}: {mean_std(s['best_single']['test'])}" if s["best_single"] else "-"
        lin = s["linear"]
        linear = f"{lin['val']:.4f} / {lin['test']:.4f}" if lin and lin["val"] is not None else "-"
        out.append(f"| {s['set']} | {s['metric']} | {mean_std(s['default']['val'])} | {mean_std(s['default']['test'])} | "
                   f"{s['best']['fusion']}: {mean_std(s['best']['val'])} | {mean_std(s['best']['test'])} | {single} | "
                   f"{linear} | {'yes' if s['all_fusions_beat_single'] else 'no'} | "
                   f"{'yes' if s['default_within_001_on_val'] else 'no'} |")
    out.append(f"\nMean +- std over seeds {' '.join(map(str, seeds))} (training differs "
               "slightly across CPUs); the best method is picked on the validation column; the linear baseline "
               "is one deterministic fit per set.")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="config overrides applied to every set, key=value")
    p.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fusions", help="comma-separated (default: every registered method)")
    p.add_argument("--data", type=Path, default=Path("data/suite"))
    p.add_argument("--out", type=Path, default=Path("runs/suite"))
    p.add_argument("--presets", nargs="*", default=[], help="also train each preset (fast, medium, best) per set")
    p.add_argument("--collect", action="store_true",
                   help="train nothing: make the tables from the runs under --out (e.g. one process per seed)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    default_fusion = Config().fusion.name
    fusions = args.fusions.split(",") if args.fusions else None
    if fusions and default_fusion not in fusions:
        fusions.insert(0, default_fusion)
    if args.collect and fusions is None:
        from crossfuse.fusion import FUSIONS

        fusions = list(FUSIONS.names())
    lines, presets, start = [], [], time.perf_counter()
    for name in args.sets:
        t0 = time.perf_counter()
        cfg = set_config(name, args.data, args.out / name, args.overrides)
        if args.collect:
            rows = collect_comparison(cfg, args.out / name, fusions, args.seeds)
            write_comparison(args.out / name, rows)
        else:
            rows = run_comparison(cfg, args.out / name, fusions=fusions, seeds=args.seeds)  # writes comparison.md
        metric = METRIC.get(name, "accuracy")
        lines.append(summarise_set(name, rows, default_fusion, metric))
        presets += preset_rows(name, args.data, args.out / name, args.overrides, args.presets, args.seeds, metric,
                               args.collect)
        print(f"{name}: {time.perf_counter() - t0:.0f} s; default {mean_std(lines[-1]['default']['test'])}, best on "
              f"val {lines[-1]['best']['fusion']} {mean_std(lines[-1]['best']['test'])}", flush=True)
    table = suite_table(lines, args.seeds)
    if presets:
        table += "\n\n" + preset_table(presets, args.seeds)
    header = (f"crossfuse suite; overrides: {' '.join(args.overrides) or 'none'}; machine {platform.machine()}, "
              f"{os.cpu_count()} cores; wall {time.perf_counter() - start:.0f} s\n")
    atomic_write(args.out / "suite.md", header + "\n" + table + "\n")
    atomic_write(args.out / "suite.json", json.dumps({"sets": lines, "presets": presets}, indent=2))
    print(header)
    print(table)


if __name__ == "__main__":
    main()
