"""Prediction heads on top of the fused vector."""
from __future__ import annotations

from typing import Optional, Sequence

from crossfuse.layers import MLP


class Head(MLP):
    """MLP from the fused vector to ``out_dim`` outputs: class logits or regression values.

    With ``out_dim=None`` and no hidden layers it is the identity, for fusion methods that
    already produce the outputs (late fusion).
    """

    def __init__(self, in_dim: int, out_dim: Optional[int], hidden: Sequence[int] = (128,), dropout: float = 0.1):
        super().__init__(in_dim, hidden, out_dim=out_dim, dropout=dropout, norm=True)
        self._init_kwargs = {"hidden": list(hidden), "dropout": dropout}
        self.out_dim = out_dim

    def rebuild_kwargs(self):
        return dict(self._init_kwargs)


__all__ = ["Head"]
