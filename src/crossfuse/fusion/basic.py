"""Concatenation, weighted and attention fusion."""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch
from torch import nn

from crossfuse.errors import ConfigError
from crossfuse.fusion.base import FUSIONS, Fusion
from crossfuse.layers import masked_softmax
from crossfuse.types import FusionOutput


@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    """[m_1 LN(x_1); ...; m_n LN(x_n); m_1 ... m_n]: each modality layer-normalised (``normalize``),
    missing vectors zeroed, presence flags appended.

    The flags let the head tell "absent" from "all-zero features".
    """

    def __init__(self, input_dims: Mapping[str, int], presence_flags: bool = True, normalize: bool = True):
        super().__init__(input_dims)
        self._init_kwargs = {"presence_flags": presence_flags, "normalize": normalize}
        self.presence_flags = presence_flags
        self.norm = self.make_norms() if normalize else None
        self.output_dim = sum(self.input_dims.values()) + (len(self.modalities) if presence_flags else 0)

    def forward(self, features, mask) -> FusionOutput:
        parts = [(self.norm[m](features[m]) if self.norm is not None else features[m])
                 * mask[m].to(features[m].dtype).unsqueeze(1) for m in self.modalities]
        if self.presence_flags:
            parts.append(self.stacked_mask(mask).to(parts[0].dtype))
        return FusionOutput(torch.cat(parts, dim=1))


class _ProjectedFusion(Fusion):
    """Projects every modality to a common size ``dim`` (LayerNorm'd linear map)."""

    def __init__(self, input_dims: Mapping[str, int], dim: int = 128):
        super().__init__(input_dims)
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"The 'dim' parameter of {type(self).__name__} must be an int >= 1. Got {dim!r}.")
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, dim), nn.LayerNorm(dim))
                                   for m, d in self.input_dims.items()})
        self.output_dim = dim

    def projected(self, features) -> torch.Tensor:
        """(B, n_modalities, dim)"""
        return torch.stack([self.proj[m](features[m]) for m in self.modalities], dim=1)


@FUSIONS.register("weighted")
class WeightedFusion(_ProjectedFusion):
    """sum_i w_i m_i p_i / sum_i w_i m_i over projections p_i: fixed or learned weights.

    ``weights`` fixes them (e.g. {image: 0.7, text: 0.3}); left out, they are learned
    (softmax over one logit per modality). They are renormalised over the present modalities.
    """

    def __init__(self, input_dims: Mapping[str, int], dim: int = 128, weights: Optional[Dict[str, float]] = None):
        super().__init__(input_dims, dim)
        self._init_kwargs = {"dim": dim, "weights": weights}
        if weights is not None:
            unknown = set(weights) - set(self.modalities)
            missing = set(self.modalities) - set(weights)
            if unknown or missing or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise ConfigError(
                    f"The 'weights' parameter of weighted fusion must give a weight >= 0 to each of "
                    f"{', '.join(self.modalities)} (not all 0). Got {weights}.")
            self.register_buffer("fixed", torch.tensor([float(weights[m]) for m in self.modalities]))
            self.logits = None
        else:
            self.fixed = None
            self.logits = nn.Parameter(torch.zeros(len(self.modalities)))

    def modality_weights(self) -> torch.Tensor:
        return self.fixed if self.logits is None else torch.softmax(self.logits, dim=0)

    def forward(self, features, mask) -> FusionOutput:
        p = self.projected(features)
        m = self.stacked_mask(mask).to(p.dtype)
        w = self.modality_weights().to(p.dtype).unsqueeze(0) * m
        w = w / w.sum(1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
        return FusionOutput((w.unsqueeze(-1) * p).sum(1), weights=w)


@FUSIONS.register("attention")
class AttentionFusion(_ProjectedFusion):
    """a_i = softmax_i(p_i^T w_a) over present modalities, fused = sum_i a_i p_i.

    p_i is modality i projected to ``dim``; the attention weights come back for inspection.
    """

    def __init__(self, input_dims: Mapping[str, int], dim: int = 128, hidden: int = 64):
        super().__init__(input_dims, dim)
        self._init_kwargs = {"dim": dim, "hidden": hidden}
        # a small scoring MLP instead of a single vector: scores can depend non-linearly on content
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1, bias=False))

    def forward(self, features, mask) -> FusionOutput:
        p = self.projected(features)
        a = masked_softmax(self.score(p).squeeze(-1), self.stacked_mask(mask), dim=1)
        return FusionOutput((a.unsqueeze(-1) * p).sum(1), weights=a)
