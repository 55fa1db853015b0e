"""crossfuse tune on tiny data: a study end to end whose best.yaml reproduces the best trial, the
space checked before any trial, two workers on one study, and a killed worker's trial marked
failed while the study goes on."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

optuna = pytest.importorskip("optuna")

from crossfuse.cli.main import main  # noqa: E402
from crossfuse.engine.tune import open_study, setup  # noqa: E402
from crossfuse.errors import ConfigError  # noqa: E402

from conftest import make_items, tiny_config  # noqa: E402


def write_config(root: Path, trials: int = 3, **tune) -> Path:
    cfg = tiny_config(make_items(root / "data", n=48), root / "run", epochs=3)
    # validation loss, not accuracy: on this easy data every trial would reach accuracy 1.0
    cfg["train"]["early_stopping"] = {"metric": "loss", "patience": 10, "min_epochs": 0}
    cfg["tune"] = {"trials": trials, "space": {"train.lr": {"log_uniform": [1e-3, 5e-2]},
                                               "fusion.name": {"choice": ["concat", "gated"]},
                                               "head.dropout": {"uniform": [0.0, 0.3]}}, **tune}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_study_end_to_end_and_best_yaml_reproduces_the_best_trial(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["-q", "tune", str(config)]) == 0
    out = tmp_path / "run" / "tune"
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 3 and set(trials["state"]) == {"COMPLETE"}
    assert set(trials["monitor"]) == {"loss"}
    assert (trials["value"] == -trials["val"]).all()  # lower loss is better: the objective is its negative
    assert {"param_train.lr", "param_fusion.name", "param_head.dropout"} <= set(trials.columns)
    for f in ("best.yaml", "history.png", "slices.png", "tune.json", "best/model/config.json", "best/summary.md"):
        assert (out / f).is_file(), f
    best = trials.loc[trials["value"].idxmax()]
    best_cfg = yaml.safe_load((out / "best.yaml").read_text())
    assert best_cfg["train"]["lr"] == pytest.approx(best["param_train.lr"])
    assert best_cfg["fusion"] == {"name": best["param_fusion.name"]}  # the configured method's params dropped
    assert "tune" not in best_cfg
    summary = yaml.safe_load((out / "tune.json").read_text())
    assert summary["refit_val"] == pytest.approx(best["val"], abs=1e-6)  # the refit is the best trial again
    # and `crossfuse train best.yaml` is that run
    best_cfg["output_dir"] = str(tmp_path / "again")
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(best_cfg))
    assert main(["-q", "train", str(tmp_path / "again.yaml")]) == 0
    history = yaml.safe_load((tmp_path / "again" / "history.json").read_text())
    assert min(h["val_loss"] for h in history) == pytest.approx(best["val"], abs=1e-6)
    # running the command again continues the study: it already holds 3 trials, so none is added
    capsys.readouterr()
    assert main(["-q", "tune", str(config), "--no-refit"]) == 0
    assert len(pd.read_csv(out / "trials.csv")) == 3
    assert main(["-q", "tune", str(config), "--no-refit", "--trials", "4"]) == 0
    assert len(pd.read_csv(out / "trials.csv")) == 4


def test_tune_ensemble_refits_the_best_trials_and_weighs_them_on_validation(tmp_path, capsys):
    config = write_config(tmp_path, trials=3, ensemble=2)
    assert main(["-q", "tune", str(config)]) == 0
    assert "ensemble of the best 2" in capsys.readouterr().out
    out = tmp_path / "run" / "tune"
    summary = yaml.safe_load((out / "tune.json").read_text())["ensemble"]
    assert len(summary["members"]) == 2 and summary["members"][0].endswith("best/model")
    assert sum(summary["weights"].values()) == pytest.approx(1.0)
    assert 0 <= summary["test_best"] <= 1 and "test_ensemble" in summary
    from crossfuse.engine import Predictor

    ens = Predictor.load(out / "ensemble")
    assert type(ens.model).__name__ == "EnsembleModel" and len(ens.model.members) == 2
    with pytest.raises(ConfigError, match="tune.ensemble"):
        setup(write_config(tmp_path / "bad", ensemble=1))


def test_the_space_is_checked_before_any_trial(tmp_path):
    config = write_config(tmp_path)
    raw = yaml.safe_load(config.read_text())
    raw["tune"]["space"] = {"train.lrr": {"uniform": [0, 1]}, "train.lr": {"uniform": [0.1, 0.01]},
                            "head.dropout": {"normal": [0, 1]}, "fusion.name": {"choice": ["concat", "nope"]},
                            "train.batch_size": {"choice": ["x"]}, "train.weight_decay": {"log_uniform": [0, 1]},
                            "train.epochs": {"int": [1.5, 3]}, "output_dir": {"choice": ["a"]}}
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        setup(config)
    text = "\n".join(err.value.problems)
    for expected in ("Unknown key 'train.lrr'", "empty range", "{'normal': [0, 1]}", "no fusion method 'nope'",
                     "'train.batch_size' must be an integer", "needs low > 0", "must be two integers",
                     "output_dir cannot be searched"):
        assert expected in text, (expected, text)
    assert not (tmp_path / "run" / "tune").exists()  # nothing ran


def test_two_workers_share_one_study_and_record_every_trial_once(tmp_path):
    config = write_config(tmp_path, trials=8)
    # two worker processes started together on one journal file
    procs = [subprocess.Popen([sys.executable, "-m", "crossfuse", "-q", "tune", str(config), "--worker", str(k)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k in (1, 2)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()
    s = setup(config)
    trials = open_study(s).get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) and sorted(numbers) == list(range(len(numbers)))
    # each worker stops once the study holds 8 finished trials; both may finish the one they run
    assert 8 <= len(trials) <= 9
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    # --jobs: this process and a child on the same study, then the outputs
    assert main(["-q", "tune", str(config), "--jobs", "2", "--trials", "10", "--no-refit"]) == 0
    assert 10 <= len(pd.read_csv(tmp_path / "run" / "tune" / "trials.csv")) <= 11


@pytest.mark.slow
def test_a_killed_worker_leaves_a_failed_trial_and_the_study_goes_on(tmp_path):
    config = write_config(tmp_path, trials=3)
    s = setup(config)
    # a first trial that would run for minutes, killed with SIGKILL while it runs
    proc = subprocess.Popen([sys.executable, "-m", "crossfuse", "-q", "tune", str(config), "tune.epochs=500",
                             "--no-refit"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    running = []
    while time.time() < deadline and not running:
        time.sleep(0.5)
        if Path(s.storage).is_file():
            running = [t for t in open_study(s).get_trials(deepcopy=False) if t.state.name == "RUNNING"]
        assert proc.poll() is None
    assert running, "no trial started"
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [t.state.name for t in open_study(s).get_trials(deepcopy=False)] == ["RUNNING"]
    assert main(["-q", "tune", str(config), "--no-refit"]) == 0
    states = [t.state.name for t in open_study(s).get_trials(deepcopy=False)]
    assert states[0] == "FAIL" and states[1:] == ["COMPLETE", "COMPLETE"]
    assert pd.read_csv(tmp_path / "run" / "tune" / "trials.csv")["state"].tolist() == states


def test_cross_validated_trials_use_every_train_and_val_row_once_as_validation_and_never_a_test_row(tmp_path):
    from crossfuse.config import parse_config
    from crossfuse.engine.run import load_table, task_for
    from crossfuse.engine.tune import cv_splits

    config = write_config(tmp_path, trials=2, cv=3, pruner="none")
    cfg = parse_config(yaml.safe_load(config.read_text()))
    df, _, file = load_table(cfg)
    test_rows = set(task_for(cfg).split(cfg, df, file)["test"].index)
    folds = cv_splits(task_for(cfg), cfg, df, file, 3, seed=0)
    assert len(folds) == 3
    for column in folds:
        assert set(column.index[column == "test"]) == test_rows  # the test rows stay out of every fold
    val_rows = [set(c.index[c == "val"]) for c in folds]
    assert sum(map(len, val_rows)) == len(df) - len(test_rows) == len(set().union(*val_rows))  # each row once
    for column in folds:  # stratified: every class in every fold's validation rows
        assert df.loc[column == "val", "label"].nunique() == df["label"].nunique()

    assert main(["-q", "tune", str(config), "--no-refit"]) == 0
    study = open_study(setup(config))
    for t in study.get_trials():
        folds_seen = t.user_attrs["fold_values"]
        assert len(folds_seen) == 3 and t.value == pytest.approx(sum(folds_seen) / 3)
        assert t.user_attrs["val_loss"] == pytest.approx(-t.value)  # the mean validation loss of the folds
        assert sorted(t.intermediate_values) == [0, 1, 2]  # the running mean, reported after each fold
    with pytest.raises(ConfigError, match="tune.cv must be 0"):
        setup(write_config(tmp_path / "bad", cv=1))


def test_the_first_trial_is_the_config_as_written_when_its_values_lie_in_the_space(tmp_path):
    from crossfuse.engine.tune import config_values

    config = write_config(tmp_path, trials=2, pruner="none")
    assert main(["-q", "tune", str(config), "--no-refit"]) == 0
    first = open_study(setup(config)).trials[0]
    # tiny_config: lr 0.01, concat, head dropout 0.0: the search's objective starts from them
    assert first.params == {"train.lr": 0.01, "fusion.name": "concat", "head.dropout": 0.0}
    assert first.user_attrs["config_values"] is True
    raw = yaml.safe_load(config.read_text())
    assert config_values(raw, {"train.lr": {"log_uniform": [0.05, 0.1]}}) is None  # 0.01 is outside
    assert config_values(raw, {"fusion.name": {"choice": ["gated", "late"]}}) is None
    raw["fusion"] = {"name": "attention", "dim": 16}  # the configured method keeps its own parameters
    assert config_values(raw, {"fusion.dim": {"int": [8, 32]}}) == {"fusion.dim": 16}
