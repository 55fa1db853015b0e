"""The scikit-learn style API, including a pretrained (tiny, random-weight) BERT text encoder."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crossfuse import FusionClassifier, FusionRegressor
from crossfuse.errors import NotFittedError

from conftest import make_items


@pytest.fixture
def frame(tmp_path):
    manifest = make_items(tmp_path, n=60)
    return pd.read_csv(manifest), tmp_path


def test_classifier_fit_predict_score_save_load(frame, tmp_path):
    df, root = frame
    clf = FusionClassifier(target="label", epochs=8, batch_size=8, lr=0.02, base_dir=str(root), fusion="weighted",
                           fusion_params={"dim": 16}, modalities={
                               "image": {"kind": "image", "columns": ["image"],
                                         "encoder": {"name": "small_cnn", "channels": [4, 8], "image_size": 16}},
                               "tabular": {"kind": "tabular", "columns": ["x", "size"], "encoder": "mlp"}})
    assert clf.fit(df.drop(columns=["label"]), df["label"]) is clf
    assert list(clf.classes_) == ["cat", "dog", "fish"]
    proba = clf.predict_proba(df)
    assert proba.shape == (60, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert clf.score(df, df["label"]) > 0.8  # colour and x separate the classes; a broken pipeline cannot
    clf.save(tmp_path / "model")
    again = FusionClassifier.load(tmp_path / "model", base_dir=str(root))
    assert np.allclose(again.predict_proba(df), proba, atol=1e-6)
    assert list(again.predict(df)) == list(clf.predict(df))


def test_integer_labels_come_back_as_integers(frame):
    df, root = frame
    y = df["label"].map({"cat": 0, "dog": 1, "fish": 2})
    clf = FusionClassifier(epochs=2, batch_size=16, base_dir=str(root), modalities={
        "tabular": {"kind": "tabular", "columns": ["x"], "encoder": "mlp"}}).fit(df[["x"]], y)
    assert list(clf.classes_) == [0, 1, 2] and clf.predict(df[["x"]]).dtype.kind == "i"


def test_unfitted_estimator_says_so(frame):
    df, _ = frame
    with pytest.raises(NotFittedError, match="This FusionClassifier instance is not fitted yet. Call 'fit'"):
        FusionClassifier().predict(df)


def test_inferred_modalities_and_pretrained_frozen_text_encoder(frame, tiny_bert):
    df, root = frame
    clf = FusionClassifier(epochs=2, batch_size=16, base_dir=str(root), modalities={
        "text": {"kind": "text", "columns": ["caption"],
                 "encoder": {"name": "hf_transformer", "path": str(tiny_bert), "trainable": False}}})
    clf.fit(df)
    text_enc = clf.predictor_.model.encoders["text"]
    assert not any(p.requires_grad for p in text_enc.parameters())
    assert clf.predict(df).shape == (60,)
    auto = FusionClassifier(epochs=1, batch_size=16, base_dir=str(root)).fit(df.drop(columns=["id"]))
    assert sorted(auto.predictor_.model.encoders) == ["image", "tabular", "text"]


def test_regressor(frame):
    df, root = frame
    y = df["label"].map({"cat": 1.0, "dog": 5.0, "fish": 9.0}) + np.random.default_rng(0).normal(0, 0.1, len(df))
    reg = FusionRegressor(epochs=15, batch_size=8, lr=0.01, base_dir=str(root), patience=15, modalities={
        "image": {"kind": "image", "columns": ["image"],
                  "encoder": {"name": "small_cnn", "channels": [4, 8], "image_size": 16}}})
    reg.fit(df[["image"]], y)
    assert reg.predictor_.task.kind == "regression"
    pred = reg.predict(df[["image"]])
    assert pred.shape == (60,) and 0 < pred.mean() < 10
    assert reg.score(df[["image"]], y) > 0.5


def _small(**kw):
    return dict(target="label", epochs=2, batch_size=8, lr=0.02, modalities={
        "image": {"kind": "image", "columns": ["image"],
                  "encoder": {"name": "small_cnn", "channels": [4, 8], "image_size": 16}},
        "tabular": {"kind": "tabular", "columns": ["x", "size"], "encoder": "mlp"}}, **kw)


def test_estimators_are_scikit_learn_estimators(frame):
    from sklearn.base import clone, is_classifier, is_regressor
    from sklearn.model_selection import GridSearchCV, cross_val_score

    from crossfuse.config.schema import Config

    df, root = frame
    clf = FusionClassifier(**_small(base_dir=str(root)))
    assert is_classifier(clf) and is_regressor(FusionRegressor()) and not is_classifier(FusionRegressor())
    params = clf.get_params()
    assert params["epochs"] == 2 and params["fusion"] == Config().fusion.name  # defaults are the config's own
    assert FusionClassifier().get_params()["lr"] == Config().train.lr
    copy = clone(clf).set_params(fusion="gated")
    assert copy.get_params()["fusion"] == "gated" and clf.get_params()["fusion"] == "concat"
    X, y = df.drop(columns=["label"]), df["label"].to_numpy()
    scores = cross_val_score(clf, X, y, cv=2)
    assert scores.shape == (2,) and scores.mean() > 0.6  # colour and x separate the classes; chance is 0.33
    search = GridSearchCV(clf, {"fusion": ["concat", "gated"]}, cv=2).fit(X, y)
    assert search.best_params_["fusion"] in ("concat", "gated") and search.best_score_ > 0.6
    assert hasattr(search.best_estimator_, "predictor_") and not hasattr(clf, "predictor_")  # clones were fitted
