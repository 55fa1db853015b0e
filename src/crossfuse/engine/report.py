"""Write an evaluation report: metrics.json, PNG plots and a short summary people can read."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from crossfuse.atomic import atomic_write
from crossfuse.metrics import plot_confusion_matrix, plot_reliability, plot_training_curves


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
    if metrics.get("reliability"):
        files["reliability"] = out_dir / "reliability.png"
        plot_reliability(metrics["reliability"], files["reliability"], metrics["ece"])
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
    lines += calibration_section(metrics)
    lines += modality_sections(metrics)
    lines += shift_section(metrics.get("shift"))
    lines += privacy_section((extra or {}).get("privacy"))
    lines += anonymize_section((extra or {}).get("anonymize"))
    lines += baseline_section(metrics, (extra or {}).get("baseline"))
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
    imagined = {m: n for m, n in (metrics.get("imagined_items") or {}).items() if n}
    if imagined:
        when = metrics.get("mean_weight_when_imagined") or {}
        lines += ["", "Imagined (missing.imagine) where absent: " + ", ".join(
            f"{m} for {n} items" + (f" (mean fusion weight {when[m]:.3f})" if when.get(m) is not None else "")
            for m, n in imagined.items())]
    if rob:
        metric = rob["metric"]
        lines += ["", "## Robustness", "", f"Clean {metric}: {rob['clean']:.4f}", ""]
        if rob.get("imagined"):  # the model imagines absent modalities: both ways side by side
            plain_removed, plain_only = rob["removed_without_imagination"], rob["only_without_imagination"]
            lines += ["Absent modalities imagined from the present ones (missing.imagine), and left out.", "",
                      f"| modality | {metric} without it, imagined | left out | {metric} with it alone, the others "
                      f"imagined | left out |", "|---|---|---|---|---|"]
            for m in rob["removed"]:
                lines.append(f"| {m} | {rob['removed'][m]:.4f} | {plain_removed[m]:.4f} | {rob['only'][m]:.4f} "
                             f"| {plain_only[m]:.4f} |")
        else:
            lines += [f"| modality | {metric} without it | {metric} with it alone |", "|---|---|---|"]
            for m in rob["removed"]:
                lines.append(f"| {m} | {rob['removed'][m]:.4f} | {rob['only'][m]:.4f} |")
        lines += ["", f"| modality | corruption | strength | {metric} |", "|---|---|---|---|"]
        lines += [f"| {r['modality']} | {r['corruption']} | {r['strength']} | {r[metric]:.4f} |" for r in rob["corrupted"]]
        lines += ["", "![robustness](robustness.png)"]
    return lines


def calibration_section(metrics: Dict[str, Any]) -> List[str]:
    if not isinstance(metrics.get("ece"), float):
        return []
    lines = ["", "## Calibration", "", f"Expected calibration error (15 bins): {metrics['ece']:.4f}"]
    if "ece_without_temperature" in metrics:
        lines[-1] += (f"; {metrics['ece_without_temperature']:.4f} without the temperature "
                      f"(T = {metrics['temperature']:.3f}, fitted on validation)")
    return lines + ["", "![reliability](reliability.png)"]


def shift_section(shift: Optional[Dict[str, Any]]) -> List[str]:
    """Each modality's trust on the evaluated items against the training data, and what the
    trust gate and removing the modality do to the metric."""
    if not shift:
        return []
    metric = shift["metric"]
    lines = ["", "## Trust and shift", "",
             f"Trust is a modality's p-value among validation items (uniform on (0, 1] in distribution); "
             f"below alpha = {shift['alpha']} a modality is flagged"
             + (" and removed through the presence mask." if shift["gate"] else " (the gate is off)."), "",
             f"{metric}: plain model {shift['plain']:.4f}, trust-aware {shift['trust_aware']:.4f}", "",
             f"| modality | items | mean trust | flagged | median OOD score (held-out reference) | {metric} without it |",
             "|---|---|---|---|---|---|"]
    for m, r in shift["modalities"].items():
        if not r["fitted"]:
            lines.append(f"| {m} | {r['items']} | - | - | not fitted | - |")
            continue
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        lines.append(f"| {m} | {r['items']} | {fmt(r['mean_trust'], '.3f')} | {fmt(r['flagged_share'], '.1%')} | "
                     f"{fmt(r['median_ood_score'], '.1f')} ({r['reference_median_ood_score']:.1f}) | "
                     f"{r[f'{metric}_removed']:.4f} |")
    return lines


def privacy_section(privacy: Optional[Dict[str, Any]]) -> List[str]:
    """The guarantee of a DP-SGD run (engine.privacy)."""
    if not privacy:
        return []
    return ["", "## Differential privacy", "",
            f"Trained with DP-SGD: ({privacy['epsilon']:.3f}, {privacy['delta']:.3g})-differentially private with "
            f"respect to the {privacy['training_items']} training items ({privacy['accountant'].upper()} accountant: "
            f"noise multiplier {privacy['noise_multiplier']:.4g}, per-item clip norm {privacy['max_grad_norm']:g}, "
            f"sampling rate {privacy['sample_rate']:.4g}, {privacy['steps']} steps). Validation and test items are "
            "not covered; the linear baseline below is not private."]


def anonymize_section(summary: Optional[Dict[str, Any]]) -> List[str]:
    """What data.anonymize replaced in the training data (counts and types, never the values)."""
    if not summary:
        return []
    lines = ["", "## Anonymisation", "", "| input | what was done |", "|---|---|"]
    for name, s in summary.items():
        if s["kind"] == "text":
            found = ", ".join(f"{k} {v}" for k, v in s["entities"].items()) or "nothing found"
            lines.append(f"| {name} (text, {s['detector']}) | {s['cells_changed']} cells changed: {found} |")
        else:
            lines.append(f"| {name} (image) | faces {'blurred' if s['faces'] == 'blur' else 'boxed'} as each image "
                         "is loaded |")
    return lines


def baseline_section(metrics: Dict[str, Any], baseline: Optional[Dict[str, Any]]) -> List[str]:
    """The model beside a linear model on the same items (crossfuse.engine.baseline)."""
    if not baseline:
        return []
    metric = baseline["metric"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    lines = ["", "## Linear baseline", "",
             f"{baseline['model'].capitalize()} on each modality's features (a frozen encoder's output, else the "
             f"raw input) and on all of them, strength chosen on {baseline['chosen_on']}; the model's validation "
             "score is at its best epoch. Items: " + ", ".join(f"{k} {v}" for k, v in baseline.get("items", {}).items())
             + " (at most 20,000 per split).", "",
             f"| model | val {metric} | evaluated {metric} |", "|---|---|---|",
             f"| this model | {fmt(baseline.get('model_val'))} | {fmt(metrics.get(metric))} |"]
    for name, r in baseline["rows"].items():
        lines.append(f"| {baseline['model']}, {name} | {fmt(r.get('val'))} | {fmt(r.get('test'))} |")
    return lines
