"""Tabular encoder: standardised numerics and embedded categoricals through an MLP."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import nn

from crossfuse.encoders.base import ENCODERS, Encoder
from crossfuse.layers import MLP


@ENCODERS.register("mlp")
class TabularMLP(Encoder):
    """Numeric columns (standardised by the processor) and one embedding per categorical column.

    ``cardinalities`` (from the fitted processor) counts each categorical's vocabulary, index 0
    being "unknown". Embedding width follows the fastai rule min(50, round(1.6 * n ** 0.56)).
    """

    modality = "tabular"

    def __init__(self, n_numeric: int = 0, cardinalities: Sequence[int] = (), hidden: Sequence[int] = (64, 64),
                 dropout: float = 0.0):
        super().__init__()
        self._init_kwargs = dict(n_numeric=n_numeric, cardinalities=list(cardinalities), hidden=list(hidden),
                                 dropout=dropout)
        self.embeddings = nn.ModuleList(
            nn.Embedding(n, min(50, max(2, round(1.6 * n ** 0.56)))) for n in cardinalities
        )
        in_dim = n_numeric + sum(e.embedding_dim for e in self.embeddings)
        self.mlp = MLP(max(in_dim, 1), hidden, dropout=dropout)
        self.output_dim = self.mlp.output_dim if hidden else max(in_dim, 1)

    def example_input(self, batch: int = 3, generator: Optional[torch.Generator] = None):
        g = generator or torch.Generator().manual_seed(0)
        k = self._init_kwargs
        cats = [torch.randint(0, n, (batch,), generator=g) for n in k["cardinalities"]]
        return {"numeric": torch.randn(batch, k["n_numeric"], generator=g),
                "categorical": torch.stack(cats, 1) if cats else torch.zeros(batch, 0, dtype=torch.long)}

    def forward(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [inputs["numeric"]] if inputs["numeric"].shape[1] else []
        cats = inputs["categorical"]
        parts += [emb(cats[:, i]) for i, emb in enumerate(self.embeddings)]
        x = torch.cat(parts, dim=1) if parts else inputs["numeric"].new_zeros(cats.shape[0], 1)
        return self.mlp(x)
