"""Missing and noisy modalities: modality dropout for training, robustness curves, attribution.

Everything here goes through the model's own presence mask, the same path inference uses:
removing a modality is a False in the mask, never a fill value fed to the fusion.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from crossfuse.engine.inference import kept
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
def modality_shapley(model, loader: DataLoader, device, max_modalities: int = 8,
                     gather: Optional[Callable[[Any], Any]] = None) -> Dict[str, Any]:
    """Exact Shapley values of each modality for each item's prediction.

    The players are the modalities an item has; a coalition's value is the model's output with
    only that coalition present in the mask. 2^n fusion passes per batch (encoders run once).
    Returns per-item values (n_items, n_modalities) and their means. ``gather`` joins the per-item
    values of every process's rows (engine.distributed.gather_rows) before the means.
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
        rows.append(kept(phi))
        index.append(kept(batch.index))
    phi, index = (torch.cat(rows).numpy(), torch.cat(index).numpy()) if rows else (np.zeros((0, n)), np.zeros(0, int))
    if gather is not None:
        phi, index = gather((phi, index))
    share = np.abs(phi).mean(0) / max(np.abs(phi).mean(0).sum(), 1e-12)
    return {"modalities": mods, "per_item": phi, "index": index,
            "mean": dict(zip(mods, phi.mean(0).tolist())), "mean_abs_share": dict(zip(mods, share.tolist()))}


@torch.inference_mode()
def robustness_outputs(model, loader: DataLoader, device, processors: Mapping[str, Any],
                       seed: int = 0, gather: Optional[Callable[[Any], Any]] = None) -> Dict[str, Dict[str, Any]]:
    """Logits under every condition: clean, each modality removed, each kept alone, and each
    modality corrupted at each strength its processor lists; a model that imagines absent
    modalities (missing.imagine) is also scored leaving them out (``removed_plain``, ``only_plain``).
    Returns condition -> outputs; ``gather`` joins every process's rows (engine.distributed)."""
    mods = list(model.fusion.modalities)
    conditions = robustness_conditions(mods, processors, imagines=getattr(model, "imagination", None) is not None)
    model.eval()
    rows = getattr(loader.dataset, "rows", None)  # the items' manifest rows seed their corruption
    out: Dict[str, List[torch.Tensor]] = {k: [] for k in conditions}
    targets = []
    for batch in loader:
        batch: Batch = batch.to(device)
        targets.append(kept(batch.target))
        items = batch.index.cpu().numpy()
        items = items if rows is None else np.asarray(rows)[items]
        enc = model.encode(batch)
        for number, (key, c) in enumerate(conditions.items()):
            m = c.get("modality")
            if c["kind"] == "corrupted":
                inputs = dict(batch.inputs)
                inputs[m] = corrupt_items(processors[m], batch.inputs[m], c["corruption"], c["strength"],
                                          [(seed, number, int(r)) for r in items])
                logits = model(Batch(inputs, batch.mask, batch.target, batch.index)).logits
            else:
                keep = (lambda k: True) if c["kind"] == "clean" else \
                    (lambda k: k != m) if c["kind"] == "removed" else (lambda k: k == m)
                mask = {k: v if keep(k) else torch.zeros_like(v, dtype=torch.bool) for k, v in batch.mask.items()}
                kwargs = {"imagine": False} if key.split(":")[0].endswith("_plain") else {}
                logits = model.fuse(enc, mask, **kwargs).logits
            out[key].append(kept(logits.float()))
    outputs = ({k: torch.cat(v).numpy() for k, v in out.items()}, torch.cat(targets).numpy()) if targets else None
    if gather is not None:  # a process without rows sends None
        outputs = gather(outputs)
    logits, y = outputs
    return {k: {**c, "logits": logits[k], "targets": y} for k, c in conditions.items()}


def corrupt_items(processor, inputs: Any, name: str, strength: float, seeds: Sequence[Sequence[int]]) -> Any:
    """``processor.corrupt`` item by item, each with a generator of its own seeded by ``seeds[i]``
    (the seed, the condition, the item's manifest row): an item's corruption does not depend on
    the batch it is in, the batch size or the number of processes evaluating."""
    def item(x, i):
        return {k: v[i:i + 1] for k, v in x.items()} if isinstance(x, dict) else x[i:i + 1]

    parts = [processor.corrupt(item(inputs, i), name, strength,
                               torch.Generator().manual_seed(int(np.random.SeedSequence(list(s)).generate_state(1)[0])))
             for i, s in enumerate(seeds)]
    if isinstance(inputs, dict):
        return {k: torch.cat([p[k] for p in parts]) for k in inputs}
    return torch.cat(parts)


def robustness_conditions(mods: Sequence[str], processors: Mapping[str, Any], imagines: bool
                          ) -> Dict[str, Dict[str, Any]]:
    """robustness_outputs' conditions, in order: key -> kind, modality, corruption and strength."""
    conditions: Dict[str, Dict[str, Any]] = {"clean": {"kind": "clean"}}
    for m in mods:
        conditions[f"removed:{m}"] = {"kind": "removed", "modality": m}
        conditions[f"only:{m}"] = {"kind": "only", "modality": m}
        if imagines:  # the same model leaving the absent modalities out instead
            conditions[f"removed_plain:{m}"] = {"kind": "removed", "modality": m}
            conditions[f"only_plain:{m}"] = {"kind": "only", "modality": m}
    for m in mods:
        for name, strengths in processors[m].corruptions.items():
            for s in strengths:
                conditions[f"corrupt:{m}:{name}:{s}"] = {"kind": "corrupted", "modality": m, "corruption": name,
                                                        "strength": s}
    return conditions


def attribution_table(shapley: Dict[str, Any], removal: Dict[str, float], baseline: float,
                      weights: Optional[Dict[str, Optional[float]]], metric: str) -> List[Dict[str, Any]]:
    rows = []
    for m in shapley["modalities"]:
        rows.append({"modality": m, "shapley_mean": shapley["mean"][m], "shapley_share": shapley["mean_abs_share"][m],
                     f"{metric}_drop_when_removed": baseline - removal[m] if m in removal else None,
                     "mean_fusion_weight": None if not weights else weights.get(m)})
    return rows
