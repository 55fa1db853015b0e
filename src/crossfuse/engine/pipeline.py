"""Training end to end: manifest -> validation -> split -> processors + model -> train -> report -> save."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

import crossfuse
from crossfuse.atomic import atomic_write
from crossfuse.config.io import save_yaml
from crossfuse.config.schema import Component, Config
from crossfuse.data import (Collator, ManifestDataset, apply_policy, check_columns, duplicate_ids, find_problems,
                            infer_modalities, is_flickr_dir, missing_cells, read_flickr, read_manifest, split_frame,
                            unseen_labels)
from crossfuse.data.manifest import DEFAULT_ENCODERS, SPLIT_LIKE, leaking_columns
from crossfuse.engine.extract import cache_root, with_cache
from crossfuse.engine.predictor import Predictor
from crossfuse.engine.task import CLASSIFICATION_METRICS, HIGHER_IS_BETTER, REGRESSION_METRICS, TaskSpec, infer_task
from crossfuse.engine.trainer import Trainer, TrainResult, seed_all
from crossfuse.errors import ConfigError, DataError, Problem
from crossfuse.models import build_model, component_problems, make_processors, param_counts
from crossfuse.threads import set_threads

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    predictor: Predictor
    metrics: Dict[str, Any]
    train: TrainResult
    output_dir: Optional[Path]
    split_sizes: Dict[str, int]
    # wall seconds of each stage: feature extraction into the cache, training, final evaluation
    timings: Dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def model_dir(self) -> Optional[Path]:
        return None if self.output_dir is None else self.output_dir / "model"


def load_table(cfg: Config) -> Tuple[pd.DataFrame, Path, str]:
    if not cfg.data.manifest:
        raise ConfigError("'data.manifest' is required: the path of a CSV, JSONL or Parquet manifest")
    path = Path(cfg.data.manifest)
    if path.is_dir():  # a Flickr8K/30K folder as distributed (captions file + images)
        if not is_flickr_dir(path):
            raise ConfigError(f"'data.manifest' is a directory ({path}) but not a Flickr dataset folder; "
                              "give a CSV, JSONL or Parquet manifest")
        return read_flickr(path), path, str(path)
    return read_manifest(path), path.parent, str(path)


def resolve_config(cfg: Config, df: pd.DataFrame) -> Config:
    """Fill in what the config leaves to the data: modalities and the task. Checks components."""
    if not cfg.modalities:
        cfg = dataclasses.replace(cfg, modalities=infer_roles(cfg, df, [cfg.data.target, cfg.data.id_column,
                                                                        cfg.data.split.column]))
    cfg = default_encoders(cfg)
    problems = component_problems(cfg)
    if problems:
        raise ConfigError(problems)
    if cfg.data.task == "auto" and cfg.data.target in df.columns:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, task=infer_task(df[cfg.data.target])))
    return cfg


def default_encoders(cfg: Config) -> Config:
    """Modalities that name no encoder get their kind's default."""
    filled = {m: mc if mc.encoder is not None or mc.kind not in DEFAULT_ENCODERS else
              dataclasses.replace(mc, encoder=Component(DEFAULT_ENCODERS[mc.kind])) for m, mc in cfg.modalities.items()}
    return dataclasses.replace(cfg, modalities=filled)


def write_split(out_dir: Path, splits: Dict[str, pd.DataFrame], id_column: Optional[str]) -> None:
    """split.csv in the run folder: the split each manifest row went to (1-based row, id when
    known), so the test rows of a split drawn by crossfuse can be rebuilt."""
    parts = [pd.DataFrame({"row": frame.index.to_numpy() + 1, "split": name,
                           **({id_column: frame[id_column].to_numpy()} if id_column in frame.columns else {})})
             for name, frame in splits.items()]
    atomic_write(out_dir / "split.csv", pd.concat(parts).sort_values("row").to_csv(index=False))


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
               **{c: "excluded (data.exclude)" for c in cfg.data.exclude}, **{c: "excluded: copy of the target"
                                                                               for c in copies}}
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


def plan_problems(cfg: Config, df: pd.DataFrame, file: str) -> Tuple[List[Problem], List[Problem]]:
    """What training would refuse after the cell checks (a one-class target, an unknown split
    name, an empty training split), and what it would warn about (labels only in val/test):
    (errors, warnings). ``crossfuse validate`` reports both, so it finds what ``train`` refuses."""
    target = cfg.data.target
    classification = cfg.data.task == "classification"
    try:
        if cfg.data.task != "retrieval":
            TaskSpec.fit(cfg.data.task, df[target], file, target)
        splits = split_frame(df, cfg.data.split, target if cfg.data.task != "retrieval" else None,
                             stratify=classification, file=file,
                             groups=cfg.retrieval.group_column if cfg.data.task == "retrieval" else None)
    except DataError as exc:
        return exc.problems, []
    return [], unseen_labels(splits, target, file) if classification else []


def train(cfg: Config, df: Optional[pd.DataFrame] = None, base_dir: Optional[Path] = None,
          resume: bool = False, callbacks: Sequence[Any] = (), save: bool = True) -> RunResult:
    """Train, evaluate on the test split and (when ``save``) write the model and report to output_dir."""
    file = "<dataframe>"
    if cfg.train.threads is not None:
        set_threads(cfg.train.threads)
    if df is None:
        df, base_dir, file = load_table(cfg)
    base_dir = Path(base_dir or ".")
    cfg = resolve_config(cfg, df)
    target = cfg.data.target
    monitor = cfg.train.early_stopping.metric or ("rmse" if cfg.data.task == "regression" else "f1_macro")
    _check_monitor(monitor, cfg.data.task)
    processors, problems = validate_data(cfg, df, base_dir, file)
    df, policy_report = apply_policy(df, problems, cfg.data.on_bad_item, target)
    missing = missing_cells(problems, processors)

    task = TaskSpec.fit(cfg.data.task, df[target], file, target)
    splits = split_frame(df, cfg.data.split, target, stratify=task.kind == "classification", file=file)
    if task.kind == "classification":
        unseen = unseen_labels(splits, target, file)
        if unseen:  # the output layer has a unit for them, but nothing teaches it
            log.warning("%d val/test rows have a label no training row has; the model cannot predict it:\n%s",
                        len(unseen), "\n".join(f"  - {p}" for p in unseen[:20]))
    seed_all(cfg.train.seed)
    model = build_model(cfg, processors, splits["train"], base_dir, task.out_dim)
    total, trainable = param_counts(model)
    log.info("Model: %s fusion over %s; %s parameters (%s trainable)", cfg.fusion.name, ", ".join(cfg.modalities),
             f"{total:,}", f"{trainable:,}")

    root = cache_root(cfg.cache)
    clock = time.perf_counter()
    sources = with_cache(model, processors, df, base_dir, root, batch_size=cfg.cache.batch_size,
                         num_workers=cfg.train.num_workers, missing=missing, progress=cfg.train.progress)
    timings = {"extract_seconds": time.perf_counter() - clock}
    collate = Collator(sources, regression=task.kind == "regression")
    train_y = task.encode(splits["train"][target])

    def dataset(part: str, is_train: bool) -> ManifestDataset:
        return ManifestDataset(splits[part], sources, base_dir, task.encode(splits[part][target]),
                               train=is_train, missing=missing)

    class_weights, sample_weights = _balancing(cfg, task, train_y)
    out_dir = Path(cfg.output_dir) if save else None
    trainer = Trainer(cfg.train, task.loss(class_weights), task.metrics, monitor, monitor in HIGHER_IS_BETTER,
                      checkpoint_path=None if out_dir is None else out_dir / "checkpoint.safetensors",
                      callbacks=callbacks)
    clock = time.perf_counter()
    result = trainer.fit(model, dataset("train", True), dataset("val", False) if len(splits["val"]) else None,
                         collate, sample_weights=sample_weights, resume=resume)
    timings["train_seconds"] = time.perf_counter() - clock
    model.to("cpu").eval()

    meta = {"crossfuse_version": crossfuse.__version__, "task": task.to_dict(), "target": target,
            "id_column": cfg.data.id_column, "config": cfg.to_dict()}
    predictor = Predictor(model, processors, task, meta, cache_root=root)
    predictor.allow_outside_paths = cfg.data.allow_outside_paths
    eval_part = evaluation_part(splits)
    sizes = {k: len(v) for k, v in splits.items()}
    extra = {"evaluated_on": eval_part, "fusion": cfg.fusion.name, "modalities": ", ".join(cfg.modalities),
             "best_epoch": result.best_epoch, "epochs_run": len(result.history), "monitor": monitor,
             **{k: round(v, 2) for k, v in timings.items()},
             **{f"{k}_items": v for k, v in sizes.items()}, **{f"policy_{k}": v for k, v in policy_report.items()}}
    is_main = trainer.is_main
    clock = time.perf_counter()
    metrics = predictor.evaluate_frame(
        splits[eval_part], base_dir, file, on_bad_item="missing", batch_size=cfg.train.batch_size, check_files=False,
        known_missing=missing,
        out_dir=out_dir if (out_dir is not None and is_main) else None, history=result.history, monitor=monitor,
        title=f"crossfuse: {cfg.fusion.name} fusion of {', '.join(cfg.modalities)}", extra=extra)
    timings["evaluate_seconds"] = time.perf_counter() - clock
    if out_dir is not None and is_main:
        save_run(out_dir, predictor, cfg)
        write_split(out_dir, splits, cfg.data.id_column)
    return RunResult(predictor, metrics, result, out_dir, sizes, timings)


def evaluation_part(splits: Dict[str, pd.DataFrame]) -> str:
    """The split a finished run is scored on: test, else val, else train."""
    return "test" if len(splits["test"]) else "val" if len(splits["val"]) else "train"


def save_run(out_dir: Path, predictor: Any, cfg: Config) -> None:
    """The trained model (``predictor.save``) and the resolved config, into a run directory."""
    predictor.save(out_dir / "model")
    save_yaml(cfg, out_dir / "config.yaml")
    log.info("Saved model to %s", out_dir / "model")


def _balancing(cfg: Config, task: TaskSpec, train_y: np.ndarray):
    if task.kind != "classification":
        return None, None
    counts = np.bincount(train_y, minlength=task.out_dim).astype(float)
    class_weights = sample_weights = None
    if cfg.train.class_weights == "balanced":
        w = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
        class_weights = torch.tensor(w, dtype=torch.float32)
    if cfg.train.sampler == "balanced":
        sample_weights = torch.tensor(1.0 / counts[train_y], dtype=torch.double)
    return class_weights, sample_weights


def _check_monitor(monitor: str, task: str) -> None:
    known = sorted(REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS)
    if monitor not in known:
        raise ConfigError(f"'train.early_stopping.metric' must be one of {', '.join(known)} for {task}. "
                          f"Got {monitor!r}.")


def read_and_evaluate(model_dir: Path, manifest: Path, out_dir: Optional[Path], on_bad_item: str = "error",
                      batch_size: int = 64, num_workers: int = 0, robustness: bool = False,
                      allow_outside_paths: bool = False) -> Dict[str, Any]:
    predictor = Predictor.load(model_dir)
    predictor.allow_outside_paths = allow_outside_paths
    df = read_manifest(manifest)
    return predictor.evaluate_frame(df, manifest.parent, str(manifest), on_bad_item, batch_size, num_workers,
                                    out_dir=out_dir, progress=True, robustness=robustness,
                                    extra={"model": str(model_dir), "manifest": str(manifest)})


def read_and_predict(model_dir: Path, manifest: Path, out_csv: Path, on_bad_item: str = "error",
                     batch_size: int = 64, num_workers: int = 0, allow_outside_paths: bool = False) -> pd.DataFrame:
    predictor = Predictor.load(model_dir)
    predictor.allow_outside_paths = allow_outside_paths
    df = read_manifest(manifest)
    result = predictor.predict_frame(df, manifest.parent, str(manifest), on_bad_item, batch_size, num_workers,
                                     progress=True)
    atomic_write(out_csv, result.to_csv(index=False))
    return result

