"""Balanced multimodal training: auxiliary per-modality losses, on-the-fly gradient modulation
(OGM-GE) and per-modality learning rates (``train.balance``).

Joint training lets the quickest modality dominate the gradient while the others' encoders stay
undertrained (Wang et al., "What Makes Training Multi-modal Classification Networks Hard?",
CVPR 2020; Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient Modulation",
CVPR 2022). Each modality gets a linear head of its own (``FusionModel.aux_heads``); its loss,
on the items where the modality is present, is added to the fused loss so every encoder learns to
predict alone. OGM-GE reads the same heads: a modality whose head is ahead of the others' (its
summed softmax score of the true class, over the batch) has its encoder's gradients scaled down,
so the others catch up; the paper's Gaussian noise keeps the modulated encoders generalising.
Peng et al. split a concatenation's last layer into per-modality parts for the scores; the
auxiliary heads give the same scores for every fusion method. Gradient blending (Wang et al.)
weights the fused loss and the auxiliary ones by how much each head generalises per unit of
overfitting, re-estimated as training goes (their online G-Blend).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Mapping, Optional

import torch

from crossfuse.config.schema import BalanceConfig
from crossfuse.types import Batch, ModelOutput

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a tensor over processes (identity on one)


def balanced_loss(loss_fn: torch.nn.Module, aux_weight: float) -> Callable[[ModelOutput, Batch], torch.Tensor]:
    """``step_loss(out, batch)``: the fused loss plus ``aux_weight`` times each modality's own loss,
    computed on the items where that modality is present (absent ones give its head no gradient)."""

    def step_loss(out: ModelOutput, batch: Batch) -> torch.Tensor:
        loss = loss_fn(out.logits.float(), batch.target)
        for m, logits in (out.aux_logits or {}).items():
            present = batch.mask[m]
            if bool(present.any()):
                loss = loss + aux_weight * loss_fn(logits[present].float(), batch.target[present])
        return loss

    return step_loss


FUSED = "fused"  # the blend weights' name for the fused head's loss


def blend_weights(train: Mapping[str, float], val: Mapping[str, float], prev_train: Mapping[str, float],
                  prev_val: Mapping[str, float]) -> Optional[Dict[str, float]]:
    """Wang et al.'s gradient-blending weights between two checkpoints of each head's losses:
    overfitting O = L_val - L_train, dO = O_now - O_before, generalisation dG = L_val_before -
    L_val_now, w ~ max(dG, 0) / dO^2, normalised to sum to 1. None when no head generalised."""
    raw = {}
    for h in train:
        if h not in prev_train or h not in val or h not in prev_val:
            continue
        gain = prev_val[h] - val[h]
        overfit = (val[h] - train[h]) - (prev_val[h] - prev_train[h])
        raw[h] = max(gain, 0.0) / max(overfit * overfit, 1e-8)
    total = sum(raw.values())
    return {h: w / total for h, w in raw.items()} if total > 0 else None


class GradientBlend:
    """``step_loss`` of online gradient blending: sum over heads of w_h times the head's loss (the
    fused one on every item, a modality's on the items that have it). Every ``every`` epochs the
    weights are re-estimated from each head's mean training loss over the last epoch and its loss
    on the validation split (``blend_weights``); they start equal. The trainer calls
    ``end_train_epoch(reduce)`` after each training pass, ``observe_validation(out, loss_fn)`` after
    each validation, and keeps ``state()`` in its checkpoint."""

    def __init__(self, loss_fn: torch.nn.Module, modalities, every: int = 2):
        heads = [FUSED] + sorted(modalities)
        self.loss_fn, self.every = loss_fn, max(1, int(every))
        self.weights: Dict[str, float] = {h: 1.0 / len(heads) for h in heads}
        self._sums: Dict[str, torch.Tensor] = {}  # this epoch's loss x items per head, and items
        self._train: Dict[str, float] = {}
        self._anchor: Optional[Dict[str, Dict[str, float]]] = None  # losses at the last estimate
        self._epochs = 0

    def __call__(self, out: ModelOutput, batch: Batch) -> torch.Tensor:
        losses = {FUSED: (self.loss_fn(out.logits.float(), batch.target), len(batch))}
        for m, logits in (out.aux_logits or {}).items():
            present = batch.mask[m]
            if bool(present.any()):
                losses[m] = (self.loss_fn(logits[present].float(), batch.target[present]), int(present.sum()))
        for h, (loss, n) in losses.items():
            acc = self._sums.setdefault(h, torch.zeros(2, device=loss.device))
            acc += torch.stack([loss.detach() * n, loss.new_tensor(float(n))])
        return sum(self.weights[h] * loss for h, (loss, _) in losses.items())

    def end_train_epoch(self, reduce: Reduce) -> None:
        """Each head's mean training loss over the epoch, summed over processes first."""
        heads = sorted(self._sums)
        if heads:
            totals = reduce(torch.stack([self._sums[h] for h in heads]))
            self._train = {h: float(t[0] / t[1]) for h, t in zip(heads, totals) if float(t[1]) > 0}
        self._sums = {}

    def observe_validation(self, out: Mapping[str, object], loss_fn: torch.nn.Module) -> None:
        """Each head's validation loss from collected outputs (``aux_logits`` per modality, masks
        in sorted modality order); every ``every`` epochs, new weights."""
        targets = torch.as_tensor(out["targets"])
        targets = targets if targets.is_floating_point() else targets.long()
        val = {FUSED: float(loss_fn(torch.as_tensor(out["logits"]), targets))}
        aux = out.get("aux_logits") or {}
        for j, m in enumerate(sorted(aux)):
            present = torch.as_tensor(out["mask"][:, j])
            if bool(present.any()):
                val[m] = float(loss_fn(torch.as_tensor(aux[m])[present], targets[present]))
        self._epochs += 1
        if self._anchor is None or self._epochs - self._anchor["epoch"] >= self.every:
            if self._anchor is not None:
                new = blend_weights(self._train, val, self._anchor["train"], self._anchor["val"])
                if new is not None:  # heads that did not generalise get no weight
                    self.weights = {h: new.get(h, 0.0) for h in self.weights}
            self._anchor = {"train": dict(self._train), "val": val, "epoch": self._epochs}

    def epoch_record(self) -> Dict[str, float]:
        return {f"blend_{h}": w for h, w in self.weights.items()}

    def state(self) -> Dict[str, object]:
        return {"weights": dict(self.weights), "anchor": self._anchor, "epochs": self._epochs}

    def load_state(self, state: Optional[Mapping[str, object]]) -> None:
        if state:
            self.weights, self._anchor, self._epochs = dict(state["weights"]), state["anchor"], int(state["epochs"])


def true_class_scores(out: ModelOutput, batch: Batch) -> Dict[str, torch.Tensor]:
    """Per modality, the sum over present items of its auxiliary head's softmax at the true class
    (Peng et al.'s s^u); regression: the sum of 1 / (1 + squared error), likewise in (0, 1] per item."""
    scores = {}
    for m, logits in (out.aux_logits or {}).items():
        present = batch.mask[m]
        logits, target = logits.detach()[present].float(), batch.target[present]
        if target.dtype == torch.long:
            scores[m] = logits.softmax(-1).gather(1, target[:, None]).sum()
        else:
            scores[m] = (1.0 / (1.0 + ((logits - target.float()) ** 2).sum(-1))).sum()
    return scores


def ogm_coefficients(scores: Mapping[str, float], alpha: float) -> Dict[str, float]:
    """Peng et al.'s modulation coefficients: with ratio rho_u = s_u / (mean of the other
    modalities' scores), k_u = 1 - tanh(alpha * rho_u) when rho_u > 1, else 1. For two
    modalities this is the paper's eq. (10) exactly."""
    coeffs = {}
    for m, s in scores.items():
        others = [v for k, v in scores.items() if k != m]
        mean = sum(others) / len(others) if others else 0.0
        rho = s / mean if mean > 0 else (math.inf if s > 0 else 1.0)
        coeffs[m] = 1.0 - math.tanh(alpha * rho) if rho > 1 else 1.0
    return coeffs


class GradientModulation:
    """OGM-GE as a trainer hook, called after the backward pass and before the optimizer step."""

    def __init__(self, cfg: BalanceConfig):
        self.alpha, self.noise = float(cfg.ogm_alpha), cfg.ogm_noise
        self._sums: Dict[str, float] = {}  # coefficients summed over the epoch's steps
        self._steps = 0

    def __call__(self, model: torch.nn.Module, out: ModelOutput, batch: Batch, reduce: Reduce) -> None:
        local = true_class_scores(out, batch)
        if len(local) < 2:
            return
        names = sorted(local)
        # summed over processes, so every rank scales its (already averaged) gradients alike
        totals = reduce(torch.stack([local[m] for m in names]))
        coeffs = ogm_coefficients({m: float(t) for m, t in zip(names, totals)}, self.alpha)
        self._steps += 1
        for m, k in coeffs.items():
            self._sums[m] = self._sums.get(m, 0.0) + k
            for p in model.encoders[m].parameters():
                if p.grad is None or p.grad.dim() < 2:  # weights, not biases or norm scales, as the paper
                    continue
                # the gradient's own std as a tensor: no host sync per parameter, none without noise
                std = (p.grad.std() if p.grad.numel() > 1 else p.grad.new_zeros(())) if self.noise else None
                p.grad.mul_(k)
                if std is not None:
                    p.grad.add_(torch.randn_like(p.grad) * (std + 1e-8))

    def epoch_record(self) -> Dict[str, float]:
        """Each modality's mean coefficient over the epoch (``ogm_<modality>`` in the history);
        starts the next epoch's sums."""
        record = {f"ogm_{m}": v / self._steps for m, v in self._sums.items()} if self._steps else {}
        self._sums, self._steps = {}, 0
        return record


def gradient_hook(cfg: BalanceConfig) -> Optional[GradientModulation]:
    return GradientModulation(cfg) if cfg.ogm_alpha is not None else None
