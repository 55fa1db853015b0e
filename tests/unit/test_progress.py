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


def test_thread_settings_reach_the_file_check_pool(monkeypatch, items):
    import concurrent.futures

    import pandas as pd
    import torch

    from crossfuse.data.processors import ImageProcessor
    from crossfuse.threads import set_threads, thread_count

    seen = []
    real = concurrent.futures.ThreadPoolExecutor

    def spy(max_workers=None, **kw):
        seen.append(max_workers)
        return real(max_workers=max_workers, **kw)

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", spy)
    df = pd.read_csv(items).head(4)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    ImageProcessor(["image"]).check(df, items.parent, True)
    before = torch.get_num_threads()
    try:
        set_threads(2)
        ImageProcessor(["image"]).check(df, items.parent, True)
        assert torch.get_num_threads() == 2 and thread_count() == 2
    finally:
        set_threads(None)
        torch.set_num_threads(before)
    assert seen == [3, 2]  # OMP_NUM_THREADS, then the explicit setting


def test_progress_leaves_torchs_rng_where_a_tqdm_loop_left_it():
    """Runs keep the dropout masks, and so the numbers, they had when every loop had a tqdm bar."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    loader = DataLoader(list(range(10)), batch_size=2)
    states = []
    for wrap in (lambda dl: tqdm(dl, disable=True), lambda dl: Progress(dl, "x", enabled=False),
                 lambda dl: Progress(dl, "x")):
        torch.manual_seed(1)
        next(iter(wrap(loader)))
        states.append(torch.get_rng_state())
    assert torch.equal(states[0], states[1]) and torch.equal(states[0], states[2])
