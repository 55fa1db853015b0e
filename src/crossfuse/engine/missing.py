"""Missing and noisy modalities: modality dropout for training, robustness curves, attribution.

Everything here goes through the model's own presence mask, the same path inference uses:
removing a modality is a False in the mask, never a fill value fed to the fusion.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from crossfuse.types import Batch


def drop_modalities(mask: Mapping[str, torch.Tensor], rates: Mapping[str, float]) -> Dict[str, torch.Tensor]:
    """Per item and modality, drop a present modality with probability ``rates[m]``.

    An item never loses all its modalities: if the draw removes every one it had, one of them,
    chosen at random, is kept. Uses the global torch RNG (seeded per epoch by the trainer).
    """
    mods = sorted(mask)
    present = torch.stack([mask[m].bool() for m in mods], 1)
    p = torch.tensor([float(rates.get(m, 0.0)) for m in mods], device=present.device)
    keep = present & (torch.rand(present.shape, device=present.device) >= p)
    empty = present.any(1) & ~keep.any(1)
    if empty.any():
        choice = torch.rand(present.shape, device=present.device).masked_fill(~present, -1.0).argmax(1)
        keep[empty, choice[empty]] = True
    return {m: keep[:, i] for i, m in enumerate(mods)}


def _score(logits: torch.Tensor, target_class: Optional[torch.Tensor]) -> torch.Tensor:
    """What attribution explains: the probability of the full model's predicted class, or the
    (standardised) regression output."""
    if target_class is None:
        return logits[:, 0].float()
    return torch.softmax(logits.float(), 1).gather(1, target_class[:, None])[:, 0]


@torch.inference_mode()
def modality_shapley(model, loader: DataLoader, device, max_modalities: int = 8) -> Dict[str, Any]:
    """Exact Shapley values of each modality for each item's prediction.

    The players are the modalities an item has; a coalition's value is the model's output with
    only that coalition present in the mask. 2^n fusion passes per batch (encoders run once).
    Returns per-item values (n_items, n_modalities) and their means.
    """
    mods = list(model.fusion.modalities)
    n = len(mods)
    if n > max_modalities:
        raise ValueError(f"Exact Shapley values over {n} modalities need 2^{n} passes; at most {max_modalities}")
    weights = {k: math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)}
    model.eval()
    rows, index = [], []
    for batch in loader:
        batch: Batch = batch.to(device)
        enc = model.encode(batch)
        full = model.fuse(enc, batch.mask).logits
        classification = full.shape[1] > 1
        target = full.argmax(1) if classification else None
        values = {}
        for subset in itertools.product([False, True], repeat=n):
            m = {mod: batch.mask[mod].bool() & bool(on) for mod, on in zip(mods, subset)}
            values[subset] = _score(model.fuse(enc, m).logits, target)
        phi = torch.zeros(len(batch), n, device=full.device)
        for i in range(n):
            for subset, v in values.items():
                if subset[i]:
                    continue
                with_i = subset[:i] + (True,) + subset[i + 1:]
                phi[:, i] += weights[sum(subset)] * (values[with_i] - v)
        rows.append(phi.cpu())
        index.append(batch.index.cpu())
    phi = torch.cat(rows).numpy()
    share = np.abs(phi).mean(0) / max(np.abs(phi).mean(0).sum(), 1e-12)
    return {"modalities": mods, "per_item": phi, "index": torch.cat(index).numpy(),
            "mean": dict(zip(mods, phi.mean(0).tolist())), "mean_abs_share": dict(zip(mods, share.tolist()))}


@torch.inference_mode()
def robustness_outputs(model, loader: DataLoader, device, processors: Mapping[str, Any],
                       seed: int = 0) -> Dict[str, Dict[str, Any]]:
    """Logits under every condition: clean, each modality removed, each kept alone, and each
    modality corrupted at each strength its processor lists; a model that imagines absent
    modalities (missing.imagine) is also scored leaving them out (``removed_plain``, ``only_plain``).
    Returns condition -> outputs."""
    mods = list(model.fusion.modalities)
    imagines = getattr(model, "imagination", None) is not None
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    out: Dict[str, List[torch.Tensor]] = {}
    meta: Dict[str, Dict[str, Any]] = {}
    targets = []

    def add(key: str, logits: torch.Tensor, **info):
        out.setdefault(key, []).append(logits.float().cpu())
        meta.setdefault(key, info)

    for batch in loader:
        batch: Batch = batch.to(device)
        targets.append(batch.target.cpu())
        enc = model.encode(batch)
        add("clean", model.fuse(enc, batch.mask).logits, kind="clean")
        for m in mods:
            removed = {k: v if k != m else torch.zeros_like(v, dtype=torch.bool) for k, v in batch.mask.items()}
            add(f"removed:{m}", model.fuse(enc, removed).logits, kind="removed", modality=m)
            alone = {k: v if k == m else torch.zeros_like(v, dtype=torch.bool) for k, v in batch.mask.items()}
            add(f"only:{m}", model.fuse(enc, alone).logits, kind="only", modality=m)
            if imagines:  # the same model leaving the absent modalities out instead
                add(f"removed_plain:{m}", model.fuse(enc, removed, imagine=False).logits, kind="removed", modality=m)
                add(f"only_plain:{m}", model.fuse(enc, alone, imagine=False).logits, kind="only", modality=m)
        for m in mods:
            proc = processors[m]
            for name, strengths in proc.corruptions.items():
                for s in strengths:
                    inputs = dict(batch.inputs)
                    inputs[m] = proc.corrupt(batch.inputs[m], name, s, generator)
                    corrupted = Batch(inputs, batch.mask, batch.target, batch.index)
                    add(f"corrupt:{m}:{name}:{s}", model(corrupted).logits, kind="corrupted", modality=m,
                        corruption=name, strength=s)
    y = torch.cat(targets).numpy()
    return {k: {**meta[k], "logits": torch.cat(v).numpy(), "targets": y} for k, v in out.items()}


def attribution_table(shapley: Dict[str, Any], removal: Dict[str, float], baseline: float,
                      weights: Optional[Dict[str, Optional[float]]], metric: str) -> List[Dict[str, Any]]:
    rows = []
    for m in shapley["modalities"]:
        rows.append({"modality": m, "shapley_mean": shapley["mean"][m], "shapley_share": shapley["mean_abs_share"][m],
                     f"{metric}_drop_when_removed": baseline - removal[m] if m in removal else None,
                     "mean_fusion_weight": None if not weights else weights.get(m)})
    return rows
