"""Prediction heads on top of the fused vector."""
from __future__ import annotations

from typing import Sequence

from crossfuse.layers import MLP


class Head(MLP):
    """MLP from the fused vector to ``out_dim`` outputs: class logits or regression values."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (128,), dropout: float = 0.1):
        super().__init__(in_dim, hidden, out_dim=out_dim, dropout=dropout, norm=True)
        self._init_kwargs = {"hidden": list(hidden), "dropout": dropout}


__all__ = ["Head"]
