"""Hyperparameter search on Optuna: a space in the config, trials that are ordinary runs, a shared
study that several processes or machines can work on, and a best model refit at the end.

Every trial is ``run_task`` on the config with the trial's values set, without saving; frozen
encoders' outputs come from the embedding cache, so after the first trial a trial trains only the
fusion head. The objective is the run's best validation score on its early-stopping metric (never
the test split), reported per epoch so that a pruner stops bad trials early. With ``tune.cv: K``
it is the mean over K folds of the train + val rows, each fold the validation split of one run,
reported after each fold. Optuna maximises; for a metric where lower is better (loss, rmse) the
objective is its negative.
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from crossfuse.config import apply_overrides, load_yaml, parse_config
from crossfuse.errors import ConfigError, CrossfuseError, require

log = logging.getLogger(__name__)
KINDS = ("log_uniform", "uniform", "int", "choice")
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
CV_COLUMN = "__crossfuse_cv_split__"  # a fold's split column (train / val / test), added to a trial's table


def default_space(raw: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """What is searched when the config gives no ``tune.space``."""
    space: Dict[str, Dict[str, Any]] = {"train.lr": {"log_uniform": [1e-4, 1e-2]},
                                        "train.weight_decay": {"log_uniform": [1e-5, 1e-1]}}
    if (raw.get("data") or {}).get("task") == "retrieval":
        space["retrieval.dropout"] = {"uniform": [0.0, 0.6]}
        return space
    space["head.dropout"] = {"uniform": [0.0, 0.5]}
    space["train.modality_dropout"] = {"uniform": [0.0, 0.4]}
    space["fusion.name"] = {"choice": ["concat", "gated", "lowrank", "attention", "late"]}
    return space


def space_problems(space: Any) -> List[str]:
    """Every malformed entry of a search space (the keys themselves are checked against the config
    by ``check_space``)."""
    if not isinstance(space, dict):
        return [f"'tune.space' must be a mapping of config keys to ranges. Got {space!r}."]
    problems = []
    for key, spec in space.items():
        where = f"tune.space.{key}"
        if key.split(".")[0] == "tune" or key == "output_dir":
            problems.append(f"'{where}': {key} cannot be searched")
            continue
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            problems.append(f"'{where}' must be one of {{log_uniform|uniform|int: [low, high]}} or "
                            f"{{choice: [a, b, ...]}}. Got {spec!r}.")
            continue
        kind, values = next(iter(spec.items()))
        if kind == "choice":
            if not isinstance(values, list) or not values:
                problems.append(f"'{where}.choice' must be a non-empty list. Got {values!r}.")
            continue
        numbers = isinstance(values, list) and len(values) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not numbers:
            problems.append(f"'{where}.{kind}' must be [low, high], two numbers. Got {values!r}.")
        elif kind == "int" and not all(isinstance(v, int) for v in values):
            problems.append(f"'{where}.int' must be two integers. Got {values!r}.")
        elif not values[0] < values[1]:
            problems.append(f"'{where}.{kind}' is an empty range: low {values[0]} is not below high {values[1]}.")
        elif kind == "log_uniform" and values[0] <= 0:
            problems.append(f"'{where}.log_uniform' needs low > 0. Got {values[0]}.")
    return problems


def with_params(raw: Dict[str, Any], params: Dict[str, Any]) -> Dict[str, Any]:
    """``raw`` with each searched key set. Choosing another ``fusion.name`` than the configured one
    drops the fusion's other parameters (they belong to the configured method) unless the space
    sets them too."""
    if "fusion.name" in params and params["fusion.name"] != parse_config(raw).fusion.name:
        raw = {**raw, "fusion": {"name": params["fusion.name"]}}
    return apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in params.items()])


def config_values(raw: Dict[str, Any], space: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The config's own value of every searched key, when each lies in the space (a choice listed,
    a number within its range); None otherwise. Enqueued as the study's first trial, so the search
    never ends below the configuration it started from on its own objective."""
    from crossfuse.config.schema import Component

    cfg, values = parse_config(raw), {}
    for key, spec in space.items():
        value: Any = cfg
        for part in key.split("."):
            if isinstance(value, Component) and part != "name":
                value = value.params
            value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        kind, bounds = next(iter(spec.items()))
        if kind == "choice":
            inside = value in bounds
        else:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            inside = number and (kind != "int" or float(value).is_integer()) and bounds[0] <= value <= bounds[1]
        if not inside:
            return None
        values[key] = int(value) if kind == "int" else value
    return values


def check_space(raw: Dict[str, Any], space: Dict[str, Dict[str, Any]]) -> None:
    """The space's own shape, then every bound and choice applied to the config and validated
    there (an unknown key, a value out of the key's range): all problems at once."""
    problems = space_problems(space)
    if isinstance(space, dict):
        for key, spec in space.items():
            if space_problems({key: spec}):
                continue  # already listed: its values cannot be tried
            kind, values = next(iter(spec.items()))
            found: Dict[Any, List[str]] = {}
            for v in values:
                try:
                    parse_config(trial_raw(with_params(raw, {key: v}), None))
                    found[repr(v)] = _name_problems(key, v)
                except ConfigError as exc:
                    found[repr(v)] = exc.problems + _name_problems(key, v)
            everywhere = set.intersection(*(set(ps) for ps in found.values())) if found else set()
            problems += [f"tune.space.{key}: {p}" for p in dict.fromkeys(q for ps in found.values() for q in ps)
                         if p in everywhere]
            problems += [f"tune.space.{key} = {v}: {p}" for v, ps in found.items() for p in ps if p not in everywhere]
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))


def _name_problems(key: str, value: Any) -> List[str]:
    """A fusion method or encoder name that is not registered (the config check leaves names to
    the registries, which would only refuse them when the trial builds its model)."""
    from crossfuse.encoders import ENCODERS
    from crossfuse.fusion import FUSIONS

    registry = FUSIONS if key == "fusion.name" else ENCODERS if key.endswith(".encoder.name") else None
    if registry is None or value in registry.names():
        return []
    return [f"no {'fusion method' if registry is FUSIONS else 'encoder'} {value!r}; registered: "
            + ", ".join(registry.names())]


def trial_raw(raw: Dict[str, Any], epochs: Optional[int], output_dir: Optional[str] = None) -> Dict[str, Any]:
    """A trial's (or the refit's) config: no tune section, no progress bars, its epochs."""
    out = {k: v for k, v in raw.items() if k != "tune"}
    out["train"] = {**(out.get("train") or {}), "progress": False, **({"epochs": epochs} if epochs else {})}
    if output_dir is not None:
        out["output_dir"] = output_dir
    return out


def suggest(trial, key: str, spec: Dict[str, Any]) -> Any:
    kind, values = next(iter(spec.items()))
    if kind == "choice":
        return trial.suggest_categorical(key, values)
    if kind == "int":
        return trial.suggest_int(key, values[0], values[1])
    return trial.suggest_float(key, float(values[0]), float(values[1]), log=kind == "log_uniform")


class _Reporter:
    """Trainer callback: each epoch's validation score to the trial; prunes when the pruner says."""

    def __init__(self, trial):
        self.trial = trial

    def on_epoch_end(self, trainer, state) -> None:
        import optuna

        value = state["history"][-1].get(f"val_{trainer.monitor}")
        if value is None:
            return
        self.trial.report(value if trainer.higher_is_better else -value, state["epoch"])
        if self.trial.should_prune():
            raise optuna.TrialPruned()


def cv_splits(task, cfg, df: pd.DataFrame, file: str, k: int, seed: int) -> List[pd.Series]:
    """K split columns over ``df``'s rows (train / val / test): the test rows as the config splits
    them in every one; the train + val rows cut into K folds, each the validation rows of one
    (stratified by class for classification, whole groups for retrieval with a group column)."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold

    from crossfuse.data.validate import label_str

    parts = task.split(cfg, df, file)
    pool = pd.concat([parts["train"], parts["val"]]).sort_index()
    group = cfg.retrieval.group_column if cfg.data.task == "retrieval" else None
    if group and group in pool.columns:
        folds = GroupKFold(n_splits=k).split(pool, groups=pool[group].astype(str))
    elif cfg.data.task == "classification" and cfg.data.target in pool.columns:
        labels = pool[cfg.data.target].map(label_str)
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed) \
            if labels.value_counts().min() >= k else KFold(n_splits=k, shuffle=True, random_state=seed)
        folds = splitter.split(pool, labels)
    else:
        folds = KFold(n_splits=k, shuffle=True, random_state=seed).split(pool)
    columns = []
    for train_at, val_at in folds:
        column = pd.Series("test", index=df.index, dtype=object)
        column[pool.index[train_at]] = "train"
        column[pool.index[val_at]] = "val"
        columns.append(column)
    return columns


@dataclass
class TuneSetup:
    raw: Dict[str, Any]
    space: Dict[str, Dict[str, Any]]
    out: Path
    storage: str
    study: str
    trials: int
    timeout: Optional[float]
    seed: int
    pruner: str
    epochs: Optional[int]
    ensemble: int = 0
    cv: int = 0


def setup(config: Path, overrides: Sequence[str] = (), trials: Optional[int] = None, timeout: Optional[float] = None,
          storage: Optional[str] = None, study: Optional[str] = None) -> TuneSetup:
    """Read and check the config and its space before any trial runs."""
    raw = apply_overrides(load_yaml(config), overrides)
    cfg = parse_config(raw)
    tc = cfg.tune
    space = tc.space or default_space(raw)
    check_space(raw, space)
    trials = tc.trials if trials is None else trials
    if trials < 1:
        raise ConfigError([f"tune.trials must be >= 1. Got {trials}."])
    out = Path(cfg.output_dir) / "tune"
    storage = storage or tc.storage or str(out / "journal.log")
    if tc.ensemble == 1 or tc.ensemble < 0 or tc.ensemble > 64:
        raise ConfigError([f"tune.ensemble must be 0 (none) or 2 to 64 trials. Got {tc.ensemble}."])
    if tc.cv == 1 or tc.cv < 0 or tc.cv > 20:
        raise ConfigError([f"tune.cv must be 0 (the config's validation split) or 2 to 20 folds. Got {tc.cv}."])
    return TuneSetup(raw, space, out, storage, study or tc.study or Path(cfg.output_dir).name, trials,
                     timeout if timeout is not None else tc.timeout, tc.seed, tc.pruner, tc.epochs, tc.ensemble,
                     tc.cv)


def _storage(url: str):
    import optuna

    if "://" in url:  # sqlite:///..., postgresql://..., mysql://...
        return url
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    Path(url).parent.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return JournalStorage(JournalFileBackend(url, lock_obj=JournalFileOpenLock(url)))


def open_study(s: TuneSetup, worker: int = 0):
    optuna = require("optuna", "tune", "crossfuse tune")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
              "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
              "none": lambda: optuna.pruners.NopPruner()}[s.pruner]()
    return optuna.create_study(study_name=s.study, storage=_storage(s.storage), direction="maximize",
                               sampler=optuna.samplers.TPESampler(seed=s.seed + worker), pruner=pruner,
                               load_if_exists=True)


def fail_dead_trials(study) -> int:
    """Trials left RUNNING by a worker of this machine that no longer exists (killed): FAIL, so
    the study goes on without them. Workers elsewhere are left to their own machines."""
    from optuna.trial import TrialState

    host, failed = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == host and isinstance(pid, int) and not _alive(pid):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            failed += 1
    if failed:
        log.warning("marked %d trial(s) of killed workers as failed", failed)
    return failed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=tuple(getattr(TrialState, n) for n in FINISHED)))


def work(s: TuneSetup, worker: int = 0, progress: bool = True) -> None:
    """One worker: run trials until the study holds ``s.trials`` finished ones (or the timeout)."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from crossfuse.engine.run import run_task, task_for

    study = open_study(s, worker)
    fail_dead_trials(study)
    if _finished(study) >= s.trials:
        return
    start = config_values(s.raw, s.space)
    if start is not None:  # the configuration as written is trial 0 (once, whichever worker comes first)
        study.enqueue_trial(start, user_attrs={"config_values": True}, skip_if_exists=True)
    else:
        log.info("tune: the config's own values are not all inside tune.space; the search starts without them")
    folds: List[pd.Series] = []
    if s.cv >= 2:  # the table and its folds once per worker; every trial runs on the same folds
        from crossfuse.engine.run import load_table

        base = parse_config(trial_raw(s.raw, s.epochs))
        df, base_dir, file = load_table(base)
        folds = cv_splits(task_for(base), base, df, file, s.cv, s.seed)

    def scored(result) -> float:
        tr = result.train
        if tr.best_score is None or not math.isfinite(tr.best_score):
            raise CrossfuseError("the trial has no validation score (no validation split?)")
        return float(tr.best_score if tr.higher_is_better else -tr.best_score)

    def objective(trial) -> float:
        import optuna

        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = {k: suggest(trial, k, spec) for k, spec in s.space.items()}
        raw = trial_raw(with_params(s.raw, params), s.epochs, str(s.out / "trials" / str(trial.number)))
        raw["train"]["baseline"] = False  # the linear baseline is for reports; a trial needs its score only
        cfg = parse_config(raw)
        clock = time.perf_counter()
        quiet = logging.getLogger("crossfuse")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # a trial's epoch lines would bury the progress bar
        try:
            if not folds:
                result = run_task(task_for(cfg), cfg, save=False, callbacks=[_Reporter(trial)])
                values = [scored(result)]
            else:
                split = replace(cfg.data.split, column=CV_COLUMN)
                fold_cfg = replace(cfg, data=replace(cfg.data, split=split))
                values = []
                for k, column in enumerate(folds):  # the pruner sees the running mean after each fold
                    result = run_task(task_for(fold_cfg), fold_cfg, df.assign(**{CV_COLUMN: column}), base_dir,
                                      save=False)
                    values.append(scored(result))
                    trial.report(float(np.mean(values)), k)
                    if k + 1 < len(folds) and trial.should_prune():
                        raise optuna.TrialPruned()
                trial.set_user_attr("fold_values", values)
        finally:
            quiet.setLevel(level)
        tr = result.train
        value = float(np.mean(values))
        trial.set_user_attr("monitor", tr.monitor)
        trial.set_user_attr(f"val_{tr.monitor}", value if tr.higher_is_better else -value)
        trial.set_user_attr("best_epoch", tr.best_epoch)
        trial.set_user_attr("seconds", round(time.perf_counter() - clock, 2))
        return value

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=s.trials, initial=_finished(study), desc=f"tune {s.study}", unit="trial")

    def show(study, trial) -> None:
        if bar is not None:
            bar.n = min(s.trials, _finished(study))
            try:
                bar.set_postfix(best=f"{study.best_value:.4f}")
            except ValueError:  # no complete trial yet
                pass
            bar.refresh()

    states = tuple(getattr(TrialState, n) for n in FINISHED)
    try:
        study.optimize(objective, timeout=s.timeout, catch=(Exception,),
                       callbacks=[MaxTrialsCallback(s.trials, states=states), show])
    finally:
        if bar is not None:
            bar.close()


def run_workers(s: TuneSetup, config: Path, overrides: Sequence[str], jobs: int, cli_args: Sequence[str],
                progress: bool = True) -> None:
    """``jobs`` workers on one study: this process and ``jobs - 1`` child processes, all sharing
    the storage (a journal file by default, safe for parallel writers)."""
    children = [subprocess.Popen([sys.executable, "-m", "crossfuse", "-q", "tune", str(config), *overrides,
                                  *cli_args, "--worker", str(k), "--no-refit"])
                for k in range(1, jobs)]
    try:
        work(s, 0, progress)
    finally:
        for c in children:
            c.wait()


@dataclass
class TuneResult:
    out: Path
    best: Dict[str, Any]
    trials: pd.DataFrame
    model_dir: Optional[Path]
    summary: Dict[str, Any]


def finish(s: TuneSetup, refit: bool = True) -> TuneResult:
    """trials.csv, best.yaml, plots, tune.json; with ``refit`` the best config trained and saved
    as a normal run (<output_dir>/tune/best: model/, summary.md, metrics.json)."""
    import yaml

    from crossfuse.atomic import atomic_write
    from crossfuse.engine.run import run_task, task_for

    study = open_study(s)
    table = trials_table(study)
    s.out.mkdir(parents=True, exist_ok=True)
    atomic_write(s.out / "trials.csv", table.to_csv(index=False))
    complete = table[table["state"] == "COMPLETE"]
    if not len(complete):
        raise CrossfuseError(f"no trial of study {s.study} completed ({len(table)} trials: "
                             f"{table['state'].value_counts().to_dict()}); see {s.out / 'trials.csv'}")
    best = study.best_trial
    best_raw = trial_raw(with_params(s.raw, best.params), s.epochs, str(s.out / "best"))
    best_raw["train"].pop("progress", None)
    atomic_write(s.out / "best.yaml", yaml.safe_dump(best_raw, sort_keys=False))
    plot_study(table, s.out)
    monitor = best.user_attrs.get("monitor")
    finished = table[table["state"].isin(FINISHED)]
    minutes = finished["duration_s"].dropna().sum() / 60  # every finished trial's time, pruned ones included
    summary = {"study": s.study, "storage": s.storage, "trials": table["state"].value_counts().to_dict(),
               "best_trial": best.number, "best_params": best.params, "monitor": monitor,
               f"best_val_{monitor}": best.user_attrs.get(f"val_{monitor}"),
               "trials_per_minute": round(len(finished) / minutes, 2) if minutes else None}
    model_dir = None
    if refit:
        cfg = parse_config(best_raw)
        run = run_task(task_for(cfg), cfg)
        model_dir = run.model_dir
        summary["refit_val"] = run.train.best_score
        summary["refit_test"] = task_for(cfg).headline(run.metrics)
    if refit and s.ensemble >= 2:
        summary["ensemble"] = ensemble_of_best(s, study, table, s.ensemble)
    atomic_write(s.out / "tune.json", json.dumps(summary, indent=2, default=str))
    return TuneResult(s.out, summary, table, model_dir, summary)


def ensemble_of_best(s: TuneSetup, study, table: pd.DataFrame, k: int) -> Dict[str, Any]:
    """Refit the best ``k`` complete trials (the best one is tune/best) and save their greedy
    ensemble, weighted on the validation rows of the split, to tune/ensemble; its test score
    next to the best single model's."""
    from crossfuse.engine.ensemble import build_ensemble
    from crossfuse.engine.predictor import Predictor
    from crossfuse.engine.run import load_table, read_split, run_task, task_for

    done = table[table["state"] == "COMPLETE"].sort_values("value", ascending=False).head(k)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    dirs = [s.out / "best" / "model"]
    for number in done["trial"].tolist()[1:]:
        raw = trial_raw(with_params(s.raw, by_number[int(number)].params), s.epochs, str(s.out / "top" / str(number)))
        cfg = parse_config(raw)
        dirs.append(run_task(task_for(cfg), cfg).model_dir)
    cfg = parse_config(trial_raw(s.raw, s.epochs))
    df, base_dir, file = load_table(cfg)
    part = read_split(s.out / "best", df)
    report = build_ensemble(dirs, Path(file), s.out / "ensemble", method="greedy",
                            frame=(part["val"], base_dir), allow_outside_paths=cfg.data.allow_outside_paths)
    out = {"members": [str(d) for d in dirs], "weights": report["weights"], "val": report["ensemble"],
           "metric": report["metric"]}
    test = part["test"]
    if len(test):
        for name, d in (("ensemble", s.out / "ensemble"), ("best", dirs[0])):
            p = Predictor.load(d)
            p.allow_outside_paths = cfg.data.allow_outside_paths
            out[f"test_{name}"] = p.evaluate_frame(test, base_dir, file, attribution=False)[report["metric"]]
    return out


def trials_table(study) -> pd.DataFrame:
    """One row per trial: number, state, objective, each parameter, validation score, seconds."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        monitor = t.user_attrs.get("monitor")
        rows.append({"trial": t.number, "state": t.state.name, "value": t.value,
                     **{f"param_{k}": v for k, v in t.params.items()},
                     "monitor": monitor, "val": t.user_attrs.get(f"val_{monitor}") if monitor else None,
                     "best_epoch": t.user_attrs.get("best_epoch"), "epochs_reported": len(t.intermediate_values),
                     "seconds": t.user_attrs.get("seconds"),
                     "duration_s": t.duration.total_seconds() if t.duration is not None else None})
    return pd.DataFrame(rows)


def plot_study(table: pd.DataFrame, out: Path) -> None:
    """history.png (objective per trial and the best so far), importance.png (how much each
    parameter's value explains, from a random forest on the complete trials) and slices.png (the
    objective against each parameter). Matplotlib only: works offline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from crossfuse.atomic import atomic_file

    done = table[table["state"] == "COMPLETE"].sort_values("trial")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(done["trial"], done["value"], s=18, label="complete")
    pruned = table[table["state"] == "PRUNED"]
    if len(pruned):
        ax.scatter(pruned["trial"], [done["value"].min()] * len(pruned), marker="x", color="grey", label="pruned")
    ax.plot(done["trial"], done["value"].cummax(), color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective (validation; higher is better)")
    ax.legend()
    ax.set_title("optimisation history")
    fig.tight_layout()
    with atomic_file(out / "history.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

    params = [c for c in table.columns if c.startswith("param_")]
    if not params or len(done) < 2:
        return
    categorical = [c for c in params if not pd.api.types.is_numeric_dtype(done[c])]
    X = pd.get_dummies(done[params].astype({c: str for c in categorical}), columns=categorical, dtype=float)
    if len(done) >= 4 and X.shape[1]:
        from sklearn.ensemble import RandomForestRegressor

        forest = RandomForestRegressor(n_estimators=64, random_state=0).fit(X.to_numpy(), done["value"].to_numpy())
        share = {p: float(sum(w for c, w in zip(X.columns, forest.feature_importances_)
                              if c == p or c.startswith(p + "_"))) for p in params}
        fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(params)))
        names = sorted(share, key=share.get)
        ax.barh([n.removeprefix("param_") for n in names], [share[n] for n in names])
        ax.set_xlabel("importance (random forest on the complete trials)")
        fig.tight_layout()
        with atomic_file(out / "importance.png") as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
    cols = min(3, len(params))
    rows = int(np.ceil(len(params) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, p in zip(axes.flat, params):
        x = done[p]
        if p in categorical:
            cats = sorted(x.astype(str).unique())
            ax.scatter([cats.index(v) for v in x.astype(str)], done["value"], s=14)
            ax.set_xticks(range(len(cats)), cats, rotation=30)
        else:
            ax.scatter(x, done["value"], s=14)
            if (x > 0).all() and x.max() / max(x.min(), 1e-300) > 50:
                ax.set_xscale("log")
        ax.set_title(p.removeprefix("param_"))
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    fig.suptitle("objective against each parameter")
    fig.tight_layout()
    with atomic_file(out / "slices.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
