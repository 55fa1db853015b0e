"""Dynamic batching: concurrent requests gathered into one forward pass.

As Triton's and TorchServe's batchers do: the first job that arrives opens a batch, which closes
when it holds ``max_batch`` items or ``max_wait_ms`` has passed, whichever is first. Jobs carry a
key (predict, or one index and query modality); a batch runs the jobs of one key together. One
worker thread runs the model, so inference never blocks the event loop and two batches never
compete for the same cores.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence

log = logging.getLogger(__name__)


@dataclass
class _Job:
    key: Hashable
    items: Sequence[Any]
    future: Future


class _Expected:
    def __init__(self, batcher: "Batcher"):
        self.batcher = batcher

    def __enter__(self):
        self.batcher.incoming += 1  # only the event loop's thread changes it

    def __exit__(self, *exc):
        self.batcher.incoming -= 1


class Batcher:
    """``runners``: key kind -> function(items) -> one result per item, called in the worker thread.

    A job is a request's items (one or many); its result is the list of their results. When a
    batch fails, its jobs run again one by one, so one bad request never fails its neighbours.
    With ``max_batch=1`` every job runs alone (no batching).
    """

    def __init__(self, runners: Dict[str, Callable[[Sequence[Any]], List[Any]]], max_batch: int = 32,
                 max_wait_ms: float = 5.0, threads: Optional[int] = None):
        self.incoming = 0  # requests being read and checked: jobs that are about to be submitted
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1; got {max_batch}")
        self.runners, self.max_batch, self.max_wait = runners, max_batch, max_wait_ms / 1000.0
        self.threads = threads
        self._queue: "queue.Queue[Optional[_Job]]" = queue.Queue()
        self._held: Optional[_Job] = None
        self.batches = 0  # forward passes run, the items they held, and the seconds they took (/health)
        self.items = 0
        self.busy = 0.0
        self._worker = threading.Thread(target=self._loop, name="crossfuse-batcher", daemon=True)
        self._worker.start()

    def expect(self) -> "_Expected":
        """``with batcher.expect():`` around reading a request: while some request is on its way,
        an open batch waits (up to max_wait) for it; when none is, the batch runs at once, so a
        lone client pays no waiting time."""
        return _Expected(self)

    def submit(self, key: Hashable, items: Sequence[Any]) -> "asyncio.Future":
        """Queue ``items`` under ``key`` (a tuple whose first element names the runner) now; await
        the returned future for their results. Call it from the event loop."""
        fut: Future = Future()
        self._queue.put(_Job(key, list(items), fut))
        return asyncio.wrap_future(fut)

    def run_now(self, key: Hashable, items: Sequence[Any]) -> List[Any]:
        """The same from a thread that is not the event loop (tests, the benchmark)."""
        fut: Future = Future()
        self._queue.put(_Job(key, list(items), fut))
        return fut.result()

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=10)

    def _loop(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        while True:
            first = self._held or self._queue.get()
            self._held = None
            if first is None:
                return
            batch, size = [first], len(first.items)
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    if left > 0 and self.incoming > 0:  # a request is on its way: wait a little for it
                        job = self._queue.get(timeout=min(left, 0.001))
                    else:
                        job = self._queue.get_nowait()
                except queue.Empty:
                    if left > 0 and self.incoming > 0:
                        continue
                    break
                if job is None:
                    self._queue.put(None)  # stop after this batch
                    break
                if job.key != first.key or size + len(job.items) > self.max_batch:
                    self._held = job  # opens the next batch
                    break
                batch.append(job)
                size += len(job.items)
            self._run(batch)

    def _run(self, batch: List[_Job]) -> None:
        runner = self.runners[batch[0].key[0]]
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        start = time.perf_counter()
        try:
            results = runner([it for j in live for it in j.items])
            self.batches += 1
            self.items += len(results)
            self.busy += time.perf_counter() - start
        except BaseException as exc:
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return
            log.debug("a batch of %d jobs failed (%s); running them one by one", len(live), exc)
            for j in live:
                try:
                    j.future.set_result(runner(j.items))
                except BaseException as one:
                    j.future.set_exception(one)
            return
        start = 0
        for j in live:
            j.future.set_result(results[start:start + len(j.items)])
            start += len(j.items)
