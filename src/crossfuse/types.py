"""Types shared by every layer: what a batch holds and what a model returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, NamedTuple, Optional

import torch

Modality = str
# Per-modality encoder input: a tensor, or a dict of tensors (token ids + attention mask, ...).
ModalityInput = Any


@dataclass
class Batch:
    """A collated batch: inputs and a presence mask per modality, plus the target if known.

    ``mask[m][i]`` is True when item ``i`` has modality ``m``. Encoders see every item (missing
    ones hold fill values); fusion methods must ignore the items whose mask is False.
    """

    inputs: Dict[Modality, ModalityInput]
    mask: Dict[Modality, torch.Tensor]
    target: Optional[torch.Tensor] = None
    index: Optional[torch.Tensor] = None  # position of each item in its data set
    # training with modality dropout: the presence before the drop (what imagination learns from)
    observed: Optional[Dict[Modality, torch.Tensor]] = None

    def __len__(self) -> int:
        return int(next(iter(self.mask.values())).shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            inputs={m: _to(v, device) for m, v in self.inputs.items()},
            mask={m: v.to(device) for m, v in self.mask.items()},
            target=None if self.target is None else self.target.to(device),
            index=self.index,
            observed=None if self.observed is None else {m: v.to(device) for m, v in self.observed.items()},
        )


class CachedFeatures(NamedTuple):
    """A modality's encoder output read from the embedding cache: the encoder is skipped."""

    values: torch.Tensor


def _to(value: Any, device) -> Any:
    if isinstance(value, CachedFeatures):
        return CachedFeatures(value.values.to(device))
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


@dataclass
class FusionOutput:
    """What a fusion method returns: the fused vector and, where it has them, modality weights."""

    fused: torch.Tensor
    weights: Optional[torch.Tensor] = None  # (batch, n_modalities), rows sum to 1 over present ones


@dataclass
class ModelOutput:
    logits: torch.Tensor
    fused: torch.Tensor
    weights: Optional[torch.Tensor] = None
    features: Dict[Modality, torch.Tensor] = field(default_factory=dict)
    trust: Optional[torch.Tensor] = None  # (batch, n_modalities): how typical each modality's features are
    mask: Optional[Dict[Modality, torch.Tensor]] = None  # the presence mask fusion used (after any trust gate)
    # each modality's own prediction from its features alone (models trained with auxiliary heads)
    aux_logits: Optional[Dict[Modality, torch.Tensor]] = None
    # modality -> (batch,) bool: the items whose features the model imagined (missing.imagine)
    imagined: Optional[Dict[Modality, torch.Tensor]] = None
    # a loss the model adds to its own training (imagination's reconstruction, KL, adversarial terms)
    extra_loss: Optional[torch.Tensor] = None
