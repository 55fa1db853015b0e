"""Two nodes x one process on loopback (torchrun's static rendezvous, gloo): train.num_nodes comes
from the launcher's environment, and both nodes end with identical weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_items, tiny_config
from crossfuse.engine.placement import resolve_num_nodes
from test_ddp import free_port


def test_num_nodes_is_read_from_the_launcher():
    assert resolve_num_nodes(None, {}) == 1
    assert resolve_num_nodes(None, {"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}) == 2
    assert resolve_num_nodes(None, {"SLURM_NNODES": "3", "SLURM_NTASKS": "12"}) == 3
    assert resolve_num_nodes(2, {"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8"}) == 2  # the config wins


@pytest.mark.distributed
def test_two_nodes_one_process_each_end_with_identical_weights(tmp_path):
    manifest = make_items(tmp_path / "data", n=48)
    raw = tiny_config(manifest, tmp_path / "run", epochs=2, accelerator="cpu", devices=1, strategy="ddp")
    raw["head"]["dropout"] = 0.2  # nodes draw different dropout masks and data; only the all-reduce syncs them
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    worker = str(Path(__file__).with_name("ddp_worker.py"))
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={r}",
                               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", worker,
                               json.dumps(raw), str(tmp_path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outputs = [p.communicate(timeout=420)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    w0, w1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 2
