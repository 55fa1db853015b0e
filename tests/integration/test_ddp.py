"""Data-parallel training on 2 CPU processes (gloo): both ranks must end with identical weights."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crossfuse.models import FusionModel

from conftest import make_items, tiny_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_process_ddp_ends_with_identical_weights(tmp_path):
    manifest = make_items(tmp_path / "data", n=48)
    raw = tiny_config(manifest, tmp_path / "run", epochs=2, accelerator="cpu", devices=2, strategy="ddp")
    raw["head"]["dropout"] = 0.2  # ranks draw different dropout masks and data; only the all-reduce syncs them
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(Path(__file__).with_name("ddp_worker.py")), json.dumps(raw),
           str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0, w1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    saved = FusionModel  # the model directory is written once, by rank 0
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file() and saved
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 2 and history[-1]["train_loss"] < history[0]["train_loss"] * 1.5
