"""Read manifests (CSV, JSONL, Parquet) and infer each column's role when the config gives none."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pandas as pd

from crossfuse.config.schema import Component, ModalityConfig
from crossfuse.errors import ConfigError, DataError, Problem

# columns that hold a split or fold assignment, never a feature, when modalities are inferred
SPLIT_LIKE = {"split", "fold", "folds", "kfold", "cv_fold", "partition", "subset"}
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


def read_manifest(path: str | Path, columns: Optional[List[str]] = None) -> pd.DataFrame:
    """Read a manifest by its extension; every failure names the file. ``columns``: only these are
    read (Parquet and CSV never load the others; those the file lacks are left out, for the caller's
    checks to name)."""
    path = Path(path)
    if not path.is_file():
        raise DataError([Problem(str(path), "manifest file not found")])
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".jsonl", ".ndjson", ".json"):
        _check_utf8(path)
    try:
        if suffix in (".csv", ".tsv"):
            sep = "\t" if suffix == ".tsv" else ","
            usecols = None if columns is None else (lambda c, wanted=set(columns): c in wanted)
            df = pd.read_csv(path, sep=sep, keep_default_na=True, usecols=usecols)
            _delimiter_hint(df if columns is None else pd.read_csv(path, sep=sep, nrows=0), path, suffix)
        elif suffix in (".jsonl", ".ndjson"):
            df = _read_jsonl(path)
        elif suffix == ".json":
            df = pd.read_json(path)
        elif suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
            wanted = None if columns is None else [c for c in dict.fromkeys(columns) if c in names]
            df = pd.read_parquet(path, columns=wanted)  # pyarrow reads only these columns' chunks
        else:
            raise DataError([Problem(str(path), f"unsupported manifest format '{suffix}'; use .csv, .tsv, "
                                                ".jsonl or .parquet")])
    except DataError:
        raise
    except Exception as exc:  # pandas/pyarrow parse errors carry the line; keep their text
        raise DataError([Problem(str(path), f"cannot be parsed: {exc}")]) from exc
    if columns is not None and suffix in (".jsonl", ".ndjson", ".json"):
        df = df[[c for c in df.columns if c in set(columns)]]
    if columns is not None and df.shape[1] == 0:  # none of them: read it all, so the checks name them
        return read_manifest(path)
    if len(df) == 0:
        raise DataError([Problem(str(path), "manifest has no rows")])
    return df.reset_index(drop=True)


def manifest_chunks(path: str | Path, columns: Optional[List[str]] = None, chunk_rows: int = 100_000
                    ) -> Iterator[pd.DataFrame]:
    """A manifest in parts of at most ``chunk_rows`` rows, each indexed by its rows' 0-based
    positions in the whole file, so problems and outputs name the file's own rows. ``columns``:
    only these are read (those the file lacks are left out, for the caller's checks to name).

    Parquet is scanned in record batches with pyarrow and CSV/TSV read in chunks by pandas, so a
    manifest larger than memory is never loaded whole, and only the columns asked for are read; a
    JSON / JSONL manifest is read whole and cut. A manifest without rows is refused as
    ``read_manifest`` refuses it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError([Problem(str(path), "manifest file not found")])
    offset = 0
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            file = pq.ParquetFile(path)
            names = set(file.schema_arrow.names)
            wanted = None if columns is None else [c for c in dict.fromkeys(columns) if c in names]
            batches = file.iter_batches(batch_size=chunk_rows, columns=wanted)
            frames: Iterator[pd.DataFrame] = (b.to_pandas() for b in batches)
        elif suffix in (".csv", ".tsv"):
            _check_utf8(path)
            usecols = None if columns is None else (lambda c, wanted=set(columns): c in wanted)
            frames = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", chunksize=chunk_rows, usecols=usecols)
        else:
            whole = read_manifest(path)
            whole = whole if columns is None else whole[[c for c in whole.columns if c in set(columns)]]
            frames = (whole.iloc[i:i + chunk_rows] for i in range(0, len(whole), chunk_rows))
        for frame in frames:
            frame = frame.reset_index(drop=True)
            frame.index = frame.index + offset
            offset += len(frame)
            yield frame
    except DataError:
        raise
    except Exception as exc:
        raise DataError([Problem(str(path), f"cannot be parsed (after row {offset}): {exc}")]) from exc
    if offset == 0:
        raise DataError([Problem(str(path), "manifest has no rows")])


def _check_utf8(path: Path) -> None:
    """Text manifests must be UTF-8: name the first line that is not."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError([Problem(str(path), f"line {number} is not UTF-8 text (byte {exc.start + 1} of the "
                                                    "line); save the file as UTF-8")]) from exc


def _read_jsonl(path: Path) -> pd.DataFrame:
    """One JSON object per line; a bad line is named, blank lines are allowed."""
    import json

    records, problems = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                problems.append(Problem(str(path), f"line {number} is not valid JSON: {exc}"))
                continue
            if not isinstance(record, dict):
                problems.append(Problem(str(path), f"line {number} is a {type(record).__name__}, not an object "
                                                   "({\"column\": value, ...})"))
                continue
            records.append(record)
    if problems:
        raise DataError(problems)
    return pd.DataFrame.from_records(records)


def _delimiter_hint(df: pd.DataFrame, path: Path, suffix: str) -> None:
    """A CSV read as a single column whose header holds ';' (or tabs) was written with another
    delimiter: say so instead of failing later with 'column not found'."""
    if df.shape[1] != 1:
        return
    header = str(df.columns[0])
    for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "'|'")):
        if sep in header:
            raise DataError([Problem(str(path), f"read as one column '{header[:60]}': the file seems to be "
                                                f"separated by {name}, not commas; save it with commas"
                                                + (" or name it .tsv" if sep == "\t" else ""))])


def leaking_columns(df: pd.DataFrame, target: str, candidates: List[str]) -> Dict[str, str]:
    """{column: why} for columns that give the target away: a one-to-one copy of it under another
    name (excluded from inference), or a column that alone predicts it almost perfectly (warned).

    Purity is the share of rows whose target is the most common one among rows sharing the
    column's value; only columns with repeated values are judged (a unique id is pure trivially).
    """
    from crossfuse.data.validate import label_str

    y = df[target].map(label_str)
    out = {}
    for col in candidates:
        x = df[col].astype(str)
        n_x = x.nunique()
        if n_x < 2 or n_x > 0.5 * len(df):
            continue
        per_value = y.groupby(x).agg(lambda s: s.value_counts().iloc[0])
        purity = float(per_value.sum()) / len(df)
        if purity == 1.0 and n_x == y.nunique():
            out[col] = "copy"
        elif purity >= 0.99:
            out[col] = f"predicts the target alone for {purity:.1%} of the rows"
    return out


def infer_modalities(df: pd.DataFrame, exclude: List[Optional[str]]) -> Dict[str, ModalityConfig]:
    """Guess the modality of every column not in ``exclude``.

    A column of strings ending in one of a file kind's extensions (image, audio) is that kind;
    strings averaging more than three words, or mostly unique, are text; everything else
    (numbers, short repeated strings) joins one tabular modality. Each gets its kind's default
    encoder.
    """
    from crossfuse.data.processors import FILE_KINDS, PROCESSORS

    columns: Dict[str, List[str]] = {kind: [] for kind in PROCESSORS}
    for col in df.columns:
        if col in exclude or str(col).lower() in SPLIT_LIKE:
            continue
        values = df[col].dropna()
        if pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
            columns["tabular"].append(col)
            continue
        strings = values.astype(str)
        lower = strings.str.lower()
        kind = next((p.kind for p in FILE_KINDS if len(strings) and lower.str.endswith(p.extensions).mean() > 0.9),
                    None)
        if kind is None:
            free_text = len(strings) and (strings.str.split().str.len().mean() > 3
                                          or strings.nunique() > 0.5 * len(strings))
            kind = "text" if free_text else "tabular"
        columns[kind].append(col)
    modalities: Dict[str, ModalityConfig] = {}
    for kind, cols in columns.items():
        proc = PROCESSORS[kind]
        if cols and not proc.single_column:  # one modality over all its columns
            modalities[kind] = ModalityConfig(kind, cols, Component(proc.default_encoder))
            continue
        for col in cols:
            name = kind if len(cols) == 1 else f"{kind}_{col}"
            modalities[name] = ModalityConfig(kind, [col], Component(proc.default_encoder))
    if not modalities:
        raise ConfigError("No input columns found in the manifest besides the target")
    return modalities
