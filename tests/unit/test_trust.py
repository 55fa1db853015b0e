"""Trust in each modality, the gate, Dempster-Shafer fusion, temperature scaling and calibration."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from crossfuse.config import parse_config
from crossfuse.engine import Predictor, train
from crossfuse.engine.trust import fit_temperature
from crossfuse.errors import CrossfuseError
from crossfuse.fusion import FUSIONS
from crossfuse.fusion.zoo import ds_combine
from crossfuse.metrics import calibration
from crossfuse.models import load_model
from crossfuse.models.trust import Trust

from conftest import make_items, tiny_config


def test_dempster_shafer_matches_a_hand_computation():
    # b1 = (.5, .2, .1), u1 = .2; b2 = (.3, .3, 0), u2 = .4
    # conflict C = sum_{i != j} b1_i b2_j = .8 * .6 - (.15 + .06 + 0) = .27
    # b = (b1 b2 + b1 u2 + b2 u1) / (1 - C) = (.41, .20, .04) / .73; u = u1 u2 / (1 - C) = .08 / .73
    belief = torch.tensor([[[0.5, 0.2, 0.1], [0.3, 0.3, 0.0]]], dtype=torch.float64)
    uncertainty = torch.tensor([[0.2, 0.4]], dtype=torch.float64)
    b, u = ds_combine(belief, uncertainty, torch.tensor([[True, True]]))
    torch.testing.assert_close(b, torch.tensor([[0.41, 0.20, 0.04]], dtype=torch.float64) / 0.73)
    torch.testing.assert_close(u, torch.tensor([0.08 / 0.73], dtype=torch.float64))
    assert float(b.sum() + u) == pytest.approx(1.0)
    # the order of combination does not matter, and an absent modality is the vacuous opinion
    b_rev, u_rev = ds_combine(belief.flip(1), uncertainty.flip(1), torch.tensor([[True, True]]))
    torch.testing.assert_close((b_rev, u_rev), (b, u))
    b1, u1 = ds_combine(belief, uncertainty, torch.tensor([[True, False]]))
    torch.testing.assert_close((b1, u1), (belief[:, 0], uncertainty[:, 0]))


def test_trusted_fusion_outputs_the_combined_dirichlet():
    fusion = FUSIONS.build("trusted", input_dims={"a": 4, "b": 3}, n_outputs=3)
    fusion.eval()
    feats = {"a": torch.randn(5, 4), "b": torch.randn(5, 3)}
    mask = {"a": torch.ones(5, dtype=torch.bool), "b": torch.tensor([1, 1, 0, 1, 0]).bool()}
    out = fusion(feats, mask)
    belief, uncertainty = fusion.opinions(feats)
    b, u = ds_combine(belief, uncertainty, fusion.stacked_mask(mask))
    # softmax(log alpha) = alpha / sum(alpha), the combined Dirichlet's expected probabilities
    alpha = b * (3 / u).unsqueeze(1) + 1
    torch.testing.assert_close(torch.softmax(out.fused, 1), alpha / alpha.sum(1, keepdim=True))
    assert torch.all(out.weights[~mask["b"], 1] == 0) and torch.allclose(out.weights.sum(1), torch.ones(5))
    with pytest.raises(Exception, match="n_outputs"):
        FUSIONS.build("trusted", input_dims={"a": 4}, n_outputs=1)  # regression has no classes to believe in


def _gaussian_trust(rng, n=400, d=8, alpha=0.05):
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, d)) + 3 * y[:, None]
    held = rng.normal(0, 1, (200, d)) + 3 * rng.integers(0, 2, 200)[:, None]
    ones = lambda k: np.ones(k, dtype=bool)  # noqa: E731
    return Trust.fit({"a": x}, {"a": ones(n)}, {"a": held}, {"a": ones(200)}, labels=y, alpha=alpha)


def test_trust_is_a_p_value_uniform_in_distribution_and_near_zero_under_shift():
    rng = np.random.default_rng(0)
    trust = _gaussian_trust(rng)
    fresh = torch.as_tensor(rng.normal(0, 1, (2000, 8)) + 3 * rng.integers(0, 2, 2000)[:, None], dtype=torch.float32)
    p = trust.scores({"a": fresh})[:, 0]
    for level in (0.05, 0.25, 0.5):
        assert float((p < level).float().mean()) == pytest.approx(level, abs=0.04)
    shifted = fresh.clone()
    shifted[:, 0] += 10.0  # ten standard deviations off, in a direction no class lies in
    assert float(trust.scores({"a": shifted})[:, 0].max()) < 0.05


def test_gate_removes_the_least_trusted_modalities_but_never_an_items_last_one():
    scores = torch.tensor([[0.5, 0.05, 0.9], [0.01, 0.02, 0.5], [0.01, 0.02, 0.5], [0.3, 0.3, 0.3]])
    mask = {"a": torch.tensor([1, 1, 1, 0]).bool(), "b": torch.tensor([1, 1, 1, 0]).bool(),
            "c": torch.tensor([1, 1, 0, 0]).bool()}

    def gate(max_removed):
        kept = Trust({"a": None, "b": None, "c": None}, alpha=0.1, max_removed=max_removed).gate(scores, mask)
        return torch.stack([kept[m] for m in "abc"], 1).tolist()

    assert gate(1) == [[True, False, True],  # b untrusted: removed
                       [False, True, True],  # a and b untrusted: only the least trusted, a, removed
                       [False, True, False],  # a removed; b, also untrusted, is the last one left
                       [False, False, False]]  # nothing present: nothing invented
    assert gate(2)[1] == [False, False, True]
    assert gate(2)[2] == [False, True, False]  # both present ones untrusted: the more trusted one stays


def test_temperature_fixes_overconfidence_and_keeps_every_prediction():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 2000)
    logits = rng.normal(0, 1, (2000, 4))
    logits[np.arange(2000), y] += 1.5
    logits *= 4  # the same ranking, far too sure of it
    t = fit_temperature(logits, y)
    assert t > 2
    softmax = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)  # noqa: E731
    assert np.array_equal((logits / t).argmax(1), logits.argmax(1))
    before, after = calibration(y, softmax(logits))["ece"], calibration(y, softmax(logits / t))["ece"]
    assert after < before / 3


def test_ece_against_a_hand_computation():
    # confidences .9 (right), .9 (wrong), .6 (right): bins (0.8667, 0.9333] and (0.6, 0.6667]... .6 sits in
    # (0.5333, 0.6]; ECE = 2/3 * |0.5 - 0.9| + 1/3 * |1 - 0.6| = 0.4
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    result = calibration(np.array([0, 1, 1]), proba)
    assert result["ece"] == pytest.approx(0.4)
    assert [r["n"] for r in result["reliability"]] == [1, 2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    manifest = make_items(root / "data", n=120)
    raw = tiny_config(manifest, root / "run", fusion="concat", epochs=6, modality_dropout=0.3)
    return train(parse_config(raw)), manifest, root


def test_a_pure_noise_image_gets_lower_image_trust_than_its_clean_twin(trained):
    result, manifest, root = trained
    df = pd.read_csv(manifest).iloc[:10].reset_index(drop=True)
    rng = np.random.default_rng(1)
    noisy = df.copy()
    for i in range(len(df)):
        name = f"img/noise{i}.png"
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(manifest.parent / name)
        noisy.loc[i, "image"] = name
    clean = result.predictor.predict_frame(df, manifest.parent)
    twin = result.predictor.predict_frame(noisy, manifest.parent)
    assert (twin["trust_image"] < clean["trust_image"]).all()
    assert twin["trust_image"].max() < 0.05 and clean["trust_image"].median() > 0.1
    assert not twin["used_image"].any() and clean["used_text"].all()  # the gate removed the noise images
    # the other modalities' trust does not depend on the image
    np.testing.assert_allclose(twin["trust_text"], clean["trust_text"])


def test_trust_and_temperature_are_saved_and_reported(trained):
    result, manifest, root = trained
    config = json.loads((root / "run" / "model" / "config.json").read_text())
    trust = config["architecture"]["trust"]
    assert trust["alpha"] == 0.01 and trust["gate"] is True and trust["max_removed"] == 1 and set(trust["modalities"]) == {"image", "text", "tabular"}
    loaded = Predictor.load(root / "run" / "model")
    assert loaded.temperature == pytest.approx(result.predictor.temperature) and loaded.temperature != 1.0
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert metrics["temperature"] == pytest.approx(loaded.temperature, abs=1e-4)
    assert set(metrics["shift"]["modalities"]) == {"image", "text", "tabular"}
    assert 0 < metrics["shift"]["modalities"]["image"]["mean_trust"] <= 1
    summary = (root / "run" / "summary.md").read_text()
    assert "## Calibration" in summary and "## Trust and shift" in summary
    assert (root / "run" / "reliability.png").stat().st_size > 1000
    # the trust-aware and the plain model differ only where the gate removed something
    df = pd.read_csv(manifest)
    plain = Predictor.load(root / "run" / "model")
    plain.model.trust.gate_on = False
    gated, ungated = loaded.predict_frame(df, manifest.parent), plain.predict_frame(df, manifest.parent)
    untouched = gated[[f"used_{m}" for m in ("image", "text", "tabular")]].all(1).to_numpy()
    assert untouched.mean() > 0.8 and ungated.filter(like="used_").all().all()
    proba = [c for c in gated.columns if c.startswith("proba_")]
    np.testing.assert_allclose(gated.loc[untouched, proba], ungated.loc[untouched, proba], atol=1e-6)


def test_untrusted_statistics_sizes_are_refused_before_allocating(trained, tmp_path):
    import shutil

    result, manifest, root = trained
    copy = tmp_path / "model"
    shutil.copytree(root / "run" / "model", copy)
    config = json.loads((copy / "config.json").read_text())
    config["architecture"]["trust"]["modalities"]["image"]["rank"] = 10 ** 9
    config["architecture"]["trust"]["alpha"] = 2
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CrossfuseError, match=r"(?s)trust: 'alpha' must be a number in \(0, 1\).*image.rank"):
        load_model(copy)


def test_trust_off_leaves_the_model_as_trained(tmp_path):
    manifest = make_items(tmp_path / "data", n=48)
    raw = tiny_config(manifest, tmp_path / "run", epochs=1)
    raw["trust"] = {"ood": False, "temperature": False}
    result = train(parse_config(raw))
    assert result.predictor.model.trust is None
    assert "trust" not in json.loads((tmp_path / "run" / "model" / "config.json").read_text())["architecture"]
    assert not any(c.startswith("trust_") for c in result.predictor.predict_frame(pd.read_csv(manifest),
                                                                                  manifest.parent).columns)


def test_gate_auto_is_on_only_for_models_trained_with_modality_dropout():
    from crossfuse.config.schema import TrustConfig
    from crossfuse.engine.trust import gate_setting

    assert gate_setting(TrustConfig(), 0.0) is False
    assert gate_setting(TrustConfig(), 0.3) is True
    assert gate_setting(TrustConfig(), {"image": 0.2, "text": 0.0}) is True
    assert gate_setting(TrustConfig(gate=True), 0.0) is True and gate_setting(TrustConfig(gate=False), 0.3) is False
