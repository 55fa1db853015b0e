"""Dynamic batching: concurrent jobs share forward passes, results go back to their own caller,
one failing job does not fail its neighbours, and keys never mix."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from crossfuse.serve.batching import Batcher


def test_concurrent_jobs_are_gathered_and_answered_in_their_own_order():
    calls = []

    def double(items):
        calls.append(list(items))
        time.sleep(0.01)  # a forward pass takes time, so later jobs queue up behind it
        return [2 * x for x in items]

    b = Batcher({"double": double}, max_batch=16, max_wait_ms=20)

    async def main():
        jobs = [b.submit(("double",), [i, 100 + i]) for i in range(20)]
        return await asyncio.gather(*jobs)

    results = asyncio.run(main())
    b.close()
    assert results == [[2 * i, 200 + 2 * i] for i in range(20)]
    assert len(calls) < 20 and max(len(c) for c in calls) <= 16  # gathered, never over max_batch
    assert sum(len(c) for c in calls) == 40 and b.batches == len(calls) and b.items == 40


def test_max_batch_one_runs_every_job_alone():
    calls = []
    b = Batcher({"f": lambda items: calls.append(len(items)) or list(items)}, max_batch=1, max_wait_ms=50)
    threads = [threading.Thread(target=b.run_now, args=(("f",), [i])) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.close()
    assert calls == [1] * 8


def test_a_failing_job_fails_alone_and_keys_never_share_a_batch():
    seen = []

    def run(items):
        seen.append(list(items))
        if "bad" in items:
            raise ValueError("bad item")
        return [x.upper() for x in items]

    b = Batcher({"a": run, "b": run}, max_batch=64, max_wait_ms=30)

    async def main():
        jobs = [b.submit(("a",), ["x"]), b.submit(("a",), ["bad"]), b.submit(("b",), ["y"]), b.submit(("a",), ["z"])]
        return await asyncio.gather(*jobs, return_exceptions=True)

    x, bad, y, z = asyncio.run(main())
    b.close()
    assert x == ["X"] and z == ["Z"] and y == ["Y"]
    assert isinstance(bad, ValueError)
    assert all(not ({"x", "y"} <= set(s)) for s in seen)  # key a and key b were never run together


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        Batcher({}, max_batch=0)
