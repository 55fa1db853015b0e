"""Run by torchrun in test_global_negatives.py: this rank's share of a fixed batch through a
projection, the contrastive loss with global negatives, the parameters' gradients averaged over
ranks as data parallelism averages them; rank 0 saves the loss and gradients."""
import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from global_negatives_case import batch, projections, shares
from crossfuse.models import RetrievalOutput, pair_loss

loss_kind, out_dir = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
x, mask, groups = batch()
start = sum(shares(world)[:rank])
rows = slice(start, start + shares(world)[rank])
proj, scale, bias = projections()
out = RetrievalOutput({m: torch.nn.functional.normalize(proj[m](x[m][rows]), dim=1) for m in x},
                      {m: v[rows] for m, v in mask.items()}, scale, bias)
loss = pair_loss(out, groups[rows], loss_kind, global_negatives=True)
loss.backward()
params = dict(proj.named_parameters())
for p in params.values():
    dist.all_reduce(p.grad)
    p.grad /= world
if rank == 0:
    save_file({"loss": loss.detach().reshape(1), **{k: p.grad.contiguous() for k, p in params.items()}},
              os.path.join(out_dir, f"{loss_kind}.safetensors"))
dist.destroy_process_group()
