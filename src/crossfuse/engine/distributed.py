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
    None where every part has None. One process: ``compute(slice(0, rows))`` itself.

    A part that fails fails every process (``together``), so none waits for the others forever."""
    rank, world = join()
    if world == 1:
        return compute(slice(0, rows))
    mine = part_of(rows, rank, world)
    result = together(lambda: compute(mine) if mine.stop > mine.start else None)
    return gather_rows(result)


def together(work: Callable[[], Any]) -> Any:
    """``work()`` in every process a launcher started, succeeding or failing in all of them: bad data
    found by any process raises one DataError with every process's problems, in rank order (their
    parts are in row order); another failure is re-raised where it happened and named in the rest.
    One process: ``work()`` itself."""
    rank, world = join()
    if world == 1:
        return work()
    import torch.distributed as dist

    from crossfuse.errors import CrossfuseError, DataError

    try:
        value, failure = work(), None
    except DataError as exc:
        value, failure, error = None, ("data", exc.problems), exc
    except Exception as exc:  # noqa: BLE001 - every process must hear of it before anyone raises
        value, failure, error = None, ("error", f"{type(exc).__name__}: {exc}"), exc
    failures: List[Any] = [None] * world
    dist.all_gather_object(failures, failure)
    problems = [p for f in failures if f is not None and f[0] == "data" for p in f[1]]
    if problems and all(f is None or f[0] == "data" for f in failures):
        raise DataError(problems)
    if failure is not None:
        raise error
    for r, f in enumerate(failures):
        if f is not None:
            raise CrossfuseError(f"process {r} of {world} failed: {f[1]}")
    return value


def gather_rows(value: Any) -> Any:
    """This process's rows joined with every other process's, in rank order: arrays concatenated
    along the rows, through tuples and dicts; a process with no rows gives None. One process:
    ``value`` itself. Every process must call it, in the same order."""
    rank, world = join()
    if world == 1:
        return value
    import torch.distributed as dist

    parts: List[Any] = [None] * world
    dist.all_gather_object(parts, value)
    return _join([p for p in parts if p is not None])


def _join(values: List[Any]) -> Any:
    if not values or all(v is None for v in values):
        return None
    values = [v for v in values if v is not None]
    if isinstance(values[0], dict):
        return {k: _join([v[k] for v in values]) for k in values[0]}
    if isinstance(values[0], tuple):
        return tuple(_join(list(column)) for column in zip(*values))
    return np.concatenate(values)
