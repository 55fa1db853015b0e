"""The CLI end to end on tiny real files: train, evaluate, predict, validate, list."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from crossfuse.cli.main import main
from crossfuse.engine import Predictor

from conftest import make_items, tiny_config


@pytest.fixture
def trained(tmp_path):
    manifest = make_items(tmp_path / "data", n=60)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(manifest, tmp_path / "run", fusion="attention", epochs=3)))
    assert main(["-q", "train", str(cfg), "train.lr=0.02"]) == 0
    return tmp_path, manifest, tmp_path / "run"


def test_train_writes_model_and_report(trained, capsys):
    _, _, run = trained
    for f in ["model/config.json", "model/model.safetensors", "model/processors.json", "metrics.json",
              "summary.md", "training_curves.png", "confusion_matrix.png", "history.json", "config.yaml",
              "checkpoint.safetensors"]:
        assert (run / f).is_file(), f
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n"] == 15 and metrics["evaluated_on"] == "test"
    # colour and x separate the three classes: well above chance (1/3), counted over the 15 test items
    assert metrics["accuracy"] >= 0.6 and len(metrics["confusion_matrix"]) == 3
    assert sum(map(sum, metrics["confusion_matrix"])) == 15
    assert set(metrics["mean_modality_weight"]) == {"image", "text", "tabular"}
    assert len(json.loads((run / "history.json").read_text())) == 3
    assert "| accuracy |" in (run / "summary.md").read_text()


def test_evaluate_and_predict(trained, capsys):
    tmp, manifest, run = trained
    assert main(["-q", "evaluate", str(run / "model"), str(manifest), "--out", str(tmp / "ev")]) == 0
    m = json.loads((tmp / "ev" / "metrics.json").read_text())
    assert m["n"] == 60 and (tmp / "ev" / "confusion_matrix.png").is_file()

    unlabeled = manifest.parent / "new.csv"
    pd.read_csv(manifest).drop(columns=["label"]).to_csv(unlabeled, index=False)
    out = tmp / "pred.csv"
    assert main(["-q", "predict", str(run / "model"), str(unlabeled), "--out", str(out)]) == 0
    pred = pd.read_csv(out)
    assert len(pred) == 60 and list(pred.columns[:3]) == ["row", "id", "prediction"]
    proba = pred[["proba_cat", "proba_dog", "proba_fish"]].to_numpy()
    assert np.allclose(proba.sum(1), 1, atol=1e-5)
    assert set(pred["prediction"]) <= {"cat", "dog", "fish"}
    assert np.allclose(pred[["weight_image", "weight_tabular", "weight_text"]].sum(1), 1, atol=1e-5)
    # accuracy from the predict CSV equals what evaluate reported
    acc = (pred["prediction"].to_numpy() == pd.read_csv(manifest)["label"].to_numpy()).mean()
    assert acc == pytest.approx(m["accuracy"])


def test_saved_model_reloads_without_unpickling_and_predicts_identically(trained, monkeypatch):
    _, manifest, run = trained
    df = pd.read_csv(manifest)
    before = Predictor.load(run / "model").predict_frame(df, manifest.parent)

    def forbidden(*a, **k):
        raise AssertionError("loading a model must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    after = Predictor.load(run / "model").predict_frame(df, manifest.parent)
    pd.testing.assert_frame_equal(before, after)


def test_unknown_label_at_evaluation_is_named(trained, capsys):
    tmp, manifest, run = trained
    df = pd.read_csv(manifest)
    df.loc[4, "label"] = "bird"
    bad = manifest.parent / "bad.csv"
    df.to_csv(bad, index=False)
    assert main(["-q", "evaluate", str(run / "model"), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}, row 5, column 'label': unknown label 'bird'; the model knows: cat, dog, fish" in err


def test_predict_refuses_a_manifest_without_a_modality_column(trained, capsys):
    tmp, manifest, run = trained
    bad = manifest.parent / "nocaption.csv"
    pd.read_csv(manifest).drop(columns=["caption"]).to_csv(bad, index=False)
    assert main(["-q", "predict", str(run / "model"), str(bad), "--out", str(tmp / "p.csv")]) == 2
    assert "column 'caption': column not found (modality 'text')" in capsys.readouterr().err
    assert not (tmp / "p.csv").exists()


def test_validate_reports_problems_and_exit_code(tmp_path, capsys):
    manifest = make_items(tmp_path / "data", n=12)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(manifest, tmp_path / "run")))
    assert main(["validate", str(cfg)]) == 0
    assert "config and manifest OK" in capsys.readouterr().out
    (manifest.parent / "img" / "3.png").unlink()
    assert main(["validate", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "row 4, column 'image': image file not found" in out and "training would stop" in out
    assert main(["validate", str(cfg), "train.epochs=0", "fusion.name=concatt"]) == 2
    err = capsys.readouterr().err
    assert "'train.epochs' must be an int >= 1" in err
    assert not (tmp_path / "run").exists()


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ["small_cnn", "resnet18", "gru", "hf_transformer", "mlp", "concat", "weighted", "attention"]:
        assert f"  {name} " in out
    assert main(["list", "*net*"]) == 0
    assert "gru" not in capsys.readouterr().out


def test_evaluate_robustness_and_attribution(trained, capsys):
    tmp, manifest, run = trained
    out = tmp / "rob"
    assert main(["-q", "evaluate", str(run / "model"), str(manifest), "--out", str(out), "--robustness"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    rob = m["robustness"]
    assert rob["metric"] == "accuracy" and rob["clean"] == pytest.approx(m["accuracy"])
    assert set(rob["removed"]) == set(rob["only"]) == {"image", "tabular", "text"}
    corruptions = {(r["modality"], r["corruption"]) for r in rob["corrupted"]}
    assert corruptions == {("image", "noise"), ("image", "occlusion"), ("text", "token_dropout"),
                           ("tabular", "noise")}
    n = m["n"]  # every score is a count of correct items out of the n evaluated
    assert all(abs(r["accuracy"] * n - round(r["accuracy"] * n)) < 1e-6 for r in rob["corrupted"])
    assert min(rob["removed"].values()) < rob["clean"]  # some modality matters
    assert set(m["attribution"]["shapley_share"]) == {"image", "tabular", "text"}
    assert (out / "robustness.png").stat().st_size > 1000
    summary = (out / "summary.md").read_text()
    assert "## Modality contributions" in summary and "## Robustness" in summary


def test_modality_dropout_reaches_the_training_batches(tmp_path, monkeypatch):
    import crossfuse.engine.trainer as trainer_module
    from crossfuse.config import parse_config
    from crossfuse.engine import train

    seen = []
    real = trainer_module.drop_modalities

    def spy(mask, rates):
        out = real(mask, rates)
        seen.append(sum(int((~v).sum()) for v in out.values()))
        return out

    monkeypatch.setattr(trainer_module, "drop_modalities", spy)
    manifest = make_items(tmp_path / "d", n=24)
    train(parse_config(tiny_config(manifest, tmp_path / "run", epochs=1, modality_dropout={"image": 0.5})))
    assert seen and sum(seen) > 0


def test_predict_with_a_whole_modality_absent(trained, capsys):
    """Items with no caption at all: with --on-bad-item missing the model predicts from the rest."""
    tmp, manifest, run = trained
    no_text = manifest.parent / "no_text.csv"
    pd.read_csv(manifest).drop(columns=["caption", "label"]).to_csv(no_text, index=False)
    out = tmp / "p.csv"
    assert main(["-q", "predict", str(run / "model"), str(no_text), "--out", str(out), "--on-bad-item", "missing"]) == 0
    pred = pd.read_csv(out)
    assert len(pred) == 60 and (pred["weight_text"] == 0).all()  # attention gives the absent text nothing
    assert np.allclose(pred[["weight_image", "weight_tabular"]].sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "mlflow"])
def test_run_tracking_logs_every_epoch_and_the_config(tmp_path, logger, monkeypatch):
    """train.logger: each epoch's record (as history.json has it) and the config, through Fabric's loggers."""
    from conftest import make_items, tiny_config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)

    cfg = tiny_config(make_items(tmp_path / "data", n=24), tmp_path / "run", epochs=3, logger=logger)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(tmp_path / "c.yaml")]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert all(h["peak_memory_mb"] > 10 and h["samples_per_s"] > 0 for h in history)
    if logger == "mlflow":  # a SQLite store beside the run, the MLflow run named after the output folder
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'logs' / 'mlflow' / 'mlflow.db'}")
        (found,) = client.search_runs([client.get_experiment_by_name("crossfuse").experiment_id])
        assert found.info.run_name == "run" and found.info.status == "FINISHED"
        loss = client.get_metric_history(found.info.run_id, "train_loss")
        assert [m.step for m in loss] == [h["epoch"] for h in history]
        assert [m.value for m in loss] == pytest.approx([h["train_loss"] for h in history])
        assert found.data.params["fusion.name"] == "concat" and found.data.params["train.epochs"] == "3"
        return
    version = tmp_path / "run" / "logs" / logger / "version_0"
    if logger == "csv":
        import pandas as pd

        logged = pd.read_csv(version / "metrics.csv")
        assert logged["step"].tolist() == [h["epoch"] for h in history]
        assert logged["train_loss"].tolist() == pytest.approx([h["train_loss"] for h in history])
        assert logged["val_accuracy"].tolist() == pytest.approx([h["val_accuracy"] for h in history])
        assert "fusion.name" in (version / "hparams.yaml").read_text()
    else:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(version))
        events.Reload()
        loss = [e.value for e in events.Scalars("train_loss")]
        assert loss == pytest.approx([h["train_loss"] for h in history], rel=1e-5)
        assert "samples_per_s" in events.Tags()["scalars"]


def test_fusion_auto_trains_each_method_briefly_and_keeps_the_best_on_validation(tmp_path, capsys):
    from conftest import make_items, tiny_config

    cfg = tiny_config(make_items(tmp_path / "data", n=48), tmp_path / "run", epochs=4)
    cfg["fusion"] = {"name": "auto", "methods": ["concat", "gated", "late"], "epochs": 2}
    cfg["train"]["early_stopping"] = {"metric": "loss", "min_epochs": 0}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(tmp_path / "c.yaml")]) == 0
    auto = json.loads((tmp_path / "run" / "auto_fusion.json").read_text())
    assert [r["fusion"] for r in auto["table"]] == ["concat", "gated", "late"] and auto["epochs"] == 2
    best = min(auto["table"], key=lambda r: r["val_loss"])  # loss: lower is better
    assert auto["chosen"] == best["fusion"]
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["architecture"]["fusion"]["name"] == best["fusion"]
    # --resume trains the method the run chose before (the choice is on disk before training starts)
    other = next(r["fusion"] for r in auto["table"] if r["fusion"] != best["fusion"])
    (tmp_path / "run" / "auto_fusion.json").write_text(json.dumps({**auto, "chosen": other}))
    (tmp_path / "run" / "checkpoint.safetensors").unlink()  # the planted choice's run starts afresh
    assert main(["-q", "train", str(tmp_path / "c.yaml"), "--resume"]) == 0
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["architecture"]["fusion"]["name"] == other
    cfg["fusion"] = {"name": "auto", "methods": ["concat", "nope"], "size": 3}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["train", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "'size'" in err


def test_fusion_auto_ensemble_trains_the_best_methods_in_full_and_combines_them_on_validation(tmp_path):
    from conftest import make_items, tiny_config

    from crossfuse.engine.ensemble import member_predictions
    from crossfuse.engine.predictor import Predictor
    from crossfuse.engine.run import read_split

    manifest = make_items(tmp_path / "data", n=48)
    cfg = tiny_config(manifest, tmp_path / "run", epochs=3)
    cfg["fusion"] = {"name": "auto", "methods": ["concat", "gated", "late"], "epochs": 2, "ensemble": 2}
    cfg["train"]["early_stopping"] = {"metric": "loss", "min_epochs": 0}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(tmp_path / "c.yaml")]) == 0
    run = tmp_path / "run"
    auto = json.loads((run / "auto_fusion.json").read_text())
    ranked = sorted(auto["table"], key=lambda r: r["val_loss"])
    second = ranked[1]["fusion"]
    assert auto["chosen"] == ranked[0]["fusion"]
    assert (run / "members" / second / "model" / "config.json").is_file()  # the runner-up, trained in full
    assert len(json.loads((run / "members" / second / "history.json").read_text())) == 3
    metrics = json.loads((run / "metrics.json").read_text())
    ens = metrics["ensemble"]
    assert set(ens["weights"]) == {"model", second} and sum(ens["weights"].values()) == pytest.approx(1.0, abs=1e-3)
    # the ensemble directory is a model like any other, and its validation score is its own
    df = pd.read_csv(manifest)
    val = read_split(run, df)["val"]
    ensemble = Predictor.load(run / "ensemble")
    probs, y = member_predictions([ensemble], manifest, frame=(val, manifest.parent))
    assert ens["val"]["accuracy"] == pytest.approx(float((probs[0].argmax(1) == y).mean()))
    assert ens["test"]["accuracy"] == pytest.approx(
        ensemble.evaluate_frame(read_split(run, df)["test"], manifest.parent, str(manifest),
                                attribution=False)["accuracy"])


def test_presets_fill_what_a_config_leaves_out_and_never_what_it_sets(tmp_path, capsys):
    from conftest import make_items, tiny_config

    from crossfuse.config import load_config, parse_config
    from crossfuse.config.presets import PRESETS
    from crossfuse.config.schema import Config

    for name in PRESETS:  # every preset resolves to a valid config
        cfg = parse_config({"preset": name, "data": {"manifest": "m.csv"}})
        assert cfg.preset == name
    assert parse_config({"preset": "fast"}).train.epochs == 10
    best = parse_config({"preset": "best", "train": {"lr": 0.01}})
    assert (best.fusion.name, best.fusion.params["ensemble"], best.train.epochs, best.train.lr) == ("auto", 3, 30, 0.01)
    own = parse_config({"preset": "best", "fusion": {"name": "gated"}, "train": {"epochs": 4}})
    assert (own.fusion.name, own.fusion.params, own.train.epochs) == ("gated", {}, 4)  # not merged into gated
    assert parse_config({"preset": "medium"}) == Config(preset="medium")  # the defaults, named
    cfg = tiny_config(make_items(tmp_path / "data", n=24), tmp_path / "run", epochs=2)
    cfg.pop("fusion", None)
    cfg["preset"] = "best"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert load_config(tmp_path / "c.yaml", ["fusion.name=late"]).fusion.name == "late"  # an override wins too
    cfg["preset"] = "quick"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["train", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown preset 'quick'; choose one of fast, medium, best" in capsys.readouterr().err
