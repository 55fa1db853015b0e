"""Balanced multimodal training: auxiliary losses only from present items, OGM-GE's coefficients
and gradient scaling, per-modality learning rates, and a model trained with them saved and loaded."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from crossfuse.config import parse_config
from crossfuse.config.schema import BalanceConfig, TrainConfig
from crossfuse.engine import train
from crossfuse.engine.balance import (GradientBlend, GradientModulation, balanced_loss, blend_weights,
                                     ogm_coefficients, true_class_scores)
from crossfuse.engine.trainer import parameter_groups
from crossfuse.errors import ConfigError
from crossfuse.models import load_model
from crossfuse.types import Batch, ModelOutput

from conftest import make_items, tiny_config


def _output(features, heads, target, mask, fused=None):
    aux = {m: heads[m](f) for m, f in features.items()}
    logits = fused if fused is not None else torch.zeros(len(target), 3, requires_grad=True)
    return ModelOutput(logits=logits, fused=logits, aux_logits=aux), Batch({}, mask, target, torch.arange(len(target)))


def test_each_auxiliary_head_learns_only_from_items_where_its_modality_is_present():
    torch.manual_seed(0)
    features = {m: torch.randn(4, 5, requires_grad=True) for m in ("image", "text")}
    heads = nn.ModuleDict({m: nn.Linear(5, 3) for m in features})
    target = torch.tensor([0, 1, 2, 1])
    mask = {"image": torch.tensor([True, False, True, False]), "text": torch.tensor([False, False, False, False])}
    out, batch = _output(features, heads, target, mask)
    loss = balanced_loss(nn.CrossEntropyLoss(), 0.5)(out, batch)
    loss.backward()
    grad = features["image"].grad
    assert torch.count_nonzero(grad[[1, 3]]) == 0 and torch.count_nonzero(grad[[0, 2]]) > 0
    assert features["text"].grad is None or torch.count_nonzero(features["text"].grad) == 0  # no text present
    assert heads["text"].weight.grad is None
    # the value: fused loss + 0.5 x the image head's loss on items 0 and 2
    ce = nn.CrossEntropyLoss()
    expected = ce(out.logits, target) + 0.5 * ce(heads["image"](features["image"][[0, 2]]), target[[0, 2]])
    assert torch.allclose(loss, expected)


def test_ogm_coefficients_follow_the_papers_formula_on_a_hand_made_batch():
    # two items, two classes; audio is confident and right, visual unsure
    aux = {"audio": torch.tensor([[2.0, 0.0], [0.0, 3.0]]), "visual": torch.tensor([[0.5, 0.0], [0.0, 0.2]])}
    target = torch.tensor([0, 1])
    mask = {m: torch.ones(2, dtype=torch.bool) for m in aux}
    out = ModelOutput(logits=torch.zeros(2, 2), fused=torch.zeros(2, 2), aux_logits=aux)
    scores = {m: float(v) for m, v in true_class_scores(out, Batch({}, mask, target, torch.arange(2))).items()}
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731  (two-class softmax at the true class)
    s_a, s_v = sig(2.0) + sig(3.0), sig(0.5) + sig(0.2)
    assert scores["audio"] == pytest.approx(s_a) and scores["visual"] == pytest.approx(s_v)
    k = ogm_coefficients(scores, alpha=0.8)
    assert k["audio"] == pytest.approx(1 - math.tanh(0.8 * s_a / s_v))  # eq. (10): the dominant one
    assert k["visual"] == 1.0
    # three modalities: each against the mean of the others
    k3 = ogm_coefficients({"a": 3.0, "b": 1.0, "c": 2.0}, alpha=0.5)
    assert k3["a"] == pytest.approx(1 - math.tanh(0.5 * 3.0 / 1.5)) and k3["b"] == 1.0 and k3["c"] == 1.0


class TwoEncoders(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoders = nn.ModuleDict({"audio": nn.Linear(2, 2), "visual": nn.Linear(2, 2)})


def test_gradient_modulation_scales_the_dominant_encoders_weight_gradients():
    model = TwoEncoders()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    aux = {"audio": torch.tensor([[4.0, 0.0], [0.0, 4.0]]), "visual": torch.tensor([[0.1, 0.0], [0.0, 0.1]])}
    target = torch.tensor([0, 1])
    mask = {m: torch.ones(2, dtype=torch.bool) for m in aux}
    out = ModelOutput(logits=torch.zeros(2, 2), fused=torch.zeros(2, 2), aux_logits=aux)
    hook = GradientModulation(BalanceConfig(aux_weight=1.0, ogm_alpha=0.3, ogm_noise=False))
    hook(model, out, Batch({}, mask, target, torch.arange(2)), reduce=lambda t: t)
    scores = {m: float(v) for m, v in true_class_scores(out, Batch({}, mask, target, torch.arange(2))).items()}
    k = 1 - math.tanh(0.3 * scores["audio"] / scores["visual"])
    assert torch.allclose(model.encoders["audio"].weight.grad, torch.full((2, 2), k))
    assert torch.equal(model.encoders["audio"].bias.grad, torch.ones(2))  # biases are left alone
    assert torch.equal(model.encoders["visual"].weight.grad, torch.ones(2, 2))
    assert hook.epoch_record() == {"ogm_audio": pytest.approx(k), "ogm_visual": 1.0}
    assert hook.epoch_record() == {}  # a new epoch starts empty


def test_modality_learning_rates_make_their_own_optimizer_groups():
    model = nn.Module()
    model.encoders = nn.ModuleDict({"image": nn.Linear(2, 2), "text": nn.Linear(2, 2)})
    model.head = nn.Linear(2, 2)
    cfg = TrainConfig(lr=0.01, encoder_lr=0.001, balance=BalanceConfig(modality_lr={"image": 3.0}))
    groups = parameter_groups(model, cfg)
    by_lr = {round(g["lr"], 6): {id(p) for p in g["params"]} for g in groups}
    assert by_lr == {0.01: {id(p) for p in model.head.parameters()},
                     0.003: {id(p) for p in model.encoders["image"].parameters()},
                     0.001: {id(p) for p in model.encoders["text"].parameters()}}
    assert all(isinstance(p, nn.Parameter) for p in parameter_groups(model, TrainConfig()))  # one plain group


def test_balanced_options_are_checked_with_the_config(tmp_path):
    manifest = make_items(tmp_path / "d", n=12)
    with pytest.raises(ConfigError) as err:
        parse_config(tiny_config(manifest, tmp_path / "r", balance={"ogm_alpha": 0.5, "modality_lr": {"sound": 2}}))
    assert "needs the auxiliary heads" in str(err.value) and "no modality 'sound'" in str(err.value)


def test_a_model_trained_with_auxiliary_heads_and_ogm_saves_loads_and_logs_its_coefficients(tmp_path):
    manifest = make_items(tmp_path / "d", n=40)
    run = train(parse_config(tiny_config(manifest, tmp_path / "run", epochs=2,
                                         balance={"aux_weight": 0.5, "ogm_alpha": 0.5})))
    history = run.train.history
    assert all({"ogm_image", "ogm_text", "ogm_tabular"} <= set(h) for h in history)
    assert all(0 < h[f"ogm_{m}"] <= 1 for h in history for m in ("image", "text", "tabular"))
    assert any(h[f"ogm_{m}"] < 1 for h in history for m in ("image", "text", "tabular"))
    model, _, _ = load_model(tmp_path / "run" / "model")
    assert set(model.aux_heads) == {"image", "text", "tabular"}
    saved = run.predictor.model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items() if k.startswith("aux_heads."))


def test_blend_weights_follow_wang_et_al_on_hand_made_losses():
    # image: O 0.2 -> 0.4 (dO 0.2), val 1.2 -> 0.9 (dG 0.3): 0.3 / 0.04 = 7.5
    # text:  O 0.1 -> 0.2 (dO 0.1), val 1.1 -> 1.0 (dG 0.1): 0.1 / 0.01 = 10
    # fused: val rose 1.0 -> 1.05 (it overfits): weight 0
    before_train, before_val = {"fused": 0.9, "image": 1.0, "text": 1.0}, {"fused": 1.0, "image": 1.2, "text": 1.1}
    now_train, now_val = {"fused": 0.5, "image": 0.5, "text": 0.8}, {"fused": 1.05, "image": 0.9, "text": 1.0}
    w = blend_weights(now_train, now_val, before_train, before_val)
    assert w == pytest.approx({"fused": 0.0, "image": 7.5 / 17.5, "text": 10 / 17.5})
    assert blend_weights(now_train, {h: 2.0 for h in now_val}, before_train, before_val) is None  # none generalised


def test_blended_loss_weighs_each_head_and_learns_only_from_present_items():
    torch.manual_seed(0)
    features = {m: torch.randn(4, 5, requires_grad=True) for m in ("image", "text")}
    heads = nn.ModuleDict({m: nn.Linear(5, 3) for m in features})
    target = torch.tensor([0, 1, 2, 1])
    mask = {"image": torch.tensor([True, False, True, False]), "text": torch.ones(4, dtype=torch.bool)}
    fused = torch.randn(4, 3, requires_grad=True)
    out, batch = _output(features, heads, target, mask, fused=fused)
    blend = GradientBlend(nn.CrossEntropyLoss(), ["image", "text"])
    assert blend.weights == pytest.approx({"fused": 1 / 3, "image": 1 / 3, "text": 1 / 3})  # equal at the start
    blend.weights = {"fused": 0.5, "image": 0.2, "text": 0.3}
    loss = blend(out, batch)
    ce = nn.CrossEntropyLoss()
    expected = 0.5 * ce(fused, target) + 0.2 * ce(heads["image"](features["image"][[0, 2]]), target[[0, 2]]) \
        + 0.3 * ce(heads["text"](features["text"]), target)
    assert torch.allclose(loss, expected)
    loss.backward()
    assert torch.count_nonzero(features["image"].grad[[1, 3]]) == 0
    # the epoch's training losses: per head, over the items that had it
    blend.end_train_epoch(lambda t: t)
    assert blend._train["image"] == pytest.approx(float(ce(heads["image"](features["image"][[0, 2]]), target[[0, 2]])))


def test_a_model_trained_with_gradient_blending_logs_weights_that_move_and_resumes_them(tmp_path):
    manifest = make_items(tmp_path / "d", n=40)
    raw = tiny_config(manifest, tmp_path / "run", epochs=6, balance={"blend": True, "blend_every": 2})
    raw["train"]["early_stopping"] = {"patience": 6}
    run = train(parse_config(raw))
    history = run.train.history
    weights = [{h: e[f"blend_{h}"] for h in ("fused", "image", "tabular", "text")} for e in history]
    assert all(sum(w.values()) == pytest.approx(1.0) for w in weights)
    assert weights[0] == weights[1] == weights[2] == {h: 0.25 for h in weights[0]}  # first estimate after epoch 3
    assert weights[3] != weights[2]  # re-estimated from epochs 1 -> 3
    model, _, _ = load_model(tmp_path / "run" / "model")
    assert set(model.aux_heads) == {"image", "text", "tabular"}
    # resumed from its last checkpoint, a run continues with the weights it had
    from crossfuse.engine.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")["state"]
    assert state["blend"]["epochs"] == 6 and state["blend"]["anchor"]["epoch"] == 5  # estimates after 3 and 5
    assert state["blend"]["weights"] == pytest.approx(weights[-1])


def test_blending_is_refused_under_dp_sgd_and_its_period_checked(tmp_path):
    manifest = make_items(tmp_path / "d", n=12)
    with pytest.raises(ConfigError) as err:
        parse_config(tiny_config(manifest, tmp_path / "r", balance={"blend": True, "blend_every": 0},
                                 privacy={"noise_multiplier": 1.0}))
    assert "'train.balance.blend' cannot be used with 'train.privacy'" in str(err.value)
    assert "'train.balance.blend_every' must be an int >= 1" in str(err.value)
