"""Per-item trust in each modality, and the temperature that calibrates the outputs.

Both are fitted after training and saved with the model (buffers in model.safetensors, sizes in
config.json), so a saved model applies them wherever it runs: predict, evaluate, the server.

**Trust.** For each modality, how typical an item's encoder features are of the data the model
learned from. The score is the squared Mahalanobis distance to the nearest class mean under one
shared, shrunk covariance (Lee et al., "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018; Ledoit-Wolf shrinkage), in the
features' top principal directions (at most ``MAX_RANK``). The trust is that score's conformal
p-value among held-out in-distribution items (the validation split): the share of them that look at
least as unusual (with an exponential tail beyond the most unusual one). In distribution, trust is
uniform on (0, 1]; a modality that has drifted gets trust near 0. With ``gate`` on, a present modality whose trust is below ``alpha`` is removed
through the presence mask, as if it were missing (at most ``max_removed`` per item, the least
trusted first, and never the last modality an item has), so every fusion method handles it the
way it was trained to with modality dropout. One removal per item by default: with several
modalities each falsely flagged about alpha of the time, removing every flagged one would strip
in-distribution items of two modalities at once far more often than any modality drifts.

**Temperature.** Logits divided by one scalar T fitted on validation by negative log-likelihood
(Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): probabilities that mean what
they say, argmax unchanged.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

MAX_RANK = 256  # principal directions kept per modality
MIN_ITEMS = 10  # a modality seen on fewer training items gets no statistics (trust 1)
MIN_REFERENCE = 20  # fewer held-out items than this: the training items' own scores are the reference


class ModalityStats(nn.Module):
    """Whitened class centres of one modality's features and the sorted reference scores."""

    def __init__(self, dim: int, rank: int, centers: int, reference: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("proj", torch.zeros(dim, rank))  # principal directions times the whitening
        self.register_buffer("centers", torch.zeros(centers, rank))
        self.register_buffer("reference", torch.zeros(reference))  # ascending

    def sizes(self) -> Dict[str, int]:
        return {"dim": self.proj.shape[0], "rank": self.proj.shape[1], "centers": self.centers.shape[0],
                "reference": self.reference.shape[0]}

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) squared Mahalanobis distance to the nearest class centre."""
        z = (x.float() - self.mean) @ self.proj
        return torch.cdist(z, self.centers).pow(2).min(1).values

    def p_value(self, score: torch.Tensor) -> torch.Tensor:
        """(1 + #{reference >= score}) / (1 + n): in distribution, uniform on (0, 1]. Beyond the
        largest reference score it keeps falling, exp(-(score - max) / spread) / (1 + n) with
        ``spread`` the reference's max - median, so a small reference set can still flag an item
        at any alpha, and of two far-out items the farther gets the lower trust."""
        ref = self.reference
        n = ref.shape[0]
        at_least = n - torch.searchsorted(ref, score.contiguous())
        p = (1.0 + at_least.to(score.dtype)) / (1.0 + n)
        top = ref[-1]
        spread = (top - ref[n // 2]).clamp_min(1e-6)
        beyond = torch.exp(-(score - top).clamp_min(0) / spread) / (1.0 + n)
        return torch.where(score > top, beyond, p)


class Trust(nn.Module):
    """Each modality's statistics, the gate and the temperature."""

    def __init__(self, modalities: Mapping[str, Optional[Mapping[str, int]]], alpha: float = 0.01,
                 gate: bool = True, max_removed: int = 1):
        super().__init__()
        self.modalities = sorted(modalities)  # the fusion's order
        self.alpha, self.gate_on, self.max_removed = float(alpha), bool(gate), int(max_removed)
        self.stats = nn.ModuleDict({m: ModalityStats(**s) for m, s in modalities.items() if s})
        self.register_buffer("temperature", torch.ones(()))

    def architecture(self) -> Dict[str, Any]:
        return {"alpha": self.alpha, "gate": self.gate_on, "max_removed": self.max_removed,
                "modalities": {m: self.stats[m].sizes() if m in self.stats else None for m in self.modalities}}

    @classmethod
    def from_architecture(cls, arch: Mapping[str, Any]) -> "Trust":
        return cls(arch["modalities"], alpha=arch["alpha"], gate=arch["gate"], max_removed=arch["max_removed"])

    def scores(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, n_modalities) trust in the fusion's modality order; 1 where a modality has no statistics."""
        cols = []
        for m in self.modalities:
            x = features[m]
            cols.append(self.stats[m].p_value(self.stats[m].score(x)) if m in self.stats
                        else torch.ones(x.shape[0], device=x.device))
        return torch.stack(cols, 1)

    def gate(self, trust: torch.Tensor, mask: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The presence mask with the present modalities whose trust is below alpha removed, at most
        ``max_removed`` per item (the least trusted first); an item never loses its last modality:
        if every one it has is below, it keeps its most trusted one."""
        present = torch.stack([mask[m].bool() for m in self.modalities], 1)
        flagged = present & (trust < self.alpha)
        order = trust.masked_fill(~flagged, float("inf")).argsort(1)  # least trusted flagged first
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                                                .expand_as(order).contiguous())
        keep = present & ~(flagged & (rank < self.max_removed))
        lost = present.any(1) & ~keep.any(1)
        if lost.any():
            best = trust.masked_fill(~present, -1.0).argmax(1)
            keep[lost, best[lost]] = True
        return {m: keep[:, i] for i, m in enumerate(self.modalities)}

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature.to(logits.dtype)

    # --- fitting ------------------------------------------------------------------------------
    @classmethod
    def fit(cls, train: Mapping[str, np.ndarray], train_mask: Mapping[str, np.ndarray],
            held_out: Mapping[str, np.ndarray], held_out_mask: Mapping[str, np.ndarray],
            labels: Optional[np.ndarray] = None, alpha: float = 0.01, gate: bool = True,
            max_removed: int = 1) -> "Trust":
        """Statistics from the training items' features (class centres from ``labels`` when given,
        else one centre), reference scores from the held-out items'."""
        sizes, fitted = {}, {}
        for m in sorted(train):
            x = np.asarray(train[m], dtype=np.float64)[train_mask[m]]
            if len(x) < MIN_ITEMS:
                log.warning("Trust: modality '%s' is present in %d training items; it gets no statistics", m,
                            len(x))
                sizes[m] = None
                continue
            y = None if labels is None else np.asarray(labels)[train_mask[m]]
            mean, proj, centers = _whitening(x, y)
            ref = np.asarray(held_out[m], dtype=np.float64)[held_out_mask[m]] if m in held_out else np.zeros((0,))
            if len(ref) < MIN_REFERENCE:
                log.warning("Trust: %d held-out items have modality '%s'; its trust is referred to the training "
                            "items, which makes it stricter than alpha says", len(ref), m)
                ref = x
            fitted[m] = (mean, proj, centers, ref)
            sizes[m] = {"dim": proj.shape[0], "rank": proj.shape[1], "centers": len(centers), "reference": len(ref)}
        trust = cls(sizes, alpha=alpha, gate=gate, max_removed=max_removed)
        for m, (mean, proj, centers, ref) in fitted.items():
            s = trust.stats[m]
            s.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            s.proj.copy_(torch.as_tensor(proj, dtype=torch.float32))
            s.centers.copy_(torch.as_tensor(centers, dtype=torch.float32))
            with torch.no_grad():
                s.reference.copy_(torch.sort(s.score(torch.as_tensor(ref, dtype=torch.float32))).values)
        return trust


def _whitening(x: np.ndarray, y: Optional[np.ndarray]):
    """(mean, projection d x r, class centres k x r): z = (x - mean) @ projection has identity
    within-class covariance (Ledoit-Wolf shrunk) in the top r principal directions."""
    from sklearn.covariance import LedoitWolf

    mean = x.mean(0)
    centred = x - mean
    rank = max(1, min(x.shape[1], MAX_RANK, len(x) - 1))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    basis = vt[:rank].T  # d x r
    z = centred @ basis
    if y is None:
        centers, within = np.zeros((1, rank)), z - z.mean(0)
    else:
        classes = np.unique(y)
        centers = np.stack([z[y == c].mean(0) for c in classes])
        within = z - centers[np.searchsorted(classes, y)]
    precision = LedoitWolf(assume_centered=True).fit(within).precision_
    chol = np.linalg.cholesky((precision + precision.T) / 2)  # precision = L L^T, so |z L|^2 = z P z^T
    return mean, basis @ chol, centers @ chol
