"""One run skeleton for every kind of model.

``run_task`` is the sequence every training run goes through: load -> resolve -> validate ->
policy -> targets -> split -> seed -> build -> cache -> Trainer -> fit -> evaluate -> save. What
differs between kinds of model (classification/regression fusion, retrieval) is a ``RunTask``: it
supplies the config resolution, the targets and split, the model, the step loss and validation,
the runner (Predictor, Retriever) and its final report. A new kind of run is one more RunTask,
registered in ``TASKS``; DP-SGD (``train.privacy``) is a mode of the training loop
(engine.privacy), not a task.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from crossfuse.atomic import atomic_write
from crossfuse.config.io import save_yaml
from crossfuse.config.schema import Component, Config
from crossfuse.data import (Collator, ManifestDataset, apply_policy, check_columns, duplicate_ids, find_problems,
                            infer_modalities, is_flickr_dir, missing_cells, read_flickr, read_manifest)
from crossfuse.data.anonymize import anonymize_inputs, column_problems, with_faces
from crossfuse.data.manifest import SPLIT_LIKE, leaking_columns
from crossfuse.data.processors import PROCESSORS
from crossfuse.engine.extract import cache_root, with_cache
from crossfuse.engine.trainer import Trainer, TrainResult, seed_all
from crossfuse.errors import ConfigError, CrossfuseError, DataError, Problem
from crossfuse.models import make_processors, param_counts
from crossfuse.registry import Registry
from crossfuse.threads import set_threads

log = logging.getLogger(__name__)
TASKS: Registry["RunTask"] = Registry("task")


@dataclass
class RunResult:
    predictor: Any  # the runner: a Predictor, or a Retriever for retrieval runs
    metrics: Dict[str, Any]
    train: TrainResult
    output_dir: Optional[Path]
    split_sizes: Dict[str, int]
    # wall seconds of each stage: feature extraction into the cache, training, final evaluation
    timings: Dict[str, float] = field(default_factory=dict)

    @property
    def model_dir(self) -> Optional[Path]:
        return None if self.output_dir is None else self.output_dir / "model"


@dataclass
class RunContext:
    """What a run has found out by the time it builds its model; tasks read it."""

    cfg: Config
    df: pd.DataFrame
    base_dir: Path
    file: str
    processors: Dict[str, Any]
    missing: set
    splits: Dict[str, pd.DataFrame]
    policy_report: Dict[str, int]
    cache_root: Optional[Path] = None
    sources: Dict[str, Any] = field(default_factory=dict)
    callbacks: Sequence[Any] = ()

    def dataset(self, rows: pd.DataFrame, targets: Optional[np.ndarray], train: bool) -> ManifestDataset:
        return ManifestDataset(rows, self.sources, self.base_dir, targets, train=train, missing=self.missing)


class RunTask:
    """The parts of a run that depend on the kind of model. One instance serves one run."""

    result_class: type = RunResult
    has_target: bool = True

    def resolve(self, cfg: Config, df: pd.DataFrame, flickr: bool = False) -> Config:
        """The config with what it leaves to the data filled in, components checked."""
        raise NotImplementedError

    def fit_targets(self, cfg: Config, df: pd.DataFrame, file: str) -> None:
        """Learn the target encoding from the usable rows (raises DataError when it cannot)."""

    def split(self, cfg: Config, df: pd.DataFrame, file: str) -> Dict[str, pd.DataFrame]:
        raise NotImplementedError

    def warnings(self, cfg: Config, splits: Dict[str, pd.DataFrame], file: str) -> List[Problem]:
        """What training would warn about once split (labels only in val/test...)."""
        return []

    def build_model(self, ctx: RunContext):
        raise NotImplementedError

    def describe(self, ctx: RunContext, model) -> str:
        total, trainable = param_counts(model)
        return f"{type(model).__name__} over {', '.join(ctx.cfg.modalities)}; {total:,} parameters ({trainable:,} " \
               "trainable)"

    def targets(self, ctx: RunContext, rows: pd.DataFrame) -> Optional[np.ndarray]:
        raise NotImplementedError

    def collator(self, ctx: RunContext) -> Collator:
        return Collator(ctx.sources)

    def trainer_options(self, ctx: RunContext) -> Dict[str, Any]:
        """Trainer keywords: loss_fn/metrics_fn or step_loss/evaluate, monitor, higher_is_better."""
        raise NotImplementedError

    def sample_weights(self, ctx: RunContext):
        return None

    def after_fit(self, ctx: RunContext, model, result: TrainResult) -> Tuple[Any, Dict[str, Any]]:
        """The model to keep (retrieval may refit one on train + val) and report fields."""
        return model, {}

    def runner(self, ctx: RunContext, model):
        raise NotImplementedError

    def final_evaluation(self, ctx: RunContext, runner, part: str, out_dir: Optional[Path], history,
                         extra: Dict[str, Any]) -> Dict[str, Any]:
        raise NotImplementedError

    def summary(self, cfg: Config) -> str:
        """One line on what a resolved config will train (``crossfuse validate``)."""
        raise NotImplementedError

    # --- a saved model ----------------------------------------------------------------------
    def headline(self, metrics: Dict[str, Any]) -> Dict[str, Any]:
        """The few test figures the command line prints after training."""
        raise NotImplementedError

    def evaluate_saved(self, model_dir: Path, manifest: Path, out_dir: Path, options: Dict[str, Any]) -> Dict:
        """``crossfuse evaluate``: score a saved model of this kind on a labelled manifest."""
        raise NotImplementedError


def task_for(cfg: Config) -> RunTask:
    """A fresh RunTask for the config's data.task."""
    return TASKS.get("retrieval" if cfg.data.task == "retrieval" else "fusion")()


def task_for_model(model_dir: Path) -> RunTask:
    """The RunTask that trained the model in ``model_dir`` (from its config.json; a directory that
    cannot be read is left to the loader, which names what is wrong)."""
    from crossfuse.encryption import is_encrypted, load_key, read_decrypted

    try:
        if is_encrypted(Path(model_dir)):
            key = load_key(what=f"the model {model_dir}")
            text = read_decrypted(model_dir, ["config.json"], key)["config.json"]
        else:
            text = (Path(model_dir) / "config.json").read_bytes()
        kind = json.loads(text).get("architecture", {}).get("kind")
    except (OSError, ValueError, AttributeError, CrossfuseError):
        kind = None
    return TASKS.get("retrieval" if kind == "retrieval" else "fusion")()


def run_task(task: RunTask, cfg: Config, df: Optional[pd.DataFrame] = None, base_dir: Optional[Path] = None,
             resume: bool = False, callbacks: Sequence[Any] = (), save: bool = True) -> RunResult:
    """Train, evaluate on the test split and (when ``save``) write the model and report to output_dir."""
    file, flickr = "<dataframe>", False
    if cfg.train.threads is not None:
        set_threads(cfg.train.threads)
    if df is None:
        df, base_dir, file = load_table(cfg)
        flickr = Path(cfg.data.manifest).is_dir()
    base_dir = Path(base_dir or ".")
    auto = None
    if cfg.fusion is not None and cfg.fusion.name == "auto" and task.has_target:
        chosen = Path(cfg.output_dir) / "auto_fusion.json"
        if resume and save and chosen.is_file():  # a resumed run trains the method it chose before
            auto = {**json.loads(chosen.read_text()), "ensemble": int(cfg.fusion.params.get("ensemble") or 0)}
            cfg = dataclasses.replace(cfg, fusion=Component(auto["chosen"]))
            log.info("fusion auto: resuming with %s, chosen before (%s)", auto["chosen"], chosen)
        else:
            cfg, auto = choose_fusion(task, cfg, df, base_dir)
            if save:
                atomic_write(chosen, json.dumps(auto, indent=2))
    cfg = task.resolve(cfg, df, flickr)
    cfg, df, anonymized = anonymize_run(cfg, df, progress=cfg.train.progress)
    processors, problems = validate_data(cfg, df, base_dir, file)
    df, policy_report = apply_policy(df, problems, cfg.data.on_bad_item, cfg.data.target if task.has_target else None)
    task.fit_targets(cfg, df, file)
    splits = task.split(cfg, df, file)
    for p in task.warnings(cfg, splits, file)[:20]:
        log.warning("%s", p)
    ctx = RunContext(cfg, df, base_dir, file, processors, missing_cells(problems, processors), splits, policy_report,
                     cache_root(cfg.cache), callbacks=callbacks)
    seed_all(cfg.train.seed)
    model = task.build_model(ctx)
    log.info("Model: %s", task.describe(ctx, model))

    out_dir = Path(cfg.output_dir) if save else None
    # the trainer first: under torchrun its launch joins the process group, so the processes split
    # the cache misses between them, each on its own device
    trainer = Trainer(cfg.train, checkpoint_path=None if out_dir is None else out_dir / "checkpoint.safetensors",
                      callbacks=callbacks, log_dir=None if out_dir is None else out_dir / "logs",
                      hparams=cfg.to_dict(), **task.trainer_options(ctx))
    clock = time.perf_counter()
    ctx.sources = with_cache(model, processors, df, base_dir, ctx.cache_root, batch_size=cfg.cache.batch_size,
                             num_workers=cfg.train.num_workers, missing=ctx.missing, progress=cfg.train.progress,
                             encrypt=cfg.cache.encrypt, device=trainer.fabric.device, split_across_ranks=True)
    timings = {"extract_seconds": time.perf_counter() - clock}
    val = splits["val"]
    clock = time.perf_counter()
    result = trainer.fit(model, ctx.dataset(splits["train"], task.targets(ctx, splits["train"]), True),
                         ctx.dataset(val, task.targets(ctx, val), False) if len(val) else None, task.collator(ctx),
                         sample_weights=task.sample_weights(ctx), resume=resume)
    model, fields = task.after_fit(ctx, model, result)
    timings["train_seconds"] = time.perf_counter() - clock
    model.to("cpu").eval()

    runner = task.runner(ctx, model)
    runner.allow_outside_paths = cfg.data.allow_outside_paths
    part = evaluation_part(splits)
    sizes = {k: len(v) for k, v in splits.items()}
    extra = {"evaluated_on": part, **fields, "best_epoch": result.best_epoch, "epochs_run": len(result.history),
             **{k: round(v, 2) for k, v in timings.items()}, **{f"{k}_items": v for k, v in sizes.items()},
             **{f"policy_{k}": v for k, v in policy_report.items()}, **({"anonymize": anonymized} if anonymized else {})}
    is_main = trainer.is_main
    clock = time.perf_counter()
    metrics = task.final_evaluation(ctx, runner, part, out_dir if (out_dir is not None and is_main) else None,
                                    result.history, extra)
    timings["evaluate_seconds"] = time.perf_counter() - clock
    if out_dir is not None and is_main:
        save_run(out_dir, runner, cfg)
        write_split(out_dir, splits, cfg.data.id_column)
        if auto is not None:
            if auto["ensemble"] >= 2:
                metrics["ensemble"] = auto["ensembled"] = auto_ensemble(task, cfg, auto, df, base_dir, file, splits,
                                                                        part, resume)
                atomic_write(out_dir / "metrics.json", json.dumps(metrics, indent=2, default=str))
            atomic_write(out_dir / "auto_fusion.json", json.dumps(auto, indent=2))
    return task.result_class(runner, metrics, result, out_dir, sizes, timings)


def auto_ensemble(task: RunTask, cfg: Config, auto: Dict[str, Any], df: pd.DataFrame, base_dir: Path, file: str,
                  splits: Dict[str, pd.DataFrame], part: str, resume: bool = False) -> Dict[str, Any]:
    """``fusion: {name: auto, ensemble: K}``: the K best methods of the short runs (the chosen one
    is the run's own model) trained in full on the same split, under output_dir/members/, and
    combined by greedy selection on the validation rows into output_dir/ensemble, a model
    directory like any other. Returns its weights and its validation and test scores. With
    ``resume`` each member continues from its own checkpoint."""
    from crossfuse.engine.ensemble import build_ensemble
    from crossfuse.engine.predictor import Predictor

    out_dir = Path(cfg.output_dir)
    key, higher = auto["metric"], auto["higher_is_better"]
    ranked = sorted((r for r in auto["table"] if r.get(key) is not None), key=lambda r: -r[key] if higher else r[key])
    dirs = [out_dir / "model"]
    for row in ranked[1:auto["ensemble"]]:
        member = dataclasses.replace(cfg, fusion=Component(row["fusion"]), output_dir=str(out_dir / "members" /
                                     row["fusion"]), train=dataclasses.replace(cfg.train, baseline=False))
        log.info("fusion auto: training ensemble member %s", row["fusion"])
        dirs.append(run_task(task, member, df, base_dir, resume=resume and (Path(member.output_dir) /
                                                                          "checkpoint.safetensors").is_file()).model_dir)
    if len(dirs) < 2:
        log.warning("fusion auto: only one method could be trained; no ensemble")
        return {"error": "only one method could be trained"}
    outside = cfg.data.allow_outside_paths
    report = build_ensemble(dirs, Path(file), out_dir / "ensemble", method="greedy", frame=(splits["val"], base_dir),
                            allow_outside_paths=outside)
    ensemble = Predictor.load(out_dir / "ensemble")
    ensemble.allow_outside_paths = outside
    scores = {name: ensemble.evaluate_frame(splits[name], base_dir, file, attribution=False)
              for name in dict.fromkeys(["val", part]) if len(splits[name])}
    names = {str(d): ("model" if d == dirs[0] else d.parent.name) for d in dirs}
    weights = {names[d]: round(w, 4) for d, w in report["weights"].items()}
    log.info("fusion auto: greedy ensemble of %s, weights %s; %s", ", ".join(names.values()), weights, "; ".join(
        f"{n} accuracy {m['accuracy']:.4f}" if "accuracy" in m else f"{n} rmse {m.get('rmse', float('nan')):.4g}"
        for n, m in scores.items()))
    return {"members": [str(d) for d in dirs], "weights": weights, "model_dir": str(out_dir / "ensemble"),
            **{n: {k: v for k, v in m.items() if isinstance(v, (int, float))} for n, m in scores.items()}}


def choose_fusion(task: RunTask, cfg: Config, df: pd.DataFrame, base_dir: Path) -> Tuple[Config, Dict[str, Any]]:
    """``fusion.name: auto``: every fusion method (or ``fusion.methods``) trained for a short budget
    (``fusion.epochs``, default a third of train.epochs, at least 5) on the same split, the embedding
    cache serving frozen encoders; the best on validation is the one the run trains. A method that
    cannot run on this data is skipped and said. Returns the config and the table chosen from."""
    from crossfuse.fusion import FUSIONS
    from crossfuse.models.factory import auto_fusion_problems

    problems = auto_fusion_problems(cfg.fusion.params)
    if problems:
        raise ConfigError(problems)
    methods = list(cfg.fusion.params.get("methods") or FUSIONS.names())
    epochs = int(cfg.fusion.params.get("epochs") or min(cfg.train.epochs, max(5, cfg.train.epochs // 3)))
    table: List[Dict[str, Any]] = []
    monitor, higher = None, True  # the runs' early-stopping metric and its direction
    for name in methods:
        trial = dataclasses.replace(cfg, fusion=Component(name), train=dataclasses.replace(
            cfg.train, epochs=epochs, baseline=False, progress=False))
        clock = time.perf_counter()
        try:
            result = run_task(task, trial, df, base_dir, save=False)
        except CrossfuseError as exc:
            log.warning("fusion auto: %s skipped: %s", name, exc)
            table.append({"fusion": name, "error": str(exc)})
            continue
        tr = result.train
        monitor, higher = tr.monitor, tr.higher_is_better
        table.append({"fusion": name, f"val_{tr.monitor}": tr.best_score, "best_epoch": tr.best_epoch,
                      "seconds": round(time.perf_counter() - clock, 2), "higher_is_better": higher})
    key = f"val_{monitor}"
    scored = [r for r in table if r.get(key) is not None]
    if not scored:
        raise CrossfuseError("fusion: auto: no fusion method could be trained:\n" + "\n".join(
            f"  - {r['fusion']}: {r.get('error')}" for r in table))
    best = max(scored, key=lambda r: r[key] if higher else -r[key])
    lines = [f"| fusion | {key} | best epoch | seconds |", "|---|---|---|---|"] + [
        f"| {r['fusion']} | " + (f"{r[key]:.4f} | {r['best_epoch']} | {r['seconds']}" if "error" not in r
                                 else "failed | - | -") + " |" for r in table]
    log.info("fusion auto (%d epochs each): %s chosen\n%s", epochs, best["fusion"], "\n".join(lines))
    return dataclasses.replace(cfg, fusion=Component(best["fusion"])), {
        "chosen": best["fusion"], "epochs": epochs, "metric": key, "higher_is_better": higher, "table": table,
        "ensemble": int(cfg.fusion.params.get("ensemble") or 0)}


def plan_problems(task: RunTask, cfg: Config, df: pd.DataFrame, file: str) -> Tuple[List[Problem], List[Problem]]:
    """What training would refuse after the cell checks (a one-class target, an unknown split
    name, an empty training split), and what it would warn about (labels only in val/test):
    (errors, warnings). ``crossfuse validate`` reports both, so it finds what ``train`` refuses."""
    try:
        task.fit_targets(cfg, df, file)
        splits = task.split(cfg, df, file)
    except DataError as exc:
        return exc.problems, []
    return [], task.warnings(cfg, splits, file)


def privacy_problems(task: RunTask, cfg: Config, df: pd.DataFrame, base_dir: Path, file: str) -> List[str]:
    """What train.privacy would refuse before its first step, found as training finds it: the model
    built, its layers replaced, per-item gradients checked on three training items (no cache, no
    training). ``crossfuse validate`` reports them; [] when the config trains no private model."""
    if cfg.train.privacy is None or not task.has_target:
        return []
    processors, problems = validate_data(cfg, df, base_dir, file)
    df, _ = apply_policy(df, problems, "skip", cfg.data.target)
    task.fit_targets(cfg, df, file)
    splits = task.split(cfg, df, file)
    ctx = RunContext(cfg, df, base_dir, file, processors, set(), splits, {})
    ctx.sources = dict(processors)
    seed_all(cfg.train.seed)
    model = task.build_model(ctx)
    trainer = Trainer(dataclasses.replace(cfg.train, logger="none"), **task.trainer_options(ctx))
    rows = splits["train"].iloc[:8]
    try:
        trainer.check_privacy(model, ctx.dataset(rows, task.targets(ctx, rows), True), task.collator(ctx))
    except ConfigError as exc:
        return exc.problems
    return []


# --- the steps every task shares ------------------------------------------------------------
def load_table(cfg: Config) -> Tuple[pd.DataFrame, Path, str]:
    if not cfg.data.manifest:
        raise ConfigError("'data.manifest' is required: the path of a CSV, JSONL or Parquet manifest")
    path = Path(cfg.data.manifest)
    if path.is_dir():  # a Flickr8K/30K folder as distributed (captions file + images)
        if not is_flickr_dir(path):
            raise ConfigError(f"'data.manifest' is a directory ({path}) but not a Flickr dataset folder; "
                              "give a CSV, JSONL or Parquet manifest")
        return read_flickr(path), path, str(path)
    return read_manifest(path, named_columns(cfg)), path.parent, str(path)


def named_columns(cfg: Config) -> Optional[List[str]]:
    """The manifest columns a config reads: its modalities', the target, id, split and group
    columns; None when the modalities are to be inferred from every column. A manifest's other
    columns are never loaded (a Parquet file with wide unused columns costs only what is used)."""
    if not cfg.modalities:
        return None
    d = cfg.data
    return [c for mc in cfg.modalities.values() for c in mc.columns] + \
        [c for c in (d.target, d.id_column, d.split.column, cfg.retrieval.group_column) if c]


def anonymize_run(cfg: Config, df: pd.DataFrame, progress: bool = True):
    """data.anonymize inside a run: faces hidden by the image processors as they load, personal data
    in text replaced before anything reads it; returns (cfg, df, per-column summary)."""
    settings = cfg.data.anonymize
    if settings is None:
        return cfg, df, {}
    problems = column_problems(settings, cfg.modalities)
    if problems:
        raise ConfigError(problems)
    cfg = dataclasses.replace(cfg, modalities=with_faces(cfg.modalities, settings))
    df, summary = anonymize_inputs(df, settings, cfg.modalities, progress)
    faces = [m for m, mc in cfg.modalities.items() if mc.processor.get("faces")]
    if faces:
        summary.update({m: {"kind": "image", "faces": settings.faces} for m in faces})
    return cfg, df, summary


def default_encoders(cfg: Config) -> Config:
    """Modalities that name no encoder get their kind's default."""
    filled = {m: mc if mc.encoder is not None or mc.kind not in PROCESSORS else
              dataclasses.replace(mc, encoder=Component(PROCESSORS[mc.kind].default_encoder))
              for m, mc in cfg.modalities.items()}
    return dataclasses.replace(cfg, modalities=filled)


def infer_roles(cfg: Config, df: pd.DataFrame, reserved: List[Optional[str]]) -> Dict[str, Any]:
    """Modalities for a config that names none: every column not reserved (target, id, split),
    not in ``data.exclude``, not split/fold-like and not a copy of the target; logged as a table."""
    target = cfg.data.target if cfg.data.target in df.columns else None
    unknown = [c for c in cfg.data.exclude if c not in df.columns]
    if unknown:
        log.warning("data.exclude names columns the manifest lacks: %s", ", ".join(map(str, unknown)))
    skip = set(reserved) | set(cfg.data.exclude)
    candidates = [c for c in df.columns if c not in skip and str(c).lower() not in SPLIT_LIKE]
    leaks = leaking_columns(df, target, candidates) if target and cfg.data.task != "retrieval" else {}
    copies = [c for c, why in leaks.items() if why == "copy"]
    for c, why in leaks.items():
        if why == "copy":
            log.warning("Column '%s' is a one-to-one copy of the target '%s': left out of the inputs (target "
                        "leakage)", c, target)
        else:
            log.warning("Column '%s' %s: check it is not the label in disguise (data.exclude: [%s] leaves it "
                        "out)", c, why, c)
    modalities = infer_modalities(df, list(skip | set(copies)))
    roles = {c: f"{m} ({mc.kind})" for m, mc in modalities.items() for c in mc.columns}
    why_not = {cfg.data.target: "target", cfg.data.id_column: "id", cfg.data.split.column: "split",
               **{c: "excluded (data.exclude)" for c in cfg.data.exclude},
               **{c: "excluded: copy of the target" for c in copies}}

    def role(c) -> str:
        return roles.get(c) or why_not.get(c) or ("split/fold, not a feature" if str(c).lower() in SPLIT_LIKE else "-")

    lines = ["| column | role |", "|---|---|"] + [f"| {c} | {role(c)} |" for c in df.columns]
    log.info("Inferred column roles:\n%s", "\n".join(lines))
    return modalities


def validate_data(cfg: Config, df: pd.DataFrame, base_dir: Path, file: str):
    """The manifest checks of ``crossfuse validate`` and of training: returns (processors, problems).
    Duplicate ids are reported as a warning (they are legal, but predictions and indexes name
    items by them)."""
    processors = make_processors(cfg.modalities)
    check_columns(df, processors, file, cfg.data.target)
    problems = find_problems(df, processors, file, base_dir, cfg.data.target, cfg.data.task,
                             open_files=cfg.data.check_files, allow_outside=cfg.data.allow_outside_paths)
    dupes = duplicate_ids(df, cfg.data.id_column, file)
    if dupes:
        log.warning("%d rows repeat an id of data.id_column '%s' (first: %s)", len(dupes), cfg.data.id_column,
                    dupes[0])
    return processors, problems


def evaluation_part(splits: Dict[str, pd.DataFrame]) -> str:
    """The split a finished run is scored on: test, else val, else train."""
    return "test" if len(splits["test"]) else "val" if len(splits["val"]) else "train"


def save_run(out_dir: Path, runner: Any, cfg: Config) -> None:
    """The trained model (``runner.save``) and the resolved config, into a run directory."""
    runner.save(out_dir / "model")
    save_yaml(cfg, out_dir / "config.yaml")
    log.info("Saved model to %s", out_dir / "model")


def read_split(run_dir: Path, df: pd.DataFrame) -> Dict[str, pd.DataFrame]:
    """The rows of ``df`` (the run's manifest as ``load_table`` reads it) in each part of the
    split the run wrote to split.csv (``write_split``)."""
    split = pd.read_csv(Path(run_dir) / "split.csv")
    return {part: df.iloc[split.loc[split["split"] == part, "row"].to_numpy() - 1]
            for part in ("train", "val", "test")}


def write_split(out_dir: Path, splits: Dict[str, pd.DataFrame], id_column: Optional[str]) -> None:
    """split.csv in the run folder: the split each manifest row went to (1-based row, id when
    known), so the test rows of a split drawn by crossfuse can be rebuilt."""
    parts = [pd.DataFrame({"row": frame.index.to_numpy() + 1, "split": name,
                           **({id_column: frame[id_column].to_numpy()} if id_column in frame.columns else {})})
             for name, frame in splits.items()]
    atomic_write(out_dir / "split.csv", pd.concat(parts).sort_values("row").to_csv(index=False))

