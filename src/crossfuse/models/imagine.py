"""Imagining an absent modality: its encoder output predicted from the present modalities' outputs.

A model with ``missing.imagine`` holds one generator per modality (Missing Modality Imagination
Network, Zhao et al., ACL 2021; SMIL, Ma et al., AAAI 2021). For an item whose modality m is
absent but some other modality is present, the generator of m reads the present modalities'
features (each layer-normalised, zeroed when absent, with presence flags; detached unless
``train_encoders``, so the encoders learn from the task alone) and predicts m's
feature vector; the fusion then gets that vector with m marked present, plus a learned marker
vector of m's own (a direction a LayerNorm keeps), so every fusion method can tell an imagined
vector from a real one. The
generator never reads m's own features: its input is built from the other modalities alone.

Training is joint with the task: on every item where m was observed (before modality dropout),
the generator's prediction from the modalities left after dropout is pulled toward m's real
features (stop-gradient on the target, in m's running-standardised space - the mean taken out,
divided by one scale per modality - so an ImageNet CNN's activations and a unit-norm sentence
embedding weigh alike); dropped modalities are imagined in the task's forward pass, so the fusion
learns on imagined features as it will meet them, and the task's gradient trains the generators too.
The encoders learn from the task alone unless ``train_encoders`` is set.

Kinds (registry ``IMAGINERS``, chosen by ``missing.imagine.kind``):

- ``mlp``: a deterministic MLP, mean-squared reconstruction.
- ``cvae``: a conditional VAE (Sohn et al., NeurIPS 2015): a posterior q(z | condition, target)
  trains the decoder with the reparameterisation trick and a KL term to N(0, I); the task pass and
  prediction decode z = 0 (the mean) or, with ``sample``, z drawn from N(0, I) - never the
  posterior, which has seen the target.
- ``gan``: a generator with noise and a discriminator on (condition, real or imagined features),
  trained in alternation: even training steps update the discriminator (imagined features
  detached), odd steps add the generator's adversarial loss (the discriminator's weights detached,
  so that step leaves them unchanged); reconstruction trains the generator on every step.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from crossfuse.errors import ConfigError
from crossfuse.layers.mlp import MLP
from crossfuse.registry import Registry

IMAGINERS: Registry["Imagination"] = Registry("imagination")


class _RunningStats(nn.Module):
    """Running per-dimension mean and variance of one modality's observed features. Standardising
    subtracts the mean and divides by one scale, the root of the mean variance over dimensions: a
    near-constant dimension (a dead ReLU of a CNN still training) is not blown up to dominate the
    reconstruction loss, and the squared error reads as the fraction of variance left unexplained."""

    def __init__(self, dim: int, momentum: float):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        if len(x) < 2:
            return
        mean, var = x.float().mean(0), x.float().var(0)
        if int(self.seen) == 0:  # the first batch sets them: no slow drift away from 0 / 1
            self.mean.copy_(mean)
            self.var.copy_(var)
        else:
            self.mean.lerp_(mean, self.momentum)
            self.var.lerp_(var, self.momentum)
        self.seen += 1

    def scale(self) -> torch.Tensor:
        return (self.var.mean() + 1e-8).sqrt()

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale()

    def restore(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale() + self.mean


class Imagination(nn.Module):
    """One generator per modality from the others; subclasses say how it generates and trains."""

    param_limits: ClassVar[Dict[str, Tuple[float, float]]] = {
        "hidden": (1, 16384), "dropout": (0.0, 0.99), "weight": (0.0, 1000.0), "latent": (1, 4096),
        "kl_weight": (0.0, 1000.0), "adv_weight": (0.0, 1000.0), "momentum": (1e-4, 1.0)}
    # the ImagineConfig fields this kind takes (besides input_dims)
    config_keys: ClassVar[Sequence[str]] = ("hidden", "dropout", "weight", "sample", "train_encoders")

    def __init__(self, input_dims: Mapping[str, int], hidden: Sequence[int] = (256,), dropout: float = 0.1,
                 weight: float = 1.0, sample: bool = False, momentum: float = 0.1, train_encoders: bool = False):
        super().__init__()
        if len(input_dims) < 2:
            raise ConfigError("missing.imagine needs at least two modalities: a generator predicts one "
                              "modality's features from the others'")
        self.modalities = sorted(input_dims)
        self.input_dims = {m: int(input_dims[m]) for m in self.modalities}
        self.hidden, self.dropout, self.weight, self.sample = list(hidden), float(dropout), float(weight), bool(sample)
        # False: the generators read the encoders' outputs detached, so neither the reconstruction nor
        # the task loss through an imagined vector moves the encoders (trainable encoders pulled
        # toward features predictable from the other modalities lost the task: AV-digits' clean
        # validation accuracy fell from 0.84 to 0.61 after 8 epochs)
        self.train_encoders = bool(train_encoders)
        self._init_kwargs: Dict[str, Any] = {"hidden": self.hidden, "dropout": self.dropout, "weight": self.weight,
                                             "sample": self.sample, "momentum": momentum,
                                             "train_encoders": self.train_encoders}
        self.norms = nn.ModuleDict({m: nn.LayerNorm(d) for m, d in self.input_dims.items()})
        # False: no random draws in training either (DP-SGD's per-item check compares two passes)
        self.stochastic = True
        self.stats = nn.ModuleDict({m: _RunningStats(d, momentum) for m, d in self.input_dims.items()})
        # added (in the standardised space) to every imagined vector: the fusion's "imagined" flag.
        # Learnt; it starts as a random direction, as a constant shift would vanish in the fusion's
        # LayerNorm. A one-row embedding, so DP-SGD (Opacus) follows its per-item gradients
        self.marker = nn.ModuleDict({m: nn.Embedding(1, d) for m, d in self.input_dims.items()})
        for e in self.marker.values():
            nn.init.normal_(e.weight, std=0.2)

    def rebuild_kwargs(self) -> Dict[str, Any]:
        return dict(self._init_kwargs)

    def condition_dim(self, target: str) -> int:
        return sum(self.input_dims[o] + 1 for o in self.modalities if o != target)

    def condition(self, features: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor],
                  target: str) -> torch.Tensor:
        """What the generator of ``target`` reads: every other modality layer-normalised and zeroed
        where absent, then its presence flag. ``target``'s own features are not read."""
        parts = []
        for o in self.modalities:
            if o == target:
                continue
            present = mask[o].to(features[o].dtype).unsqueeze(1)
            f = features[o] if self.train_encoders else features[o].detach()
            parts += [self.norms[o](f) * present, present]
        return torch.cat(parts, 1)

    # --- what a kind supplies ---------------------------------------------------------------
    def generate(self, target: str, cond: torch.Tensor) -> torch.Tensor:
        """The imagined standardised features of ``target`` (B, d) for the task pass / prediction."""
        raise NotImplementedError

    def training_loss(self, target: str, cond: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """The kind's loss per row (R,) on rows where ``target`` was observed (``real``: standardised,
        detached)."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called once per training forward pass (the GAN's step counter)."""

    # --- the forward pass -------------------------------------------------------------------
    def forward(self, features: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor],
                observed: Optional[Mapping[str, torch.Tensor]] = None):
        """Returns (features with absent modalities imagined, imagined: modality -> (B,) bool,
        training loss or None). ``observed``: presence before modality dropout (training)."""
        out, imagined = dict(features), {}
        loss = None
        for m in self.modalities:
            others = torch.stack([mask[o].bool() for o in self.modalities if o != m], 1).any(1)
            rows = ~mask[m].bool() & others
            imagined[m] = rows
            train_rows = observed[m].bool() & others if self.training and observed is not None else None
            if not self.training and not rows.any():
                continue
            # every layer runs on the whole batch and rows are chosen after: DP-SGD (Opacus) needs each
            # layer's per-item gradients to line up with the batch
            cond = self.condition(features, mask, m)
            stats = self.stats[m]
            if train_rows is not None:  # (every parameter takes part in every training step, as DP-SGD needs)
                stats.update(features[m][train_rows].detach())
                real = stats.standardise(features[m].detach().float())
                real = torch.where(train_rows[:, None], real, torch.zeros_like(real)).to(cond.dtype)
                per_row = self.training_loss(m, cond, real)
                # summed over the rows and divided by the batch size: each item's share is its own
                # (an item without the target adds nothing), as DP-SGD's per-item clipping assumes
                part = torch.where(train_rows, per_row, torch.zeros_like(per_row)).sum() / len(cond)
                loss = part if loss is None else loss + part
            if rows.any() or self.training:
                marker = self.marker[m](torch.zeros(len(cond), dtype=torch.long, device=cond.device))
                guess = stats.restore(self.generate(m, cond) + marker).to(features[m].dtype)
                out[m] = torch.where(rows[:, None], guess, features[m])
        if self.training:
            self.after_step()
        return out, imagined, loss

    def architecture(self) -> Dict[str, Any]:
        return {"kind": self.registry_name, "kwargs": self.rebuild_kwargs()}


@IMAGINERS.register("mlp")
class MLPImagination(Imagination):
    """A deterministic MLP per modality, trained by mean-squared reconstruction."""

    def __init__(self, input_dims: Mapping[str, int], **kwargs: Any):
        super().__init__(input_dims, **kwargs)
        self.generators = nn.ModuleDict({m: MLP(self.condition_dim(m), self.hidden, d, dropout=self.dropout)
                                         for m, d in self.input_dims.items()})

    def generate(self, target, cond):
        return self.generators[target](cond)

    def training_loss(self, target, cond, real):
        return self.weight * _squared_error(self.generators[target](cond), real)


def _squared_error(pred: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean squared error per row."""
    return (pred.float() - real.float()).pow(2).mean(1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, summed over the latent."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)


@IMAGINERS.register("cvae")
class CVAEImagination(Imagination):
    """A conditional VAE per modality: posterior q(z | condition, target), decoder p(target | condition, z)."""

    config_keys = Imagination.config_keys + ("latent", "kl_weight")

    def __init__(self, input_dims: Mapping[str, int], latent: int = 16, kl_weight: float = 0.01, **kwargs: Any):
        super().__init__(input_dims, **kwargs)
        self.latent, self.kl_weight = int(latent), float(kl_weight)
        self._init_kwargs.update(latent=self.latent, kl_weight=self.kl_weight)
        self.posteriors = nn.ModuleDict({m: MLP(self.condition_dim(m) + d, self.hidden, 2 * self.latent,
                                                dropout=self.dropout) for m, d in self.input_dims.items()})
        self.decoders = nn.ModuleDict({m: MLP(self.condition_dim(m) + self.latent, self.hidden, d,
                                              dropout=self.dropout) for m, d in self.input_dims.items()})

    def prior(self, cond: torch.Tensor) -> torch.Tensor:
        shape = (len(cond), self.latent)
        if (self.training and self.stochastic) or self.sample:
            return torch.randn(shape, device=cond.device, dtype=cond.dtype)
        return torch.zeros(shape, device=cond.device, dtype=cond.dtype)

    def generate(self, target, cond):
        return self.decoders[target](torch.cat([cond, self.prior(cond)], 1))

    def training_loss(self, target, cond, real):
        mu, logvar = self.posteriors[target](torch.cat([cond, real], 1)).chunk(2, dim=1)
        logvar = logvar.clamp(-10, 10)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.stochastic else mu
        recon = _squared_error(self.decoders[target](torch.cat([cond, z], 1)), real)
        return self.weight * recon + self.kl_weight * gaussian_kl(mu, logvar)


@IMAGINERS.register("gan")
class GANImagination(Imagination):
    """A generator with noise and a discriminator per modality, trained in alternation (see the
    module's docstring), plus reconstruction on every step."""

    config_keys = Imagination.config_keys + ("latent", "adv_weight")

    def __init__(self, input_dims: Mapping[str, int], latent: int = 16, adv_weight: float = 0.1, **kwargs: Any):
        super().__init__(input_dims, **kwargs)
        self.latent, self.adv_weight = int(latent), float(adv_weight)
        self._init_kwargs.update(latent=self.latent, adv_weight=self.adv_weight)
        self.generators = nn.ModuleDict({m: MLP(self.condition_dim(m) + self.latent, self.hidden, d,
                                                dropout=self.dropout) for m, d in self.input_dims.items()})
        self.discriminators = nn.ModuleDict({m: MLP(self.condition_dim(m) + d, self.hidden, 1, dropout=self.dropout)
                                             for m, d in self.input_dims.items()})
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training passes so far

    @property
    def discriminator_step(self) -> bool:
        return int(self.steps) % 2 == 0

    def noise(self, cond: torch.Tensor) -> torch.Tensor:
        shape = (len(cond), self.latent)
        if (self.training and self.stochastic) or self.sample:
            return torch.randn(shape, device=cond.device, dtype=cond.dtype)
        return torch.zeros(shape, device=cond.device, dtype=cond.dtype)

    def generate(self, target, cond):
        return self.generators[target](torch.cat([cond, self.noise(cond)], 1))

    def training_loss(self, target, cond, real):
        fake = self.generate(target, cond)
        loss = self.weight * _squared_error(fake, real)
        disc = self.discriminators[target]
        if self.discriminator_step:  # the discriminator learns; nothing reaches the generator
            c = cond.detach()
            real_logit = disc(torch.cat([c, real], 1))
            fake_logit = disc(torch.cat([c, fake.detach()], 1))
            loss = loss + _bce(real_logit, 1.0) + _bce(fake_logit, 0.0)
        else:  # the generator learns to be taken for real; the discriminator's weights get no gradient
            frozen = {k: v.detach() for k, v in disc.named_parameters()}
            logit = torch.func.functional_call(disc, frozen, (torch.cat([cond, fake], 1),))
            loss = loss + self.adv_weight * _bce(logit, 1.0)
        return loss

    def after_step(self) -> None:
        self.steps += 1


def _bce(logit: torch.Tensor, label: float) -> torch.Tensor:
    """Binary cross-entropy per row of (R, 1) logits against one label."""
    return F.binary_cross_entropy_with_logits(logit[:, 0].float(), torch.full_like(logit[:, 0].float(), label),
                                              reduction="none")


def build_imagination(kind: str, input_dims: Mapping[str, int], options: Mapping[str, Any]) -> Imagination:
    """The ``kind`` generator with the options (an ImagineConfig's fields) that kind takes."""
    cls = IMAGINERS.get(kind)
    return IMAGINERS.build(kind, input_dims=input_dims, **{k: options[k] for k in cls.config_keys if k in options})
