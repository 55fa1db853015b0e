"""Check a manifest before any work: every problem with file, row and column, all at once.

The ``on_bad_item`` policy then decides: ``error`` stops with the full list, ``skip`` drops the
affected rows (and says how many), ``missing`` keeps them with the bad cells treated as missing
modalities (numeric cells are imputed). Rows with an unusable target are dropped under both
``skip`` and ``missing``; problems with whole columns always stop.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from crossfuse.data.processors import Processor
from crossfuse.data.processors.base import is_blank
from crossfuse.errors import DataError, Problem

log = logging.getLogger(__name__)
POLICY_HINT = ("Fix these rows, or set data.on_bad_item=skip (drop them) or data.on_bad_item=missing "
               "(treat bad cells as missing modalities).")


def check_columns(df: pd.DataFrame, processors: Mapping[str, Processor], file: str,
                  target: Optional[str]) -> None:
    """Raise a DataError naming every configured column the manifest lacks."""
    available = ", ".join(map(str, df.columns))
    problems = [Problem(file, f"column not found (modality '{m}'); columns are: {available}", column=c)
                for m, p in processors.items() for c in p.columns if c not in df.columns]
    if target is not None and target not in df.columns:
        problems.append(Problem(file, f"target column not found; columns are: {available}", column=target))
    if problems:
        raise DataError(problems)


def find_problems(df: pd.DataFrame, processors: Mapping[str, Processor], file: str, base_dir: Path,
                  target: Optional[str], task: str, labels: Optional[Sequence[str]] = None,
                  open_files: bool = True, allow_outside: bool = False) -> List[Problem]:
    """Every cell-level problem of the manifest, sorted by row. A file path that leaves
    ``base_dir`` (absolute, or through '..') is a problem unless ``allow_outside``.

    Rows are the frame's index labels: for a manifest as read, the 0-based data row; for a part
    of one (a split), still the row of the original manifest.
    """
    problems: List[Problem] = []
    rows = df.index
    for name, proc in processors.items():
        nested = _nested_cells(df, proc.columns)  # Parquet/JSONL lists and mappings: one value per cell
        problems += [Problem(file, f"a {type(v).__name__} value; each cell must hold one value, not several",
                             int(rows[pos]), col, name) for pos, col, v in nested]
        clean = df
        if nested:
            clean = df.copy()
            for pos, col, _ in nested:
                clean.iat[pos, clean.columns.get_loc(col)] = None
        bad_nested = {(pos, col) for pos, col, _ in nested}
        problems += [Problem(file, msg, int(rows[pos]), col, name)
                     for pos, col, msg in proc.check(clean, base_dir, open_files, allow_outside)
                     if (pos, col) not in bad_nested]
    if target is not None and target in df.columns:
        known = None if labels is None else {str(l) for l in labels}
        for pos, v in zip(map(int, rows), df[target].tolist()):
            if is_blank(v):
                problems.append(Problem(file, "missing target value", pos, target))
            elif task == "regression" and not _is_number(v):
                problems.append(Problem(file, f"regression target is not a number: {v!r}", pos, target))
            elif known is not None and task == "classification" and label_str(v) not in known:
                problems.append(Problem(file, f"unknown label {v!r}; the model knows: {', '.join(sorted(known))}",
                                        pos, target))
    return sorted(problems, key=lambda p: (p.row if p.row is not None else -1, p.column or ""))


def _nested_cells(df: pd.DataFrame, columns: Sequence[str]):
    """(position, column, value) of cells holding a list, array or mapping."""
    out = []
    for col in columns:
        if col not in df.columns or df[col].dtype != object:
            continue
        out += [(pos, col, v) for pos, v in enumerate(df[col].tolist()) if isinstance(v, (list, tuple, dict, np.ndarray))]
    return out


def duplicate_ids(df: pd.DataFrame, column: Optional[str], file: str,
                  first: Optional[Dict[str, int]] = None) -> List[Problem]:
    """Rows whose id repeats an earlier row's (ids name items in predictions and indexes).
    ``first``: id -> the 0-based row that had it first, carried from one part of a manifest read
    in chunks to the next (updated in place), so a repeat across chunks is found too."""
    if not column or column not in df.columns:
        return []
    ids = df[column].astype(str)
    first = {} if first is None else first
    problems = []
    for row, v in zip(map(int, df.index), ids.tolist()):
        if v in first:
            problems.append(Problem(file, f"duplicate id {v!r} (first at row {first[v] + 1})", row, column))
        else:
            first[v] = row
    return problems


def unseen_labels(splits: Mapping[str, pd.DataFrame], target: str, file: str) -> List[Problem]:
    """Labels of the validation or test rows that no training row has: the model can never predict
    them (each row is listed)."""
    known = {label_str(v) for v in splits["train"][target].tolist() if not is_blank(v)}
    return [Problem(file, f"label {label_str(v)!r} is in the {part} split only; no training row has it", int(r),
                    target)
            for part in ("val", "test") for r, v in zip(splits[part].index, splits[part][target].tolist())
            if not is_blank(v) and label_str(v) not in known]


def apply_policy(df: pd.DataFrame, problems: List[Problem], policy: str, target: Optional[str]
                 ) -> Tuple[pd.DataFrame, Dict[str, int]]:
    """Apply ``on_bad_item``; returns the rows to use and counts of what was done."""
    if not problems:
        return df, {"skipped": 0, "cells_missing": 0}
    if policy == "error":
        raise DataError(problems, hint=POLICY_HINT)
    if policy == "skip":
        drop = {p.row for p in problems}
    else:  # missing: only rows whose target is unusable go
        drop = {p.row for p in problems if p.column == target and p.modality is None}
    kept = df.drop(index=sorted(drop)) if drop else df
    report = {"skipped": len(drop), "cells_missing": 0 if policy == "skip" else len(problems) - len(
        [p for p in problems if p.row in drop])}
    if drop:
        log.warning("on_bad_item=%s: skipped %d of %d rows with problems (first: %s)", policy, len(drop), len(df),
                    next(p for p in problems if p.row in drop))
    if report["cells_missing"]:
        log.warning("on_bad_item=missing: %d bad cells are treated as missing", report["cells_missing"])
    return kept, report


def usable_rows(df: pd.DataFrame, processors: Mapping[str, Processor], file: str, base_dir: Path, policy: str,
                target: Optional[str] = None, task: str = "classification", labels: Optional[Sequence[str]] = None,
                open_files: bool = True, allow_outside: bool = False) -> Tuple[pd.DataFrame, set]:
    """Columns, cells and files checked, then ``on_bad_item`` applied: (rows to use, bad
    (row, modality) cells to serve as missing)."""
    check_columns(df, processors, file, target)
    problems = find_problems(df, processors, file, base_dir, target, task, labels=labels, open_files=open_files,
                             allow_outside=allow_outside)
    kept, _ = apply_policy(df, problems, policy, target)
    return kept, missing_cells(problems, processors)


def label_str(v) -> str:
    """Labels are compared as strings; 3.0 read back from a CSV is the label '3'."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _is_number(v) -> bool:
    try:
        return np.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def missing_cells(problems: List[Problem], processors: Mapping[str, Processor]) -> set:
    """(row, modality) pairs that a bad file or empty cell turns into a missing modality.

    Tabular problems are not among them: a bad numeric cell is imputed, the modality stays.
    """
    return {(p.row, p.modality) for p in problems if p.modality and processors[p.modality].missing_when_bad}
