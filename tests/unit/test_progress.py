"""Long loops log steady progress lines when stderr is not a terminal."""
from __future__ import annotations

import logging

from crossfuse.progress import Progress


def test_progress_logs_lines_without_a_terminal(monkeypatch, caplog):
    monkeypatch.setenv("CROSSFUSE_PROGRESS_SECONDS", "0")  # a line after every item
    bar = Progress(range(4), "extract image", unit="batch")
    with caplog.at_level(logging.INFO, logger="crossfuse.progress"):
        for i in bar:
            bar.set_postfix(loss=f"{i / 10:.2f}")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("extract image: 1/4 (25%), ") and "batch/s" in lines[0] and "left" in lines[0]
    assert lines[-1].startswith("extract image: 4/4 (100%)") and lines[-1].endswith("loss 0.30 (done)")


def test_progress_is_silent_when_disabled_or_quick(monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="crossfuse.progress"):
        assert list(Progress(range(3), "x", enabled=False)) == [0, 1, 2]
        assert list(Progress(range(3), "x")) == [0, 1, 2]  # well under the 30 s interval: nothing to say
    assert not caplog.records
