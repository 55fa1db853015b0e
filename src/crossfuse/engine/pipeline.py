"""Training end to end: manifest -> validation -> split -> processors + model -> train -> report -> save."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

import crossfuse
from crossfuse.config.io import save_yaml
from crossfuse.config.schema import Config
from crossfuse.data import (Collator, ManifestDataset, apply_policy, check_columns, find_problems,
                            infer_modalities, is_flickr_dir, missing_cells, read_flickr, read_manifest, split_frame)
from crossfuse.engine.extract import cache_root, with_cache
from crossfuse.engine.predictor import Predictor
from crossfuse.engine.task import CLASSIFICATION_METRICS, HIGHER_IS_BETTER, REGRESSION_METRICS, TaskSpec, infer_task
from crossfuse.engine.trainer import Trainer, TrainResult, seed_all
from crossfuse.errors import ConfigError
from crossfuse.models import build_model, component_problems, make_processors, param_counts

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    predictor: Predictor
    metrics: Dict[str, Any]
    train: TrainResult
    output_dir: Optional[Path]
    split_sizes: Dict[str, int]

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
        exclude = [cfg.data.target, cfg.data.id_column, cfg.data.split.column]
        cfg = dataclasses.replace(cfg, modalities=infer_modalities(df, exclude))
        log.info("Inferred modalities: %s", {m: v.columns for m, v in cfg.modalities.items()})
    problems = component_problems(cfg)
    if problems:
        raise ConfigError(problems)
    if cfg.data.task == "auto" and cfg.data.target in df.columns:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, task=infer_task(df[cfg.data.target])))
    return cfg


def validate_data(cfg: Config, df: pd.DataFrame, base_dir: Path, file: str):
    """The manifest checks of ``crossfuse validate`` and of training: returns (processors, problems)."""
    processors = make_processors(cfg.modalities)
    check_columns(df, processors, file, cfg.data.target)
    problems = find_problems(df, processors, file, base_dir, cfg.data.target, cfg.data.task,
                             open_files=cfg.data.check_files, allow_outside=cfg.data.allow_outside_paths)
    return processors, problems


def train(cfg: Config, df: Optional[pd.DataFrame] = None, base_dir: Optional[Path] = None,
          resume: bool = False, callbacks: Sequence[Any] = (), save: bool = True) -> RunResult:
    """Train, evaluate on the test split and (when ``save``) write the model and report to output_dir."""
    file = "<dataframe>"
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
    seed_all(cfg.train.seed)
    model = build_model(cfg, processors, splits["train"], base_dir, task.out_dim)
    total, trainable = param_counts(model)
    log.info("Model: %s fusion over %s; %s parameters (%s trainable)", cfg.fusion.name, ", ".join(cfg.modalities),
             f"{total:,}", f"{trainable:,}")

    root = cache_root(cfg.cache)
    sources = with_cache(model, processors, df, base_dir, root, batch_size=cfg.cache.batch_size,
                         num_workers=cfg.train.num_workers, missing=missing, progress=cfg.train.progress)
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
    result = trainer.fit(model, dataset("train", True), dataset("val", False) if len(splits["val"]) else None,
                         collate, sample_weights=sample_weights, resume=resume)
    model.to("cpu").eval()

    meta = {"crossfuse_version": crossfuse.__version__, "task": task.to_dict(), "target": target,
            "id_column": cfg.data.id_column, "config": cfg.to_dict()}
    predictor = Predictor(model, processors, task, meta, cache_root=root)
    predictor.allow_outside_paths = cfg.data.allow_outside_paths
    eval_part = evaluation_part(splits)
    sizes = {k: len(v) for k, v in splits.items()}
    extra = {"evaluated_on": eval_part, "fusion": cfg.fusion.name, "modalities": ", ".join(cfg.modalities),
             "best_epoch": result.best_epoch, "epochs_run": len(result.history), "monitor": monitor,
             **{f"{k}_items": v for k, v in sizes.items()}, **{f"policy_{k}": v for k, v in policy_report.items()}}
    is_main = trainer.is_main
    metrics = predictor.evaluate_frame(
        splits[eval_part], base_dir, file, on_bad_item="missing", batch_size=cfg.train.batch_size, check_files=False,
        known_missing=missing,
        out_dir=out_dir if (out_dir is not None and is_main) else None, history=result.history, monitor=monitor,
        title=f"crossfuse: {cfg.fusion.name} fusion of {', '.join(cfg.modalities)}", extra=extra)
    if out_dir is not None and is_main:
        save_run(out_dir, predictor, cfg)
    return RunResult(predictor, metrics, result, out_dir, sizes)


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
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_name(f".{out_csv.name}.tmp")
    result.to_csv(tmp, index=False)
    tmp.replace(out_csv)
    return result

