"""The Flickr8K/30K readers on tiny folders laid out as the datasets are distributed."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from crossfuse.data import is_flickr_dir, read_flickr
from crossfuse.errors import DataError

from conftest import FLICKR_NAMES as NAMES
from conftest import make_flickr8k as flickr8k


def test_flickr8k_token_file_and_split_lists(tmp_path):
    root = flickr8k(tmp_path / "Flickr8k")
    assert is_flickr_dir(root)
    df = read_flickr(root)
    assert len(df) == 20 and list(df.columns) == ["image", "caption", "image_id", "split"]
    assert df.groupby("image_id").size().tolist() == [5, 5, 5, 5]  # five captions share each image
    assert df.groupby("split")["image_id"].nunique().to_dict() == {"test": 1, "train": 2, "val": 1}
    first = df.iloc[0]
    assert first["caption"] == "caption 0 of image 0 ." and first["image_id"] == "1000268201_693b08cb0e"
    assert first["image"].endswith("Flicker8k_Dataset/1000268201_693b08cb0e.jpg")


def test_flickr30k_karpathy_splits_and_results_csv(tmp_path):
    root = tmp_path / "flickr30k"
    (root / "flickr30k-images").mkdir(parents=True)
    for name in NAMES[:3]:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "flickr30k-images" / name)
    rows = ["image_name| comment_number| comment"] + [f"{n}| {k}| A dog | with a pipe {k}" for n in NAMES[:3]
                                                       for k in range(2)]
    (root / "results.csv").write_text("\n".join(rows))
    splits = ["train", "restval", "test"]
    (root / "dataset_flickr30k.json").write_text(json.dumps(
        {"images": [{"filename": n, "split": s, "sentences": []} for n, s in zip(NAMES[:3], splits)]}))
    df = read_flickr(root)
    assert len(df) == 6
    assert df["caption"].iloc[0] == "A dog | with a pipe 0"  # a '|' inside the caption survives
    assert df.drop_duplicates("image_id")["split"].tolist() == ["train", "train", "test"]  # restval -> train


def test_images_outside_the_split_lists_are_left_out(tmp_path):
    root = flickr8k(tmp_path / "f")
    (root / "Flickr_8k.testImages.txt").write_text("")
    assert read_flickr(root)["image_id"].nunique() == 3
    assert read_flickr(root, keep_unsplit=True)["image_id"].nunique() == 4


def test_malformed_line_and_missing_image_are_reported_with_their_place(tmp_path):
    lines = [f"{NAMES[0]}#0\ta fine caption", "no tab or hash here", f"{NAMES[1]}#0\t"]
    root = flickr8k(tmp_path / "bad", token_lines=lines)
    with pytest.raises(DataError) as err:
        read_flickr(root)
    text = str(err.value)
    assert "Flickr8k.token.txt" in text and "line 2" in text and "line 3" in text
    root2 = flickr8k(tmp_path / "missing")
    (root2 / "Flicker8k_Dataset" / NAMES[2]).unlink()
    with pytest.raises(DataError, match=f"image '{NAMES[2]}' not found"):
        read_flickr(root2)
    with pytest.raises(DataError, match="no Flickr caption file"):
        read_flickr(tmp_path)
