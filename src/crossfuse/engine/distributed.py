"""Inference split across the processes a launcher starts (``torchrun`` or SLURM's ``srun``).

``crossfuse predict`` and ``crossfuse index`` launched with several processes give each process a
contiguous part of the manifest's rows (each extracting and embedding its own part, on its own
device), gather the parts in rank order, so the merged outputs are in manifest order, and let rank
0 alone write the one CSV or the one index. A single process is the same code with one part.

The process group is joined from the launcher's environment (gloo: the outputs gathered are numpy
arrays on the CPU); training joins its own through Lightning Fabric.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np


def launched_world(env: Optional[Mapping[str, str]] = None) -> int:
    """How many processes the launcher started (WORLD_SIZE, or SLURM_NTASKS under srun); 1 otherwise."""
    env = os.environ if env is None else env
    if env.get("WORLD_SIZE"):
        return max(1, int(env["WORLD_SIZE"]))
    if env.get("SLURM_NTASKS") and env.get("SLURM_PROCID") and env.get("MASTER_ADDR"):
        return max(1, int(env["SLURM_NTASKS"]))
    return 1


def join() -> Tuple[int, int]:
    """(rank, world size) of this process, joining the process group when the launcher started
    several and none is joined yet."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = launched_world()
    if world == 1:
        return 0, 1
    env = os.environ
    rank = int(env.get("RANK", env.get("SLURM_PROCID", "0")))
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    return rank, world


def is_main() -> bool:
    """Whether this process writes the outputs (rank 0, or the only process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    env = os.environ
    return int(env.get("RANK", env.get("SLURM_PROCID", "0")) or 0) == 0 if launched_world() > 1 else True


def part_of(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous rows of ``n``: the first ``n % world`` ranks take one more."""
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return slice(start, start + size + (1 if rank < extra else 0))


def split_map(rows: int, compute: Callable[[slice], Dict[str, Any]]) -> Dict[str, Any]:
    """``compute(part)`` on this process's part of ``rows`` rows, every process's result gathered
    and joined in rank order: arrays (and (vectors, present) pairs) concatenated along the rows,
    None where every part has None. One process: ``compute(slice(0, rows))`` itself."""
    rank, world = join()
    if world == 1:
        return compute(slice(0, rows))
    import torch.distributed as dist

    mine = part_of(rows, rank, world)
    result = compute(mine) if mine.stop > mine.start else None
    parts: List[Optional[Dict[str, Any]]] = [None] * world
    dist.all_gather_object(parts, result)
    filled = [p for p in parts if p is not None]
    return {k: _join([p[k] for p in filled]) for k in filled[0]}


def _join(values: List[Any]) -> Any:
    if all(v is None for v in values):
        return None
    if isinstance(values[0], tuple):
        return tuple(_join(list(column)) for column in zip(*values))
    return np.concatenate(values)
