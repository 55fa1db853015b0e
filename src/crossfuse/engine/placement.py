"""Where and in what precision work runs: decided here, once, for training, extraction and inference.

Training hands the result to Lightning Fabric (``resolve_precision``); work outside the trainer
(feature extraction, prediction, embedding) uses ``default_device`` and ``inference_precision``.
The embedding cache keys vectors by the precision they were computed in, so bf16 and fp32 vectors
never share a namespace.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any, ContextManager, Mapping, Optional, Tuple

import torch


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU (inference and extraction outside the trainer)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_num_nodes(configured: Optional[int], env: Optional[Mapping[str, str]] = None) -> int:
    """Machines in the run: ``train.num_nodes`` when set, else what the launcher says (torchrun:
    WORLD_SIZE / LOCAL_WORLD_SIZE; SLURM: SLURM_NNODES), else 1."""
    if configured is not None:
        return int(configured)
    env = os.environ if env is None else env
    if env.get("WORLD_SIZE") and env.get("LOCAL_WORLD_SIZE"):
        return max(1, int(env["WORLD_SIZE"]) // max(1, int(env["LOCAL_WORLD_SIZE"])))
    if env.get("SLURM_NNODES") and env.get("SLURM_NTASKS"):
        return max(1, int(env["SLURM_NNODES"]))
    return 1


def resolve_precision(cfg: Any) -> str:
    """A TrainConfig's precision for Fabric: ``auto`` is bf16-mixed on GPUs that support it, else 32-true."""
    if cfg.precision != "auto":
        return cfg.precision
    if cfg.accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def inference_precision(device: torch.device) -> Tuple[str, ContextManager]:
    """(name, autocast context) for frozen-encoder work on ``device``: bf16 autocast on a GPU
    (tensor cores, half the memory traffic), fp32 on a CPU."""
    if device.type == "cuda":
        return "bf16-mixed", torch.autocast("cuda", dtype=torch.bfloat16)
    return "32-true", nullcontext()
