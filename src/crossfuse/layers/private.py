"""Layers that DP-SGD cannot train, and what replaces them.

DP-SGD needs each item's own gradient. BatchNorm mixes the items of a batch (an item's output
depends on the others), and PyTorch's fused recurrent and attention layers hide the per-step
products that per-item gradients are computed from. ``dp_replacements`` lists the trainable layers
of a model that need replacing and ``replace_layers`` swaps them in place:

- ``BatchNorm1d`` over (batch, features) -> ``LayerNorm``. Opacus' own fix makes it a GroupNorm,
  which normalises each item's features as one group of one value each: the output is ~0 and the
  branch goes dead.
- ``BatchNorm2d``/``3d`` -> ``GroupNorm`` with gcd(32, channels) groups (Opacus' choice).
- ``MultiheadAttention`` -> Opacus' ``DPMultiheadAttention``.

``GRU`` and ``LSTM`` are not replaced: Opacus' ``DPGRU``/``DPLSTM`` keep two names for every weight
(safetensors refuses to save shared tensors), and over packed variable-length text their per-item
gradients came out in the wrong item order in our checks. A private run refuses them up front.

A model records what was replaced (path -> kind) in its architecture, so loading it rebuilds the
same layers before reading the weights; the kinds are a fixed list, never a class named in a file.
"""
from __future__ import annotations

import math
from typing import Dict

from torch import nn

from crossfuse.errors import CrossfuseError, MissingDependencyError


def _opacus_layer(name: str):
    try:
        from opacus import layers
    except ImportError:
        raise MissingDependencyError(f"this model was trained with differential privacy and uses Opacus' {name}: "
                                     "pip install 'crossfuse[privacy]'") from None
    return getattr(layers, name)


def _attention(m: nn.MultiheadAttention) -> nn.Module:
    return _opacus_layer("DPMultiheadAttention")(
        m.embed_dim, m.num_heads, dropout=m.dropout, bias=m.in_proj_bias is not None,
        add_bias_kv=m.bias_k is not None, add_zero_attn=m.add_zero_attn, kdim=m.kdim, vdim=m.vdim,
        batch_first=m.batch_first)


# kind -> (the layer types it replaces, the replacement built from the old layer's sizes)
REPLACEMENTS: Dict[str, tuple] = {
    "layer_norm": ((nn.BatchNorm1d,), lambda m: nn.LayerNorm(m.num_features, elementwise_affine=m.affine)),
    "group_norm": ((nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm),
                   lambda m: nn.GroupNorm(math.gcd(32, m.num_features), m.num_features, affine=m.affine)),
    "dp_attention": ((nn.MultiheadAttention,), _attention),
}
MAX_REPLACED = 10_000


def _kind(module: nn.Module):
    for kind, (types, _) in REPLACEMENTS.items():
        if type(module) in types:
            return kind
    return None


def dp_replacements(model: nn.Module) -> Dict[str, str]:
    """Path -> kind of every layer with trainable parameters that DP-SGD needs replaced."""
    return {name: kind for name, m in model.named_modules()
            if (kind := _kind(m)) is not None and any(p.requires_grad for p in m.parameters())}


def replace_layers(model: nn.Module, replaced: Dict[str, str]) -> None:
    """Swap the layers at ``replaced``'s paths for their kinds' replacements, in place. A path that
    is not a layer of the kind's type (a damaged or foreign architecture) raises CrossfuseError."""
    for path, kind in replaced.items():
        parent_path, _, leaf = path.rpartition(".")
        try:
            parent = model.get_submodule(parent_path) if parent_path else model
            old = parent.get_submodule(leaf)
        except AttributeError:
            raise CrossfuseError(f"private layer '{path}': the model has no such layer") from None
        if kind not in REPLACEMENTS or type(old) not in REPLACEMENTS[kind][0]:
            raise CrossfuseError(f"private layer '{path}': cannot replace a {type(old).__name__} as {kind!r}")
        new = REPLACEMENTS[kind][1](old)
        frozen = not any(p.requires_grad for p in old.parameters())
        parent._modules[leaf] = new.requires_grad_(not frozen)


def replacement_problems(replaced) -> list:
    """A saved architecture's ``private.replaced``: a mapping of layer paths to known kinds."""
    if not isinstance(replaced, dict) or len(replaced) > MAX_REPLACED:
        return [f"must be a mapping of at most {MAX_REPLACED:,} layer paths to kinds"]
    return [f"'{p}': unknown kind {k!r} (known: {', '.join(REPLACEMENTS)})" for p, k in replaced.items()
            if not isinstance(p, str) or k not in REPLACEMENTS]
