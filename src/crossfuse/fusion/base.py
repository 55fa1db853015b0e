"""The fusion contract and registry.

A fusion method takes ``input_dims`` (modality -> feature size), reports ``output_dim``, and maps
``features`` (modality -> (B, d_m)) plus ``mask`` (modality -> (B,) bool, True = present) to a
FusionOutput. An item's missing modality must have no effect on its fused vector.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Mapping, Tuple

import torch
from torch import nn

from crossfuse.errors import ConfigError
from crossfuse.registry import Registry
from crossfuse.types import FusionOutput

FUSIONS: Registry["Fusion"] = Registry("fusion")


class Fusion(nn.Module):
    output_dim: int
    _init_kwargs: Dict[str, Any]  # constructor kwargs (besides input_dims) that rebuild it
    # token-level methods read (B, T, d) sequences from encoders that give them (Encoder.forward_sequence)
    wants_sequences: bool = False
    # decision-level methods produce the outputs themselves (built with n_outputs; the head is the identity)
    decision_level: ClassVar[bool] = False
    # accepted ranges of size-like parameters, checked with the config before any work
    param_limits: ClassVar[Dict[str, Tuple[float, float]]] = {
        "dim": (1, 8192), "rank": (1, 1024), "heads": (1, 64), "layers": (1, 64), "tokens": (1, 256),
        "dropout": (0.0, 0.99), "hidden": (1, 16384), "n_outputs": (1, 1_000_000)}

    def __init__(self, input_dims: Mapping[str, int]):
        super().__init__()
        if not input_dims:
            raise ConfigError("A fusion method needs at least one modality")
        # one fixed order, whatever the config's key order: parameters (and so optimizer state and
        # checkpoints) must line up between a run and its resumption
        self.modalities: List[str] = sorted(input_dims)
        self.input_dims = {m: input_dims[m] for m in self.modalities}

    def rebuild_kwargs(self) -> Dict[str, Any]:
        return dict(self._init_kwargs)

    def make_norms(self) -> nn.ModuleDict:
        """One LayerNorm per modality: features from different encoders come at very different
        scales (an ImageNet CNN's activations vs a unit-norm sentence embedding), and without it
        the larger one drowns the other."""
        return nn.ModuleDict({m: nn.LayerNorm(d) for m, d in self.input_dims.items()})

    def stacked_mask(self, mask: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, n_modalities) bool mask in ``self.modalities`` order."""
        return torch.stack([mask[m].bool() for m in self.modalities], dim=1)

    def forward(self, features: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]) -> FusionOutput:
        raise NotImplementedError
