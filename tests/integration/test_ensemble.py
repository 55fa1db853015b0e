"""Ensembles of saved models: each method saves, loads and predicts as computed from its members;
evaluate (robustness, attribution) and the server take an ensemble like any model; stacking's
cross-fitting never lets a row's own label into the meta-learner that predicts it."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from crossfuse.cli.main import main
from crossfuse.engine import Predictor
from crossfuse.engine.ensemble import build_ensemble, cross_fit, greedy_weights
from crossfuse.errors import CrossfuseError

from conftest import make_items, tiny_config

FUSIONS = ("concat", "gated", "late")


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    manifest = make_items(root / "data", n=48, seed=3)
    dirs = []
    for f in FUSIONS:
        cfg = tiny_config(manifest, root / f, fusion=f, epochs=2)
        (root / f"{f}.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["-q", "train", str(root / f"{f}.yaml")]) == 0
        dirs.append(root / f / "model")
    return root, manifest, dirs


def _proba(frame: pd.DataFrame) -> np.ndarray:
    return frame[[c for c in frame.columns if c.startswith("proba_")]].to_numpy()


@pytest.mark.parametrize("method", ["mean", "greedy", "stack"])
def test_each_method_saves_loads_and_predicts_as_its_members_combine(members, method):
    root, manifest, dirs = members
    out = root / f"ens-{method}"
    report = build_ensemble(dirs, manifest, out, method=method)
    assert set(report["members"]) == {str(d) for d in dirs} and report["rows"] == 48
    df, base = pd.read_csv(manifest), manifest.parent
    ens = Predictor.load(out)
    got = _proba(ens.predict_frame(df, base))
    each = [_proba(Predictor.load(d).predict_frame(df, base)) for d in dirs]
    if method == "stack":
        from scipy.special import log_softmax

        W, b = ens.model.stacker.weight.detach().numpy(), ens.model.stacker.bias.detach().numpy()
        logits = [Predictor.load(d).outputs(df, base)["logits"] for d in dirs]
        z = np.concatenate([np.maximum(log_softmax(x, axis=1), -30.0) for x in logits], axis=1) @ W.T + b
        expected = np.exp(z - z.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
        assert "out_of_fold" in report
    else:
        w = np.array([report["weights"][str(d)] for d in dirs])
        assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
        if method == "mean":
            assert np.allclose(w, 1 / 3)
        expected = sum(wi * p for wi, p in zip(w, each))
    assert np.allclose(got, expected, atol=1e-4)
    again = _proba(Predictor.load(out).predict_frame(df, base))
    assert np.array_equal(got, again)
    assert json.loads((out / "config.json").read_text())["architecture"]["kind"] == "ensemble"


def test_evaluate_and_serve_take_an_ensemble(members, capsys):
    root, manifest, dirs = members
    out = root / "ens-eval"
    assert main(["-q", "ensemble", *map(str, dirs), "--fit-on", str(manifest), "--method", "greedy",
                 "--out", str(out)]) == 0
    assert "ensemble (greedy" in capsys.readouterr().out
    assert main(["-q", "evaluate", str(out), str(manifest), "--robustness", "--out", str(root / "eval")]) == 0
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.5 and "attribution" in metrics and "robustness" in metrics
    assert set(metrics["robustness"]["removed"]) == {"image", "tabular", "text"}

    from fastapi.testclient import TestClient

    from crossfuse.serve import create_app

    df = pd.read_csv(manifest).head(2)
    expected = Predictor.load(out).predict_frame(df[["caption"]].assign(image=None, x=None, size=None),
                                                 manifest.parent, on_bad_item="missing")
    with TestClient(create_app(out)) as c:
        got = c.post("/v1/predict", json={"inputs": [{"caption": t} for t in df["caption"]]}).json()["predictions"]
    assert [g["label"] for g in got] == list(expected["prediction"])
    assert got[0]["probabilities"]["cat"] == pytest.approx(expected["proba_cat"][0], abs=1e-5)

    from crossfuse import FusionClassifier

    est = FusionClassifier.load(out, base_dir=str(manifest.parent))
    full = pd.read_csv(manifest)
    assert list(est.predict(full.drop(columns="label"))) == list(Predictor.load(out).predict_frame(
        full, manifest.parent)["prediction"])


def test_greedy_selection_prefers_the_better_member():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    good = np.full((200, 3), 0.1)
    good[np.arange(200), y] = 0.8
    bad = rng.dirichlet(np.ones(3), 200)
    w = greedy_weights([bad, good], y, regression=False, rounds=20)
    assert w[1] > 0.8 and w.sum() == pytest.approx(1.0)


def test_cross_fitting_never_uses_a_rows_own_label():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 6))
    y = (X[:, 0] + 0.3 * rng.normal(size=60) > 0).astype(int)
    seen = []

    def fit(Xf, yf):
        seen.append({tuple(r) for r in Xf})
        return LogisticRegression().fit(Xf, yf)

    predict = lambda m, Xp: m.decision_function(Xp)  # noqa: E731
    oof, parts = cross_fit(X, y, 5, fit, predict, regression=False)
    covered = np.concatenate([held for _, held in parts])
    assert sorted(covered) == list(range(60))  # every row predicted exactly once
    for (fit_rows, held), rows_seen in zip(parts, seen):
        assert not set(fit_rows) & set(held)
        assert not any(tuple(X[r]) in rows_seen for r in held)  # the predicting model never saw the row
    # directly: change the targets of one fold's rows; their own out-of-fold predictions do not move
    # (regression: the folds do not depend on the targets, as stratified ones do)
    from sklearn.linear_model import Ridge

    t = X[:, 0] + 0.1 * rng.normal(size=60)
    ridge = lambda a, b: Ridge().fit(a, b)  # noqa: E731
    oof, parts = cross_fit(X, t, 5, ridge, lambda m, Xp: m.predict(Xp), regression=True)
    _, held = parts[0]
    changed = t.copy()
    changed[held] += 100.0
    oof2, _ = cross_fit(X, changed, 5, ridge, lambda m, Xp: m.predict(Xp), regression=True)
    assert np.allclose(oof2[held], oof[held])
    others = np.setdiff1d(np.arange(60), held)
    assert not np.allclose(oof2[others], oof[others])  # the other rows' meta-learners did see them


def test_members_must_read_the_same_inputs(members, tmp_path):
    root, manifest, dirs = members
    cfg = tiny_config(manifest, tmp_path / "other", epochs=1)
    cfg["modalities"]["text"]["processor"]["max_length"] = 8
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(tmp_path / "o.yaml")]) == 0
    with pytest.raises(CrossfuseError, match="reads its inputs differently.*text"):
        build_ensemble([dirs[0], tmp_path / "other" / "model"], manifest, tmp_path / "e")
    with pytest.raises(CrossfuseError, match="2 to 64"):
        build_ensemble([dirs[0]], manifest, tmp_path / "e")


def test_a_crafted_ensemble_config_is_refused_before_anything_is_built(members, tmp_path):
    import shutil

    root, manifest, dirs = members
    out = tmp_path / "ens"
    build_ensemble(dirs[:2], manifest, out, method="mean")
    config = json.loads((out / "config.json").read_text())
    for change, message in ((lambda a: a.update(method="vote"), "method"),
                            (lambda a: a.update(weights=[1.0]), "weights"),
                            (lambda a: a.update(members=a["members"] * 40), "members"),
                            (lambda a: a["members"][1]["fusion"].update(name="evil"), "members\\[1\\].fusion")):
        bad = tmp_path / f"bad-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(out, bad)
        arch = json.loads(json.dumps(config["architecture"]))
        change(arch)
        (bad / "config.json").write_text(json.dumps({**config, "architecture": arch}))
        with pytest.raises(CrossfuseError, match=message):
            Predictor.load(bad)
    assert isinstance(Predictor.load(out).model.weights, torch.Tensor)
