"""FusionModel = per-modality encoders -> fusion -> head, and its save/load as config + safetensors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from crossfuse.atomic import atomic_directory
from crossfuse.encoders import ENCODERS, Encoder
from crossfuse.errors import CrossfuseError
from crossfuse.fusion import FUSIONS, Fusion
from crossfuse.heads import Head
from crossfuse.layers import masked_mean
from crossfuse.types import Batch, CachedFeatures, ModelOutput

CONFIG_FILE, WEIGHTS_FILE, PROCESSORS_FILE = "config.json", "model.safetensors", "processors.json"


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
        token_level = getattr(self.fusion, "wants_sequences", False)
        for m, enc in self.encoders.items():
            if isinstance(batch.inputs[m], CachedFeatures):  # read from the embedding cache
                features[m] = batch.inputs[m].values
            elif token_level and hasattr(enc, "forward_sequence"):
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
            "head": {"out_dim": self.head.out_dim, "kwargs": self.head._init_kwargs},
        }

    @classmethod
    def from_architecture(cls, arch: Dict[str, Any]) -> "FusionModel":
        encoders = {m: ENCODERS.build(e["name"], **e["kwargs"]) for m, e in arch["encoders"].items()}
        fusion = FUSIONS.build(arch["fusion"]["name"], input_dims={m: e.output_dim for m, e in encoders.items()},
                               **arch["fusion"]["kwargs"])
        return cls(encoders, fusion, Head(fusion.output_dim, arch["head"]["out_dim"], **arch["head"]["kwargs"]))


def save_model(path: str | Path, model: nn.Module, processors: Mapping[str, Any], meta: Dict[str, Any]) -> Path:
    """Write config.json + model.safetensors + processors.json into a fresh directory, atomically.

    The files go to a temporary sibling directory that is renamed into place at the end, so a
    killed save leaves either the previous model or none, never a half-written one.
    """
    from safetensors.torch import save_file

    config = {"format": "crossfuse-model/1", **meta, "architecture": model.architecture()}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(path) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / PROCESSORS_FILE).write_text(json.dumps({m: p.state() for m, p in processors.items()}))
    return Path(path)


def load_model(path: str | Path, map_location: str = "cpu", modalities: Optional[Sequence[str]] = None):
    """Rebuild (model, processors, meta) from a model directory; never unpickles.

    ``modalities`` (retrieval models only): build and load just these towers, reading only their
    weights; searching captions with an image then never builds the text encoder.
    """
    from safetensors import safe_open

    from crossfuse.data.processors import processor_from_state

    path = Path(path)
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, PROCESSORS_FILE) if not (path / f).is_file()]
    if missing:
        raise CrossfuseError(f"{path} is not a crossfuse model directory (missing {', '.join(missing)})")
    meta = json.loads((path / CONFIG_FILE).read_text())
    arch = meta["architecture"]
    keep = lambda key: True  # noqa: E731
    if arch.get("kind") == "retrieval":
        from crossfuse.models.retrieval_model import RetrievalModel

        if modalities is not None:
            unknown = set(modalities) - set(arch["encoders"])
            if unknown:
                raise CrossfuseError(f"{path} has no modality {', '.join(sorted(unknown))}; it has "
                                     f"{', '.join(arch['encoders'])}")
            arch = {**arch, "encoders": {m: e for m, e in arch["encoders"].items() if m in modalities}}
            towers = tuple(f"{part}.{m}." for part in ("encoders", "projections") for m in arch["encoders"])
            keep = lambda key: key.startswith(towers) or not key.startswith(("encoders.", "projections."))  # noqa
        model = RetrievalModel.from_architecture(arch)
    else:
        model = FusionModel.from_architecture(arch)
    with safe_open(str(path / WEIGHTS_FILE), framework="pt", device=map_location) as f:
        model.load_state_dict({k: f.get_tensor(k) for k in f.keys() if keep(k)})
    model.eval()
    processors = {m: processor_from_state(s) for m, s in json.loads((path / PROCESSORS_FILE).read_text()).items()
                  if m in getattr(model, "encoders", {})}
    return model, processors, meta
