"""FusionModel = per-modality encoders -> fusion -> head (saved and loaded by models.io)."""
from __future__ import annotations

from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import nn

from crossfuse.encoders import ENCODERS, Encoder
from crossfuse.errors import ConfigError
from crossfuse.fusion import FUSIONS, Fusion
from crossfuse.heads import Head
from crossfuse.layers import masked_mean
from crossfuse.layers.private import dp_replacements, replace_layers
from crossfuse.models.imagine import IMAGINERS, Imagination
from crossfuse.models.trust import Trust
from crossfuse.types import Batch, CachedFeatures, ModelOutput


class Encoded(NamedTuple):
    features: Dict[str, torch.Tensor]
    sequences: Optional[Dict[str, Tuple[torch.Tensor, torch.Tensor]]]
    trust: Optional[torch.Tensor] = None  # (B, n_modalities) once the model has fitted trust


class FusionModel(nn.Module):
    """Composes encoders, a fusion method and a head; after training, ``trust`` (models.trust) may
    gate untrusted modalities out of the mask and calibrate the logits. With ``aux_outputs`` each
    modality also gets a linear head of its own (balanced training's auxiliary losses). With
    ``imagination`` (models.imagine) an absent modality is imagined from the present ones."""

    def __init__(self, encoders: Mapping[str, Encoder], fusion: Fusion, head: Head, trust: Optional[Trust] = None,
                 aux_outputs: Optional[int] = None, imagination: Optional[Imagination] = None):
        super().__init__()
        # sorted: parameter order (and so optimizer state) must not depend on the config's key order
        self.encoders = nn.ModuleDict({m: encoders[m] for m in sorted(encoders)})
        self.fusion = fusion
        self.head = head
        self.trust = trust
        self.aux_outputs = aux_outputs
        self.aux_heads = nn.ModuleDict({m: nn.Linear(e.output_dim, aux_outputs) for m, e in self.encoders.items()}) \
            if aux_outputs else None
        if imagination is not None and fusion.wants_sequences:
            raise ConfigError(f"missing.imagine: fusion '{fusion.registry_name}' reads token sequences, which "
                              "imagination does not produce; use a vector-level fusion method")
        self.imagination = imagination
        self.private_layers: Dict[str, str] = {}  # layers replaced for DP-SGD (layers.private): path -> kind

    def make_private(self) -> Dict[str, str]:
        """Replace the trainable layers DP-SGD cannot train (layers.private), in place; the model's
        architecture records them. Returns path -> kind of what was replaced."""
        replaced = dp_replacements(self)
        replace_layers(self, replaced)
        self.private_layers.update(replaced)
        return replaced

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
        trust = self.trust.scores(features) if self.trust is not None else None
        return Encoded(features, sequences if token_level else None, trust)

    def fuse(self, encoded: Encoded, mask: Mapping[str, torch.Tensor], gate: Optional[bool] = None,
             imagine: bool = True, observed: Optional[Mapping[str, torch.Tensor]] = None) -> ModelOutput:
        """Fusion and head for given features and presence mask; encoders are not rerun, so
        what-if questions (a modality removed) cost one fusion pass each. ``gate`` overrides the
        trust's own setting (False: the plain model; True: untrusted modalities removed).
        ``imagine=False`` leaves absent modalities out even when the model can imagine them;
        ``observed`` (training) is the presence before modality dropout, what imagination learns from."""
        if encoded.trust is not None and (self.trust.gate_on if gate is None else gate):
            mask = self.trust.gate(encoded.trust, mask)
        features, used, imagined, extra = encoded.features, mask, None, None
        if self.imagination is not None and imagine:  # imagined vectors enter fusion marked present
            features, imagined, extra = self.imagination(encoded.features, mask,
                                                         observed if observed is not None else mask)
            used = {m: mask[m].bool() | imagined[m] for m in mask}
        if encoded.sequences is not None:
            fused = self.fusion(features, used, sequences=encoded.sequences)
        else:
            fused = self.fusion(features, used)
        logits = self.head(fused.fused)
        if self.trust is not None:
            logits = self.trust.calibrate(logits)
        aux = {m: h(encoded.features[m]) for m, h in self.aux_heads.items()} if self.aux_heads is not None else None
        return ModelOutput(logits=logits, fused=fused.fused, weights=fused.weights, features=encoded.features,
                           trust=encoded.trust, mask=mask, aux_logits=aux, imagined=imagined, extra_loss=extra)

    def forward(self, batch: Batch) -> ModelOutput:
        return self.fuse(self.encode(batch), batch.mask, observed=batch.observed)

    # --- self-description -----------------------------------------------------------------
    def architecture(self) -> Dict[str, Any]:
        """Everything needed to rebuild this model's modules with no external files."""
        return {
            "encoders": {m: {"name": e.registry_name, "kwargs": e.rebuild_kwargs()} for m, e in self.encoders.items()},
            "fusion": {"name": self.fusion.registry_name, "kwargs": self.fusion.rebuild_kwargs()},
            "head": {"out_dim": self.head.out_dim, "kwargs": self.head.rebuild_kwargs()},
            **({"trust": self.trust.architecture()} if self.trust is not None else {}),
            **({"aux_outputs": self.aux_outputs} if self.aux_outputs else {}),
            **({"private": {"replaced": dict(self.private_layers)}} if self.private_layers else {}),
            **({"imagine": self.imagination.architecture()} if self.imagination is not None else {}),
        }

    @classmethod
    def from_architecture(cls, arch: Dict[str, Any]) -> "FusionModel":
        encoders = {m: ENCODERS.build(e["name"], **ENCODERS.get(e["name"]).saved_kwargs(e["kwargs"]))
                    for m, e in arch["encoders"].items()}
        fusion = FUSIONS.build(arch["fusion"]["name"], input_dims={m: e.output_dim for m, e in encoders.items()},
                               **arch["fusion"]["kwargs"])
        trust = Trust.from_architecture(arch["trust"]) if arch.get("trust") else None
        head = Head(fusion.output_dim, arch["head"]["out_dim"], **arch["head"]["kwargs"])
        imagination = IMAGINERS.build(arch["imagine"]["kind"], input_dims={m: e.output_dim for m, e in encoders.items()},
                                      **arch["imagine"]["kwargs"]) if arch.get("imagine") else None
        model = cls(encoders, fusion, head, trust, aux_outputs=arch.get("aux_outputs"), imagination=imagination)
        replaced = (arch.get("private") or {}).get("replaced") or {}
        replace_layers(model, replaced)
        model.private_layers.update(replaced)
        return model
