"""Where and in what precision work runs: decided here, once, for training, extraction and inference.

Training hands the result to Lightning Fabric (``resolve_precision``); work outside the trainer
(feature extraction, prediction, embedding) uses ``default_device`` and ``inference_precision``.
The embedding cache keys vectors by the precision they were computed in, so bf16 and fp32 vectors
never share a namespace.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager, Tuple

import torch


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU (inference and extraction outside the trainer)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
