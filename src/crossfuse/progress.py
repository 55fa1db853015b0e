"""Progress of long work: a tqdm bar on a terminal, steady log lines everywhere else.

Without a terminal (CI logs, nohup, a pipe) a bar prints nothing useful, so long loops log a line
every ``CROSSFUSE_PROGRESS_SECONDS`` seconds (30 by default): items done, rate and time left.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Iterable, Iterator, Optional

log = logging.getLogger("crossfuse.progress")


def _interval() -> float:
    try:
        return float(os.environ.get("CROSSFUSE_PROGRESS_SECONDS", 30))
    except ValueError:
        return 30.0


class Progress:
    """Wrap ``iterable``; ``set_postfix(**values)`` adds values (a loss) to the bar or the next line."""

    def __init__(self, iterable: Iterable, desc: str, total: Optional[int] = None, enabled: bool = True,
                 unit: str = "it", leave: bool = False):
        self.iterable, self.desc, self.unit, self.enabled = iterable, desc, unit, enabled
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.postfix: dict = {}
        from tqdm.auto import tqdm

        # always through tqdm, drawn or not: creating one advances torch's RNG, and runs must keep
        # the same dropout masks (and so the same numbers) as when every loop had a bar
        self.terminal = enabled and sys.stderr.isatty()
        self._bar = tqdm(iterable, desc=desc, total=self.total, leave=leave, unit=unit, disable=not self.terminal)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values
        if self.terminal:
            self._bar.set_postfix(**values)

    def __len__(self) -> int:
        return int(self.total or 0)

    def __iter__(self) -> Iterator:
        if self.terminal or not self.enabled:
            yield from self._bar
            return
        every, start = _interval(), time.monotonic()
        last, done, logged = start, 0, False
        for item in self._bar:
            yield item
            done += 1
            now = time.monotonic()
            if now - last >= every:
                log.info(self.line(done, now - start))
                last, logged = now, True
        if logged:
            log.info(self.line(done, time.monotonic() - start) + " (done)")

    def line(self, done: int, elapsed: float) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {done}" + (f"/{self.total} ({100 * done / self.total:.0f}%)" if self.total else ""),
                 f"{rate:.1f} {self.unit}/s"]
        if self.total and rate > 0 and done < self.total:
            parts.append(f"about {_clock((self.total - done) / rate)} left")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        return ", ".join(parts)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
