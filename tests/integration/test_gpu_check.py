"""benchmarks/gpu_check.sh runs its every step on the CPU with --cpu, so the script a GPU machine
runs (rarely, and with minutes to spare) is known to work before it gets there."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu", "--items", "48", "--epochs", "1",
                           "--arch", "resnet18", "--image-size", "48", "--batch-size", "16", "--workers", "0"],
                          capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads((tmp_path / "gpu_check.json").read_text())
    ext, runs = figures["extraction"], figures["training"]["runs"]
    assert ext["items"] == 48 and ext["precision"] == "32-true"
    assert ext["feature_cosine_min"] == pytest.approx(1.0, abs=1e-6)  # no autocast on the CPU: the same numbers
    assert ext["pil_workers_items_per_s"] > 0 and "device_decode_ratio" not in ext  # nvjpeg is the GPU's
    assert list(runs) == ["32-true"] and runs["32-true"]["epochs"] == 1
    assert runs["32-true"]["bare_samples_per_s"] > 0
    assert "bare encoder on ready tensors" in proc.stdout and "ratio" in proc.stdout


def test_gpu_check_refuses_a_machine_without_a_gpu_unless_asked_for_the_cpu(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--items", "4"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no CUDA device is visible" in proc.stderr
