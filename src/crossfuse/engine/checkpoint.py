"""Training checkpoints in one safetensors file: tensors as tensors, everything else as JSON metadata.

Written to a temporary file and renamed into place, so a kill mid-write leaves the previous
checkpoint intact. Loading never unpickles.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import torch

from crossfuse.atomic import atomic_file

_TENSOR = "__tensor__"


def flatten(obj: Any, prefix: str, tensors: Dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested dict/list with a reference, collecting the tensors."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        # JSON keys are strings; remember int keys (optimizer state is keyed by param index)
        return {"__dict__": [[k, flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def unflatten(obj: Any, tensors: Dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if "__dict__" in obj:
            return {k: unflatten(v, tensors) for k, v in obj["__dict__"]}
        return {k: unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(path: str | Path, state: Dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: Dict[str, torch.Tensor] = {}
    tree = flatten(state, "s", tensors)
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"crossfuse_checkpoint": json.dumps(tree)})


def load_checkpoint(path: str | Path) -> Dict[str, Any]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "crossfuse_checkpoint" not in meta:
        raise ValueError(f"{path} is not a crossfuse checkpoint")
    return unflatten(json.loads(meta["crossfuse_checkpoint"]), load_file(str(path)))


