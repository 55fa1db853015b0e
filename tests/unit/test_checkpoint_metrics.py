from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from crossfuse.engine.checkpoint import load_checkpoint, save_checkpoint
from crossfuse.metrics import classification_metrics, regression_metrics


def test_checkpoint_round_trips_optimizer_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "state": {"epoch": 3, "history": [{"a": 1.5}]}}
    save_checkpoint(tmp_path / "c.safetensors", state)
    back = load_checkpoint(tmp_path / "c.safetensors")
    assert back["state"] == {"epoch": 3, "history": [{"a": 1.5}]}
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    opt2.load_state_dict(back["optimizer"])
    assert opt2.param_groups[0]["lr"] == 0.1
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert os.listdir(tmp_path) == ["c.safetensors"]  # no temporary file left behind


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"state": {"epoch": 1}, "w": torch.ones(2)})
    import safetensors.torch

    def killed(tensors, filename, metadata=None):  # the process dies half way through the write
        with open(filename, "wb") as f:
            f.write(b"\x00" * 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"state": {"epoch": 2}, "w": torch.zeros(2)})
    assert load_checkpoint(path)["state"] == {"epoch": 1}


def test_classification_metrics_match_hand_computed_values():
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.8 + 0.2 / 3
    m = classification_metrics(y, proba, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # per class precision: a 1/2, b 2/3, c 1/1; recall: 1/2, 1, 1/2
    assert m["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["recall_macro"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["f1_micro"] == pytest.approx(4 / 6)
    assert m["per_class"]["b"]["recall"] == 1.0
    assert 0.5 < m["roc_auc"] <= 1.0


def test_regression_metrics():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert m["mae"] == pytest.approx(2 / 3)
    assert m["rmse"] == pytest.approx(np.sqrt(4 / 3))
    assert m["r2"] == pytest.approx(1 - 4 / 2)
