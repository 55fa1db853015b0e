"""Contrastive losses between two sets of paired embeddings (CLIP's InfoNCE, SigLIP's sigmoid loss).

Row ``i`` of ``a`` and row ``j`` of ``b`` are a positive pair when ``groups[i] == groups[j]``
(an image and each of its captions share a group), so duplicates inside a batch are not pushed
apart as negatives. With unique groups this is exactly CLIP's loss.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def positives(groups: Optional[torch.Tensor], n: int, device) -> torch.Tensor:
    if groups is None:
        return torch.eye(n, dtype=torch.bool, device=device)
    return groups[:, None] == groups[None, :]


def info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, groups: Optional[torch.Tensor] = None
             ) -> torch.Tensor:
    """Symmetric InfoNCE (Radford et al. 2021) on L2-normalised ``a`` (n, d) and ``b`` (n, d).

    logits = scale * a @ b.T; each direction is a cross-entropy against the uniform distribution
    over the row's positives; the loss is the mean of the a->b and b->a terms.
    """
    logits = scale * a @ b.T
    pos = positives(groups, len(a), a.device).float()
    a_to_b = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    b_to_a = -(pos / pos.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return (a_to_b + b_to_a) / 2


def sigmoid_loss(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                 groups: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023): every (i, j) is a binary problem,
    label +1 for positives and -1 otherwise; summed over j, averaged over i. No softmax over the
    batch, so it needs no all-gather and behaves well at large batch sizes."""
    logits = scale * a @ b.T + bias
    labels = 2 * positives(groups, len(a), a.device).float() - 1
    return -F.logsigmoid(labels * logits).sum(1).mean()
