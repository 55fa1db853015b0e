"""Building ensembles of saved fusion models (``crossfuse ensemble``): mean, greedy forward
selection (Caruana et al., ICML 2004, as AutoGluon does) or a stacked linear meta-learner,
fitted on the members' predictions for a labelled manifest they did not train on (their
validation rows, usually). The result is one model directory (models.ensemble.EnsembleModel),
which predict, evaluate, the estimators and the server load like any model."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from crossfuse.atomic import atomic_write
from crossfuse.data import read_manifest
from crossfuse.engine.inference import softmax
from crossfuse.engine.predictor import Predictor
from crossfuse.errors import CrossfuseError
from crossfuse.models import FusionModel, save_model
from crossfuse.models.ensemble import LOG_FLOOR, MAX_MEMBERS, METHODS, EnsembleModel

log = logging.getLogger(__name__)


def load_members(model_dirs: Sequence[Path]) -> List[Predictor]:
    """The members, checked to read the same inputs the same way and to predict the same thing."""
    if not 2 <= len(model_dirs) <= MAX_MEMBERS:
        raise CrossfuseError(f"an ensemble needs 2 to {MAX_MEMBERS} models; got {len(model_dirs)}")
    members = [Predictor.load(d) for d in model_dirs]
    first = members[0]
    problems = []
    for d, p in zip(model_dirs, members):
        if not isinstance(p.model, FusionModel):
            problems.append(f"{d} is not a fusion model (ensembles combine classifiers or regressors)")
            continue
        if p.task.to_dict() != first.task.to_dict():
            problems.append(f"{d} predicts {p.task.kind} {p.task.labels or ''}, {model_dirs[0]} "
                            f"{first.task.kind} {first.task.labels or ''}")
        mine = {m: proc.state() for m, proc in p.processors.items()}
        theirs = {m: proc.state() for m, proc in first.processors.items()}
        if json.dumps(mine, sort_keys=True, default=str) != json.dumps(theirs, sort_keys=True, default=str):
            differ = sorted(m for m in set(mine) | set(theirs) if mine.get(m) != theirs.get(m))
            problems.append(f"{d} reads its inputs differently from {model_dirs[0]} (modalities: "
                            f"{', '.join(differ)}); ensemble members must share modalities and processors, as "
                            "runs of one config with other fusion methods or hyperparameters do")
    if problems:
        raise CrossfuseError("cannot ensemble these models:\n" + "\n".join(f"  - {p}" for p in problems))
    return members


def member_predictions(members: Sequence[Predictor], manifest: Path, on_bad_item: str = "error",
                       frame: Optional[Tuple[pd.DataFrame, Path]] = None) -> Tuple[List[np.ndarray], np.ndarray]:
    """Each member's outputs (logits, or standardised values) on a labelled manifest (or on
    ``frame``: rows and their base folder), and the encoded targets."""
    df, base_dir = frame if frame is not None else (read_manifest(manifest), manifest.parent)
    kept, missing = members[0].prepare(df, base_dir, str(manifest), with_target=True, on_bad_item=on_bad_item)
    if not len(kept):
        raise CrossfuseError(f"no usable labelled row in {manifest}")
    outs = [p.outputs(kept, base_dir, missing, with_target=True) for p in members]
    return [o["logits"] for o in outs], outs[0]["targets"]


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y.astype(int)], 1e-12, None))))


def greedy_weights(preds: Sequence[np.ndarray], y: np.ndarray, regression: bool, rounds: int = 25) -> np.ndarray:
    """Caruana's ensemble selection with replacement: ``rounds`` times add the member whose
    addition most lowers the log-loss (regression: the squared error) of the running average;
    the weights are how often each was picked. Starts from the best single member."""
    score = (lambda p: float(np.mean((p - y.reshape(p.shape)) ** 2))) if regression else (lambda p: log_loss(p, y))
    counts = np.zeros(len(preds))
    current = None
    for r in range(rounds):
        trials = [score(p if current is None else (current * r + p) / (r + 1)) for p in preds]
        k = int(np.argmin(trials))
        counts[k] += 1
        current = preds[k] if current is None else (current * r + preds[k]) / (r + 1)
    return counts / counts.sum()


def cross_fit(X: np.ndarray, y: np.ndarray, folds: int, fit: Callable, predict: Callable, regression: bool
              ) -> Tuple[np.ndarray, List[Tuple[np.ndarray, np.ndarray]]]:
    """Out-of-fold predictions of a meta-learner: each row is predicted by one fitted without it.
    Returns them and the (fit rows, predicted rows) of every fold."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if regression:
        splitter = KFold(n_splits=max(2, min(folds, len(y))), shuffle=True, random_state=0)
    else:
        counts = np.bincount(y.astype(int))
        smallest = int(counts[counts > 0].min())
        splitter = StratifiedKFold(n_splits=max(2, min(folds, smallest)), shuffle=True, random_state=0) \
            if smallest >= 2 else KFold(n_splits=max(2, min(folds, len(y))), shuffle=True, random_state=0)
    oof, parts = None, []
    for fit_rows, held in splitter.split(X, y if not regression else None):
        model = fit(X[fit_rows], y[fit_rows])
        pred = predict(model, X[held])
        if oof is None:
            oof = np.zeros((len(X),) + pred.shape[1:], dtype=np.float64)
        oof[held] = pred
        parts.append((fit_rows, held))
    return oof, parts


def _stack_features(preds: Sequence[np.ndarray], regression: bool) -> np.ndarray:
    if regression:
        return np.concatenate([p.reshape(len(p), 1) for p in preds], axis=1)
    from scipy.special import log_softmax

    return np.concatenate([np.maximum(log_softmax(p.astype(np.float64), axis=1), LOG_FLOOR) for p in preds], axis=1)


def _fit_meta(regression: bool, n_classes: int):
    from sklearn.linear_model import LogisticRegression, Ridge

    def fit(X, y):
        return Ridge(alpha=1.0).fit(X, y.reshape(-1)) if regression else LogisticRegression(max_iter=2000).fit(X, y)

    def linear(model) -> Tuple[np.ndarray, np.ndarray]:
        """(weight (out, features), bias (out,)) giving the meta-learner's logits over every class."""
        if regression:
            return model.coef_.reshape(1, -1), np.atleast_1d(model.intercept_)
        W = np.zeros((n_classes, model.coef_.shape[1]))
        b = np.full(n_classes, -1e4)  # a class the meta-learner never saw gets no probability
        classes = model.classes_.astype(int)
        if len(classes) == 2 and model.coef_.shape[0] == 1:  # binary: one row for the second class
            b[classes] = [0.0, float(model.intercept_[0])]
            W[classes[1]] = model.coef_[0]
        else:
            W[classes], b[classes] = model.coef_, model.intercept_
        return W, b

    def predict(model, X):
        W, b = linear(model)
        return X @ W.T + b

    return fit, predict, linear


def build_ensemble(model_dirs: Sequence[Path], fit_on: Path, out: Path, method: str = "greedy", folds: int = 5,
                   rounds: int = 25, on_bad_item: str = "error", frame: Optional[Tuple[pd.DataFrame, Path]] = None,
                   allow_outside_paths: bool = False) -> Dict[str, Any]:
    """Fit the ensemble's weights (or meta-learner) on ``fit_on`` (or ``frame``, named ``fit_on``)
    and save it to ``out``; returns the report (each member's and the ensemble's metrics on the
    fitting rows; for stack, out-of-fold)."""
    if method not in METHODS:
        raise CrossfuseError(f"--method must be one of {', '.join(METHODS)}; got {method!r}")
    members = load_members([Path(d) for d in model_dirs])
    for p in members:
        p.allow_outside_paths = allow_outside_paths
    task = members[0].task
    regression = task.kind == "regression"
    preds, y = member_predictions(members, Path(fit_on), on_bad_item, frame)
    name = "accuracy" if not regression else "rmse"
    report: Dict[str, Any] = {"method": method, "fit_on": str(fit_on), "rows": int(len(y)),
                              "members": {str(d): task.metrics(p, y)[name] for d, p in zip(model_dirs, preds)},
                              "metric": name}
    out_dim = task.out_dim
    if method == "mean":
        weights = np.ones(len(preds)) / len(preds)
    elif method == "greedy":
        weights = greedy_weights(preds if regression else [softmax(p) for p in preds], y, regression, rounds)
    else:
        weights = np.ones(len(preds)) / len(preds)
    model = EnsembleModel([p.model for p in members], method, weights.tolist(), out_dim, regression)
    if method == "stack":
        X = _stack_features(preds, regression)
        fit, predict, linear = _fit_meta(regression, out_dim)
        oof, _ = cross_fit(X, y, folds, fit, predict, regression)
        report["out_of_fold"] = task.metrics(oof.reshape(len(y), -1), y)[name]
        W, b = linear(fit(X, y))
        with torch.no_grad():
            model.stacker.weight.copy_(torch.as_tensor(W, dtype=torch.float32))
            model.stacker.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
    report["weights"] = {str(d): float(w) for d, w in zip(model_dirs, weights)}
    # the ensemble's own score on fit_on (for mean/greedy the weights were chosen on these rows)
    combined = _combined(model, preds, regression)
    report["ensemble"] = task.metrics(combined, y)[name]
    meta = {**{k: v for k, v in members[0].meta.items() if k not in ("architecture", "format")},
            "ensemble": {**report, "members": [str(d) for d in model_dirs]}}
    save_model(out, model, members[0].processors, meta)
    atomic_write(Path(out) / "ensemble_report.json", json.dumps(report, indent=2))
    return report


def _combined(model: EnsembleModel, preds: Sequence[np.ndarray], regression: bool) -> np.ndarray:
    """The ensemble's combination of precomputed member outputs (what its forward computes)."""
    from crossfuse.types import ModelOutput

    outs = [ModelOutput(logits=torch.as_tensor(p, dtype=torch.float32), fused=torch.zeros(len(p), 1)) for p in preds]
    with torch.no_grad():
        return model.combine(outs).numpy()
