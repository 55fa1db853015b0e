"""What differs between classification and regression: targets, loss, metrics, outputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd
import torch

from crossfuse.data import label_str
from crossfuse.engine.inference import softmax
from crossfuse.errors import DataError, Problem
from crossfuse.metrics import classification_metrics, regression_metrics


def infer_task(series: pd.Series) -> str:
    """Regression for numeric targets with non-integer values or more than 20 distinct values."""
    values = pd.to_numeric(series.dropna(), errors="coerce")
    if values.isna().any() or len(values) == 0:
        return "classification"
    if (values % 1 != 0).any() or values.nunique() > 20:
        return "regression"
    return "classification"


@dataclass
class TaskSpec:
    """The target's encoding: class labels, or the mean/std used to standardise a regression target."""

    kind: str
    labels: Optional[List[str]] = None
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(cls, kind: str, target: pd.Series, file: str, column: str) -> "TaskSpec":
        if kind == "classification":
            labels = sorted({label_str(v) for v in target.tolist()}, key=_natural)
            if len(labels) < 2:
                raise DataError([Problem(file, f"the target has one class only ({labels[0] if labels else 'none'}); "
                                               "a classifier needs at least two", column=column)])
            return cls(kind, labels=labels)
        x = target.astype(float)
        return cls(kind, mean=float(x.mean()), std=float(x.std(ddof=0)) or 1.0)

    @property
    def out_dim(self) -> int:
        return len(self.labels) if self.kind == "classification" else 1

    def encode(self, target: pd.Series) -> np.ndarray:
        if self.kind == "classification":
            index = {l: i for i, l in enumerate(self.labels)}
            return np.array([index[label_str(v)] for v in target.tolist()], dtype=np.int64)
        return ((target.astype(float).to_numpy() - self.mean) / self.std).astype(np.float32)[:, None]

    def loss(self, class_weights: Optional[torch.Tensor] = None, label_smoothing: float = 0.0) -> torch.nn.Module:
        if self.kind == "classification":
            return torch.nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
        return torch.nn.MSELoss()

    def metrics(self, logits: np.ndarray, encoded_targets: np.ndarray) -> Dict[str, Any]:
        if self.kind == "classification":
            return classification_metrics(encoded_targets, softmax(logits), self.labels)
        return regression_metrics(self.decode_values(encoded_targets), self.decode_values(logits))

    def decode_values(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=float).reshape(-1) * self.std + self.mean

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "labels": self.labels, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TaskSpec":
        return cls(**d)


def _natural(label: str):
    """Sort '2' before '10' when labels are numbers."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


CLASSIFICATION_METRICS = {"accuracy", "f1_macro", "f1_micro", "f1_weighted", "precision_macro", "recall_macro",
                          "roc_auc", "loss"}
REGRESSION_METRICS = {"mae", "rmse", "r2", "loss"}
HIGHER_IS_BETTER = (CLASSIFICATION_METRICS | {"r2"}) - {"loss"}
