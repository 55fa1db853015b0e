"""The stronger fusion methods from the literature: gated, tensor, low-rank, transformer, late, trusted."""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from crossfuse.errors import ConfigError
from crossfuse.fusion.base import FUSIONS, Fusion
from crossfuse.layers import MLP, masked_mean, masked_softmax
from crossfuse.types import FusionOutput

Sequences = Mapping[str, Tuple[torch.Tensor, torch.Tensor]]


def _check_int(owner: str, name: str, value, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"The '{name}' parameter of {owner} must be an int >= {low}. Got {value!r}.")


@FUSIONS.register("gated")
class GatedFusion(Fusion):
    """Gated multimodal unit (Arevalo et al., 2017), for any number of modalities.

    h_i = tanh(W_i LN(x_i)); per output dimension the gates g_i = softmax over present modalities of
    V_i [m_1 LN(x_1); ...; m_n LN(x_n); m]; fused = sum_i g_i * h_i. Weights: each modality's mean gate.
    """

    def __init__(self, input_dims: Mapping[str, int], dim: int = 128):
        super().__init__(input_dims)
        _check_int("GatedFusion", "dim", dim)
        self._init_kwargs = {"dim": dim}
        self.norm = self.make_norms()
        self.hidden = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.input_dims.items()})
        n = len(self.modalities)
        self.gate = nn.Linear(sum(self.input_dims.values()) + n, n * dim)
        self.output_dim = dim

    def forward(self, features, mask) -> FusionOutput:
        present = self.stacked_mask(mask)  # (B, n)
        masked = [self.norm[m](features[m]) * mask[m].to(features[m].dtype).unsqueeze(1) for m in self.modalities]
        h = torch.stack([torch.tanh(self.hidden[m](x)) for m, x in zip(self.modalities, masked)], 1)
        logits = self.gate(torch.cat(masked + [present.to(h.dtype)], 1)).view(h.shape)
        g = masked_softmax(logits, present.unsqueeze(2).expand_as(logits), dim=1)
        return FusionOutput((g * h).sum(1), weights=g.mean(2))


@FUSIONS.register("tensor")
class TensorFusion(Fusion):
    """Tensor fusion (TFN, Zadeh et al., 2017): fused = flatten(z_1 (x) z_2 (x) ... (x) z_n), z_i = [1; m_i p_i].

    p_i = ReLU(W_i LN(x_i)) has ``dim`` entries, so the output has (dim + 1)^n: the appended 1 keeps
    every unimodal and lower-order term, and a missing modality reduces to z_i = [1; 0].
    """

    MAX_OUTPUT = 2 ** 20

    def __init__(self, input_dims: Mapping[str, int], dim: int = 16, dropout: float = 0.0):
        super().__init__(input_dims)
        _check_int("TensorFusion", "dim", dim)
        self._init_kwargs = {"dim": dim, "dropout": dropout}
        self.output_dim = (dim + 1) ** len(self.modalities)
        if self.output_dim > self.MAX_OUTPUT:
            raise ConfigError(f"tensor fusion of {len(self.modalities)} modalities at dim={dim} has "
                              f"{self.output_dim:,} outputs; lower 'dim' or use 'lowrank', its low-rank form")
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, dim), nn.ReLU())
                                   for m, d in self.input_dims.items()})
        self.dropout = nn.Dropout(dropout)

    def forward(self, features, mask) -> FusionOutput:
        z = None
        for m in self.modalities:
            p = self.proj[m](features[m]) * mask[m].to(features[m].dtype).unsqueeze(1)
            zi = torch.cat([torch.ones_like(p[:, :1]), p], 1)
            z = zi if z is None else (z.unsqueeze(2) * zi.unsqueeze(1)).flatten(1)
        return FusionOutput(self.dropout(z))


@FUSIONS.register("lowrank")
class LowRankFusion(Fusion):
    """Low-rank multimodal fusion (LMF, Liu et al., 2018): tensor fusion with rank-r factors.

    fused = sum_r w_r prod_i (W_i^(r) [1; m_i LayerNorm(x_i)]) + b, computed without forming the
    (d_1+1)...(d_n+1) tensor. A missing modality contributes its factors' bias row only.
    """

    def __init__(self, input_dims: Mapping[str, int], dim: int = 64, rank: int = 4):
        super().__init__(input_dims)
        _check_int("LowRankFusion", "dim", dim)
        _check_int("LowRankFusion", "rank", rank)
        self._init_kwargs = {"dim": dim, "rank": rank}
        self.norm = nn.ModuleDict({m: nn.LayerNorm(d) for m, d in self.input_dims.items()})
        self.factors = nn.ParameterDict({m: nn.Parameter(nn.init.xavier_normal_(torch.empty(rank, d + 1, dim)))
                                         for m, d in self.input_dims.items()})
        self.rank_weights = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, rank)).squeeze(0))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.output_dim = dim

    def forward(self, features, mask) -> FusionOutput:
        product = None
        for m in self.modalities:
            x = self.norm[m](features[m]) * mask[m].to(features[m].dtype).unsqueeze(1)
            z = torch.cat([torch.ones_like(x[:, :1]), x], 1)
            f = torch.einsum("bd,rdo->rbo", z, self.factors[m])
            product = f if product is None else product * f
        return FusionOutput(torch.einsum("r,rbo->bo", self.rank_weights, product) + self.bias)


class _CrossBlock(nn.Module):
    """Pre-norm cross-attention from a target modality's tokens to a source modality's, then an FFN."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = MLP(dim, [2 * dim], out_dim=dim, dropout=dropout)

    def forward(self, q, kv, kv_pad, source_present):
        safe = kv_pad.clone()
        safe[:, 0] = safe[:, 0] & source_present  # an item without the source attends to a dummy, then is zeroed
        out, _ = self.attn(self.norm_q(q), self.norm_kv(kv), self.norm_kv(kv), key_padding_mask=safe,
                           need_weights=False)
        q = q + out * source_present.to(q.dtype)[:, None, None]
        return q + self.ff(self.norm_ff(q))


@FUSIONS.register("transformer")
class TransformerFusion(Fusion):
    """Self- or cross-attention over modality tokens.

    Tokens: each modality's vector projected to ``tokens`` tokens of size ``dim``, or, with
    ``sequences: true`` and an encoder that emits sequences (text, audio, small_cnn), every
    frame/word/patch it emits. Each token gets a learned modality embedding.

    ``mode: joint``: a [CLS] token and all modality tokens through ``layers`` self-attention
    layers; fused = the mean of the outputs over [CLS] and the present tokens (``pool: mean``, which
    trains faster) or the [CLS] output alone (``pool: cls``). ``mode: crossmodal`` (MulT, Tsai et al., 2019): each target
    modality's tokens attend to every other modality's tokens in turn (``layers`` rounds of
    cross-attention blocks), are mean-pooled, and the pooled vectors are concatenated (zeroed when
    missing) with presence flags. Missing modalities are masked out as keys everywhere.
    """

    def __init__(self, input_dims: Mapping[str, int], dim: int = 64, heads: int = 4, layers: int = 2,
                 dropout: float = 0.1, tokens: int = 1, sequences: bool = False, mode: str = "joint",
                 pool: str = "mean"):
        super().__init__(input_dims)
        for name, value in (("dim", dim), ("heads", heads), ("layers", layers), ("tokens", tokens)):
            _check_int("TransformerFusion", name, value)
        if dim % heads:
            raise ConfigError(f"The 'dim' parameter of TransformerFusion ({dim}) must be divisible by 'heads' ({heads}).")
        if pool not in ("mean", "cls"):
            raise ConfigError(f"The 'pool' parameter of TransformerFusion must be 'mean' or 'cls'. Got {pool!r}.")
        if mode not in ("joint", "crossmodal"):
            raise ConfigError(f"The 'mode' parameter of TransformerFusion must be 'joint' or 'crossmodal'. Got {mode!r}.")
        self._init_kwargs = dict(dim=dim, heads=heads, layers=layers, dropout=dropout, tokens=tokens,
                                 sequences=sequences, mode=mode, pool=pool)
        self.wants_sequences, self.mode, self.tokens, self.dim, self.pool = sequences, mode, tokens, dim, pool
        self.vec = nn.ModuleDict({m: nn.Linear(d, dim * tokens) for m, d in self.input_dims.items()})
        self.seq = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.input_dims.items()}) if sequences else None
        self.modality_embedding = nn.Parameter(torch.randn(len(self.modalities), dim) * 0.02)
        if mode == "joint":
            self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)
            self.output_dim = dim
        else:
            n = len(self.modalities)
            self.blocks = nn.ModuleList(nn.ModuleDict({f"{t}->{s}": _CrossBlock(dim, heads, dropout)
                                                       for t in self.modalities for s in self.modalities if s != t})
                                        for _ in range(layers))
            self.output_dim = n * dim + n

    def _tokens(self, features, mask, sequences: Optional[Sequences]) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        """modality -> (tokens (B, T, dim), padding (B, T) True where not a real, present token)."""
        out = {}
        for i, m in enumerate(self.modalities):
            present = mask[m].bool()
            if self.seq is not None and sequences and m in sequences:
                seq, seq_mask = sequences[m]
                t, pad = self.seq[m](seq), ~(seq_mask.bool() & present.unsqueeze(1))
            else:
                x = features[m]
                t = self.vec[m](x).view(x.shape[0], self.tokens, self.dim)
                pad = (~present).unsqueeze(1).expand(-1, self.tokens)
            out[m] = (t + self.modality_embedding[i], pad)
        return out

    def forward(self, features, mask, sequences: Optional[Sequences] = None) -> FusionOutput:
        toks = self._tokens(features, mask, sequences)
        b = next(iter(features.values())).shape[0]
        if self.mode == "joint":
            x = torch.cat([self.cls.expand(b, -1, -1)] + [toks[m][0] for m in self.modalities], 1)
            pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=x.device)] +
                            [toks[m][1] for m in self.modalities], 1)
            h = self.encoder(x, src_key_padding_mask=pad)
            if self.pool == "cls":
                return FusionOutput(self.norm(h[:, 0]))
            return FusionOutput(self.norm(masked_mean(h, ~pad, dim=1)))  # [CLS] and present tokens
        h = {m: toks[m][0] for m in self.modalities}
        for round_ in self.blocks:
            h = {t: self._attend_all(round_, t, h, toks, mask) for t in self.modalities}
        pooled = [masked_mean(h[m], ~toks[m][1], dim=1)
                  * mask[m].to(h[m].dtype).unsqueeze(1) for m in self.modalities]
        return FusionOutput(torch.cat(pooled + [self.stacked_mask(mask).to(pooled[0].dtype)], 1))

    def _attend_all(self, blocks, target, h, toks, mask):
        q = h[target]
        for s in self.modalities:
            if s != target:
                q = blocks[f"{target}->{s}"](q, toks[s][0], toks[s][1], mask[s].bool())
        return q


@FUSIONS.register("late")
class LateFusion(Fusion):
    """Decision-level fusion: a head per modality, their logits averaged.

    logits = sum_i w_i m_i l_i / sum_i w_i m_i, with l_i = head_i(x_i). ``combine``: "mean" (equal
    weights over the present modalities), "learned" (softmax of one logit per modality) or
    "fixed" (``weights`` from the config). The fusion output is the logits, so the model's head is
    the identity.
    """

    decision_level = True

    def __init__(self, input_dims: Mapping[str, int], n_outputs: int, hidden: int = 64, combine: str = "mean",
                 weights: Optional[Dict[str, float]] = None, dropout: float = 0.0):
        super().__init__(input_dims)
        _check_int("LateFusion", "n_outputs", n_outputs)
        if combine not in ("mean", "learned", "fixed"):
            raise ConfigError(f"The 'combine' parameter of LateFusion must be mean, learned or fixed. Got {combine!r}.")
        if (combine == "fixed") != (weights is not None):
            raise ConfigError("LateFusion takes 'weights' exactly when combine is 'fixed'.")
        self._init_kwargs = dict(n_outputs=n_outputs, hidden=hidden, combine=combine, weights=weights,
                                 dropout=dropout)
        self.heads = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d), MLP(d, [hidden], out_dim=n_outputs,
                                                                           dropout=dropout))
                                    for m, d in self.input_dims.items()})
        if combine == "fixed":
            self.register_buffer("fixed", torch.tensor([float(weights.get(m, 0.0)) for m in self.modalities]))
        self.logits = nn.Parameter(torch.zeros(len(self.modalities))) if combine == "learned" else None
        self.combine = combine
        self.output_dim = n_outputs

    def forward(self, features, mask) -> FusionOutput:
        logits = torch.stack([self.heads[m](features[m]) for m in self.modalities], 1)  # (B, n, out)
        if self.combine == "learned":
            w = torch.softmax(self.logits, 0)
        elif self.combine == "fixed":
            w = self.fixed
        else:
            w = torch.ones(len(self.modalities), device=logits.device)
        w = w.to(logits.dtype).unsqueeze(0) * self.stacked_mask(mask).to(logits.dtype)
        w = w / w.sum(1, keepdim=True).clamp_min(torch.finfo(logits.dtype).tiny)
        return FusionOutput((w.unsqueeze(2) * logits).sum(1), weights=w)


def ds_combine(belief: torch.Tensor, uncertainty: torch.Tensor, present: torch.Tensor):
    """Dempster-Shafer combination of per-modality subjective opinions (Han et al., "Trusted
    Multi-View Classification", ICLR 2021, eq. 4), one modality at a time.

    ``belief`` (B, n, K) and ``uncertainty`` (B, n) with belief.sum(-1) + uncertainty = 1;
    ``present`` (B, n) bool. An absent modality is the vacuous opinion (belief 0, uncertainty 1),
    which leaves the combination unchanged. Two opinions combine as
    b = (b1 b2 + b1 u2 + b2 u1) / (1 - C), u = u1 u2 / (1 - C), with conflict
    C = sum_{i != j} b1_i b2_j. Returns the combined (belief (B, K), uncertainty (B,)).
    """
    keep = present.to(belief.dtype)
    b_all = belief * keep.unsqueeze(2)
    u_all = uncertainty * keep + (1 - keep)
    b, u = b_all[:, 0], u_all[:, 0]
    tiny = torch.finfo(belief.dtype).tiny
    for i in range(1, belief.shape[1]):
        b2, u2 = b_all[:, i], u_all[:, i]
        conflict = b.sum(1) * b2.sum(1) - (b * b2).sum(1)
        scale = (1 - conflict).clamp_min(tiny)
        b = (b * b2 + b * u2.unsqueeze(1) + b2 * u.unsqueeze(1)) / scale.unsqueeze(1)
        u = u * u2 / scale
    return b, u


@FUSIONS.register("trusted")
class TrustedFusion(Fusion):
    """Evidential late fusion (Trusted Multi-View Classification, Han et al., ICLR 2021).

    Each modality's head gives non-negative evidence e_m = softplus(head_m(x_m)) for the K classes,
    the parameters of a Dirichlet alpha_m = e_m + 1: belief b_m = e_m / S_m and uncertainty
    u_m = K / S_m with S_m = sum(alpha_m). The opinions are combined by Dempster's rule
    (``ds_combine``), so a modality with little evidence, or one that conflicts with confident
    others, moves the result little. The output is log(alpha) of the combined Dirichlet: its
    softmax is the Dirichlet's expected class probabilities, so cross-entropy trains it.
    Weights report each present modality's share of confidence (1 - u_m). Classification only.
    """

    decision_level = True

    def __init__(self, input_dims: Mapping[str, int], n_outputs: int, hidden: int = 64, dropout: float = 0.0):
        super().__init__(input_dims)
        _check_int("TrustedFusion", "n_outputs", n_outputs, low=2)
        self._init_kwargs = dict(n_outputs=n_outputs, hidden=hidden, dropout=dropout)
        self.heads = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d), MLP(d, [hidden], out_dim=n_outputs,
                                                                           dropout=dropout))
                                    for m, d in self.input_dims.items()})
        self.output_dim = n_outputs

    def opinions(self, features):
        """Per-modality (belief (B, n, K), uncertainty (B, n))."""
        evidence = torch.stack([nn.functional.softplus(self.heads[m](features[m])) for m in self.modalities], 1)
        strength = evidence.sum(2) + self.output_dim
        return evidence / strength.unsqueeze(2), self.output_dim / strength

    def forward(self, features, mask) -> FusionOutput:
        present = self.stacked_mask(mask)
        belief, uncertainty = self.opinions(features)
        b, u = ds_combine(belief, uncertainty, present)
        tiny = torch.finfo(b.dtype).tiny
        alpha = b * (self.output_dim / u.clamp_min(tiny)).unsqueeze(1) + 1  # e = b S, S = K / u
        confidence = (1 - uncertainty) * present.to(b.dtype)
        w = confidence / confidence.sum(1, keepdim=True).clamp_min(tiny)
        return FusionOutput(alpha.log(), weights=w)
