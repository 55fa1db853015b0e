"""Data-parallel scaling of the training loop: throughput and time per step for 1, 2 and 4 CPU
processes (DDP, gloo) on this machine.

Each run is `crossfuse train` on the demo digits (small CNN + GRU + MLP, attention fusion), every
process with batch 64 (the global batch grows with the processes, as in weak scaling) and
cores / processes torch threads, so the processes share the machine's cores rather than
oversubscribing them. The first epoch is left out (start-up, first-touch allocations); the figures
are the mean of the epochs after it. Scaling efficiency = throughput(N) / (N x throughput(1)):
on one machine's CPU cores the processes split the same cores, so what it measures is the loop's
own overhead (gradient all-reduce, barriers, a DataLoader per process), not added compute.

    python benchmarks/scaling.py                       # 1 2 4 processes, 3 epochs each
    python benchmarks/scaling.py --processes 1 2 --epochs 4
    python benchmarks/scaling.py --accelerator gpu --processes 1 2   # on a machine with GPUs
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from crossfuse.data.demo import build_digits_demo

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "src" / "crossfuse" / "resources" / "demo.yaml"


def run(processes: int, epochs: int, data: Path, out: Path, accelerator: str, batch: int) -> dict:
    cores = os.cpu_count() or 1
    threads = max(1, cores // processes)  # the cores shared out, never oversubscribed by torch itself
    cmd = [sys.executable, "-m", "crossfuse", "-q", "train", str(CONFIG), f"data.manifest={data / 'manifest.csv'}",
           f"output_dir={out}", f"train.epochs={epochs}", f"train.devices={processes}",
           f"train.accelerator={accelerator}", f"train.batch_size={batch}", f"train.threads={threads}",
           "train.progress=false", "train.baseline=false", "train.early_stopping.patience=1000",
           "train.early_stopping.min_epochs=0"]
    if processes > 1:
        cmd.append("train.strategy=ddp")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    clock = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - clock
    if proc.returncode != 0:
        raise SystemExit(f"{processes} processes failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    history = json.loads((out / "history.json").read_text())
    split = json.loads((out / "metrics.json").read_text())
    later = history[1:] or history
    seconds = float(np.mean([r["train_seconds"] for r in later]))
    train_items = int(split.get("train_items") or 0)
    steps = math.ceil(train_items / (batch * processes)) if train_items else None
    return {"processes": processes, "threads": threads, "samples_per_s": float(np.mean([r["samples_per_s"] for r in later])),
            "epoch_seconds": seconds, "step_ms": 1000 * seconds / steps if steps else float("nan"),
            "steps": steps, "wall_s": wall, "val_accuracy": history[-1].get("val_accuracy")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "demo", help="the demo digits (built if absent)")
    args = p.parse_args()
    if not (args.data / "manifest.csv").is_file():
        print(f"building the demo digits in {args.data} ...", flush=True)
        build_digits_demo(args.data)
    rows = []
    with tempfile.TemporaryDirectory(prefix="crossfuse-scaling-") as tmp:
        for n in args.processes:
            r = run(n, args.epochs, args.data, Path(tmp) / f"p{n}", args.accelerator, args.batch_size)
            rows.append(r)
            print(f"{n} process(es): {r['samples_per_s']:.0f} samples/s, {r['step_ms']:.1f} ms per step "
                  f"({r['steps']} steps of {args.batch_size} x {n} per epoch), {r['threads']} threads each, "
                  f"run {r['wall_s']:.0f} s", flush=True)
    base = next((r for r in rows if r["processes"] == 1), None)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"accelerator {args.accelerator}; demo digits, batch {args.batch_size} per process, "
          f"mean of epochs 2..{args.epochs}\n")
    print("| processes | threads each | samples/s | ms per step | scaling efficiency |")
    print("|---|---|---|---|---|")
    for r in rows:
        eff = f"{r['samples_per_s'] / (r['processes'] * base['samples_per_s']):.2f}" if base else "-"
        print(f"| {r['processes']} | {r['threads']} | {r['samples_per_s']:.0f} | {r['step_ms']:.1f} | {eff} |")


if __name__ == "__main__":
    main()
