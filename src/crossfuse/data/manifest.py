"""Read manifests (CSV, JSONL, Parquet) and infer each column's role when the config gives none."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd

from crossfuse.config.schema import Component, ModalityConfig
from crossfuse.errors import ConfigError, DataError, Problem

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3")
DEFAULT_ENCODERS = {"image": "small_cnn", "text": "gru", "audio": "audio_cnn", "tabular": "mlp"}
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest by its extension; every failure names the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError([Problem(str(path), "manifest file not found")])
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=True)
        elif suffix in (".jsonl", ".ndjson", ".json"):
            df = pd.read_json(path, lines=suffix != ".json")
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            raise DataError([Problem(str(path), f"unsupported manifest format '{suffix}'; use .csv, .tsv, "
                                                ".jsonl or .parquet")])
    except DataError:
        raise
    except Exception as exc:  # pandas/pyarrow parse errors carry the line; keep their text
        raise DataError([Problem(str(path), f"cannot be parsed: {exc}")]) from exc
    if len(df) == 0:
        raise DataError([Problem(str(path), "manifest has no rows")])
    return df.reset_index(drop=True)


def infer_modalities(df: pd.DataFrame, exclude: List[Optional[str]]) -> Dict[str, ModalityConfig]:
    """Guess the modality of every column not in ``exclude``.

    A column of strings ending in an image extension is an image; strings averaging more than
    three words, or mostly unique, are text; strings ending in an audio extension are audio;
    everything else (numbers, short repeated strings) joins one tabular modality.
    """
    image_cols, text_cols, audio_cols, tab_cols = [], [], [], []
    for col in df.columns:
        if col in exclude or str(col).lower() == "split":
            continue
        values = df[col].dropna()
        if pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
            tab_cols.append(col)
            continue
        strings = values.astype(str)
        if len(strings) and strings.str.lower().str.endswith(IMAGE_EXTS).mean() > 0.9:
            image_cols.append(col)
        elif len(strings) and strings.str.lower().str.endswith(AUDIO_EXTS).mean() > 0.9:
            audio_cols.append(col)
        elif len(strings) and (strings.str.split().str.len().mean() > 3 or strings.nunique() > 0.5 * len(strings)):
            text_cols.append(col)
        else:
            tab_cols.append(col)
    modalities: Dict[str, ModalityConfig] = {}
    for kind, cols in (("image", image_cols), ("text", text_cols), ("audio", audio_cols)):
        for col in cols:
            name = kind if len(cols) == 1 else f"{kind}_{col}"
            modalities[name] = ModalityConfig(kind, [col], Component(DEFAULT_ENCODERS[kind]))
    if tab_cols:
        modalities["tabular"] = ModalityConfig("tabular", tab_cols, Component(DEFAULT_ENCODERS["tabular"]))
    if not modalities:
        raise ConfigError("No input columns found in the manifest besides the target")
    return modalities
