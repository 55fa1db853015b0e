"""RetrievalModel: one tower per modality (encoder -> projection) into a shared, normalised space.

Two towers make CLIP's dual encoder; more make an N-tower model trained over every modality pair.
The temperature (and SigLIP's bias) are parameters of the model, learned with it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from crossfuse.encoders import ENCODERS, Encoder
from crossfuse.layers import MLP
from crossfuse.types import Batch, CachedFeatures

MAX_SCALE = 100.0  # CLIP clips the logit scale at 100 (temperature 0.01)


@dataclass
class RetrievalOutput:
    embeddings: Dict[str, torch.Tensor]  # L2-normalised, (B, embed_dim) per modality
    mask: Dict[str, torch.Tensor]
    scale: torch.Tensor  # 1 / temperature
    bias: torch.Tensor  # SigLIP's logit bias (unused by InfoNCE)


class Projection(nn.Module):
    """Dropout on the encoder's features, then a linear map or an MLP into the shared space."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (), dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.mlp = MLP(in_dim, hidden, out_dim, dropout=dropout)
        self.output_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.dropout(x))


class RetrievalModel(nn.Module):
    """Per-modality towers into one space. With ``bridge`` (a dict: source, target, n_classes, dim,
    weight, top, temperature) each embedding is [sqrt(1-w) * learned ; sqrt(w) * bridge], where the
    bridge block is, for the source (image) modality, the normalised probability-weighted mean of the
    class-name embeddings ``bridge_classes`` (filled by ``set_bridge_classes``), for the target
    (text) modality its own normalised encoder features, and zeros for any other modality."""

    def __init__(self, encoders: Mapping[str, Encoder], embed_dim: int = 256, hidden: Sequence[int] = (),
                 dropout: float = 0.5, temperature: float = 0.07, learn_temperature: bool = True,
                 loss: str = "infonce", bridge: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.encoders = nn.ModuleDict({m: encoders[m] for m in sorted(encoders)})
        self.projections = nn.ModuleDict({m: Projection(e.output_dim, embed_dim, hidden, dropout)
                                          for m, e in self.encoders.items()})
        # SigLIP starts at scale 10, bias -10 (its paper); InfoNCE at 1 / temperature (CLIP: 0.07)
        init_scale = 10.0 if loss == "siglip" else 1.0 / temperature
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)), requires_grad=learn_temperature)
        self.bias = nn.Parameter(torch.tensor(-10.0 if loss == "siglip" else 0.0), requires_grad=loss == "siglip")
        self.embed_dim = self.output_dim = embed_dim
        self.bridge = dict(bridge) if bridge else None
        if self.bridge:
            b = self.bridge
            # the class names' text embeddings: saved with the weights, rebuilt here at their size
            self.register_buffer("bridge_classes", torch.zeros(int(b["n_classes"]), int(b["dim"])))
            self.output_dim = embed_dim + int(b["dim"])
        self._init_kwargs = {"embed_dim": embed_dim, "hidden": list(hidden), "dropout": dropout,
                             "temperature": temperature, "learn_temperature": learn_temperature, "loss": loss,
                             "bridge": self.bridge}

    @property
    def modalities(self):
        return list(self.encoders)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=MAX_SCALE)

    def features(self, m: str, inputs: Any) -> torch.Tensor:
        if isinstance(inputs, CachedFeatures):  # read from the embedding cache
            return inputs.values
        return self.encoders[m](inputs)

    def embed(self, m: str, inputs: Any) -> torch.Tensor:
        """Shared-space embeddings (unit length, for the bridged modalities) of one modality's inputs."""
        features = self.features(m, inputs)
        learned = F.normalize(self.projections[m](features).float(), dim=-1)
        if not self.bridge:
            return learned
        w = float(self.bridge["weight"])
        return torch.cat([(1 - w) ** 0.5 * learned, w ** 0.5 * self.bridge_block(m, features)], dim=-1)

    def bridge_block(self, m: str, features: torch.Tensor) -> torch.Tensor:
        b = self.bridge
        if m == b["target"]:
            return F.normalize(features.float(), dim=-1)
        if m != b["source"]:
            return features.new_zeros(len(features), int(b["dim"])).float()
        probs = (self.encoders[m].classify(features).float() / float(b["temperature"])).softmax(-1)
        top = int(b["top"])
        if 0 < top < probs.shape[-1]:  # keep the most likely classes only, renormalised
            kept = probs.topk(top, dim=-1)
            probs = torch.zeros_like(probs).scatter(-1, kept.indices, kept.values)
            probs = probs / probs.sum(-1, keepdim=True)
        return F.normalize(probs @ self.bridge_classes.float(), dim=-1)

    def set_bridge_classes(self, embeddings: torch.Tensor) -> None:
        """Store the target encoder's embeddings of the source classifier's class names."""
        if tuple(embeddings.shape) != tuple(self.bridge_classes.shape):
            raise ValueError(f"bridge class embeddings must be {tuple(self.bridge_classes.shape)}; "
                             f"got {tuple(embeddings.shape)}")
        self.bridge_classes.copy_(embeddings)

    def forward(self, batch: Batch) -> RetrievalOutput:
        return RetrievalOutput({m: self.embed(m, batch.inputs[m]) for m in self.encoders if m in batch.inputs},
                               batch.mask, self.scale, self.bias)

    # --- self-description -----------------------------------------------------------------
    def architecture(self) -> Dict[str, Any]:
        return {"kind": "retrieval",
                "encoders": {m: {"name": e.registry_name, "kwargs": e.rebuild_kwargs()}
                             for m, e in self.encoders.items()},
                "retrieval": self._init_kwargs}

    @classmethod
    def from_architecture(cls, arch: Dict[str, Any]) -> "RetrievalModel":
        encoders = {m: ENCODERS.build(e["name"], **ENCODERS.get(e["name"]).saved_kwargs(e["kwargs"]))
                    for m, e in arch["encoders"].items()}
        return cls(encoders, **arch["retrieval"])


def pair_loss(out: RetrievalOutput, groups: Optional[torch.Tensor], loss: str = "infonce",
              global_negatives: bool = False) -> torch.Tensor:
    """The contrastive loss averaged over every modality pair, each on the rows that
    have both modalities. ``groups``: rows with equal ids are positives of each other.
    ``global_negatives`` (training under data parallelism): every rank's rows are gathered with
    their gradients first, so each rank computes the loss of the global batch; every rank must call
    it in the same step."""
    from crossfuse.layers import gather_rows, info_nce, sigmoid_loss, world_size

    if global_negatives and world_size() > 1:
        out = RetrievalOutput({m: gather_rows(e) for m, e in out.embeddings.items()},
                              {m: gather_rows(v.bool(), grad=False) for m, v in out.mask.items()},
                              out.scale, out.bias)
        groups = None if groups is None else gather_rows(groups, grad=False)
    mods = sorted(out.embeddings)
    terms = []
    for i, a in enumerate(mods):
        for b in mods[i + 1:]:
            both = out.mask[a] & out.mask[b]
            if int(both.sum()) < 2:  # one pair has no negatives to learn from
                continue
            g = None if groups is None else groups[both]
            ea, eb = out.embeddings[a][both], out.embeddings[b][both]
            terms.append(sigmoid_loss(ea, eb, out.scale, out.bias, g) if loss == "siglip"
                         else info_nce(ea, eb, out.scale, g))
    if not terms:  # keep the graph so backward works; contributes nothing
        return sum(e.sum() * 0.0 for e in out.embeddings.values())
    return torch.stack(terms).mean()
