"""Every fusion method trains end to end on image + text + audio + tabular, saves and reloads."""
from __future__ import annotations

import pandas as pd
import pytest

from crossfuse.config import parse_config
from crossfuse.engine import Predictor, train
from crossfuse.fusion import FUSIONS

from conftest import make_items, tiny_config


@pytest.fixture(scope="module")
def av_items(tmp_path_factory):
    return make_items(tmp_path_factory.mktemp("av"), n=36, audio=True)


def config(manifest, out, fusion):
    raw = tiny_config(manifest, out, fusion=fusion, epochs=4)  # 2 epochs leave attention at chance
    raw["modalities"]["sound"] = {"kind": "audio", "columns": ["sound"], "processor": {"duration": 0.5},
                                  "encoder": {"name": "audio_gru", "hidden": 8, "n_mels": 16}}
    return raw


@pytest.mark.parametrize("fusion", FUSIONS.names() + ["transformer-seq"])
def test_fusion_trains_saves_and_reloads(av_items, tmp_path, fusion):
    raw = config(av_items, tmp_path / "run", fusion.split("-")[0])
    if fusion == "transformer-seq":
        raw["fusion"].update(sequences=True, mode="crossmodal", dim=8, heads=2, layers=1)
    result = train(parse_config(raw))
    assert result.metrics["accuracy"] > 0.5  # three classes, colour separates them: chance is 1/3
    df = pd.read_csv(av_items)
    before = result.predictor.predict_frame(df, av_items.parent)
    after = Predictor.load(tmp_path / "run" / "model").predict_frame(df, av_items.parent)
    pd.testing.assert_frame_equal(before, after, atol=1e-5)
