"""Contrastive losses between two sets of paired embeddings (CLIP's InfoNCE, SigLIP's sigmoid loss).

Row ``i`` of ``a`` and row ``j`` of ``b`` are a positive pair when ``groups[i] == groups[j]``
(an image and each of its captions share a group), so duplicates inside a batch are not pushed
apart as negatives. With unique groups this is exactly CLIP's loss.

Under data parallelism each rank holds its share of the batch; ``gather_rows`` collects every
rank's rows in rank order, with the gradient flowing back to each rank's own rows (OpenCLIP's
``gather_with_grad``), so the negatives of a contrastive loss are the global batch.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def world_size() -> int:
    """The number of processes in the default process group (1 outside one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(x: torch.Tensor, grad: bool = True) -> torch.Tensor:
    """Every rank's ``x`` (n_r, ...) concatenated in rank order; ranks may hold different row
    counts (the last batch). With ``grad`` the backward pass sums every rank's gradient for a row
    into the rank that owns it (torch.distributed.nn's all_gather), so when every rank computes the
    same global loss and data parallelism averages the parameters' gradients, the step equals one
    process on the global batch. Outside a process group ``x`` itself."""
    import torch.distributed as dist

    world = world_size()
    if world == 1:
        return x
    size = torch.tensor([len(x)], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    kind = x.dtype
    flat = x.to(torch.uint8) if kind == torch.bool else x
    padded = F.pad(flat, [0, 0] * (flat.dim() - 1) + [0, max(counts) - len(flat)])
    if grad and flat.is_floating_point():
        from torch.distributed.nn.functional import all_gather

        parts = all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
    out = torch.cat([p[:n] for p, n in zip(parts, counts)])
    return out.bool() if kind == torch.bool else out


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
