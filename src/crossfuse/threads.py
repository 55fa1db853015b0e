"""How many threads crossfuse's own pools and torch use.

One setting for all of them: ``train.threads`` or ``--threads``; otherwise ``OMP_NUM_THREADS``
when the environment sets it (as batch schedulers do); otherwise torch's default for torch and
min(8, cores) for the pools that decode files while validating.
"""
from __future__ import annotations

import os
from typing import Optional

_threads: Optional[int] = None


def set_threads(n: Optional[int]) -> None:
    """Use ``n`` threads (None: back to the environment's choice)."""
    global _threads
    _threads = n
    if n is not None:
        import torch

        torch.set_num_threads(n)


def thread_count() -> int:
    """Threads for crossfuse's pools (file checks, decoding)."""
    if _threads is not None:
        return _threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return min(8, os.cpu_count() or 1)
