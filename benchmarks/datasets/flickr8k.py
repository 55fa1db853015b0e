"""Flickr8K's expert judgements as a labelled image + text set: does this caption describe this image?

Flickr8K (Hodosh, Young and Hockenmaier, JAIR 2013) is 8,092 photos with five captions each. Its
text archive also holds ExpertAnnotations.txt: 5,822 image-caption pairs (the captions mostly
written for other images) that three experts scored from 1 ("does not describe the image at all")
to 4 ("describes the image without any errors"). Each pair becomes one item: the photo, the
caption, and as label the experts' median score (``--label score``: 1..4) or whether that median
is at least 3 (``--label match``: yes/no). The split keeps every photo in one part (pairs of one
photo share it): 60 % of the photos train, 20 % validation, 20 % test.

Flickr8K is not redistributable, so nothing here downloads it: get Flickr8k_Dataset.zip and
Flickr8k_text.zip from the authors' page (request form on illinois.edu) and unpack both into ROOT.

    python benchmarks/datasets/flickr8k.py ROOT data/flickr8k     # writes data/flickr8k/manifest.csv
    crossfuse train src/crossfuse/resources/flickr8k_vgg16_bert.yaml
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Tuple

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

SCORE_NAMES = {1: "1 no", 2: "2 minor aspects", 3: "3 minor mistakes", 4: "4 exact"}


def _find(root: Path, names, folder: bool = False) -> Path:
    for name in names:
        hits = sorted(p for p in root.rglob(name) if (p.is_dir() if folder else p.is_file()))
        if hits:
            return hits[0]
    raise SystemExit(f"{names[0]} not found under {root}: unpack Flickr8k_text.zip and Flickr8k_Dataset.zip there")


def _judgements(path: Path) -> pd.DataFrame:
    """ExpertAnnotations.txt: '<photo>.jpg\\t<photo>.jpg#<n>\\t<s1>\\t<s2>\\t<s3>' per line."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split("\t")
        if not line.strip():
            continue
        try:
            if len(parts) != 5:
                raise ValueError
            scores = [int(s) for s in parts[2:]]
            if not all(1 <= s <= 4 for s in scores):
                raise ValueError
        except ValueError:
            raise SystemExit(f"{path}, line {n}: expected '<photo> <caption id> <score> <score> <score>' with "
                             f"scores 1..4, separated by tabs; got {line[:80]!r}") from None
        rows.append({"photo": parts[0].strip(), "caption_id": parts[1].strip(), "score": int(np.median(scores))})
    return pd.DataFrame(rows)


def _photo_split(photos: pd.Series, seed: int, parts: Tuple[float, float] = (0.6, 0.2)) -> pd.Series:
    unique = np.array(sorted(photos.unique()))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_train, n_val = round(parts[0] * len(unique)), round(parts[1] * len(unique))
    split = {}
    for rank, i in enumerate(order):
        split[unique[i]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return photos.map(split)


def build(root: str | Path, out_dir: str | Path, label: str = "score", seed: int = 0) -> Path:
    from crossfuse.data.pairs import IMAGE_DIRS, read_captions
    from crossfuse.errors import DataError

    root = Path(root)
    if label not in ("score", "match"):
        raise SystemExit(f"--label must be 'score' or 'match', got {label!r}")
    try:
        rows = read_captions(_find(root, ["Flickr8k.token.txt"]))
    except DataError as exc:
        raise SystemExit(str(exc)) from None
    captions = dict(zip(rows["image_name"] + "#" + rows["n"].astype(str), rows["caption"]))
    pairs = _judgements(_find(root, ["ExpertAnnotations.txt"]))
    images = _find(root, IMAGE_DIRS[:2], folder=True)  # Flicker8k_Dataset: the archive's own spelling
    unknown = sorted(set(pairs["caption_id"]) - set(captions))
    if unknown:
        raise SystemExit(f"ExpertAnnotations.txt names {len(unknown)} captions Flickr8k.token.txt lacks, "
                         f"e.g. {unknown[:3]}")
    missing = sorted(p for p in pairs["photo"].unique() if not (images / p).is_file())
    if missing:
        raise SystemExit(f"{len(missing)} judged photos are not in {images}, e.g. {missing[:3]}")
    df = pd.DataFrame({
        "id": pairs["photo"].str.replace(".jpg", "", regex=False) + "/" + pairs["caption_id"],
        "image": [str(images / p) for p in pairs["photo"]],
        "caption": pairs["caption_id"].map(captions),
        "label": pairs["score"].map(SCORE_NAMES) if label == "score" else np.where(pairs["score"] >= 3, "yes", "no"),
        "split": _photo_split(pairs["photo"], seed),
    })
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "manifest.csv.part"
    df.to_csv(tmp, index=False)
    tmp.replace(out / "manifest.csv")
    return out / "manifest.csv"


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="folder holding the unpacked Flickr8k_text and Flickr8k_Dataset")
    p.add_argument("out", type=Path, nargs="?", default=Path("data/flickr8k"))
    p.add_argument("--label", choices=["score", "match"], default="score",
                   help="score: the experts' median 1..4 (default); match: yes when that median is >= 3")
    p.add_argument("--seed", type=int, default=0, help="seed of the split by photo")
    args = p.parse_args()
    path = build(args.root, args.out, args.label, args.seed)
    df = pd.read_csv(path)
    print(f"{path}: {len(df)} image-caption pairs over {df['image'].nunique()} photos; "
          f"labels {df['label'].value_counts().sort_index().to_dict()}; split {df['split'].value_counts().to_dict()}")
