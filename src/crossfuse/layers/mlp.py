"""A plain multi-layer perceptron that reports its output size."""
from __future__ import annotations

from typing import Sequence

from torch import nn


class MLP(nn.Sequential):
    """Linear -> activation -> dropout blocks, then a final Linear (no activation) when ``out_dim``."""

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int] = (),
        out_dim: int | None = None,
        dropout: float = 0.0,
        activation: type[nn.Module] = nn.GELU,
        norm: bool = False,
    ):
        layers: list[nn.Module] = []
        dim = in_dim
        for width in hidden:
            layers.append(nn.Linear(dim, width))
            if norm:
                layers.append(nn.LayerNorm(width))
            layers.append(activation())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            dim = width
        if out_dim is not None:
            layers.append(nn.Linear(dim, out_dim))
            dim = out_dim
        super().__init__(*layers)
        self.output_dim = dim
