"""Retrieval metrics (Recall@K, median rank, mAP) computed in chunks of queries.

A query's relevant gallery items are those with the same group id (an image and its captions
share one). Scores are cosine similarities. Only a (chunk x gallery) block of scores exists at a
time, so 100k queries against 100k items never build the full matrix.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch


def retrieval_metrics(queries, gallery, query_groups, gallery_groups, ks: Sequence[int] = (1, 5, 10),
                      chunk: int = 1024, device: str = "cpu") -> Dict[str, float]:
    """Recall@K (a relevant item in the top K), median and mean rank of the first relevant item,
    and mean average precision over all relevant items. Ties count against the query.

    ``queries`` (Q, d) and ``gallery`` (G, d) are embeddings; ``*_groups`` are integer ids.
    Queries without any relevant gallery item are an error (they have no rank).
    """
    q = torch.nn.functional.normalize(torch.as_tensor(np.asarray(queries), dtype=torch.float32), dim=1)
    g = torch.nn.functional.normalize(torch.as_tensor(np.asarray(gallery), dtype=torch.float32), dim=1).to(device)
    qg = torch.as_tensor(np.ascontiguousarray(query_groups))
    gg = torch.as_tensor(np.ascontiguousarray(gallery_groups)).to(device)
    first_ranks, aps = [], []
    for start in range(0, len(q), chunk):
        scores = q[start:start + chunk].to(device) @ g.T  # (c, G)
        relevant = qg[start:start + chunk].to(device)[:, None] == gg[None, :]
        if not relevant.any(1).all():
            raise ValueError("every query needs at least one relevant gallery item (same group id)")
        # rank of an item = 1 + number of items scoring at least as high, itself excluded (ties pessimistic)
        best = scores.masked_fill(~relevant, float("-inf")).amax(1, keepdim=True)
        first_ranks.append((scores >= best).sum(1))  # counts the best relevant item itself: rank >= 1
        aps.append(_average_precision(scores, relevant))
    ranks = torch.cat(first_ranks).cpu().numpy().astype(float)
    out = {f"recall@{k}": float(np.mean(ranks <= k)) for k in ks}
    out.update(median_rank=float(np.median(ranks)), mean_rank=float(np.mean(ranks)),
               mAP=float(torch.cat(aps).mean()), queries=int(len(ranks)))
    return out


def _average_precision(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """AP per row: mean over relevant items r of (#relevant scoring >= r) / (#items scoring >= r)."""
    aps = []
    for row, rel in zip(scores, relevant):
        s = row[rel]  # scores of the relevant items
        higher_all = (row[None, :] >= s[:, None]).sum(1).float()  # items at or above each relevant one
        higher_rel = (s[None, :] >= s[:, None]).sum(1).float()
        aps.append((higher_rel / higher_all).mean())
    return torch.stack(aps)
