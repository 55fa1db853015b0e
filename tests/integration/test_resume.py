"""A run interrupted after an epoch and resumed ends with the same weights as one never interrupted."""
from __future__ import annotations

import pytest
import torch
import yaml

from crossfuse.cli.main import main
from crossfuse.config import parse_config
from crossfuse.engine import Predictor, train

from conftest import make_items, tiny_config


class StopAfter:
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, trainer, state):
        if state["epoch"] == self.epoch:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C, after the checkpoint was written


def config(manifest, out, frozen, **opts):
    raw = tiny_config(manifest, out, **opts)
    if frozen:  # a frozen pretrained-style backbone: left out of checkpoints, features from the cache
        raw["modalities"]["image"]["encoder"] = {"name": "resnet18", "trainable": False, "image_size": 32}
    return raw


@pytest.mark.parametrize("optimizer,frozen,ema", [("adamw", False, None), ("sgd", False, None), ("adamw", True, None),
                                                  ("adamw", False, 0.9)])
def test_resume_matches_uninterrupted(tmp_path, optimizer, frozen, ema):
    manifest = make_items(tmp_path / "data", n=40)
    opts = dict(epochs=4, optimizer=optimizer, warmup_epochs=1.0, early_stopping={"patience": 10}, ema=ema)
    full = train(parse_config(config(manifest, tmp_path / "full", frozen, **opts)))

    raw = config(manifest, tmp_path / "cut", frozen, **opts)
    with pytest.raises(KeyboardInterrupt):
        train(parse_config(raw), callbacks=[StopAfter(2)])
    assert (tmp_path / "cut" / "checkpoint.safetensors").is_file()
    assert not (tmp_path / "cut" / "model").exists()
    cfg = tmp_path / "cut.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["-q", "train", str(cfg), "--resume"]) == 0

    a = full.predictor.model.state_dict()
    b = Predictor.load(tmp_path / "cut" / "model").model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["train_loss"] for h in full.train.history] == \
        [h["train_loss"] for h in __import__("json").loads((tmp_path / "cut" / "history.json").read_text())]


def test_resume_continues_gradient_blending_weights(tmp_path):
    """The blend's weights and its last estimate travel in the checkpoint: stopped after epoch 3
    (one estimate made), the resumed run re-estimates after epoch 5 from the same anchor."""
    manifest = make_items(tmp_path / "data", n=40)
    opts = dict(epochs=5, early_stopping={"patience": 10}, balance={"blend": True, "blend_every": 2})
    full = train(parse_config(config(manifest, tmp_path / "full", False, **opts)))
    raw = config(manifest, tmp_path / "cut", False, **opts)
    with pytest.raises(KeyboardInterrupt):
        train(parse_config(raw), callbacks=[StopAfter(3)])
    resumed = train(parse_config(raw), resume=True)
    weights = [[h[k] for k in sorted(h) if k.startswith("blend_")] for h in full.train.history]
    assert weights[3] != weights[2]  # an estimate was made after epoch 3 (and used in epochs 4 and 5)
    assert [[h[k] for k in sorted(h) if k.startswith("blend_")] for h in resumed.train.history] == weights
    a, b = full.predictor.model.state_dict(), resumed.predictor.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
