"""Fitting a trained fusion model's trust and temperature (models.trust), and the shift report.

After training, every modality's features are collected over the training split (no augmentation)
and the validation split: the training items give the statistics, the validation items the
reference scores that turn a score into a p-value. Then the temperature is fitted on the
validation logits of the model as it will predict (trust gate included).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from crossfuse.config.schema import TrustConfig
from crossfuse.engine.inference import collect_outputs, kept, softmax
from crossfuse.metrics import calibration
from crossfuse.models.trust import Trust
from crossfuse.types import Batch

log = logging.getLogger(__name__)

MAX_FIT_ITEMS = 20_000  # items of a split used for the statistics; more adds time, not accuracy


def sample_rows(rows: pd.DataFrame, seed: int, limit: int = MAX_FIT_ITEMS) -> pd.DataFrame:
    return rows if len(rows) <= limit else rows.sample(n=limit, random_state=seed).sort_index()


@torch.inference_mode()
def collect_features(model, loader: DataLoader, device) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray],
                                                                  Optional[np.ndarray]]:
    """Each modality's encoder features (N, d), presence masks (N,) and the targets of a loader's items."""
    was_training = model.training
    model.eval()
    feats: Dict[str, list] = {}
    masks: Dict[str, list] = {}
    targets = []
    for batch in loader:
        batch: Batch = batch.to(device)
        features = model.encode(batch).features
        for m, x in features.items():
            feats.setdefault(m, []).append(kept(x.float()))
            masks.setdefault(m, []).append(kept(batch.mask[m].bool()))
        if batch.target is not None:
            targets.append(kept(batch.target))
    model.train(was_training)
    cat = {m: torch.cat(v).numpy() for m, v in feats.items()}
    return cat, {m: torch.cat(v).numpy() for m, v in masks.items()}, torch.cat(targets).numpy() if targets else None


def gate_setting(cfg: TrustConfig, modality_dropout) -> bool:
    """``gate: auto`` is on when training dropped modalities (the model has learnt to predict
    without one, so leaving out a drifted one costs little), else off."""
    if cfg.gate != "auto":
        return bool(cfg.gate)
    rates = modality_dropout.values() if isinstance(modality_dropout, dict) else [modality_dropout]
    return any(float(r) > 0 for r in rates)


def fit_trust(model, cfg: TrustConfig, train_loader: DataLoader, val_loader: Optional[DataLoader],
              classification: bool, modality_dropout=0.0) -> Dict[str, Any]:
    """Attach a fitted Trust to ``model`` as ``cfg`` asks; returns what the run report shows."""
    fields: Dict[str, Any] = {}
    gate = gate_setting(cfg, modality_dropout)
    fit_temperature_too = cfg.temperature and classification and val_loader is not None
    if not cfg.ood and not fit_temperature_too:
        return fields
    device = next(model.parameters()).device
    if cfg.ood:
        train_x, train_m, train_y = collect_features(model, train_loader, device)
        if val_loader is not None:
            val_x, val_m, _ = collect_features(model, val_loader, device)
        else:
            val_x, val_m = {}, {}
        labels = train_y.reshape(-1) if classification and train_y is not None else None
        trust = Trust.fit(train_x, train_m, val_x, val_m, labels=labels, alpha=cfg.alpha, gate=gate,
                          max_removed=cfg.max_removed)
        fields["trust_alpha"] = cfg.alpha
        fields["trust_gate"] = ("on" if gate else "off") + (" (auto)" if cfg.gate == "auto" else "")
    else:
        trust = Trust({m: None for m in model.encoders}, alpha=cfg.alpha, gate=False)
    model.trust = trust.to(device)
    if fit_temperature_too:
        out = collect_outputs(model, val_loader, device)
        t = fit_temperature(out["logits"], out["targets"])
        model.trust.temperature.fill_(t)
        before, after = (calibration(out["targets"], softmax(out["logits"] * s))["ece"] for s in (1.0, 1.0 / t))
        fields.update(temperature=round(t, 4), val_ece_before_temperature=round(before, 4),
                      val_ece_after_temperature=round(after, 4))
        log.info("Temperature scaling: T=%.3f; validation ECE %.4f -> %.4f", t, before, after)
    return fields


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The T > 0 minimising the negative log-likelihood of softmax(logits / T) (bounded search on log T)."""
    from scipy.optimize import minimize_scalar

    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(targets).reshape(-1), dtype=torch.long)
    if len(y) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / np.exp(log_t), y))

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(best.x)) if nll(best.x) < nll(0.0) else 1.0


@torch.inference_mode()
def shift_outputs(model, loader: DataLoader, device, gather=None) -> Dict[str, Any]:
    """One encoder pass, outputs under every condition the shift report compares: ``plain`` (no
    trust gate), ``trust`` (untrusted modalities removed) and ``removed:m`` (m removed for every
    item, no gate); plus each item's trust and OOD score per modality and its presence mask.
    ``gather`` joins every process's rows (engine.distributed.gather_rows)."""
    trust = model.trust
    mods = list(model.fusion.modalities)
    model.eval()
    logits: Dict[str, list] = {}
    trusts, scores, masks, targets = [], [], [], []
    for batch in loader:
        batch: Batch = batch.to(device)
        enc = model.encode(batch)
        logits.setdefault("plain", []).append(kept(model.fuse(enc, batch.mask, gate=False).logits.float()))
        logits.setdefault("trust", []).append(kept(model.fuse(enc, batch.mask, gate=True).logits.float()))
        for m in mods:
            removed = {k: v.bool() & (k != m) for k, v in batch.mask.items()}
            logits.setdefault(f"removed:{m}", []).append(kept(model.fuse(enc, removed, gate=False).logits.float()))
        trusts.append(kept(enc.trust.float()))
        scores.append(kept(torch.stack([trust.stats[m].score(enc.features[m]) if m in trust.stats
                                        else torch.zeros(len(batch), device=device) for m in mods], 1).float()))
        masks.append(kept(torch.stack([batch.mask[m].bool() for m in mods], 1)))
        targets.append(kept(batch.target))
    cat = lambda xs: torch.cat(xs).numpy()  # noqa: E731
    rows = {"logits": {k: cat(v) for k, v in logits.items()}, "trust": cat(trusts), "score": cat(scores),
            "mask": cat(masks), "targets": cat(targets)} if targets else None
    if gather is not None:  # a process without rows sends None
        rows = gather(rows)
    return {"modalities": mods, **rows}


def shift_report(model, loader: DataLoader, device, metric_fn, metric: str, gather=None
                 ) -> Optional[Dict[str, Any]]:
    """Per modality: its trust and OOD score on these items against the training data, the share
    flagged (trust below alpha), and the ``metric`` of the plain model, the trust-aware model and
    the model with that modality removed. None when the model has no fitted statistics."""
    trust = getattr(model, "trust", None)
    if trust is None or not len(trust.stats):
        return None
    out = shift_outputs(model, loader, device, gather)
    y = out["targets"]
    value = {k: float(metric_fn(v, y)[metric]) for k, v in out["logits"].items()}
    rows = {}
    for j, m in enumerate(out["modalities"]):
        present = out["mask"][:, j]
        if m not in trust.stats:
            rows[m] = {"fitted": False, "items": int(present.sum())}
            continue
        t, s = out["trust"][present, j], out["score"][present, j]
        reference = trust.stats[m].reference.cpu().numpy()
        rows[m] = {"fitted": True, "items": int(present.sum()),
                   "mean_trust": float(t.mean()) if len(t) else None,
                   "flagged_share": float((t < trust.alpha).mean()) if len(t) else None,
                   "median_ood_score": float(np.median(s)) if len(s) else None,
                   "reference_median_ood_score": float(np.median(reference)),
                   f"{metric}_removed": value[f"removed:{m}"]}
    return {"metric": metric, "alpha": trust.alpha, "gate": trust.gate_on, "plain": value["plain"],
            "trust_aware": value["trust"], "modalities": rows}


def trust_columns(out: Mapping[str, Any], modalities) -> Dict[str, np.ndarray]:
    """predict's per-item columns: trust_<m> (NaN where the item lacks m) and used_<m> (whether
    fusion used m, after the trust gate)."""
    cols: Dict[str, np.ndarray] = {}
    if out.get("trust") is None:
        return cols
    for j, m in enumerate(modalities):
        cols[f"trust_{m}"] = np.where(out["mask"][:, j], out["trust"][:, j], np.nan)
        cols[f"used_{m}"] = out["used"][:, j]
    return cols
