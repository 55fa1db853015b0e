"""Bad input gets a clear error naming file, row and column, before any work; nothing crashes midway."""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import yaml

from crossfuse.atomic import atomic_directory
from crossfuse.cli.main import main
from crossfuse.config import load_config
from crossfuse.config.schema import Config, DataConfig, SplitConfig
from crossfuse.data import find_problems, read_manifest, split_frame
from crossfuse.data.processors import ImageProcessor, TextProcessor
from crossfuse.data.processors.audio import read_audio
from crossfuse.engine.pipeline import resolve_config
from crossfuse.errors import ConfigError, DataError

from conftest import tiny_config, write_tone


def test_mixed_label_types_split_without_a_type_error():
    df = pd.DataFrame({"label": [1, "1", "b", 2.0, "2", "b"] * 5, "x": range(30)})
    parts = split_frame(df, SplitConfig(None, 0.2, 0.2, 0), "label", stratify=True)
    assert sorted(pd.concat(parts.values()).index) == list(range(30))


@pytest.mark.parametrize("override,message", [
    ("modalities.image.encoder.image_size=100000", "'image_size' parameter of small_cnn must be an int in [8, 4096]"),
    ("modalities.image.encoder.channels=[-8]", "'channels' parameter of small_cnn must hold numbers in [1, 4096]"),
    ("modalities.text.processor.max_length=100000", "'max_length' must be a number in [1, 8192]"),
    ("head.hidden=[1000000]", "'head.hidden' sizes must be in [1, 16384]"),
])
def test_component_sizes_are_range_checked_with_the_config(items, tmp_path, capsys, override, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(items, tmp_path / "run")))
    assert main(["-q", "validate", str(cfg), override]) == 2
    assert message in capsys.readouterr().err


def _bare(tmp_path, df, folder, **data):
    manifest = folder / "m.csv"  # beside the images its paths name
    df.to_csv(manifest, index=False)
    cfg = tmp_path / "c.yaml"
    body = tiny_config(manifest, tmp_path / "run")
    body["data"].update(data)
    cfg.write_text(yaml.safe_dump(body))
    return cfg


def test_validate_finds_what_train_refuses(items, tmp_path, capsys):
    df = pd.read_csv(items)
    one_class = _bare(tmp_path, df.assign(label="cat"), items.parent)
    assert main(["-q", "validate", str(one_class)]) == 1
    out = capsys.readouterr().out
    assert "problem(s) training would stop at" in out and "the target has one class only (cat)" in out
    bad_split = _bare(tmp_path, df.assign(split=["train", "test", "holdout"] * 16), items.parent)
    assert main(["-q", "validate", str(bad_split)]) == 1
    assert "row 3, column 'split': unknown split 'holdout'" in capsys.readouterr().out


def test_a_label_only_in_the_evaluation_split_is_reported_with_its_rows(items, tmp_path, capsys):
    df = pd.read_csv(items).assign(split=["train"] * 36 + ["val"] * 6 + ["test"] * 6)
    df.loc[45, "label"] = "bird"
    cfg = _bare(tmp_path, df, items.parent)
    assert main(["-q", "validate", str(cfg)]) == 0
    assert "warning: " in (out := capsys.readouterr().out) and "row 46, column 'label': label 'bird' is in the test " \
        "split only" in out


def test_a_train_test_only_split_column_still_validates(items, tmp_path):
    df = pd.read_csv(items).assign(split=["train"] * 36 + ["test"] * 12)
    parts = split_frame(df, SplitConfig("split", 0.25, 0.25, 0), "label", stratify=True)
    assert len(parts["val"]) == 12 and len(parts["train"]) == 24 and len(parts["test"]) == 12
    assert set(parts["val"].index) <= set(range(36))  # carved from the training rows only


def test_image_pixel_limit_refuses_large_images_from_their_header(items):
    df = pd.read_csv(items).head(3)
    proc = ImageProcessor(["image"], max_pixels=100)  # the fixture's images are 16 x 16 = 256 pixels
    problems = find_problems(df, {"image": proc}, "m.csv", items.parent, None, "classification")
    assert len(problems) == 3 and "16 x 16 = 256 pixels is over the limit of 100" in str(problems[0])


def test_audio_is_cut_at_decode_time(tmp_path):
    write_tone(tmp_path / "long.wav", 440.0, seconds=30.0, sr=8000)
    assert len(read_audio(tmp_path / "long.wav", 8000, max_seconds=2.0)) == 16001
    assert len(read_audio(tmp_path / "long.wav", 8000)) == 240000


def test_text_is_cut_before_tokenizing():
    proc = TextProcessor(["t"], max_length=4)
    assert len(proc.load({"t": "word " * 10_000}, None, False)) == 4 * 64


def test_duplicate_yaml_keys_are_an_error_and_exponent_numbers_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  epochs: 3\n  lr: 1e-2\n")
    with pytest.raises(ConfigError, match=r"key 'lr' appears twice \(lines 2 and 4\)"):
        load_config(path)
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-2\n")
    cfg = load_config(path, ["train.warmup_epochs=1e0"])
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.warmup_epochs) == (0.001, 0.05, 1.0)
    with pytest.raises(ConfigError, match="'train.lr' must be a number. Got 'fast'"):
        load_config(path, ["train.lr=fast"])


@pytest.mark.parametrize("name,content,message", [
    ("m.csv", b"a,label\nok,x\n\xe9t\xe9,y\n", "line 3 is not UTF-8 text"),
    ("m.jsonl", b'{"a": 1, "label": "x"}\n{"a": 2, label}\n', "line 2 is not valid JSON"),
    ("m.jsonl", b'{"a": 1, "label": "x"}\n[1, 2]\n', "line 2 is a list, not an object"),
    ("m.csv", b"a;b;label\n1;2;x\n", "separated by semicolons, not commas"),
])
def test_manifest_format_errors_name_the_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_manifest(tmp_path / name)


def test_list_cells_are_refused_with_their_row_and_column(items, tmp_path):
    df = pd.read_csv(items).head(3)
    df["caption"] = [["one"], ["two", "captions"], ["three"]]  # a Parquet list column
    df.to_parquet(tmp_path / "m.parquet")
    back = read_manifest(tmp_path / "m.parquet")
    problems = find_problems(back, {"text": TextProcessor(["caption"])}, "m.parquet", items.parent, None, "x")
    assert [str(p) for p in problems] == [f"m.parquet, row {r}, column 'caption': a ndarray value; each cell must "
                                          "hold one value, not several" for r in (1, 2, 3)]


def test_a_copy_of_the_label_and_fold_columns_are_not_inferred_as_features(items, caplog):
    df = pd.read_csv(items)
    df["label_id"] = df["label"].map({"cat": 0, "dog": 1, "fish": 2})
    df["fold"] = np.arange(len(df)) % 5
    df["colour"] = df["label"].map({"cat": "r", "dog": "g", "fish": "b"})
    df.loc[(df["label"] == "cat") & (df.index < 12), "colour"] = "c"  # not a copy, yet it gives the label away
    cfg = Config(data=DataConfig(target="label", id_column="id", exclude=["size"]))
    with caplog.at_level("INFO"):
        resolved = resolve_config(cfg, df)
    used = {c for m in resolved.modalities.values() for c in m.columns}
    assert "label_id" not in used and "fold" not in used and "size" not in used and {"image", "x"} <= used
    text = caplog.text
    assert "Column 'label_id' is a one-to-one copy of the target 'label'" in text
    assert "Column 'colour' predicts the target alone for 100.0% of the rows" in text
    assert "| label_id | excluded: copy of the target |" in text and "| size | excluded (data.exclude) |" in text


def test_two_writers_of_one_directory_do_not_race(tmp_path):
    errors = []

    def write(tag):
        try:
            for _ in range(20):
                with atomic_directory(tmp_path / "out") as d:
                    (d / "who").write_text(tag)
                    (d / "data").write_text(tag * 100)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    who = (tmp_path / "out" / "who").read_text()
    assert (tmp_path / "out" / "data").read_text() == who * 100
    assert [p.name for p in tmp_path.iterdir()] == ["out"]



def test_a_modality_without_an_encoder_gets_its_kinds_default_and_runs_write_their_split(items, tmp_path):
    raw = tiny_config(items, tmp_path / "run", epochs=1)
    del raw["modalities"]["text"]["encoder"], raw["modalities"]["tabular"]["encoder"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["-q", "train", str(cfg)]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["modalities"]["text"]["encoder"]["name"] == "gru"
    assert saved["modalities"]["tabular"]["encoder"]["name"] == "mlp"
    split = pd.read_csv(tmp_path / "run" / "split.csv")
    assert list(split["row"]) == list(range(1, 49)) and set(split["split"]) == {"train", "val", "test"}
    assert list(split["id"]) == list(pd.read_csv(items)["id"])
