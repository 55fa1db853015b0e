"""The training loop, readable in one sitting. Devices, precision and data parallelism are Lightning
Fabric's job (see docs/design.md for why Fabric): the same code runs on one CPU, one GPU, or several
processes with DDP (``devices: 2, strategy: ddp``; with torchrun or Fabric's own launcher).

Determinism: each epoch reseeds every RNG from (seed, epoch) and draws its own item order, so a
run resumed from the checkpoint of epoch k ends with the same weights as one never interrupted.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from crossfuse.config.schema import TrainConfig
from crossfuse.encoders import is_frozen
from crossfuse.engine.checkpoint import load_checkpoint, save_checkpoint
from crossfuse.engine.inference import collect_outputs
from crossfuse.engine.missing import drop_modalities
from crossfuse.engine.placement import resolve_num_nodes, resolve_precision
from crossfuse.progress import Progress
from crossfuse.types import Batch

log = logging.getLogger(__name__)
MetricsFn = Callable[[np.ndarray, np.ndarray], Dict[str, Any]]


class EpochSampler(Sampler[int]):
    """Item order drawn from (seed, epoch) alone: shuffled, or class-balanced with replacement.

    With several processes each takes every world_size-th index (padded to equal length).
    The epoch is set through ``.epoch`` (not ``set_epoch``, which Fabric would overwrite).
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, weights: Optional[torch.Tensor] = None,
                 rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.shuffle, self.weights = n, seed, shuffle, weights
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            idx = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        elif self.shuffle:
            idx = torch.randperm(self.n, generator=g)
        else:
            idx = torch.arange(self.n)
        total = len(self) * self.world_size
        idx = torch.cat([idx, idx[: total - self.n]])
        return iter(idx[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)


@dataclass
class TrainResult:
    history: List[Dict[str, float]] = field(default_factory=list)
    best_epoch: Optional[int] = None
    best_score: Optional[float] = None
    stopped_early: bool = False
    monitor: str = ""
    higher_is_better: bool = True  # the monitor's direction (loss and rmse: lower is better)
    privacy: Optional[Dict[str, Any]] = None  # train.privacy: the guarantee spent (engine.privacy)


def hide_for_check(batch: Batch, positions: List[int]) -> Batch:
    """The item at position i of a check loses modality i mod n (when it keeps another), as
    modality dropout would hide it: the privacy check then runs through imagination too."""
    mods = sorted(batch.mask)
    mask = {m: v.clone() for m, v in batch.mask.items()}
    for row, pos in enumerate(positions):
        m = mods[pos % len(mods)]
        if mask[m][row] and sum(bool(mask[o][row]) for o in mods) > 1:
            mask[m][row] = False
    return Batch(batch.inputs, mask, batch.target, batch.index, observed=batch.mask)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Fits a model with early stopping on ``monitor``; checkpoints every epoch when given a path."""

    def __init__(self, cfg: TrainConfig, loss_fn: Optional[torch.nn.Module], metrics_fn: Optional[MetricsFn],
                 monitor: str, higher_is_better: bool, checkpoint_path: Optional[Path] = None,
                 callbacks: Sequence[Any] = (), step_loss: Optional[Callable[[Any, Batch], torch.Tensor]] = None,
                 evaluate: Optional[Callable[[torch.nn.Module, DataLoader, torch.device], Dict[str, Any]]] = None,
                 on_gradients: Optional[Callable[..., None]] = None, log_dir: Optional[Path] = None,
                 hparams: Optional[Dict[str, Any]] = None):
        """``step_loss(output, batch)`` and ``evaluate(model, val_loader, device)`` replace the default
        (loss_fn on logits and targets; metrics_fn on collected logits) for other kinds of model.
        ``on_gradients(model, output, batch, reduce)`` may change the gradients after each backward
        pass (``reduce`` sums a tensor over processes), e.g. engine.balance's gradient modulation."""
        from lightning_fabric import Fabric

        self.cfg, self.loss_fn, self.metrics_fn = cfg, loss_fn, metrics_fn
        self.step_loss, self.evaluate, self.on_gradients = step_loss, evaluate, on_gradients
        self.monitor, self.higher_is_better = monitor, higher_is_better
        self.checkpoint_path = checkpoint_path
        self.callbacks = list(callbacks)
        self.hparams = hparams or {}
        self.fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, strategy=cfg.strategy,
                             num_nodes=resolve_num_nodes(cfg.num_nodes), precision=resolve_precision(cfg),
                             loggers=run_loggers(cfg.logger, log_dir))
        if not int(os.environ.get("LT_CLI_USED", "0")):  # `fabric run` started the processes and set them up
            self.fabric.launch()

    @property
    def is_main(self) -> bool:
        return self.fabric.global_rank == 0

    # --- pieces ---------------------------------------------------------------------------
    def _optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        c = self.cfg
        params = parameter_groups(model, c)
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        cls = torch.optim.Adam if c.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=c.lr, weight_decay=c.weight_decay)

    def _schedule(self, steps_per_epoch: int) -> Callable[[int], float]:
        c = self.cfg
        warmup = int(round(c.warmup_epochs * steps_per_epoch))
        total = max(1, c.epochs * steps_per_epoch)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if c.scheduler == "cosine":
                progress = (step - warmup) / max(1, total - warmup)
                return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
            if c.scheduler == "step":
                return c.gamma ** ((step // steps_per_epoch) // c.step_size)
            return 1.0

        return factor

    def _dropout_rates(self, batch: Batch) -> Dict[str, float]:
        md = self.cfg.modality_dropout
        rates = dict(md) if isinstance(md, dict) else {m: float(md) for m in batch.mask}
        return rates if any(rates.values()) else {}

    def _improved(self, score: float, best: Optional[float]) -> bool:
        if best is None:
            return True
        delta = self.cfg.early_stopping.min_delta
        return score > best + delta if self.higher_is_better else score < best - delta

    def validate(self, model: torch.nn.Module, loader: DataLoader) -> Dict[str, Any]:
        if self.evaluate is not None:
            return self.evaluate(model, loader, self.fabric.device)
        out = collect_outputs(model, loader, self.fabric.device, autocast=self.fabric.autocast())
        logits, targets = torch.from_numpy(out["logits"]), torch.from_numpy(out["targets"])
        metrics = self.metrics_fn(out["logits"], out["targets"])
        metrics["loss"] = float(self.loss_fn(logits, targets.to(logits.dtype if targets.is_floating_point()
                                                                   else torch.long)))
        observe = getattr(self.step_loss, "observe_validation", None)  # gradient blending reads every head
        if observe is not None:
            observe(out, self.loss_fn)
        return metrics

    # --- the loop -------------------------------------------------------------------------
    def fit(self, model: torch.nn.Module, train_ds: Dataset, val_ds: Optional[Dataset], collate: Callable,
            sample_weights: Optional[torch.Tensor] = None, resume: bool = False) -> TrainResult:
        """Train for ``cfg.epochs`` (fewer when early stopping says so); the model ends with the
        weights of its best validation epoch."""
        run = self._setup(model, train_ds, val_ds, collate, sample_weights)
        if resume:
            self._restore(run)
        result = TrainResult(monitor=self.monitor, higher_is_better=self.higher_is_better)
        if self.is_main:
            for lg in self.fabric.loggers:
                log_config(lg, flat(self.hparams or {"train": vars(self.cfg)}))
        status = "failed"
        try:
            for epoch in range(run.state["epoch"], self.cfg.epochs):
                record = self._train_epoch(run, epoch)
                if self._end_epoch(run, epoch, record):
                    result.stopped_early = True
                    break
            status = "success"
        finally:
            for lg in self.fabric.loggers:
                lg.finalize(status)
            if run.private is not None:
                run.model.module._close()  # Opacus' hooks off the model again
        if run.private is not None:
            result.privacy = run.private.report()
        if run.state["best_model"] is not None:
            run.raw_model.load_state_dict(run.state["best_model"], strict=not run.frozen)
        elif run.state.get("ema") is not None:  # no validation split: the average at the last step
            run.raw_model.load_state_dict(run.state["ema"], strict=not run.frozen)
        state = run.state
        result.history, result.best_epoch, result.best_score = state["history"], state["best_epoch"], \
            state["best_score"]
        return result

    def _setup(self, model, train_ds, val_ds, collate, sample_weights) -> "_Run":
        """Loaders (item order from (seed, epoch) alone), optimizer, schedule, Fabric's wrapping."""
        c, fabric = self.cfg, self.fabric
        seed_all(c.seed)
        loader_kw = dict(collate_fn=collate, num_workers=c.num_workers, persistent_workers=c.num_workers > 0)
        private = self._private(model, len(train_ds)) if c.privacy is not None else None
        if private is not None:  # Poisson batches of the items, as DP-SGD's accountant assumes
            sampler = private.sampler()
            train_loader = DataLoader(train_ds, batch_sampler=sampler, **{**loader_kw, "collate_fn": _EmptyAware(collate)})
        else:
            sampler = EpochSampler(len(train_ds), c.seed, weights=sample_weights,
                                   rank=fabric.global_rank, world_size=fabric.world_size)
            train_loader = DataLoader(train_ds, batch_size=c.batch_size, sampler=sampler, **loader_kw)
        val_loader = DataLoader(val_ds, batch_size=c.batch_size, shuffle=False, **loader_kw) \
            if val_ds is not None and len(val_ds) else None
        # fully frozen encoders never change: leave them out of checkpoints and best-weight copies
        frozen = [f"encoders.{m}." for m, enc in getattr(model, "encoders", {}).items() if is_frozen(enc)]
        optimizer = self._optimizer(model)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._schedule(len(train_loader)))
        if private is not None:
            trained, optimizer = private.wrap(model, optimizer)  # shares the param groups the schedule sets
        else:
            trained = model
        wrapped, optimizer = fabric.setup(trained, optimizer)
        if self.loss_fn is not None:
            self.loss_fn = self.loss_fn.to(fabric.device)
        if private is not None:
            self._check_private(wrapped, model, train_ds, collate)
        state: Dict[str, Any] = {"epoch": 0, "best_score": None, "best_epoch": None, "bad_epochs": 0,
                                 "history": [], "best_model": None}
        run = _Run(wrapped, model, optimizer, scheduler, sampler, train_loader, val_loader, frozen, state, private)
        if c.ema is not None:  # the average starts at the initial weights; it is part of the loop state
            state.update(ema={k: v.detach().clone() for k, v in run.changing_state().items()}, ema_steps=0)
        return run

    def _private(self, model: torch.nn.Module, n_items: int):
        """train.privacy: the model's unsupported layers replaced, the noise and accountant set up."""
        from crossfuse.engine.privacy import PrivateTraining
        from crossfuse.errors import ConfigError

        if self.fabric.world_size > 1:
            raise ConfigError("train.privacy trains in one process (Opacus accounts for several only when the model "
                              "is wrapped for DP before it is distributed); set train.devices: 1")
        replaced = model.make_private() if hasattr(model, "make_private") else {}
        if replaced and self.is_main:
            log.info("DP-SGD: replaced %s", ", ".join(f"{p} ({k})" for p, k in replaced.items()))
        if self.cfg.grad_clip and self.is_main:
            log.info("DP-SGD clips each item's gradient to %g; train.grad_clip is not applied",
                     self.cfg.privacy.max_grad_norm)
        return PrivateTraining(self.cfg.privacy, n_items, self.cfg.batch_size, self.cfg.epochs, self.cfg.seed)

    def check_privacy(self, model: torch.nn.Module, train_ds, collate) -> None:
        """What train.privacy refuses before its first step (unsupported layers, per-item gradients
        that are not the item's own), on ``model`` and a few training items, without training: a
        ConfigError, as ``fit`` would raise it (``crossfuse validate``)."""
        private = self._private(model, len(train_ds))
        model.to(self.fabric.device)
        wrapped, _ = private.wrap(model, self._optimizer(model))
        if self.loss_fn is not None:
            self.loss_fn = self.loss_fn.to(self.fabric.device)
        try:
            self._check_private(wrapped, model, train_ds, collate)
        finally:
            wrapped._close()

    def _check_private(self, wrapped, model, train_ds, collate) -> None:
        """Per-item gradients checked on a few real training items before the first step."""
        from crossfuse.engine.privacy import check_per_item_gradients

        items = [train_ds[i] for i in range(min(3, len(train_ds)))]
        device = self.fabric.device
        model.train()
        hide = hide_for_check if getattr(model, "imagination", None) is not None else None
        check_per_item_gradients(wrapped, model, collate(items).to(device), items,
                                 lambda its: collate(its).to(device), self._loss, hide=hide)

    def _loss(self, out, batch: Batch) -> torch.Tensor:
        loss = self.step_loss(out, batch) if self.step_loss is not None \
            else self.loss_fn(out.logits.float(), batch.target)
        extra = getattr(out, "extra_loss", None)  # the model's own terms (imagination's reconstruction)
        return loss if extra is None else loss + extra.float()

    def _restore(self, run: "_Run") -> None:
        """Continue from the checkpoint: weights, optimizer, schedule and the loop's own state."""
        if self.checkpoint_path is None or not self.checkpoint_path.is_file():
            if self.is_main:
                log.warning("--resume: no checkpoint at %s; starting from scratch", self.checkpoint_path)
            return
        ckpt = load_checkpoint(self.checkpoint_path)
        run.raw_model.load_state_dict(ckpt["model"], strict=not run.frozen)
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        run.state = ckpt["state"]
        if run.private is not None:  # the budget continues: the accountant's steps so far
            run.private.load_state(run.state.get("privacy"))
        if hasattr(self.step_loss, "load_state"):
            self.step_loss.load_state(run.state.get("blend"))
        if self.cfg.ema is not None and run.state.get("ema") is None:
            if self.is_main:
                log.warning("--resume: the checkpoint has no weight average (train.ema); it starts now")
            run.state.update(ema={k: v.detach().clone() for k, v in run.changing_state().items()}, ema_steps=0)
        if self.is_main:
            log.info("Resumed from %s after epoch %d", self.checkpoint_path, run.state["epoch"])

    def _train_epoch(self, run: "_Run", epoch: int) -> Dict[str, float]:
        """One pass over the training items; returns the epoch's history record."""
        c, fabric, model = self.cfg, self.fabric, run.model
        run.sampler.epoch = epoch
        seed_all(c.seed * 7919 + epoch + 1)  # dropout, augmentation and worker seeds per epoch
        model.train()
        start = time.perf_counter()
        total, count = torch.zeros((), device=fabric.device), 0
        bar = Progress(run.train_loader, f"epoch {epoch + 1}/{c.epochs}", enabled=c.progress and self.is_main,
                       unit="batch")
        for batch in bar:
            if batch is None:  # an empty Poisson batch (DP-SGD): the step adds the noise alone
                run.optimizer.zero_grad(set_to_none=True)
                run.private.noise_step(run.raw_model, run.optimizer)
                run.scheduler.step()
                continue
            batch = batch.to(fabric.device)
            rates = self._dropout_rates(batch)
            if rates:  # the same mask path as inference; only the mask changes
                batch = Batch(batch.inputs, drop_modalities(batch.mask, rates), batch.target, batch.index,
                              observed=batch.mask)
            out = model(batch)
            loss = self._loss(out, batch)
            run.optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            if self.on_gradients is not None:
                self.on_gradients(run.raw_model, out, batch, lambda t: fabric.all_reduce(t, reduce_op="sum"))
            if c.grad_clip and run.private is None:  # DP-SGD clips every item's gradient itself
                fabric.clip_gradients(model, run.optimizer, max_norm=c.grad_clip, error_if_nonfinite=False)
            run.optimizer.step()
            run.scheduler.step()
            if c.ema is not None:
                update_ema(run.state, run.changing_state(), c.ema)
            total += loss.detach() * len(batch)
            count += len(batch)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        end = getattr(self.step_loss, "end_train_epoch", None)  # gradient blending's training losses
        if end is not None:
            end(lambda t: fabric.all_reduce(t, reduce_op="sum"))
        train_loss = float(fabric.all_reduce(total / max(count, 1), reduce_op="mean"))
        seconds = time.perf_counter() - start  # the training pass only, validation excluded
        record = {"epoch": epoch + 1, "train_loss": train_loss, "lr": run.optimizer.param_groups[0]["lr"],
                  "train_seconds": seconds, "samples_per_s": count * fabric.world_size / seconds}
        for hook in (self.on_gradients, self.step_loss):  # OGM's coefficients, the blend's weights
            record.update(getattr(hook, "epoch_record", dict)())
        if run.private is not None:
            run.state["privacy"] = run.private.state()
            record["epsilon"] = run.private.epsilon()
        return record

    def _end_epoch(self, run: "_Run", epoch: int, record: Dict[str, float]) -> bool:
        """Validate, keep the best weights, log, checkpoint, call back; True when early stopping says stop."""
        c, state = self.cfg, run.state
        if run.val_loader is not None:
            with run.averaged():  # with train.ema, validation and the kept weights are the average's
                val = self.validate(run.model, run.val_loader)
                record.update({f"val_{k}": v for k, v in val.items() if isinstance(v, (int, float))})
                score = val[self.monitor]
                if self._improved(score, state["best_score"]):
                    state.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0,
                                 best_model=copy.deepcopy(run.changing_state()))
                else:
                    state["bad_epochs"] += 1
        record["peak_memory_mb"] = peak_memory_mb(self.fabric.device)
        state["history"].append(record)
        if self.fabric.loggers:
            self.fabric.log_dict({k: v for k, v in record.items() if k != "epoch" and isinstance(v, (int, float))},
                                 step=epoch + 1)
        state["epoch"] = epoch + 1
        if hasattr(self.step_loss, "state"):  # the blend's weights and anchor: a resumed run continues them
            state["blend"] = self.step_loss.state()
        if self.is_main:
            shown = ("train_loss", "val_loss", "val_accuracy", f"val_{self.monitor}", "epsilon")
            log.info("epoch %d/%d: %s", epoch + 1, c.epochs,
                     ", ".join(f"{k}={record[k]:.4f}" for k in dict.fromkeys(shown) if k in record))
            if self.checkpoint_path is not None:
                save_checkpoint(self.checkpoint_path, {
                    "model": run.changing_state(), "optimizer": run.optimizer.state_dict(),
                    "scheduler": run.scheduler.state_dict(), "state": state})
        self.fabric.barrier()
        for cb in self.callbacks:
            getattr(cb, "on_epoch_end", lambda *a: None)(self, state)
        if (run.val_loader is not None and state["bad_epochs"] >= c.early_stopping.patience
                and epoch + 1 >= min_epochs(c)):
            if self.is_main:
                log.info("Early stopping: no %s improvement for %d epochs", self.monitor, state["bad_epochs"])
            return True
        return False


def run_loggers(kind: str, log_dir: Optional[Path]) -> list:
    """Fabric's loggers for ``train.logger`` under ``log_dir`` (none for a run that is not saved)."""
    if kind == "none" or log_dir is None:
        return []
    if kind == "csv":
        from lightning_fabric.loggers import CSVLogger

        return [CSVLogger(root_dir=str(log_dir), name="csv")]
    if kind == "mlflow":
        from crossfuse.engine.mlflow_logger import MLflowLogger

        return [MLflowLogger(log_dir / "mlflow", run_name=log_dir.parent.name)]
    from crossfuse.errors import MissingDependencyError

    try:
        import tensorboard  # noqa: F401
    except ImportError:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            raise MissingDependencyError("train.logger: tensorboard needs the 'tensorboard' package: "
                                         "pip install 'crossfuse[tensorboard]'") from None
    from lightning_fabric.loggers import TensorBoardLogger

    return [TensorBoardLogger(root_dir=str(log_dir), name="tensorboard")]


def log_config(logger, params: Dict[str, Any]) -> None:
    """The run's config to a logger; Fabric's CSV logger takes none, so it goes beside its metrics."""
    try:
        logger.log_hyperparams(params)
    except NotImplementedError:
        import yaml

        from crossfuse.atomic import atomic_write

        atomic_write(Path(logger.log_dir) / "hparams.yaml", yaml.safe_dump(params, sort_keys=False))


def flat(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """A nested config as dotted keys with plain values (what loggers' hyperparameter tables take)."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat(v, key + "."))
        elif hasattr(v, "__dataclass_fields__"):
            out.update(flat(vars(v), key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


def peak_memory_mb(device: torch.device) -> float:
    """The process's peak resident memory so far (a GPU run: the device's peak allocation)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def min_epochs(c: TrainConfig) -> int:
    """Epochs before early stopping may stop: the configured number, or half the budget."""
    m = c.early_stopping.min_epochs
    return c.epochs // 2 if m is None else m


def parameter_groups(model: torch.nn.Module, c: TrainConfig) -> list:
    """The trainable parameters in optimizer groups: new layers at ``lr``; each modality's encoder at
    ``encoder_lr`` (fine-tuned backbones usually want a smaller step; none: ``lr``) times its
    ``balance.modality_lr`` factor. One group when nothing differs."""
    groups: Dict[float, list] = {c.lr: []}  # the new layers' group first
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr = c.lr
        if name.startswith("encoders."):
            modality = name.split(".")[1]
            lr = (c.lr if c.encoder_lr is None else c.encoder_lr) * c.balance.modality_lr.get(modality, 1.0)
        groups.setdefault(lr, []).append(p)
    groups = {lr: ps for lr, ps in groups.items() if ps}
    if len(groups) == 1 and c.lr in groups:
        return groups[c.lr]
    return [{"params": ps, "lr": lr} for lr, ps in groups.items()]


class _EmptyAware:
    """A collate function that gives None for an empty batch (a Poisson sample can be empty)."""

    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, items):
        return self.collate(items) if len(items) else None


@dataclass
class _Run:
    """One fit's moving parts: the Fabric-wrapped and the raw model, optimizer, schedule, loaders,
    the frozen encoders' key prefixes and the loop state a checkpoint holds."""

    model: torch.nn.Module
    raw_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: EpochSampler
    train_loader: DataLoader
    val_loader: Optional[DataLoader]
    frozen: List[str]
    state: Dict[str, Any]
    private: Any = None  # engine.privacy.PrivateTraining of a DP-SGD run

    def changing_state(self) -> Dict[str, torch.Tensor]:
        """The weights that training changes (fully frozen encoders left out)."""
        return {k: v for k, v in self.raw_model.state_dict().items() if not k.startswith(tuple(self.frozen))}

    @contextlib.contextmanager
    def averaged(self):
        """The model holds the weights' moving average inside the block (when there is one), and its
        training weights again after."""
        if self.state.get("ema") is None:
            yield
            return
        trained = {k: v.detach().clone() for k, v in self.changing_state().items()}
        self.raw_model.load_state_dict(self.state["ema"], strict=not self.frozen)
        try:
            yield
        finally:
            self.raw_model.load_state_dict(trained, strict=not self.frozen)


def update_ema(state: Dict[str, Any], weights: Dict[str, torch.Tensor], decay: float) -> None:
    """One step of the weights' exponential moving average: ``ema = d * ema + (1 - d) * w`` with
    ``d = min(decay, (1 + t) / (10 + t))`` at step t, so early steps are not dominated by the
    initial weights. Integer buffers (batch-norm counters) are copied."""
    t = state["ema_steps"]
    d = min(decay, (1 + t) / (10 + t))
    with torch.no_grad():
        for k, avg in state["ema"].items():
            w = weights[k].detach()
            if avg.is_floating_point():
                avg.mul_(d).add_(w.to(avg.device, avg.dtype), alpha=1 - d)
            else:
                avg.copy_(w.to(avg.device))
    state["ema_steps"] = t + 1
