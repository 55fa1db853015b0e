"""Global negatives: 2 ranks with their shares of a batch give the loss and the gradients of one
process on the whole batch (contrastive embeddings gathered with their gradients)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crossfuse.models import RetrievalOutput, pair_loss
from global_negatives_case import batch, projections
from test_ddp import free_port


def single_process(loss_kind: str):
    x, mask, groups = batch()
    proj, scale, bias = projections()
    out = RetrievalOutput({m: torch.nn.functional.normalize(proj[m](x[m]), dim=1) for m in x}, mask, scale, bias)
    loss = pair_loss(out, groups, loss_kind, global_negatives=True)  # no process group: the batch itself
    loss.backward()
    return loss.detach(), {k: p.grad for k, p in proj.named_parameters()}


@pytest.mark.distributed
@pytest.mark.parametrize("loss_kind", ["infonce", "siglip"])
def test_two_ranks_give_the_loss_and_gradients_of_one_process_on_the_global_batch(tmp_path, loss_kind):
    here = Path(__file__).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                           str(here / "contrastive_worker.py"), loss_kind, str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = load_file(str(tmp_path / f"{loss_kind}.safetensors"))
    loss, grads = single_process(loss_kind)
    assert torch.allclose(got["loss"][0], loss, atol=1e-6)
    for k, g in grads.items():
        assert torch.allclose(got[k], g, atol=1e-6), k
    # the same shares without gathering: each rank's own negatives only, a different loss
    x, mask, groups = batch()
    proj, scale, bias = projections()
    with torch.no_grad():
        local = pair_loss(RetrievalOutput({m: torch.nn.functional.normalize(proj[m](x[m][:6]), dim=1) for m in x},
                                          {m: v[:6] for m, v in mask.items()}, scale, bias), groups[:6], loss_kind)
    assert not torch.allclose(local, loss, atol=1e-3)
