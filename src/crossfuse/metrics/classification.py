"""Classification and regression metrics, computed with scikit-learn."""
from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np
from sklearn import metrics as skm

from crossfuse.metrics.calibration import calibration


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, labels: Sequence[str]) -> Dict[str, Any]:
    """Accuracy, precision/recall/F1 (macro, micro, weighted), ROC-AUC, expected calibration error
    with its reliability table, confusion matrix, per-class report.

    ``y_true`` holds class indices into ``labels``; ``proba`` is (n, n_classes).
    """
    y_true = np.asarray(y_true)
    y_pred = proba.argmax(1)
    idx = list(range(len(labels)))
    out: Dict[str, Any] = {"n": int(len(y_true)), "accuracy": float(skm.accuracy_score(y_true, y_pred))}
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=idx, average=avg, zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(p), float(r), float(f)
    out["roc_auc"] = _roc_auc(y_true, proba, idx)
    out.update(calibration(y_true, proba))
    out["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=idx).tolist()
    report = skm.classification_report(y_true, y_pred, labels=idx, target_names=[str(l) for l in labels],
                                       zero_division=0, output_dict=True)
    out["per_class"] = {str(l): {k: float(v) for k, v in report[str(l)].items()} for l in labels}
    return out


def _roc_auc(y_true: np.ndarray, proba: np.ndarray, idx: list) -> float | None:
    """One-vs-rest macro ROC-AUC over the classes present; None when it is undefined."""
    present = np.unique(y_true)
    if len(present) < 2:
        return None
    if proba.shape[1] == 2:
        return float(skm.roc_auc_score(y_true, proba[:, 1]))
    scores = []
    for c in present:
        scores.append(skm.roc_auc_score(y_true == c, proba[:, c]))
    return float(np.mean(scores))


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> Dict[str, Any]:
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    return {
        "n": int(len(y_true)),
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "rmse": float(np.sqrt(skm.mean_squared_error(y_true, y_pred))),
        "r2": float(skm.r2_score(y_true, y_pred)) if len(y_true) > 1 else None,
    }
