"""EnsembleModel: several fusion models over the same inputs, their predictions combined.

It has FusionModel's interface (``encode`` / ``fuse`` / ``forward``, ``fusion.modalities``), so
prediction, evaluation, robustness, attribution and serving take it like any model: ``encode``
runs every member's encoders once, ``fuse`` asks every member under the same presence mask (each
applies its own trust gate and temperature) and combines.

- ``mean`` / ``greedy``: a weighted average of the members' class probabilities (greedy: Caruana
  et al.'s forward selection with replacement gave the weights), or of their standardised values
  for regression. The logits are the log of the average.
- ``stack``: a linear meta-learner (multinomial logistic regression on the members' log
  probabilities, or ridge on their values) fitted on held-out predictions; its coefficients are
  ``stacker``'s weights.
"""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import torch
from torch import nn

from crossfuse.models.fusion_model import FusionModel
from crossfuse.types import Batch, ModelOutput

METHODS = ("mean", "greedy", "stack")
MAX_MEMBERS = 64
LOG_FLOOR = -30.0  # stacking reads log probabilities floored here (a member's certain "no" is finite)


class EnsembleEncoded(NamedTuple):
    members: List[Any]  # each member's Encoded
    trust: Optional[torch.Tensor] = None


class _Modalities:
    """What callers read of a model's fusion: its modalities, in order, and a name."""

    registry_name = "ensemble"
    decision_level = True

    def __init__(self, modalities: Sequence[str]):
        self.modalities = list(modalities)


class EnsembleModel(nn.Module):
    uses_cache = False  # members may read one modality through different encoders

    def __init__(self, members: Sequence[FusionModel], method: str, weights: Sequence[float],
                 out_dim: int, regression: bool = False):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        mods = {tuple(m.fusion.modalities) for m in members}
        if len(mods) != 1:
            raise ValueError("ensemble members must have the same modalities")
        self.members = nn.ModuleList(members)
        self.method, self.out_dim, self.regression = method, int(out_dim), bool(regression)
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32))
        features = len(members) * (1 if regression else out_dim)
        self.stacker = nn.Linear(features, out_dim) if method == "stack" else None
        self.fusion = _Modalities(next(iter(mods)))
        self.trust = None

    @property
    def encoders(self):
        """The first member's encoders (each member checks its own processors the same way)."""
        return self.members[0].encoders

    def encode(self, batch: Batch) -> EnsembleEncoded:
        return EnsembleEncoded([m.encode(batch) for m in self.members])

    def member_outputs(self, encoded: EnsembleEncoded, mask, gate: Optional[bool] = None) -> List[ModelOutput]:
        return [m.fuse(e, mask, gate) for m, e in zip(self.members, encoded.members)]

    def combine(self, outs: Sequence[ModelOutput]) -> torch.Tensor:
        """The ensemble's logits (regression: standardised values) from its members' outputs."""
        if self.regression:
            values = torch.cat([o.logits for o in outs], dim=1)  # (B, K)
            if self.stacker is not None:
                return self.stacker(values)
            return (values * (self.weights / self.weights.sum())).sum(1, keepdim=True)
        logp = torch.stack([torch.log_softmax(o.logits.float(), dim=1) for o in outs], dim=1)  # (B, K, C)
        if self.stacker is not None:  # the meta-learner's features, as it was fitted on them
            return self.stacker(logp.clamp_min(LOG_FLOOR).flatten(1))
        w = (self.weights / self.weights.sum()).to(logp)
        return torch.logsumexp(logp + torch.log(w.clamp_min(1e-12))[None, :, None], dim=1)

    def fuse(self, encoded: EnsembleEncoded, mask, gate: Optional[bool] = None) -> ModelOutput:
        outs = self.member_outputs(encoded, mask, gate)
        weights = None
        if all(o.weights is not None for o in outs):  # the members' modality weights, averaged
            weights = torch.stack([o.weights for o in outs]).mean(0)
        return ModelOutput(logits=self.combine(outs), fused=outs[0].fused, weights=weights,
                           features=outs[0].features, mask=outs[0].mask)

    def forward(self, batch: Batch) -> ModelOutput:
        return self.fuse(self.encode(batch), batch.mask)

    def architecture(self) -> Dict[str, Any]:
        return {"kind": "ensemble", "method": self.method, "out_dim": self.out_dim, "regression": self.regression,
                "weights": [float(w) for w in self.weights], "members": [m.architecture() for m in self.members],
                # what load_model's checks read of any model: its modalities' encoders
                "encoders": self.members[0].architecture()["encoders"]}

    @classmethod
    def from_architecture(cls, arch: Dict[str, Any]) -> "EnsembleModel":
        members = [FusionModel.from_architecture(a) for a in arch["members"]]
        return cls(members, arch["method"], arch["weights"], arch["out_dim"], arch["regression"])
