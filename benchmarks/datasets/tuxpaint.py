"""Tux Paint stamps as a multimodal data set (Debian package tuxpaint-stamps-default).

Each stamp PNG with a description file becomes one item: the image, its English caption (the
first line of the .txt), the recorded English spoken description where one exists
(<name>_desc.ogg, about 66 stamps), and as label its top-level category (animals, food, ...).
SVG-only stamps are left out (rendering them would need another dependency). The split is
stratified by category: 50 % test, and of the rest 80 % train, 20 % validation.

    python benchmarks/datasets/tuxpaint.py data/tuxpaint     # writes data/tuxpaint/manifest.csv
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

STAMPS = Path("/usr/share/tuxpaint/stamps")


def build(out_dir: str | Path, stamps: Path = STAMPS, seed: int = 0) -> Path:
    if not stamps.is_dir():
        raise SystemExit(f"{stamps} not found: apt-get install tuxpaint-stamps-default (or `make tuxpaint`)")
    rows = []
    for png in sorted(stamps.rglob("*.png")):
        txt = png.with_suffix(".txt")
        if not txt.is_file():
            continue
        caption = txt.read_text(encoding="utf-8", errors="replace").splitlines()[0].strip()
        if not caption:
            continue
        spoken = png.with_name(png.stem + "_desc.ogg")
        rows.append({"id": str(png.relative_to(stamps).with_suffix("")), "image": str(png), "caption": caption,
                     "audio": str(spoken) if spoken.is_file() else "",
                     "label": png.relative_to(stamps).parts[0]})
    df = pd.DataFrame(rows)
    rest, test = train_test_split(df, test_size=0.5, stratify=df["label"], random_state=seed)
    counts = rest["label"].value_counts()
    strat = rest["label"].where(rest["label"].map(counts) >= 2, "other")
    train, val = train_test_split(rest, test_size=0.2, stratify=strat, random_state=seed)
    df["split"] = "train"
    df.loc[val.index, "split"] = "val"
    df.loc[test.index, "split"] = "test"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "manifest.csv", index=False)
    return out / "manifest.csv"


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, nargs="?", default=Path("data/tuxpaint"))
    path = build(p.parse_args().out)
    df = pd.read_csv(path)
    print(f"{path}: {len(df)} items, {df['label'].nunique()} classes, "
          f"{(df['audio'].fillna('') != '').sum()} with English speech; split {df['split'].value_counts().to_dict()}")
