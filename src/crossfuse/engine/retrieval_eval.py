"""Retrieval evaluation over embedded rows: per-direction metrics, embedding collection, the report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from crossfuse.atomic import atomic_write
from crossfuse.engine.inference import kept
from crossfuse.metrics import plot_training_curves, retrieval_metrics
from crossfuse.progress import Progress

MONITOR = "recall_mean"  # mean of Recall@1/5/10 in both directions of the monitored pair


def _unique_rows(vectors: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Positions of the first row of each distinct (group, embedding): an image listed once per
    caption is one gallery item (and one query), while distinct captions stay distinct."""
    seen, keep = set(), []
    for i, (g, v) in enumerate(zip(groups, vectors.astype(np.float16))):
        key = (int(g), v.tobytes())
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return np.array(keep, dtype=np.int64)


def direction_metrics(embeddings: Mapping[str, Tuple[np.ndarray, np.ndarray]], groups: np.ndarray,
                      pairs: Sequence[Tuple[str, str]], chunk: int = 1024) -> Dict[str, Dict[str, float]]:
    """Retrieval metrics for each (query modality, gallery modality) in ``pairs``, both ways.

    ``embeddings[m] = (vectors (n, d), present (n,) bool)`` over the same n rows; ``groups`` (n,)
    tells which rows belong together. Queries with no relevant gallery item are left out.
    """
    out: Dict[str, Dict[str, float]] = {}
    for a, b in pairs:
        for q, g in ((a, b), (b, a)):
            qv, qm = embeddings[q]
            gv, gm = embeddings[g]
            qi, gi = np.flatnonzero(qm), np.flatnonzero(gm)
            qi, gi = qi[_unique_rows(qv[qi], groups[qi])], gi[_unique_rows(gv[gi], groups[gi])]
            qi = qi[np.isin(groups[qi], groups[gi])]
            if not len(qi):
                continue
            out[f"{q}->{g}"] = {**retrieval_metrics(qv[qi], gv[gi], groups[qi], groups[gi], chunk=chunk),
                                "gallery": int(len(gi))}
    return out


def collect_embeddings(model, loader: DataLoader, device, modalities: Sequence[str],
                       each: Optional[Callable[[Any, Any], None]] = None, progress: bool = False
                       ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """{modality: (embeddings (n, d), present (n,))} over every batch of ``loader``, run through
    ``model``'s forward; ``each(output, batch)`` also sees every batch (e.g. for a loss)."""
    vecs: Dict[str, List[np.ndarray]] = {m: [] for m in modalities}
    masks: Dict[str, List[np.ndarray]] = {m: [] for m in modalities}
    for batch in Progress(loader, "embed", enabled=progress, unit="batch"):
        batch = batch.to(device)
        out = model(batch)
        if each is not None:
            each(out, batch)
        for m in modalities:
            vecs[m].append(kept(out.embeddings[m].float()).numpy())
            masks[m].append(kept(out.mask[m]).numpy())
    return {m: (np.concatenate(vecs[m]), np.concatenate(masks[m]).astype(bool)) for m in modalities}


def recall_mean(metrics: Dict[str, Dict[str, float]], pair: Sequence[str]) -> float:
    a, b = pair
    values = [metrics[d][f"recall@{k}"] for d in (f"{a}->{b}", f"{b}->{a}") if d in metrics for k in (1, 5, 10)]
    return float(np.mean(values)) if values else 0.0


def _group_codes(df: pd.DataFrame, column: Optional[str]) -> np.ndarray:
    if column and column in df.columns:
        return pd.factorize(df[column].astype(str))[0].astype(np.int64)
    return np.arange(len(df), dtype=np.int64)


def write_retrieval_report(out_dir: Path, metrics: Dict[str, Any], history=None,
                           extra: Optional[Dict[str, Any]] = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "metrics.json", json.dumps({**metrics, **(extra or {})}, indent=2))
    if history:
        atomic_write(out_dir / "history.json", json.dumps(history, indent=2))
        plot_training_curves(history, out_dir / "training_curves.png", MONITOR)
    lines = ["# crossfuse: cross-modal retrieval", ""]
    lines += [f"- {k}: {v}" for k, v in (extra or {}).items() if isinstance(v, (str, int, float))]
    lines += [f"- rows evaluated: {metrics['n']}", f"- {MONITOR} ({' <-> '.join(metrics['monitor_pair'])}): "
              f"{metrics[MONITOR]:.4f}", "",
              "| direction | queries | gallery | R@1 | R@5 | R@10 | median rank | mean rank | mAP |",
              "|---|---|---|---|---|---|---|---|---|"]
    for d, m in metrics["directions"].items():
        lines.append(f"| {d} | {m['queries']} | {m['gallery']} | {m['recall@1']:.4f} | {m['recall@5']:.4f} | "
                     f"{m['recall@10']:.4f} | {m['median_rank']:.0f} | {m['mean_rank']:.1f} | {m['mAP']:.4f} |")
    atomic_write(out_dir / "summary.md", "\n".join(lines) + "\n")
