"""The linear baseline beside every fusion model: what deep fusion adds over a linear model.

Per modality, the features a linear model can use without training an encoder: a frozen
encoder's output (read from the embedding cache where it is on), else the processor's own
``linear_features`` of the raw input (pooled pixels, a bag of tokens, log band powers, the
standardised table). Logistic regression (classification) or ridge regression is fitted on each
modality alone and on their concatenation, over the training split; its strength is chosen on the
validation split, and the validation and evaluation scores are reported. An absent modality is a
row of zeros plus a presence column, after standardisation, so no item is dropped.
"""
from __future__ import annotations

import copy
import logging
import time
import warnings
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from crossfuse.encoders import is_frozen
from crossfuse.engine.inference import kept
from crossfuse.types import Batch, CachedFeatures

log = logging.getLogger(__name__)

STRENGTHS = (0.01, 0.1, 1.0)  # logistic regression's C, weakest first; ridge's alpha is 1 / C
MAX_ITER = 200
# feature values per part (2^24 float32: 64 MiB): raw inputs are wide (a 32 x 32 x 3 image is
# 3,072 values, a bag of tokens 2,048) and the features, each group's design matrix and its
# standardised copy are held at once, so a large set's baseline is fitted on a random sample of
# items (their count is reported) instead of growing with the set: 3,300 items of a 64 px colour
# image with a caption; the demo (1,797) and Tux Paint (785, frozen features) are never cut
MAX_VALUES = 2 ** 24


@torch.inference_mode()
def baseline_features(model, processors: Mapping[str, Any], loader: DataLoader, max_values: int = MAX_VALUES
                      ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray], np.ndarray]:
    """Each modality's baseline features (N, d), presence (N,) and the targets of a loader's items,
    stopping once N x d reaches ``max_values`` (give the loader its items in random order)."""
    feats: Dict[str, list] = {}
    masks: Dict[str, list] = {}
    targets = []
    model.eval()
    device = next(model.parameters()).device
    rows = 0
    for batch in loader:
        width = sum(int(np.prod(f[-1].shape[1:])) for f in feats.values())
        if rows and rows * width >= max_values:
            break
        rows += len(batch)
        batch: Batch = batch.to(device)
        for m, enc in model.encoders.items():
            x = batch.inputs[m]
            if isinstance(x, CachedFeatures):
                f = x.values
            elif is_frozen(enc):
                f = enc(x)
            else:
                f = processors[m].linear_features(x)
            feats.setdefault(m, []).append(kept(f.float()))
            masks.setdefault(m, []).append(kept(batch.mask[m].bool()))
        targets.append(kept(batch.target))
    return ({m: torch.cat(v).numpy() for m, v in feats.items()}, {m: torch.cat(v).numpy() for m, v in masks.items()},
            torch.cat(targets).numpy())


def linear_baseline(model, processors: Mapping[str, Any], spec, loaders: Mapping[str, Optional[DataLoader]],
                    seed: int = 0) -> Dict[str, Any]:
    """Fit and score the baseline; ``loaders`` has 'train', 'val' (or None) and 'test' (the split the
    model is evaluated on). Returns {'model': ..., 'metric': ..., 'rows': {name: {val, test, strength}}}."""
    start = time.perf_counter()
    parts = {k: baseline_features(model, processors, v) for k, v in loaders.items() if v is not None}
    classification = spec.kind == "classification"
    metric = "accuracy" if classification else "rmse"
    mods = [m for m in processors if m in model.encoders]  # the config's order
    groups = {f"{m} only": [m] for m in mods} if len(mods) > 1 else {}
    groups["all modalities"] = mods
    rows = {}
    for name, mods in groups.items():
        x = {k: _design(feats, masks, mods) for k, (feats, masks, _) in parts.items()}
        rows[name] = _fit(x, {k: p[2] for k, p in parts.items()}, spec, metric, seed)
    kind = "logistic regression" if classification else "ridge regression"
    log.info("linear baseline (%s) in %.1f s: %s", kind, time.perf_counter() - start,
             ", ".join(f"{k} {v['test']:.4f}" for k, v in rows.items()))
    return {"model": kind, "metric": metric, "chosen_on": "val" if "val" in parts else "train", "rows": rows,
            "items": {k: len(p[2]) for k, p in parts.items()}, "seconds": round(time.perf_counter() - start, 2)}


def _design(feats: Dict[str, np.ndarray], masks: Dict[str, np.ndarray], mods) -> np.ndarray:
    blocks = []
    for m in mods:
        present = masks[m].astype(np.float32)
        blocks += [feats[m].reshape(len(present), -1) * present[:, None], present[:, None]]
    return np.concatenate(blocks, axis=1)


def _fit(x: Dict[str, np.ndarray], y: Dict[str, np.ndarray], spec, metric: str, seed: int) -> Dict[str, Any]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x["train"])
    z = {}
    for k, v in x.items():  # one copy per part (the design matrices are the baseline's largest arrays)
        z[k] = np.nan_to_num(scaler.transform(v).astype(np.float32, copy=False), copy=False)
    pick = "val" if "val" in z else "train"
    best: Optional[Tuple[float, float, Any]] = None
    est = LogisticRegression(max_iter=MAX_ITER, tol=1e-3, warm_start=True, random_state=seed)  # weakest C first, warm
    for c in STRENGTHS:
        if spec.kind == "classification":
            est.set_params(C=c)
        else:
            est = Ridge(alpha=1.0 / c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(z["train"], y["train"].reshape(-1))
        score = _score(est, z[pick], y[pick], spec)[metric]
        better = best is None or (score > best[0] if metric == "accuracy" else score < best[0])
        if better:
            best = (score, c, copy.deepcopy(est))
    _, c, est = best
    out = {"strength": c}
    for part in ("val", "test"):
        if part in z:
            scores = _score(est, z[part], y[part], spec)
            out[part] = scores[metric]
            out.update({f"{part}_{k}": v for k, v in scores.items() if k != metric})
    return out


def _score(est, z: np.ndarray, y: np.ndarray, spec) -> Dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    y = y.reshape(-1)
    if spec.kind == "classification":
        pred = est.predict(z)
        return {"accuracy": float(accuracy_score(y, pred)),
                "f1_macro": float(f1_score(y, pred, average="macro", labels=np.arange(spec.out_dim), zero_division=0))}
    pred, true = spec.decode_values(est.predict(z)), spec.decode_values(y)
    rmse = float(np.sqrt(np.mean((pred - true) ** 2)))
    var = float(np.var(true))
    return {"rmse": rmse, "r2": 1.0 - rmse ** 2 / var if var > 0 else 0.0}
