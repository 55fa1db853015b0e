"""The retrieval task in the run skeleton: contrastive training of a shared embedding space on a
manifest of pairs (``data.task: retrieval``); its runner is a Retriever."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import pandas as pd
import torch

import crossfuse
from crossfuse.config.schema import Config
from crossfuse.data import split_frame
from crossfuse.engine.retrieval_eval import MONITOR, _group_codes, collect_embeddings, direction_metrics, recall_mean
from crossfuse.engine.retriever import Retriever
from crossfuse.engine.run import TASKS, RunContext, RunResult, RunTask, default_encoders, infer_roles, run_task
from crossfuse.engine.trainer import Trainer, seed_all
from crossfuse.errors import ConfigError
from crossfuse.models import build_retrieval_model, component_problems, pair_loss

log = logging.getLogger(__name__)


class RetrievalRun(RunResult):
    """A RunResult whose predictor is a Retriever (also reachable as ``retriever``)."""

    @property
    def retriever(self) -> "Retriever":
        return self.predictor


def resolve_retrieval_config(cfg: Config, df: pd.DataFrame, flickr: bool = False) -> Config:
    """No target; the group column (Flickr: image_id); modalities inferred when not given."""
    r = cfg.retrieval
    if r.group_column is None and flickr:
        r = dataclasses.replace(r, group_column="image_id")
    data = dataclasses.replace(cfg.data, target=None, task="retrieval")
    cfg = dataclasses.replace(cfg, data=data, retrieval=r)
    if not cfg.modalities:
        cfg = dataclasses.replace(cfg, modalities=infer_roles(cfg, df, [cfg.data.id_column, cfg.data.split.column,
                                                                        r.group_column]))
    cfg = default_encoders(cfg)
    problems = component_problems(cfg)
    if len(cfg.modalities) < 2:
        problems.append(f"retrieval needs at least two modalities; got {', '.join(cfg.modalities) or 'none'}")
    if r.group_column and r.group_column not in df.columns:
        problems.append(f"retrieval.group_column: no column '{r.group_column}' in the manifest")
    if r.monitor_pair is not None and (len(r.monitor_pair) != 2 or not set(r.monitor_pair) <= set(cfg.modalities)):
        problems.append(f"retrieval.monitor_pair must name two of the modalities ({', '.join(cfg.modalities)}); "
                        f"got {r.monitor_pair}")
    if cfg.train.early_stopping.metric not in (None, MONITOR, "loss"):
        problems.append(f"train.early_stopping.metric must be {MONITOR} or loss for retrieval")
    if problems:
        raise ConfigError(problems)
    return cfg


@TASKS.register("retrieval")
class RetrievalTask(RunTask):
    """One tower per modality into a shared space, trained with a contrastive loss over every
    modality pair; rows with the same group are positives of each other."""

    result_class = RetrievalRun
    has_target = False
    global_negatives = True  # retrieval.global_negatives, set with the trainer's options

    def resolve(self, cfg: Config, df: pd.DataFrame, flickr: bool = False) -> Config:
        cfg = resolve_retrieval_config(cfg, df, flickr)
        self.pair = list(cfg.retrieval.monitor_pair or list(cfg.modalities)[:2])
        self.monitor = cfg.train.early_stopping.metric or MONITOR
        return cfg

    def fit_targets(self, cfg: Config, df: pd.DataFrame, file: str) -> None:
        self.groups = pd.Series(_group_codes(df, cfg.retrieval.group_column), index=df.index)

    def split(self, cfg: Config, df: pd.DataFrame, file: str) -> Dict[str, pd.DataFrame]:
        return split_frame(df, cfg.data.split, None, stratify=False, file=file, groups=cfg.retrieval.group_column)

    def build_model(self, ctx: RunContext, rows: Optional[pd.DataFrame] = None):
        return build_retrieval_model(ctx.cfg, ctx.processors, ctx.splits["train"] if rows is None else rows,
                                     ctx.base_dir)

    def describe(self, ctx: RunContext, model) -> str:
        return f"retrieval into {ctx.cfg.retrieval.embed_dim}-d, " + super().describe(ctx, model)

    def targets(self, ctx: RunContext, rows: pd.DataFrame) -> np.ndarray:
        return self.groups.loc[rows.index].to_numpy()

    def step_loss(self, out, batch):
        return pair_loss(out, batch.target, self.loss, global_negatives=self.global_negatives)

    @torch.no_grad()
    def evaluate(self, model, loader, device) -> Dict[str, Any]:
        """Validation: mean R@1/5/10 both ways over the monitored pair, and the loss."""
        targets, losses = [], []

        def loss_and_groups(out, batch):
            losses.append(float(pair_loss(out, batch.target, self.loss)) * len(batch))
            targets.append(batch.target.cpu().numpy())

        was = model.training
        model.eval()
        emb = collect_embeddings(model, loader, device, self.order, each=loss_and_groups)
        model.train(was)
        g = np.concatenate(targets)
        per = direction_metrics(emb, g, [tuple(self.pair)])
        flat = {f"{d}_R@{k}": v[f"recall@{k}"] for d, v in per.items() for k in (1, 5, 10)}
        return {MONITOR: recall_mean(per, self.pair), "loss": sum(losses) / max(1, len(g)), **flat}

    def trainer_options(self, ctx: RunContext) -> Dict[str, Any]:
        self.loss, self.order = ctx.cfg.retrieval.loss, list(ctx.cfg.modalities)
        self.global_negatives = ctx.cfg.retrieval.global_negatives
        return {"loss_fn": None, "metrics_fn": None, "monitor": self.monitor,
                "higher_is_better": self.monitor != "loss", "step_loss": self.step_loss, "evaluate": self.evaluate}

    def after_fit(self, ctx: RunContext, model, result):
        cfg, splits = ctx.cfg, ctx.splits
        refit_epochs = None
        if cfg.train.refit and len(splits["val"]) and result.best_epoch:
            # a fresh model on train + val for the epoch count early stopping chose
            refit_epochs = result.best_epoch
            both = pd.concat([splits["train"], splits["val"]]).sort_index()
            log.info("Refit on train + val (%d rows) for %d epochs", len(both), refit_epochs)
            seed_all(cfg.train.seed)
            model = self.build_model(ctx, both)
            refitter = Trainer(dataclasses.replace(cfg.train, epochs=refit_epochs), None, None, self.monitor,
                               self.monitor != "loss", callbacks=ctx.callbacks, step_loss=self.step_loss)
            refitter.fit(model, ctx.dataset(both, self.targets(ctx, both), True), None, self.collator(ctx))
        temperature = float(1 / model.scale.detach())
        log.info("Learned temperature: %.4f", temperature)
        return model, {"modalities": ", ".join(self.order), "loss": self.loss, "temperature": round(temperature, 4),
                       "refit_epochs": refit_epochs or "none"}

    def runner(self, ctx: RunContext, model) -> Retriever:
        cfg = ctx.cfg
        meta = {"crossfuse_version": crossfuse.__version__, "task": {"kind": "retrieval"}, "target": None,
                "id_column": cfg.data.id_column, "group_column": cfg.retrieval.group_column,
                "monitor_pair": self.pair, "config": cfg.to_dict()}
        return Retriever(model, ctx.processors, meta, cache_root=ctx.cache_root)

    def final_evaluation(self, ctx: RunContext, runner: Retriever, part: str, out_dir: Optional[Path], history,
                         extra: Dict[str, Any]) -> Dict[str, Any]:
        return runner.evaluate_frame(ctx.splits[part], ctx.base_dir, ctx.file, ctx.cfg.retrieval.group_column,
                                     out_dir=out_dir, batch_size=ctx.cfg.cache.batch_size, history=history,
                                     extra=extra, known_missing=ctx.missing, check_files=False)


    def summary(self, cfg: Config) -> str:
        return f"task: retrieval into {cfg.retrieval.embed_dim}-d ({cfg.retrieval.loss})"

    def headline(self, metrics: Dict[str, Any]) -> Dict[str, Any]:
        return {d: {k: round(v[k], 4) for k in ("recall@1", "recall@5", "recall@10")}
                for d, v in metrics["directions"].items()}

    def evaluate_saved(self, model_dir: Path, manifest: Path, out_dir: Path, options: Dict[str, Any]) -> Dict:
        from crossfuse.config.schema import DataConfig
        from crossfuse.engine.run import load_table

        retriever = Retriever.load(model_dir)
        retriever.allow_outside_paths = options.get("allow_outside_paths", False)
        df, base_dir, file = load_table(Config(data=DataConfig(manifest=str(manifest))))
        return retriever.evaluate_frame(df, base_dir, file, group_column=options.get("group_column"), out_dir=out_dir,
                                        batch_size=options["batch_size"], num_workers=options["num_workers"],
                                        on_bad_item=options["on_bad_item"], progress=True, distributed=True,
                                        extra={"model": str(model_dir), "manifest": str(manifest)})


def train_retrieval(cfg: Config, df: Optional[pd.DataFrame] = None, base_dir: Optional[Path] = None,
                    resume: bool = False, callbacks: Sequence[Any] = (), save: bool = True) -> RetrievalRun:
    """Train a shared embedding space on a manifest of pairs, evaluate it on the test split, save it."""
    return run_task(RetrievalTask(), cfg, df, base_dir, resume=resume, callbacks=callbacks, save=save)
