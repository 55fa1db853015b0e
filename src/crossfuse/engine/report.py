"""Write an evaluation report: metrics.json, PNG plots and a short summary people can read."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from crossfuse.atomic import atomic_write
from crossfuse.metrics import plot_confusion_matrix, plot_training_curves


def write_report(out_dir: Path, metrics: Dict[str, Any], labels: Optional[List[str]],
                 history: Optional[List[Dict[str, float]]] = None, monitor: Optional[str] = None,
                 title: str = "crossfuse evaluation", extra: Optional[Dict[str, Any]] = None) -> Dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"metrics": out_dir / "metrics.json", "summary": out_dir / "summary.md"}
    atomic_write(files["metrics"], json.dumps({**metrics, **(extra or {})}, indent=2))
    if history:
        files["history"] = out_dir / "history.json"
        atomic_write(files["history"], json.dumps(history, indent=2))
        files["curves"] = out_dir / "training_curves.png"
        plot_training_curves(history, files["curves"], monitor or "loss")
    if labels and "confusion_matrix" in metrics:
        files["confusion"] = out_dir / "confusion_matrix.png"
        plot_confusion_matrix(metrics["confusion_matrix"], labels, files["confusion"])
    atomic_write(files["summary"], summary_text(metrics, labels, title, extra))
    return files


def summary_text(metrics: Dict[str, Any], labels: Optional[List[str]], title: str,
                 extra: Optional[Dict[str, Any]] = None) -> str:
    lines = [f"# {title}", ""]
    for key, value in (extra or {}).items():
        if isinstance(value, (str, int, float)):
            lines.append(f"- {key}: {value}")
    lines.append(f"- items evaluated: {metrics.get('n')}")
    lines.append("")
    headline = ["accuracy", "f1_macro", "f1_micro", "f1_weighted", "precision_macro", "recall_macro", "roc_auc",
                "mae", "rmse", "r2"]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {metrics[k]:.4f} |" for k in headline if isinstance(metrics.get(k), float)]
    lines += modality_sections(metrics)
    if labels and "per_class" in metrics:
        lines += ["", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
        for label in labels:
            r = metrics["per_class"][str(label)]
            lines.append(f"| {label} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1-score']:.3f} "
                         f"| {int(r['support'])} |")
    return "\n".join(lines) + "\n"


def modality_sections(metrics: Dict[str, Any]) -> List[str]:
    """How much each modality counts (weights, Shapley) and what losing or degrading it costs."""
    lines: List[str] = []
    att, weights, rob = metrics.get("attribution"), metrics.get("mean_modality_weight"), metrics.get("robustness")
    if att or weights:
        mods = list((att or {}).get("shapley_share") or weights)
        lines += ["", "## Modality contributions", "",
                  f"Shapley values over modalities explain the {att['explains']}." if att else "",
                  "", "| modality | Shapley share | mean Shapley value | mean fusion weight |", "|---|---|---|---|"]
        for m in mods:
            share = f"{att['shapley_share'][m]:.3f}" if att else "-"
            mean = f"{att['shapley_mean'][m]:+.4f}" if att else "-"
            w = weights.get(m) if weights else None
            lines.append(f"| {m} | {share} | {mean} | {'-' if w is None else f'{w:.3f}'} |")
    if rob:
        metric = rob["metric"]
        lines += ["", "## Robustness", "", f"Clean {metric}: {rob['clean']:.4f}", "",
                  f"| modality | {metric} without it | {metric} with it alone |", "|---|---|---|"]
        for m in rob["removed"]:
            lines.append(f"| {m} | {rob['removed'][m]:.4f} | {rob['only'][m]:.4f} |")
        lines += ["", f"| modality | corruption | strength | {metric} |", "|---|---|---|---|"]
        lines += [f"| {r['modality']} | {r['corruption']} | {r['strength']} | {r[metric]:.4f} |" for r in rob["corrupted"]]
        lines += ["", "![robustness](robustness.png)"]
    return lines
