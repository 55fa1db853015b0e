"""Training recipe options: a moving average of the weights, a minimum number of epochs, label smoothing."""
from __future__ import annotations

import math

import pytest
import torch

from crossfuse.config import parse_config
from crossfuse.engine import train
from crossfuse.engine.task import TaskSpec
from crossfuse.engine.trainer import update_ema
from crossfuse.errors import ConfigError

from conftest import make_items, tiny_config


def test_the_weight_average_follows_its_formula_and_copies_integer_buffers():
    state = {"ema": {"w": torch.zeros(2), "count": torch.tensor(0)}, "ema_steps": 0}
    update_ema(state, {"w": torch.ones(2), "count": torch.tensor(5)}, decay=0.99)
    assert torch.allclose(state["ema"]["w"], torch.full((2,), 0.9))  # d = min(0.99, 1/10) = 0.1
    update_ema(state, {"w": torch.full((2,), 3.0), "count": torch.tensor(6)}, decay=0.99)
    d = 2 / 11
    assert torch.allclose(state["ema"]["w"], torch.full((2,), d * 0.9 + (1 - d) * 3.0))
    assert state["ema"]["count"].item() == 6 and state["ema_steps"] == 2
    state["ema_steps"] = 10_000  # late in training the decay is the configured one
    update_ema(state, {"w": torch.zeros(2), "count": torch.tensor(6)}, decay=0.5)
    assert torch.allclose(state["ema"]["w"], torch.full((2,), 0.5 * (d * 0.9 + (1 - d) * 3.0)))


class KeepBestAverage:
    def __init__(self):
        self.best = None

    def on_epoch_end(self, trainer, state):
        if state["best_epoch"] == state["epoch"]:
            self.best = {k: v.clone() for k, v in state["ema"].items()}


def test_with_ema_the_saved_model_is_the_average_of_its_best_epoch(tmp_path):
    manifest = make_items(tmp_path / "d", n=40)
    keep = KeepBestAverage()
    run = train(parse_config(tiny_config(manifest, tmp_path / "run", epochs=3, ema=0.9)), callbacks=[keep], save=False)
    saved = run.predictor.model.state_dict()
    assert keep.best is not None
    for k, v in keep.best.items():
        assert torch.equal(saved[k], v), k
    plain = train(parse_config(tiny_config(manifest, tmp_path / "plain", epochs=3)), save=False)
    moved = [k for k in keep.best if keep.best[k].is_floating_point()
             and not torch.equal(plain.predictor.model.state_dict()[k], saved[k])]
    assert moved  # the average is not the trained weights


def test_min_epochs_holds_early_stopping_back(tmp_path):
    manifest = make_items(tmp_path / "d", n=30)
    still = dict(lr=1e-12, epochs=5)  # nothing improves after the first epoch
    quick = train(parse_config(tiny_config(manifest, tmp_path / "a", early_stopping={"patience": 1, "min_epochs": 0},
                                           **still)), save=False)
    held = train(parse_config(tiny_config(manifest, tmp_path / "b", early_stopping={"patience": 1, "min_epochs": 4},
                                          **still)), save=False)
    half = train(parse_config(tiny_config(manifest, tmp_path / "c", early_stopping={"patience": 1},
                                          **{**still, "epochs": 6})), save=False)
    assert len(quick.train.history) == 2 and quick.train.stopped_early
    assert len(held.train.history) == 4 and held.train.stopped_early
    assert len(half.train.history) == 3 and half.train.stopped_early  # the default: half of 6 epochs


def test_label_smoothing_against_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    logp = torch.log_softmax(logits, 1)[0]
    loss = TaskSpec("classification", labels=["a", "b", "c"]).loss(label_smoothing=0.3)(logits, torch.tensor([0]))
    expected = 0.7 * -logp[0] + 0.3 * -logp.mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert not math.isclose(loss.item(), -logp[0].item())


def test_recipe_options_out_of_range_are_refused_together(tmp_path):
    raw = tiny_config(tmp_path / "m.csv", tmp_path / "r", ema=1.5, label_smoothing=1.0,
                      early_stopping={"min_epochs": -1})
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    text = str(err.value)
    assert "'train.ema' must be in (0, 1)" in text and "'train.label_smoothing' must be in [0, 1)" in text
    assert "'train.early_stopping.min_epochs' must be >= 0 or null" in text


def test_small_cnn_pool_grid_keeps_where_a_pattern_is_that_global_pooling_loses():
    from crossfuse.encoders import ENCODERS

    torch.manual_seed(0)
    flat = ENCODERS.build("small_cnn", channels=[4, 8], image_size=32).eval()
    grid = ENCODERS.build("small_cnn", channels=[4, 8], image_size=32, pool=2).eval()
    assert (flat.output_dim, grid.output_dim) == (8, 8 * 2 * 2)
    grid.net.load_state_dict(flat.net.state_dict())
    top_left, bottom_right = torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)
    top_left[..., 4:7, 4:7] = 1.0
    bottom_right[..., 20:23, 20:23] = 1.0  # the same blob 16 px on, far from the borders
    with torch.no_grad():
        assert torch.allclose(flat(top_left), flat(bottom_right), atol=1e-6)
        a, b = grid(top_left), grid(bottom_right)
        assert not torch.allclose(a, b, atol=1e-3)
        # the same features, in the top-left cell of the grid and then in the bottom-right one
        cells_a, cells_b = a.view(8, 2, 2), b.view(8, 2, 2)
        assert torch.allclose(cells_a[:, 0, 0], cells_b[:, 1, 1], atol=1e-6) and cells_a[:, 0, 0].abs().sum() > 0
    with pytest.raises(ConfigError, match="'pool'"):
        ENCODERS.build("small_cnn", pool=0)
