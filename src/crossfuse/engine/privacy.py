"""Differentially private training (DP-SGD) on Opacus: ``train.privacy`` in the config.

Each step draws a Poisson sample of the training items (every item independently with
probability q = 1 / steps per epoch, as the accountant assumes), computes every item's own
gradient (Opacus' GradSampleModule), clips each to ``max_grad_norm``, adds Gaussian noise of
``noise_multiplier * max_grad_norm`` and steps (Opacus' DPOptimizer). The accountant (RDP or PRV)
adds up the privacy spent; with ``target_epsilon`` the noise is the smallest that keeps the whole
epoch budget within it. Only trainable parameters get per-item gradients, so a fusion head over
frozen, cached features (the known best practice: strong frozen features, a private head) is cheap.

Before the first step the run checks what DP-SGD needs: layers it cannot train are replaced
(layers.private) and, on a few real training items, every parameter's per-item gradient is compared
with that item's gradient computed alone; a component that mixes the items of a batch (batch
statistics, a recurrent layer over reordered sequences) fails here, naming the parameter, instead
of training with a guarantee that does not hold. Validation is not charged (DP covers the training
items); the trust statistics of the training items are not fitted (pipeline); item order and noise
come from (seed, epoch), so a resumed run continues the same budget (the accountant's history is
part of the checkpoint). Not Opacus' ``secure_mode``: the noise comes from torch's seeded generator.
"""
from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torch import nn
from torch.utils.data import Sampler

from crossfuse.config.schema import PrivacyConfig
from crossfuse.errors import ConfigError, MissingDependencyError

log = logging.getLogger(__name__)


def require_opacus():
    try:
        import opacus
    except ImportError:
        raise MissingDependencyError("train.privacy needs Opacus: pip install 'crossfuse[privacy]'") from None
    return opacus


class PoissonBatches(Sampler[List[int]]):
    """``steps`` batches per epoch; each holds every item independently with probability ``q``,
    drawn from (seed, epoch) alone. A batch may be empty (then the step adds noise only)."""

    def __init__(self, n: int, steps: int, seed: int):
        self.n, self.steps, self.seed, self.epoch = n, steps, seed, 0
        self.q = 1.0 / steps

    def __iter__(self) -> Iterator[List[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        for _ in range(self.steps):
            yield torch.nonzero(torch.rand(self.n, generator=g) < self.q).flatten().tolist()

    def __len__(self) -> int:
        return self.steps


def make_accountant(kind: str):
    from opacus.accountants import PRVAccountant, RDPAccountant

    return RDPAccountant() if kind == "rdp" else PRVAccountant()


class PrivateTraining:
    """One private fit: the sampling rate, the noise, the accountant and the DP wrapping."""

    def __init__(self, cfg: PrivacyConfig, n_items: int, batch_size: int, epochs: int, seed: int):
        require_opacus()
        from opacus.accountants.utils import get_noise_multiplier

        self.cfg, self.n, self.seed = cfg, n_items, seed
        self.steps_per_epoch = max(1, math.ceil(n_items / batch_size))
        self.sample_rate = 1.0 / self.steps_per_epoch
        self.expected_batch_size = max(1, round(n_items * self.sample_rate))
        self.delta = cfg.delta if cfg.delta is not None else 1.0 / n_items
        if self.delta > 1.0 / n_items:
            raise ConfigError(f"'train.privacy.delta' ({cfg.delta:g}) must be at most 1/N = {1.0 / n_items:.3g} for "
                              f"N = {n_items} training items: a larger delta allows a mechanism that publishes an "
                              "item outright. Leave it null for 1/N.")
        if cfg.noise_multiplier is not None:
            self.noise_multiplier = float(cfg.noise_multiplier)
        else:
            self.noise_multiplier = float(get_noise_multiplier(
                target_epsilon=cfg.target_epsilon, target_delta=self.delta, sample_rate=self.sample_rate,
                steps=epochs * self.steps_per_epoch, accountant=cfg.accountant))
        self.accountant = make_accountant(cfg.accountant)
        log.info("DP-SGD: sampling rate %.4g (expected batch %d of %d items), noise multiplier %.4g, clip norm %g, "
                 "delta %.3g, %s accountant", self.sample_rate, self.expected_batch_size, n_items,
                 self.noise_multiplier, cfg.max_grad_norm, self.delta, cfg.accountant.upper())

    def sampler(self) -> PoissonBatches:
        return PoissonBatches(self.n, self.steps_per_epoch, self.seed)

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        """(per-item-gradient model, DP optimizer) with the accountant stepping after each step."""
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        unsupported = unsupported_layers(model)
        if unsupported:
            raise ConfigError([f"train.privacy: '{path}' is a {kind}, which DP-SGD cannot train" for path, kind in
                               unsupported.items()] + [
                "Fix: freeze that modality's encoder (its cached features then feed a private head: the usual DP "
                "setup), or choose an encoder without it (small_cnn, audio_cnn, mlp and the frozen presets train "
                "privately); docs/privacy.md lists what does."])
        # Opacus' full backward hooks fire on the first layer even though its input needs no gradient
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=False)
        dp = DPOptimizer(optimizer, noise_multiplier=self.noise_multiplier, max_grad_norm=self.cfg.max_grad_norm,
                         expected_batch_size=self.expected_batch_size, loss_reduction="mean")
        dp.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))
        return gsm, dp

    def noise_step(self, model: nn.Module, optimizer) -> None:
        """An empty Poisson batch: no item's gradient, the noise alone (and the accountant counts it)."""
        for p in model.parameters():
            if p.requires_grad:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        optimizer.step()

    # --- the budget -------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return sum(int(s) for _, _, s in self.accountant.history)

    def epsilon(self) -> float:
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.delta))

    def state(self) -> List[List[float]]:
        """The accountant's history (noise, sampling rate, steps) for the checkpoint."""
        return [[float(a), float(b), int(c)] for a, b, c in self.accountant.history]

    def load_state(self, history: Optional[List[List[float]]]) -> None:
        self.accountant.history = [(float(a), float(b), int(c)) for a, b, c in (history or [])]

    def report(self) -> Dict[str, Any]:
        """What metrics.json, summary.md and the model's config.json say about the guarantee."""
        return {"epsilon": round(self.epsilon(), 4), "delta": self.delta, "noise_multiplier": self.noise_multiplier,
                "max_grad_norm": self.cfg.max_grad_norm, "sample_rate": self.sample_rate, "steps": self.steps,
                "training_items": self.n, "accountant": self.cfg.accountant,
                "target_epsilon": self.cfg.target_epsilon}


def unsupported_layers(model: nn.Module) -> Dict[str, str]:
    """Trainable layers Opacus' validator refuses (after layers.private's replacements)."""
    from opacus.validators import ModuleValidator

    return {name: type(m).__name__ for name, m in model.named_modules()
            if type(m) in ModuleValidator.VALIDATORS and any(p.requires_grad for p in m.parameters(recurse=False))
            and ModuleValidator.VALIDATORS[type(m)](m)}


def unknown_owners(model: nn.Module) -> List[str]:
    """Modules that own trainable parameters directly but have no Opacus per-item gradient rule."""
    from opacus.grad_sample import GradSampleModule

    known = set(GradSampleModule.GRAD_SAMPLERS)
    return [name or "<model>" for name, m in model.named_modules()
            if type(m) not in known and any(p.requires_grad for p in m.parameters(recurse=False))]


def check_per_item_gradients(gsm: nn.Module, model: nn.Module, batch, items: List[Any], collate: Callable,
                             loss: Callable, tolerance: float = 1e-3,
                             hide: Optional[Callable[[Any, List[int]], Any]] = None) -> None:
    """Every trainable parameter's per-item gradient on ``batch`` (the collated ``items``) equals the
    gradient of that item's loss computed alone; else ConfigError naming the parameters. Dropout,
    parameter-free random augmentation (SpecAugment's masks) and the random draws of modules with a
    ``stochastic`` switch (a CVAE's latent) are off during the check, so both passes
    compute the same function; normalisation layers stay as they are (batch statistics do mix items).
    ``hide(batch, positions)`` may remove modalities from the items at those positions of ``items``
    (the same ones in both passes), so parts that act on absent modalities (imagination) are checked."""
    if hide is not None:
        batch = hide(batch, list(range(len(items))))
    dropouts = [(m, m.p) for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for m, _ in dropouts:
        m.p = 0.0
    augmenters = [m for m in model.modules() if m.training and next(m.parameters(), None) is None
                  and not isinstance(m, (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase))]
    for m in augmenters:
        m.training = False
    stochastic = [m for m in model.modules() if getattr(m, "stochastic", False)]  # e.g. a CVAE's draws
    for m in stochastic:
        m.stochastic = False
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    problems: Dict[str, float] = {}
    try:
        model.zero_grad(set_to_none=True)
        try:
            loss(gsm(batch), batch).backward()
        except (RuntimeError, AttributeError, NotImplementedError, TypeError) as exc:
            raise ConfigError([f"train.privacy: Opacus cannot compute per-item gradients through this model "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})."] + [
                f"  '{n}' holds parameters outside the layers Opacus knows (or feeds them non-tensor inputs)"
                for n in unknown_owners(model)[:8]] + [
                "Fix: choose another fusion method or encoder; docs/privacy.md lists what trains privately."]) from None
        missing = [n for n, p in params.items() if getattr(p, "grad_sample", None) is None]
        if missing:
            raise ConfigError([f"train.privacy: '{n}' gets no per-item gradient (it is used outside a layer "
                               "Opacus can follow, or not used at all)" for n in missing[:10]])
        per_item = {n: p.grad_sample.detach().clone() for n, p in params.items()}
        gsm.disable_hooks()
        for i, item in enumerate(items):
            model.zero_grad(set_to_none=True)
            one = collate([item])
            if hide is not None:
                one = hide(one, [i])
            loss(model(one), one).backward()
            for n, p in params.items():
                own = p.grad if p.grad is not None else torch.zeros_like(p)
                diff = float((per_item[n][i] - own).abs().max())
                if diff > tolerance * (1.0 + float(own.abs().max())):
                    problems[n] = max(problems.get(n, 0.0), diff)
    finally:
        gsm.enable_hooks()
        for m, rate in dropouts:
            m.p = rate
        for m in augmenters:
            m.training = True
        for m in stochastic:
            m.stochastic = True
        model.zero_grad(set_to_none=True)
        for p in params.values():
            p.grad_sample = None
    if problems:
        worst = sorted(problems.items(), key=lambda kv: -kv[1])[:8]
        raise ConfigError(
            ["train.privacy: these parameters' per-item gradients differ from the item's own gradient, so the "
             "component mixes the items of a batch and DP-SGD's clipping would not bound each item's influence:"]
            + [f"  '{n}' (max difference {d:.3g})" for n, d in worst]
            + ["Fix: freeze that modality's encoder (a frozen encoder's cached features are the usual private "
               "setup), or choose another encoder or fusion method; docs/privacy.md lists what trains privately."])
