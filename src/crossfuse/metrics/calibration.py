"""Calibration: whether a classifier's confidence means what it says."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

ECE_BINS = 15


def calibration(y_true: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> Dict[str, Any]:
    """Expected calibration error (Guo et al., ICML 2017) and the reliability table behind it.

    Items are put in ``bins`` equal-width bins by their top probability (confidence); ECE is the
    item-weighted mean of |accuracy - confidence| over the bins. ``reliability`` lists each
    non-empty bin's range, item count, mean confidence and accuracy.
    """
    y_true, proba = np.asarray(y_true), np.asarray(proba, dtype=np.float64)
    if len(y_true) == 0:
        return {"ece": None, "reliability": []}
    confidence, correct = proba.max(1), (proba.argmax(1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (lo, hi] bins
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        if not inside.any():
            continue
        acc, conf = float(correct[inside].mean()), float(confidence[inside].mean())
        ece += inside.mean() * abs(acc - conf)
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": int(inside.sum()),
                      "confidence": conf, "accuracy": acc})
    return {"ece": float(ece), "reliability": table}
