"""DP-SGD (train.privacy): the guarantee reported, refusals up front, resume, saved models."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from torch import nn

from crossfuse.config.io import parse_config
from crossfuse.config.schema import PrivacyConfig
from crossfuse.engine.pipeline import train
from crossfuse.engine.predictor import Predictor
from crossfuse.errors import ConfigError
from crossfuse.fusion import FUSIONS
from tests.conftest import make_items, tiny_config

pytest.importorskip("opacus")


def private_config(root, out, fusion="concat", epochs=3, **privacy):
    cfg = tiny_config(make_items(root, n=60), out, fusion=fusion, epochs=epochs,
                      privacy=privacy or {"noise_multiplier": 1.0})
    cfg["modalities"].pop("text")  # the GRU is refused (test below)
    return cfg


def independent_epsilon(noise: float, q: float, steps: int, delta: float) -> float:
    """Epsilon from Opacus' RDP analysis functions, not through crossfuse or an accountant object."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = compute_rdp(q=q, noise_multiplier=noise, steps=steps, orders=orders)
    return get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0]


def test_a_private_run_reports_the_epsilon_an_independent_computation_gives(tmp_path):
    result = train(parse_config(private_config(tmp_path / "d", tmp_path / "run")))
    dp = result.metrics["privacy"]
    n_train = result.split_sizes["train"]
    assert dp["training_items"] == n_train and dp["delta"] == pytest.approx(1 / n_train)
    assert dp["sample_rate"] == pytest.approx(1 / math.ceil(n_train / 8))
    assert dp["steps"] == len(result.train.history) * math.ceil(n_train / 8)
    assert dp["epsilon"] == pytest.approx(independent_epsilon(1.0, dp["sample_rate"], dp["steps"], dp["delta"]),
                                          abs=1e-3)
    # every epoch's epsilon is logged, growing; the last is the reported one
    eps = [r["epsilon"] for r in result.train.history]
    assert eps == sorted(eps) and eps[-1] == pytest.approx(dp["epsilon"], abs=1e-4)
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["privacy"]["epsilon"] == dp["epsilon"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["privacy"]["steps"] == dp["steps"]
    assert "differentially private" in (tmp_path / "run" / "summary.md").read_text()


def test_target_epsilon_chooses_the_noise_that_spends_it(tmp_path):
    cfg = private_config(tmp_path / "d", tmp_path / "run", epochs=4, target_epsilon=2.0)
    cfg["train"]["early_stopping"] = {"min_epochs": 4}
    dp = train(parse_config(cfg)).metrics["privacy"]
    assert dp["steps"] == 4 * math.ceil(dp["training_items"] / 8)
    assert 1.9 <= dp["epsilon"] <= 2.0 and dp["noise_multiplier"] > 0.5


def test_batch_norm_is_replaced_and_the_saved_model_rebuilds_it(tmp_path):
    result = train(parse_config(private_config(tmp_path / "d", tmp_path / "run", epochs=2)))
    arch = json.loads((tmp_path / "run" / "model" / "config.json").read_text())["architecture"]
    assert set(arch["private"]["replaced"].values()) == {"group_norm"}
    loaded = Predictor.load(tmp_path / "run" / "model")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.model.modules())
    df = pd.read_csv(tmp_path / "d" / "manifest.csv").head(6)
    a = result.predictor.predict_frame(df, tmp_path / "d", "m")
    b = loaded.predict_frame(df, tmp_path / "d", "m")
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_every_fusion_method_trains_privately_or_is_refused_before_training(tmp_path, fusion):
    cfg = private_config(tmp_path / "d", tmp_path / "run", fusion=fusion, epochs=1)
    try:
        result = train(parse_config(cfg))
    except ConfigError as exc:
        assert "train.privacy" in str(exc) and "Fix:" in str(exc)
        assert not (tmp_path / "run" / "checkpoint.safetensors").exists()  # refused before the first step
        return
    assert result.metrics["privacy"]["epsilon"] > 0 and result.train.history[0]["epsilon"] > 0


def test_a_gru_is_refused_up_front_with_the_fix(tmp_path):
    cfg = private_config(tmp_path / "d", tmp_path / "run")
    cfg["modalities"]["text"] = {"kind": "text", "columns": ["caption"],
                                 "encoder": {"name": "gru", "embed_dim": 8, "hidden": 8}}
    with pytest.raises(ConfigError, match=r"encoders\.text\.rnn' is a GRU.*\n.*Fix: freeze"):
        train(parse_config(cfg))


def test_random_augmentation_inside_an_encoder_is_not_taken_for_mixed_items(tmp_path):
    # SpecAugment draws its masks per forward pass: the per-item check must not refuse it
    cfg = tiny_config(make_items(tmp_path / "d", n=30, audio=True), tmp_path / "run", epochs=1,
                      privacy={"noise_multiplier": 1.0})
    cfg["modalities"] = {"audio": {"kind": "audio", "columns": ["sound"], "processor": {"duration": 0.5},
                                   "encoder": {"name": "audio_cnn", "channels": [4, 8], "n_mels": 16,
                                               "specaugment": {"freq_mask": 4, "time_mask": 4}}}}
    assert train(parse_config(cfg)).metrics["privacy"]["epsilon"] > 0


def test_validate_finds_what_a_private_run_refuses_without_training(tmp_path, capsys):
    import yaml

    from crossfuse.cli.main import main

    cfg = private_config(tmp_path / "d", tmp_path / "run")
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(tmp_path / "ok.yaml")]) == 0
    assert "config and manifest OK" in capsys.readouterr().out
    cfg["modalities"]["text"] = {"kind": "text", "columns": ["caption"],
                                 "encoder": {"name": "gru", "embed_dim": 8, "hidden": 8}}
    cfg["fusion"] = {"name": "weighted"}
    (tmp_path / "gru.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(tmp_path / "gru.yaml")]) == 1
    out = capsys.readouterr().out
    assert "training would stop at" in out and "'encoders.text.rnn' is a GRU, which DP-SGD cannot train" in out
    assert "Fix: freeze" in out and not (tmp_path / "run").exists()


def test_resume_continues_the_budget(tmp_path):
    whole = train(parse_config(private_config(tmp_path / "d", tmp_path / "whole", epochs=4)))
    cfg = private_config(tmp_path / "d", tmp_path / "half", epochs=4)
    cfg["train"]["epochs"] = 2
    train(parse_config(cfg))
    cfg["train"]["epochs"] = 4
    resumed = train(parse_config(cfg), resume=True)
    assert resumed.metrics["privacy"]["steps"] == whole.metrics["privacy"]["steps"]
    assert resumed.metrics["privacy"]["epsilon"] == pytest.approx(whole.metrics["privacy"]["epsilon"])
    assert [r["epsilon"] for r in resumed.train.history] == pytest.approx([r["epsilon"] for r in whole.train.history])


@pytest.mark.parametrize("change, message", [
    ({"class_weights": "balanced"}, "class_weights"),
    ({"sampler": "balanced"}, "sampler"),
    ({"privacy": {"noise_multiplier": 1.0, "target_epsilon": 3.0}}, "exactly one"),
    ({"privacy": {"max_grad_norm": 1.0}}, "exactly one"),
    ({"privacy": {"noise_multiplier": -1.0}}, "must be > 0"),
    ({"devices": 2}, "one process"),
])
def test_what_breaks_the_guarantee_is_refused_in_the_config(tmp_path, change, message):
    cfg = tiny_config(tmp_path / "m.csv", tmp_path / "run", privacy={"noise_multiplier": 1.0})
    cfg["train"].update(change)
    with pytest.raises(ConfigError, match=message):
        parse_config(cfg)


def test_a_delta_above_one_over_n_is_refused():
    from crossfuse.engine.privacy import PrivateTraining

    with pytest.raises(ConfigError, match="at most 1/N"):
        PrivateTraining(PrivacyConfig(noise_multiplier=1.0, delta=0.05), n_items=100, batch_size=10, epochs=1, seed=0)
    assert PrivateTraining(PrivacyConfig(noise_multiplier=1.0, delta=1e-5), 100, 10, 1, 0).delta == 1e-5


def test_poisson_batches_draw_each_item_with_the_sampling_rate_and_may_be_empty():
    from crossfuse.engine.privacy import PoissonBatches

    s = PoissonBatches(n=200, steps=20, seed=3)
    sizes = [len(b) for e in range(50) for b in (setattr(s, "epoch", e) or list(s))]
    assert abs(sum(sizes) / len(sizes) - 10) < 0.5  # q * n
    assert len(set(sizes)) > 5  # sizes vary, unlike fixed batches
    s.epoch = 7
    assert list(s) == list(s)  # from (seed, epoch) alone
    tiny = PoissonBatches(n=3, steps=30, seed=0)
    assert any(len(b) == 0 for b in tiny)


def test_the_per_item_check_catches_a_layer_that_mixes_the_batch():
    from opacus import GradSampleModule

    from crossfuse.engine.privacy import check_per_item_gradients

    class Centred(nn.Module):  # subtracts the batch mean: each item's output depends on the others
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(x - x.mean(0, keepdim=True))

    model = Centred()
    items = [torch.randn(3) for _ in range(3)]
    collate = torch.stack
    loss = lambda out, batch: out.pow(2).sum(1).mean()  # noqa: E731
    with pytest.raises(ConfigError, match="lin.weight"):
        check_per_item_gradients(GradSampleModule(model), model, collate(items), items, collate, loss)
    plain = nn.Linear(3, 2)  # an ordinary layer passes
    check_per_item_gradients(GradSampleModule(plain), plain, collate(items), items, collate, loss)


def test_an_encrypted_model_loads_with_the_key_and_fails_clearly_without_it(tmp_path, monkeypatch):
    from crossfuse.cli.main import main
    from crossfuse.encryption import new_key

    cfg = tiny_config(make_items(tmp_path / "d", n=36), tmp_path / "run", epochs=1)
    cfg["modalities"].pop("text")
    result = train(parse_config(cfg))
    model_dir = tmp_path / "run" / "model"
    df = pd.read_csv(tmp_path / "d" / "manifest.csv").head(5)
    before = result.predictor.predict_frame(df, tmp_path / "d", "m")
    key = new_key()
    monkeypatch.setenv("CROSSFUSE_KEY", key)
    assert main(["encrypt", str(model_dir)]) == 0
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == ["config.json.enc", "model.safetensors.enc", "processors.json.enc"]
    assert b"architecture" not in (model_dir / "config.json.enc").read_bytes()
    after = Predictor.load(model_dir).predict_frame(df, tmp_path / "d", "m")
    pd.testing.assert_frame_equal(before, after)
    assert sorted(p.name for p in model_dir.iterdir()) == names  # nothing decrypted was written

    from crossfuse.errors import CrossfuseError

    monkeypatch.setenv("CROSSFUSE_KEY", new_key())
    with pytest.raises(CrossfuseError, match="config.json.enc cannot be decrypted: the key is wrong"):
        Predictor.load(model_dir)
    monkeypatch.delenv("CROSSFUSE_KEY")
    with pytest.raises(CrossfuseError, match="is encrypted: set CROSSFUSE_KEY"):
        Predictor.load(model_dir)
    monkeypatch.setenv("CROSSFUSE_KEY", key)
    weights = model_dir / "model.safetensors.enc"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit
    weights.write_bytes(bytes(data))
    with pytest.raises(CrossfuseError, match="model.safetensors.enc cannot be decrypted: .*changed"):
        Predictor.load(model_dir)


def test_decrypt_restores_the_plain_files_and_keygen_writes_a_private_key_file(tmp_path, monkeypatch):
    from crossfuse.cli.main import main

    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"a": 1}')
    (model_dir / "model.safetensors").write_bytes(b"\x00\x01weights")
    key_file = tmp_path / "key"
    assert main(["keygen", "--out", str(key_file)]) == 0
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert main(["encrypt", str(model_dir), "--key-file", str(key_file)]) == 0
    assert main(["decrypt", str(model_dir), "--key-file", str(key_file)]) == 0
    assert (model_dir / "model.safetensors").read_bytes() == b"\x00\x01weights"
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "model.safetensors"]
    key_file.write_text("not a key")
    assert main(["decrypt", str(model_dir), "--key-file", str(key_file)]) != 0
