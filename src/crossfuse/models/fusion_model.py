"""FusionModel = per-modality encoders -> fusion -> head (saved and loaded by models.io)."""
from __future__ import annotations

from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import nn

from crossfuse.encoders import ENCODERS, Encoder
from crossfuse.fusion import FUSIONS, Fusion
from crossfuse.heads import Head
from crossfuse.layers import masked_mean
from crossfuse.types import Batch, CachedFeatures, ModelOutput


class Encoded(NamedTuple):
    features: Dict[str, torch.Tensor]
    sequences: Optional[Dict[str, Tuple[torch.Tensor, torch.Tensor]]]


class FusionModel(nn.Module):
    """Composes encoders, a fusion method and a head; nothing else."""

    def __init__(self, encoders: Mapping[str, Encoder], fusion: Fusion, head: Head):
        super().__init__()
        # sorted: parameter order (and so optimizer state) must not depend on the config's key order
        self.encoders = nn.ModuleDict({m: encoders[m] for m in sorted(encoders)})
        self.fusion = fusion
        self.head = head

    def encode(self, batch: Batch) -> Encoded:
        """Per-modality features (and, for token-level fusion, sequences) of a batch."""
        sequences: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        features: Dict[str, torch.Tensor] = {}
        token_level = self.fusion.wants_sequences
        for m, enc in self.encoders.items():
            if isinstance(batch.inputs[m], CachedFeatures):  # read from the embedding cache
                features[m] = batch.inputs[m].values
            elif token_level and enc.gives_sequences:
                seq, seq_mask = enc.forward_sequence(batch.inputs[m])
                sequences[m] = (seq, seq_mask)
                features[m] = masked_mean(seq, seq_mask, dim=1)
            else:
                features[m] = enc(batch.inputs[m])
        return Encoded(features, sequences if token_level else None)

    def fuse(self, encoded: Encoded, mask: Mapping[str, torch.Tensor]) -> ModelOutput:
        """Fusion and head for given features and presence mask; encoders are not rerun, so
        what-if questions (a modality removed) cost one fusion pass each."""
        if encoded.sequences is not None:
            fused = self.fusion(encoded.features, mask, sequences=encoded.sequences)
        else:
            fused = self.fusion(encoded.features, mask)
        return ModelOutput(logits=self.head(fused.fused), fused=fused.fused, weights=fused.weights,
                           features=encoded.features)

    def forward(self, batch: Batch) -> ModelOutput:
        return self.fuse(self.encode(batch), batch.mask)

    # --- self-description -----------------------------------------------------------------
    def architecture(self) -> Dict[str, Any]:
        """Everything needed to rebuild this model's modules with no external files."""
        return {
            "encoders": {m: {"name": e.registry_name, "kwargs": e.rebuild_kwargs()} for m, e in self.encoders.items()},
            "fusion": {"name": self.fusion.registry_name, "kwargs": self.fusion.rebuild_kwargs()},
            "head": {"out_dim": self.head.out_dim, "kwargs": self.head.rebuild_kwargs()},
        }

    @classmethod
    def from_architecture(cls, arch: Dict[str, Any]) -> "FusionModel":
        encoders = {m: ENCODERS.build(e["name"], **ENCODERS.get(e["name"]).saved_kwargs(e["kwargs"]))
                    for m, e in arch["encoders"].items()}
        fusion = FUSIONS.build(arch["fusion"]["name"], input_dims={m: e.output_dim for m, e in encoders.items()},
                               **arch["fusion"]["kwargs"])
        return cls(encoders, fusion, Head(fusion.output_dim, arch["head"]["out_dim"], **arch["head"]["kwargs"]))
