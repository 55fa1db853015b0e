"""Manifests, role inference, and every bad-input case with its message."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crossfuse.config import parse_config
from crossfuse.data import apply_policy, infer_modalities, read_manifest
from crossfuse.engine.pipeline import train, validate_data
from crossfuse.errors import DataError

from conftest import make_items, tiny_config


@pytest.mark.parametrize("name", ["m.csv", "m.jsonl", "m.parquet"])
def test_manifest_formats_read_alike(tmp_path, name):
    df = read_manifest(make_items(tmp_path, n=6, name=name))
    assert list(df.columns) == ["id", "image", "caption", "x", "size", "label"]
    assert len(df) == 6 and df["x"].dtype.kind == "f"


@pytest.mark.parametrize("name", ["m.csv", "m.jsonl", "m.parquet"])
def test_a_run_reads_only_the_columns_its_config_names(tmp_path, name):
    from crossfuse.engine.run import load_table

    manifest = make_items(tmp_path, n=6, name=name)
    named = parse_config(tiny_config(manifest, tmp_path / "run"))
    df, _, _ = load_table(named)  # caption, image, x, size, id, label: the config's; never an unused one
    assert sorted(df.columns) == ["caption", "id", "image", "label", "size", "x"]
    del named.modalities["tabular"]
    assert sorted(load_table(named)[0].columns) == ["caption", "id", "image", "label"]
    inferred = parse_config({"data": {"manifest": str(manifest)}})  # roles come from every column
    assert sorted(load_table(inferred)[0].columns) == ["caption", "id", "image", "label", "size", "x"]
    # none of the named columns in the file: read whole, so the column check names what is missing
    assert len(read_manifest(manifest, ["nope"]).columns) == 6
    with pytest.raises(DataError, match="nope"):
        train(parse_config({**tiny_config(manifest, tmp_path / "run"),
                            "modalities": {"t": {"kind": "text", "columns": ["nope"]}}}), save=False)


def test_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nope.csv: manifest file not found"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "m.xlsx").write_text("x")
    with pytest.raises(DataError, match="unsupported manifest format '.xlsx'"):
        read_manifest(tmp_path / "m.xlsx")


def test_roles_are_inferred(items):
    mods = infer_modalities(read_manifest(items), exclude=["label", "id"])
    assert {m: (v.kind, v.columns) for m, v in mods.items()} == {
        "image": ("image", ["image"]), "text": ("text", ["caption"]), "tabular": ("tabular", ["x", "size"])}


def problems_for(manifest: Path, tmp_path, **data):
    raw = tiny_config(manifest, tmp_path / "out")
    raw["data"].update(data)
    cfg = parse_config(raw)
    df = read_manifest(manifest)
    _, problems = validate_data(cfg, df, manifest.parent, str(manifest))
    return df, problems


def corrupt(manifest: Path):
    df = pd.read_csv(manifest)
    df["x"] = df["x"].astype(object)
    df.loc[1, "image"] = "img/missing.png"
    (manifest.parent / "img" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    df.loc[3, "caption"] = "   "
    df.loc[4, "x"] = np.nan
    df.loc[5, "x"] = "abc"
    df.to_csv(manifest, index=False)


def test_each_bad_cell_is_reported_with_file_row_and_column(items, tmp_path):
    corrupt(items)
    _, problems = problems_for(items, tmp_path)
    text = [str(p) for p in problems]
    assert len(text) == 5, text
    m = str(items)
    assert text[0].startswith(f"{m}, row 2, column 'image': image file not found")
    assert text[1].startswith(f"{m}, row 3, column 'image': cannot read image")
    assert text[2] == f"{m}, row 4, column 'caption': empty text"
    assert text[3] == f"{m}, row 5, column 'x': missing value (NaN)"
    assert text[4] == f"{m}, row 6, column 'x': not a finite number: 'abc'"


def test_error_policy_stops_before_training_with_every_problem(items, tmp_path):
    corrupt(items)
    with pytest.raises(DataError) as info:
        train(parse_config(tiny_config(items, tmp_path / "out")))
    assert len(info.value.problems) == 5
    assert "data.on_bad_item=skip" in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing was written


def test_skip_policy_drops_rows_and_counts_them(items, tmp_path):
    corrupt(items)
    df, problems = problems_for(items, tmp_path)
    kept, report = apply_policy(df, problems, "skip", "label")
    assert report == {"skipped": 5, "cells_missing": 0}
    assert len(kept) == len(df) - 5 and not set(kept.index) & {1, 2, 3, 4, 5}


def test_missing_policy_keeps_rows_and_trains(items, tmp_path):
    corrupt(items)
    raw = tiny_config(items, tmp_path / "out", epochs=1)
    raw["data"]["on_bad_item"] = "missing"
    result = train(parse_config(raw))
    assert sum(result.split_sizes.values()) == 48  # every row kept
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()


def test_missing_columns_are_all_named(items, tmp_path):
    df = pd.read_csv(items).drop(columns=["caption", "x"])
    df.to_csv(items, index=False)
    with pytest.raises(DataError) as info:
        problems_for(items, tmp_path)
    msg = str(info.value)
    assert "column 'caption': column not found (modality 'text')" in msg
    assert "column 'x': column not found (modality 'tabular')" in msg


def test_target_with_one_class_is_refused(items, tmp_path):
    df = pd.read_csv(items)
    df["label"] = "cat"
    df.to_csv(items, index=False)
    with pytest.raises(DataError, match="column 'label': the target has one class only \\(cat\\)"):
        train(parse_config(tiny_config(items, tmp_path / "out")))


def test_missing_target_value_is_a_row_problem(items, tmp_path):
    df = pd.read_csv(items)
    df.loc[7, "label"] = np.nan
    df.to_csv(items, index=False)
    _, problems = problems_for(items, tmp_path)
    assert [str(p) for p in problems] == [f"{items}, row 8, column 'label': missing target value"]


def test_unknown_split_value(items, tmp_path):
    df = pd.read_csv(items)
    df["split"] = ["train"] * 40 + ["holdout"] * 8
    df.to_csv(items, index=False)
    with pytest.raises(DataError, match="row 41, column 'split': unknown split 'holdout'"):
        train(parse_config(tiny_config(items, tmp_path / "out")))


def test_early_stopping_metric_must_suit_the_task(items, tmp_path):
    from crossfuse.errors import ConfigError

    raw = tiny_config(items, tmp_path / "out")
    raw["train"]["early_stopping"] = {"metric": "rmse"}
    with pytest.raises(ConfigError, match="must be one of accuracy, f1_macro.* for classification. Got 'rmse'"):
        train(parse_config(raw))
    assert not (tmp_path / "out").exists()


def test_a_number_whose_standardised_value_overflows_float32_is_a_bad_cell_and_imputed(tmp_path):
    import math

    import pandas as pd

    from crossfuse.data.processors.tabular import TabularProcessor

    proc = TabularProcessor(["x"])
    proc.fit(pd.DataFrame({"x": [1.0, 2.0, 3.0]}), tmp_path)
    problems = proc.check(pd.DataFrame({"x": [2.5, 1e308, "inf"]}), tmp_path, open_files=False)
    assert [(pos, msg.split(":")[0]) for pos, _, msg in problems] == [
        (1, "1e+308 is out of range"), (2, "not a finite number")]
    item = proc.load({"x": 1e308}, tmp_path, train=False)
    assert math.isfinite(float(item["numeric"][0])) and float(item["numeric"][0]) == 0.0  # the median, standardised
