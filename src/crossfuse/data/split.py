"""Train/val/test splits: from a split column when the manifest has one, else stratified."""
from __future__ import annotations

import logging
from typing import Dict, Optional

import pandas as pd
from sklearn.model_selection import train_test_split

from crossfuse.config.schema import SplitConfig
from crossfuse.data.manifest import SPLIT_NAMES
from crossfuse.data.validate import label_str
from crossfuse.errors import DataError, Problem

log = logging.getLogger(__name__)


def split_frame(df: pd.DataFrame, cfg: SplitConfig, target: Optional[str], stratify: bool,
                file: str = "manifest", groups: Optional[str] = None) -> Dict[str, pd.DataFrame]:
    """``groups``: a column whose rows must stay in one split (an image's captions), for a random split."""
    if cfg.column and cfg.column in df.columns:
        names = df[cfg.column].astype(str).str.strip().str.lower()
        bad = [Problem(file, f"unknown split {v!r}; use train, val or test", pos, cfg.column)
               for pos, v in zip(range(len(df)), df[cfg.column].tolist()) if names.iloc[pos] not in SPLIT_NAMES]
        if bad:
            raise DataError(bad)
        canon = names.map(SPLIT_NAMES)
        parts = {s: df[canon.values == s] for s in ("train", "val", "test")}
        if not len(parts["val"]) and cfg.val_size > 0 and len(parts["train"]) > 1:
            # a train/test-only column must not turn validation (and so early stopping) off
            sub = SplitConfig(None, min(0.5, cfg.val_size * len(df) / len(parts["train"])), 0.0, cfg.seed)
            carved = _group_split(parts["train"], sub, groups) if groups else \
                _random_split(parts["train"], sub, target, stratify)
            parts["train"], parts["val"] = carved["train"], carved["val"]
            log.info("The '%s' column has no validation rows: %d of its %d training rows (data.split.val_size=%s "
                     "of the data) are held out for validation", cfg.column, len(parts["val"]),
                     len(parts["train"]) + len(parts["val"]), cfg.val_size)
    else:
        parts = _group_split(df, cfg, groups) if groups else _random_split(df, cfg, target, stratify)
    if len(parts["train"]) == 0:
        raise DataError([Problem(file, "the training split is empty")])
    return parts


def _random_split(df, cfg, target, stratify) -> Dict[str, pd.DataFrame]:
    def split(frame, size, seed):
        if size <= 0 or len(frame) < 2:
            return frame, frame.iloc[:0]
        # labels as strings: a JSONL column mixing 1, "1" and "b" is one set of classes, not a TypeError
        strat = frame[target].map(label_str) if (stratify and target) else None
        if strat is not None and (strat.value_counts().min() < 2 or round(size * len(frame)) < strat.nunique()):
            log.warning("Some classes are too small to stratify the split; splitting at random instead")
            strat = None
        return train_test_split(frame, test_size=size, random_state=seed, stratify=strat)

    rest, test = split(df, cfg.test_size, cfg.seed)
    val_share = cfg.val_size / (1 - cfg.test_size) if cfg.test_size < 1 else 0
    train, val = split(rest, val_share, cfg.seed + 1)
    return {"train": train.sort_index(), "val": val.sort_index(), "test": test.sort_index()}


def _group_split(df, cfg, groups: str) -> Dict[str, pd.DataFrame]:
    """Random split of whole groups: no group has rows on both sides."""
    from sklearn.model_selection import GroupShuffleSplit

    def split(frame, size, seed):
        if size <= 0 or frame[groups].nunique() < 2:
            return frame, frame.iloc[:0]
        a, b = next(GroupShuffleSplit(n_splits=1, test_size=size, random_state=seed).split(frame, groups=frame[groups]))
        return frame.iloc[a], frame.iloc[b]

    rest, test = split(df, cfg.test_size, cfg.seed)
    train, val = split(rest, cfg.val_size / (1 - cfg.test_size) if cfg.test_size < 1 else 0, cfg.seed + 1)
    return {"train": train.sort_index(), "val": val.sort_index(), "test": test.sort_index()}
