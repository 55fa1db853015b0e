"""The fusion task (classification and regression) in the run skeleton, and reading a manifest
into a saved model for ``evaluate`` and ``predict``."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

import crossfuse
from crossfuse.config.schema import Config
from crossfuse.data import Collator, duplicate_ids, read_manifest, split_frame, unseen_labels
from crossfuse.engine.balance import GradientBlend, balanced_loss, gradient_hook
from crossfuse.engine.baseline import linear_baseline
from crossfuse.engine.distributed import is_main
from crossfuse.engine.predictor import Predictor
from crossfuse.engine.run import (TASKS, RunContext, RunResult, RunTask, default_encoders, infer_roles,  # noqa: F401
                                  load_table, plan_problems, run_task, validate_data)
from crossfuse.engine.task import CLASSIFICATION_METRICS, HIGHER_IS_BETTER, REGRESSION_METRICS, TaskSpec, infer_task
from crossfuse.engine.trust import fit_trust, sample_rows
from crossfuse.errors import ConfigError, CrossfuseError, Problem
from crossfuse.models import build_model, component_problems

log = logging.getLogger(__name__)


@TASKS.register("fusion")
class FusionTask(RunTask):
    """Encoders -> fusion -> head, trained on a class or a number per item; its runner is a Predictor."""

    def resolve(self, cfg: Config, df: pd.DataFrame, flickr: bool = False) -> Config:
        cfg = resolve_config(cfg, df)
        if cfg.missing.imagine is not None and not cfg.train.modality_dropout:
            log.warning("missing.imagine without train.modality_dropout: the generators learn, but the fusion "
                        "meets imagined features in training only where the data lacks a modality")
        self.monitor = cfg.train.early_stopping.metric or ("rmse" if cfg.data.task == "regression" else "f1_macro")
        _check_monitor(self.monitor, cfg.data.task)
        return cfg

    def fit_targets(self, cfg: Config, df: pd.DataFrame, file: str) -> None:
        self.spec = TaskSpec.fit(cfg.data.task, df[cfg.data.target], file, cfg.data.target)

    def split(self, cfg: Config, df: pd.DataFrame, file: str) -> Dict[str, pd.DataFrame]:
        return split_frame(df, cfg.data.split, cfg.data.target, stratify=cfg.data.task == "classification", file=file)

    def warnings(self, cfg: Config, splits: Dict[str, pd.DataFrame], file: str) -> List[Problem]:
        # a label only in val/test gets an output unit, but nothing teaches it
        return unseen_labels(splits, cfg.data.target, file) if cfg.data.task == "classification" else []

    def build_model(self, ctx: RunContext):
        return build_model(ctx.cfg, ctx.processors, ctx.splits["train"], ctx.base_dir, self.spec.out_dim)

    def describe(self, ctx: RunContext, model) -> str:
        return f"{ctx.cfg.fusion.name} fusion, " + super().describe(ctx, model)

    def targets(self, ctx: RunContext, rows: pd.DataFrame) -> np.ndarray:
        return self.spec.encode(rows[ctx.cfg.data.target])

    def collator(self, ctx: RunContext) -> Collator:
        return Collator(ctx.sources, regression=self.spec.kind == "regression")

    def trainer_options(self, ctx: RunContext) -> Dict[str, Any]:
        class_weights, self._sample_weights = _balancing(ctx.cfg, self.spec, self.targets(ctx, ctx.splits["train"]))
        loss_fn = self.spec.loss(class_weights, ctx.cfg.train.label_smoothing)
        balance = ctx.cfg.train.balance
        options = {"loss_fn": loss_fn, "metrics_fn": self.spec.metrics, "monitor": self.monitor,
                   "higher_is_better": self.monitor in HIGHER_IS_BETTER, "on_gradients": gradient_hook(balance)}
        if balance.blend:  # validation keeps the fused loss alone; the blend also reads every head's there
            options["step_loss"] = GradientBlend(loss_fn, ctx.cfg.modalities, balance.blend_every)
        elif balance.aux_weight > 0:
            options["step_loss"] = balanced_loss(loss_fn, balance.aux_weight)
        return options

    def sample_weights(self, ctx: RunContext):
        return self._sample_weights

    def after_fit(self, ctx: RunContext, model, result):
        fields = {"fusion": ctx.cfg.fusion.name, "modalities": ", ".join(ctx.cfg.modalities), "monitor": self.monitor}
        cfg = ctx.cfg
        self.privacy = result.privacy
        trust = cfg.trust
        if result.privacy is not None:
            fields["privacy"] = result.privacy
            if trust.ood:  # its statistics would be an unprotected summary of the training items
                log.info("train.privacy: trust.ood is not fitted (it would store statistics of the training items)")
                trust = dataclasses.replace(trust, ood=False)
        loaders = []
        for part in ("train", "val"):
            rows = sample_rows(ctx.splits[part], cfg.train.seed)
            loaders.append(DataLoader(ctx.dataset(rows, self.targets(ctx, rows), False), batch_size=cfg.train.batch_size,
                                      shuffle=False, collate_fn=self.collator(ctx)) if len(rows) else None)
        fields.update(fit_trust(model, trust, loaders[0], loaders[1], self.spec.kind == "classification",
                                cfg.train.modality_dropout))
        return model, fields

    def runner(self, ctx: RunContext, model) -> Predictor:
        cfg = ctx.cfg
        meta = {"crossfuse_version": crossfuse.__version__, "task": self.spec.to_dict(), "target": cfg.data.target,
                "id_column": cfg.data.id_column, "config": cfg.to_dict()}
        if getattr(self, "privacy", None):
            meta["privacy"] = self.privacy
        return Predictor(model, ctx.processors, self.spec, meta, cache_root=ctx.cache_root)

    def final_evaluation(self, ctx: RunContext, runner: Predictor, part: str, out_dir: Optional[Path], history,
                         extra: Dict[str, Any]) -> Dict[str, Any]:
        cfg = ctx.cfg
        baseline = self.baseline(ctx, runner.model, part, history, extra.get("best_epoch")) if cfg.train.baseline else None
        metrics = runner.evaluate_frame(
            ctx.splits[part], ctx.base_dir, ctx.file, on_bad_item="missing", batch_size=cfg.train.batch_size,
            check_files=False, known_missing=ctx.missing, out_dir=out_dir, history=history, monitor=self.monitor,
            title=f"crossfuse: {cfg.fusion.name} fusion of {', '.join(cfg.modalities)}",
            extra={**extra, "baseline": baseline} if baseline else extra)
        if baseline:
            metrics["baseline"] = baseline
        for key in ("privacy", "anonymize"):
            if extra.get(key):
                metrics[key] = extra[key]
        return metrics

    def baseline(self, ctx: RunContext, model, part: str, history, best_epoch: Optional[int]) -> Dict[str, Any]:
        """The linear baseline on the same items and features (engine.baseline), and the model's own
        validation score at its best epoch beside it."""
        cfg, loaders = ctx.cfg, {}
        for name, split in (("train", "train"), ("val", "val"), ("test", part)):
            # at most 20,000 items per part, in random order: wide raw inputs stop earlier (MAX_VALUES)
            rows = sample_rows(ctx.splits[split], cfg.train.seed).sample(frac=1.0, random_state=cfg.train.seed)
            loaders[name] = DataLoader(ctx.dataset(rows, self.targets(ctx, rows), False), batch_size=cfg.train.batch_size,
                                       collate_fn=self.collator(ctx)) if len(rows) else None
        report = linear_baseline(model, ctx.processors, self.spec, loaders, cfg.train.seed)
        record = history[best_epoch - 1] if history and best_epoch else {}
        report["model_val"] = record.get(f"val_{report['metric']}")
        return report


    def summary(self, cfg: Config) -> str:
        return f"fusion: {cfg.fusion.name}; task: {cfg.data.task}"

    def headline(self, metrics: Dict[str, Any]) -> Dict[str, Any]:
        out = {k: round(metrics[k], 4) for k in ("accuracy", "f1_macro", "roc_auc", "mae", "rmse", "r2")
               if isinstance(metrics.get(k), float)}
        if metrics.get("privacy"):
            out["epsilon"] = metrics["privacy"]["epsilon"]
        linear = (metrics.get("baseline") or {}).get("rows", {}).get("all modalities", {}).get("test")
        if linear is not None:
            out[f"linear_baseline_{metrics['baseline']['metric']}"] = round(linear, 4)
        return out

    def evaluate_saved(self, model_dir: Path, manifest: Path, out_dir: Path, options: Dict[str, Any]) -> Dict:
        return read_and_evaluate(model_dir, manifest, out_dir, options["on_bad_item"], options["batch_size"],
                                 options["num_workers"], robustness=options.get("robustness", False),
                                 allow_outside_paths=options.get("allow_outside_paths", False))


def train(cfg: Config, df: Optional[pd.DataFrame] = None, base_dir: Optional[Path] = None,
          resume: bool = False, callbacks: Sequence[Any] = (), save: bool = True) -> RunResult:
    """Train a fusion model, evaluate it on the test split and (when ``save``) write the model and
    report to output_dir. See ``crossfuse.engine.run.run_task`` for the steps."""
    return run_task(FusionTask(), cfg, df, base_dir, resume=resume, callbacks=callbacks, save=save)


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
                                    out_dir=out_dir, progress=True, robustness=robustness, distributed=True,
                                    extra={"model": str(model_dir), "manifest": str(manifest)})


def read_and_predict(model_dir: Path, manifest: Path, out_csv: Path, on_bad_item: str = "error",
                     batch_size: int = 64, num_workers: int = 0, allow_outside_paths: bool = False,
                     chunk_rows: int = 100_000) -> int:
    """``crossfuse predict``: predictions for every usable row of ``manifest`` into ``out_csv``;
    returns how many rows were written.

    The manifest is read ``chunk_rows`` rows at a time, only the columns the model reads
    (``data.manifest_chunks``: Parquet in record batches, CSV in chunks), and each chunk's
    predictions are appended to a temporary file renamed to ``out_csv`` at the end, so memory
    stays bounded by a chunk and a killed run leaves no partial CSV. Under torchrun each chunk is
    split across the processes and rank 0 writes. Rows that repeat an earlier row's id, in any
    chunk, are counted and warned about at the end (ids name the items in the CSV)."""
    from crossfuse.data import manifest_chunks

    if chunk_rows < 1:
        raise CrossfuseError(f"--chunk-rows must be at least 1. Got {chunk_rows}.")
    predictor = Predictor.load(model_dir)
    predictor.allow_outside_paths = allow_outside_paths
    id_col = predictor.meta.get("id_column")
    columns = [c for p in predictor.processors.values() for c in p.columns] + ([id_col] if id_col else [])
    main = is_main()
    out_csv = Path(out_csv)
    tmp = out_csv.with_name(f".{out_csv.name}.{os.getpid()}.tmp")
    written = 0
    first_row: Dict[str, int] = {}  # id -> the first row that has it, across chunks
    repeats: List[Problem] = []
    try:
        with (open(tmp, "w", encoding="utf-8", newline="") if main else contextlib.nullcontext()) as f:
            for chunk in manifest_chunks(manifest, columns, chunk_rows):
                result = predictor.predict_frame(chunk, manifest.parent, str(manifest), on_bad_item, batch_size,
                                                 num_workers, progress=True, distributed=True)
                if main:
                    result.to_csv(f, index=False, header=written == 0)
                    repeats += duplicate_ids(chunk, id_col, str(manifest), first_row)
                written += len(result)
        if main:
            os.replace(tmp, out_csv)
    finally:
        if main and tmp.exists():
            tmp.unlink()
    if repeats:
        log.warning("%d rows repeat an earlier row's id (column '%s'), so the id names more than one row of %s; "
                    "first: %s", len(repeats), id_col, out_csv, "; ".join(map(str, repeats[:3])))
    return written
