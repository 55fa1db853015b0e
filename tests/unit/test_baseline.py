"""The linear baseline beside every fusion model: its features, its fit, and where it is reported."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from crossfuse.compare import comparison_table, picked_on_validation
from crossfuse.config import parse_config
from crossfuse.data.processors import AudioProcessor, TabularProcessor, TextProcessor
from crossfuse.engine import train
from crossfuse.engine.baseline import _fit
from crossfuse.engine.task import TaskSpec

from conftest import make_items, tiny_config


def test_text_features_count_each_token_of_the_item():
    p = TextProcessor(["t"], max_length=16)
    p.fit(pd.DataFrame({"t": ["red red blue", "blue green"]}), Path("."), wants_tokenizer=True)
    inputs, _ = p.collate(["red red blue", None])
    x = p.linear_features(inputs)
    vocab = p.tokenizer.get_vocab()
    assert x.shape == (2, 2048)
    assert x[0, vocab["red"]] == pytest.approx(np.log(3.0)) and x[0, vocab["blue"]] == pytest.approx(np.log(2.0))
    assert x[0].count_nonzero() == 2 and x[1].count_nonzero() == 0  # padding and a missing item count nothing


def test_tabular_features_are_the_numbers_and_a_one_hot_per_category():
    p = TabularProcessor(["x", "size"])
    df = pd.DataFrame({"x": [1.0, 3.0], "size": ["s", "l"]})
    p.fit(df, Path("."))
    inputs, _ = p.collate([p.load(r, Path("."), False) for r in df.to_dict("records")])
    x = p.linear_features(inputs)
    assert x.shape == (2, 1 + 3)  # one number; categories l, s and unknown
    assert torch.allclose(x[:, 0], torch.tensor([-1.0, 1.0]))  # standardised
    assert x[:, 1:].sum(1).tolist() == [1.0, 1.0] and not torch.equal(x[0, 1:], x[1, 1:])


def test_audio_features_put_a_tone_in_its_frequency_band():
    p = AudioProcessor(["a"], sample_rate=16000, duration=0.5)
    t = torch.arange(8000) / 16000
    waves = torch.stack([torch.sin(2 * torch.pi * 1070 * t), torch.sin(2 * torch.pi * 6090 * t)])
    x = p.linear_features(waves)
    assert x.shape == (2, 128)
    # 64 bands of about 125.5 Hz over 0..8 kHz: 1.07 kHz is the middle of band 8, 6.09 kHz of band
    # 48 (means first, then stds)
    assert x[0, :64].argmax().item() == 8 and x[1, :64].argmax().item() == 48


def test_the_strength_is_chosen_on_validation_and_the_scores_are_scikit_learns():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    y = {k: rng.integers(0, 3, n) for k, n in (("train", 60), ("val", 200), ("test", 200))}
    x = {k: rng.normal(size=(len(v), 40)) + np.eye(40)[v] * 2.5 for k, v in y.items()}  # 37 noise columns
    spec = TaskSpec("classification", labels=["a", "b", "c"])
    got = _fit(x, y, spec, "accuracy", seed=0)
    scaler = StandardScaler().fit(x["train"])
    by_c = {}
    for c in (0.01, 0.1, 1.0):
        est = LogisticRegression(C=c, max_iter=1000).fit(scaler.transform(x["train"]), y["train"])
        by_c[c] = {k: float((est.predict(scaler.transform(x[k])) == y[k]).mean()) for k in ("val", "test")}
    best = max(by_c, key=lambda c: by_c[c]["val"])
    assert got["strength"] == best
    assert got["val"] == pytest.approx(by_c[best]["val"], abs=0.01)
    assert got["test"] == pytest.approx(by_c[best]["test"], abs=0.01)
    assert got["test"] > 0.6  # far above the 1/3 of chance: the three useful columns were found


def test_every_fusion_run_reports_its_baseline_and_compare_picks_on_validation(tmp_path):
    manifest = make_items(tmp_path / "d", n=48)
    df = pd.read_csv(manifest)
    df.loc[df.index % 4 == 0, "caption"] = ""  # a quarter of the items lack their text
    df.to_csv(manifest, index=False)
    raw = tiny_config(manifest, tmp_path / "run", epochs=2)
    raw["data"]["on_bad_item"] = "missing"
    result = train(parse_config(raw))
    b = result.metrics["baseline"]
    assert b["model"] == "logistic regression" and b["chosen_on"] == "val"
    assert set(b["rows"]) == {"image only", "text only", "tabular only", "all modalities"}
    # the colour of each class's image is far apart: a linear model on the pixels is right on every item
    assert b["rows"]["image only"]["test"] == 1.0 and b["rows"]["image only"]["val"] == 1.0
    best = result.train.history[result.train.best_epoch - 1]
    assert b["model_val"] == best["val_accuracy"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["baseline"]["rows"]["text only"] == b["rows"]["text only"]
    assert "## Linear baseline" in (tmp_path / "run" / "summary.md").read_text()

    raw["train"]["baseline"] = False
    assert "baseline" not in train(parse_config(raw), save=False).metrics

    rows = [{"model": "a fusion", "modalities": "x+y", "runs": [{"seed": 0}], "accuracy": 0.9, "accuracy_std": 0.0,
             "val_accuracy": 0.80, "val_accuracy_std": 0.0, "epochs": 3, "seconds": 1.0},
            {"model": "logistic regression, all modalities", "modalities": "x+y", "baseline": True, "runs": [],
             "accuracy": 0.85, "accuracy_std": 0.0, "val_accuracy": 0.82, "val_accuracy_std": 0.0}]
    assert picked_on_validation(rows)["model"] == "logistic regression, all modalities"  # val, never test
    table = comparison_table(rows)
    assert "| val accuracy | test accuracy |" in table.splitlines()[0]
    assert "| logistic regression, all modalities | x+y | 0.8200 | 0.8500 | - | - | - |" in table
    assert table.splitlines()[-1].startswith("Picked on validation: logistic regression, all modalities")
