"""The shipped Flickr8K recipe (VGG16 + BERT, weighted fusion 0.7 / 0.3): its manifest builder on
files laid out as Flickr8K's archives unpack, and the config trained as shipped except for where
the weights come from (random VGG16 at 32 px, a tiny local BERT)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

ROOT = Path(__file__).parents[2]
RECIPE = ROOT / "src" / "crossfuse" / "resources" / "flickr8k_vgg16_bert.yaml"
BUILDER = ROOT / "benchmarks" / "datasets" / "flickr8k.py"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def fake_flickr8k(root: Path, photos: int = 30) -> list:
    """Photos of one colour each, five captions per photo, and per photo two judged pairs: its own
    caption #1 (scores 4 4 3) and caption #0 of the next photo (scores 1 2 1)."""
    images = root / "Flicker8k_Dataset"  # the archive's own spelling
    images.mkdir(parents=True)
    (root / "Flickr8k_text").mkdir()
    names, tokens, judged = [], [], []
    for i in range(photos):
        colour = list(COLOURS)[i % 3]
        name = f"{1000 + i}_abc.jpg"
        Image.new("RGB", (40, 30), COLOURS[colour]).save(images / name)
        names.append(name)
        tokens += [f"{name}#{k}\ta {colour} thing number {i} caption {k}" for k in range(5)]
    for i, name in enumerate(names):
        judged.append(f"{name}\t{name}#1\t4\t4\t3")
        judged.append(f"{name}\t{names[(i + 1) % photos]}#0\t1\t2\t1")
    (root / "Flickr8k_text" / "Flickr8k.token.txt").write_text("\n".join(tokens) + "\n")
    (root / "Flickr8k_text" / "ExpertAnnotations.txt").write_text("\n".join(judged) + "\n")
    return names


def build(root: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BUILDER), str(root), str(out), *args],
                          capture_output=True, text=True, timeout=120)


def test_builder_pairs_each_judged_caption_with_its_photo_and_keeps_photos_in_one_split(tmp_path):
    names = fake_flickr8k(tmp_path / "f8k")
    proc = build(tmp_path / "f8k", tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(tmp_path / "data" / "manifest.csv")
    assert len(df) == 2 * len(names) and df["id"].is_unique
    first = df[df["image"].str.endswith(names[0])].set_index("label")
    assert first.loc["4 exact", "caption"] == "a red thing number 0 caption 1"  # median of 4 4 3
    assert first.loc["1 no", "caption"] == "a green thing number 1 caption 0"  # median of 1 2 1: photo 1's caption
    assert df.groupby("image")["split"].nunique().max() == 1
    assert df.drop_duplicates("image")["split"].value_counts().to_dict() == {"train": 18, "val": 6, "test": 6}
    assert build(tmp_path / "f8k", tmp_path / "match", "--label", "match").returncode == 0
    match = pd.read_csv(tmp_path / "match" / "manifest.csv")
    assert sorted(match["label"].value_counts().items()) == [("no", 30), ("yes", 30)]


def test_builder_names_the_file_and_line_of_a_bad_judgement_and_writes_nothing(tmp_path):
    fake_flickr8k(tmp_path / "f8k", photos=6)
    notes = tmp_path / "f8k" / "Flickr8k_text" / "ExpertAnnotations.txt"
    lines = notes.read_text().splitlines()
    lines[3] = lines[3].replace("\t1\t2\t1", "\t1\t7\t1")
    notes.write_text("\n".join(lines) + "\n")
    proc = build(tmp_path / "f8k", tmp_path / "data")
    assert proc.returncode != 0
    assert "ExpertAnnotations.txt, line 4" in proc.stderr and "scores 1..4" in proc.stderr
    assert not (tmp_path / "data" / "manifest.csv").exists()


@pytest.mark.slow
def test_recipe_trains_as_shipped_with_local_weights(tmp_path, tiny_bert):
    from crossfuse.cli.main import main
    from crossfuse.engine import Predictor

    fake_flickr8k(tmp_path / "f8k")
    assert build(tmp_path / "f8k", tmp_path / "data").returncode == 0
    run = tmp_path / "run"
    assert main(["-q", "train", str(RECIPE), f"data.manifest={tmp_path / 'data' / 'manifest.csv'}",
                 "modalities.image.encoder.weights=null", "modalities.image.encoder.image_size=32",
                 f"modalities.text.encoder.path={tiny_bert}", "train.epochs=2", "train.progress=false",
                 f"output_dir={run}"]) == 0
    model = Predictor.load(run / "model").model
    assert model.encoders["image"].output_dim == 4096  # VGG16 up to fc7
    weights = dict(zip(model.fusion.modalities, model.fusion.modality_weights().tolist()))
    assert weights == pytest.approx({"image": 0.7, "text": 0.3})
    df = pd.read_csv(tmp_path / "data" / "manifest.csv")
    predictor = Predictor.load(run / "model")
    predictor.allow_outside_paths = True  # the user's own say, as --allow-outside-paths: a model never grants it
    out = predictor.predict_frame(df.head(4), tmp_path / "data")
    assert len(out) == 4 and set(out["prediction"]) <= set(df["label"])
    probs = out.filter(like="prob").to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
