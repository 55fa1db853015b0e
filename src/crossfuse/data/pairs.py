"""Pair data for retrieval: Flickr8K / Flickr30K caption files read as they are distributed.

A Flickr folder holds images and a caption file with several captions per image:
- ``Flickr8k.token.txt`` / ``results_20130124.token``: ``<image>#<n>\\t<caption>`` per line;
- ``captions.txt`` (``image,caption`` CSV) or ``results.csv`` (``image_name| comment_number| comment``),
  the layouts of the common re-distributions.
Standard splits come from ``Flickr_8k.{train,dev,test}Images.txt`` (one image name per line) or
from Karpathy's ``dataset_flickr8k.json`` / ``dataset_flickr30k.json`` (``restval`` counts as
train). The result is a manifest: one row per (image, caption) with ``image`` (absolute path),
``caption``, ``image_id`` (the group shared by an image's captions) and ``split``.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd

from crossfuse.errors import DataError, Problem

log = logging.getLogger(__name__)

TOKEN_FILES = ("Flickr8k.token.txt", "results_20130124.token", "Flickr30k.token.txt", "captions.txt", "results.csv")
IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k-images", "flickr30k_images", "Images", "images")
SPLIT_LISTS = {"train": ("Flickr_8k.trainImages.txt",), "val": ("Flickr_8k.devImages.txt",),
               "test": ("Flickr_8k.testImages.txt",)}
KARPATHY_FILES = ("dataset_flickr8k.json", "dataset_flickr30k.json")
_TOKEN_LINE = re.compile(r"^(?P<image>[^#\t]+)#(?P<n>\d+)\s+(?P<caption>.*)$")


def is_flickr_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / f).is_file() for f in TOKEN_FILES)


def read_flickr(root: str | Path, captions: Optional[str | Path] = None, images: Optional[str | Path] = None,
                keep_unsplit: bool = False) -> pd.DataFrame:
    """One row per (image, caption) of a Flickr8K/30K folder; see the module docstring."""
    root = Path(root)
    cap_file = Path(captions) if captions else next((root / f for f in TOKEN_FILES if (root / f).is_file()), None)
    if cap_file is None or not cap_file.is_file():
        raise DataError([Problem(str(captions or root), "no Flickr caption file found; expected one of "
                                 + ", ".join(TOKEN_FILES))])
    img_dir = Path(images) if images else next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root)
    df = read_captions(cap_file)
    missing = sorted({name for name in df["image_name"].unique() if not (img_dir / name).is_file()})
    if missing:
        raise DataError([Problem(str(cap_file), f"image '{name}' not found in {img_dir}", int(pos), "image")
                         for name, pos in zip(missing, df.drop_duplicates("image_name").set_index("image_name")
                                                         .loc[missing, "line"])],
                        hint="pass images=... (or put the images beside the caption file)")
    splits = _read_splits(root)
    df["split"] = df["image_name"].map(splits) if splits else None
    if splits:
        unsplit = df["split"].isna()
        if unsplit.any() and not keep_unsplit:
            log.info("Flickr: %d images are in no split list; left out", df.loc[unsplit, "image_name"].nunique())
            df = df[~unsplit]
    df["image"] = [str((img_dir / name).resolve()) for name in df["image_name"]]
    df["image_id"] = df["image_name"].str.rsplit(".", n=1).str[0]
    out = df[["image", "caption", "image_id", "split"]].reset_index(drop=True)
    log.info("Flickr: %d captions of %d images from %s", len(out), out["image_id"].nunique(), cap_file)
    return out


def read_captions(path: str | Path) -> pd.DataFrame:
    """A Flickr caption file as rows of ``image_name``, ``caption``, ``n`` (the caption's number
    among its image's: ``#n`` in the token files, the order of appearance in the CSV layouts) and
    ``line`` (1-based, for errors)."""
    path = Path(path)
    df = _caption_rows(path)
    if "n" not in df:
        df["n"] = df.groupby("image_name").cumcount()
    return df


def _caption_rows(path: Path) -> pd.DataFrame:
    rows: List[Dict] = []
    problems: List[Problem] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].replace(" ", "").lower() if lines else ""
    if header.startswith("image,caption"):  # captions.txt: CSV with a header
        df = pd.read_csv(path)
        df.columns = [c.strip().lower() for c in df.columns]
        return pd.DataFrame({"image_name": df["image"].astype(str).str.strip(),
                             "caption": df["caption"].astype(str).str.strip(), "line": df.index + 2})
    if header.startswith("image_name|"):  # results.csv: '|'-separated with a header
        for i, line in enumerate(lines[1:], start=2):
            parts = line.split("|", 2)
            if len(parts) < 3 or not parts[2].strip():
                problems.append(Problem(str(path), f"line {i}: expected 'image| number| caption'", i - 2))
                continue
            rows.append({"image_name": parts[0].strip(), "caption": parts[2].strip(), "line": i})
    else:
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            m = _TOKEN_LINE.match(line.strip())
            if not m or not m["caption"].strip():
                problems.append(Problem(str(path), f"line {i}: expected '<image>#<n><TAB><caption>'", i - 1))
                continue
            rows.append({"image_name": m["image"].strip(), "caption": m["caption"].strip(), "n": int(m["n"]),
                         "line": i})
    if problems:
        raise DataError(problems)
    if not rows:
        raise DataError([Problem(str(path), "no captions in the file")])
    return pd.DataFrame(rows)


def _read_splits(root: Path) -> Dict[str, str]:
    """image file name -> train/val/test from the split lists or Karpathy's JSON, if present."""
    splits: Dict[str, str] = {}
    for split, names in SPLIT_LISTS.items():
        for name in names:
            if (root / name).is_file():
                for image in (root / name).read_text().split():
                    splits[image.strip()] = split
    if splits:
        return splits
    for name in KARPATHY_FILES:
        if (root / name).is_file():
            data = json.loads((root / name).read_text())
            for item in data.get("images", []):
                s = {"restval": "train"}.get(item.get("split"), item.get("split"))
                splits[item["filename"]] = s
            return splits
    return splits
