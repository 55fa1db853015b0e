"""Peak memory of one training epoch as the number of items grows: it must stay flat.

Builds N random 96x96 PNG images with a caption and a number each, trains one epoch of an
image + text + tabular model with 2 DataLoader workers, and reports the peak resident memory of
the main process and of the workers. Each N runs in a fresh process so peaks do not mix.

    python benchmarks/streaming_memory.py            # N = 1000, 4000, 16000
    python benchmarks/streaming_memory.py --sizes 500 2000

With ``--wide-mib M`` the manifest is a Parquet file with one more column the config never names
(M MiB of notes): a run reads only the columns its config names, so its peak should stay where it
is without the column; the table also shows what reading the whole file costs.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build(root: Path, n: int, wide_mib: int = 0) -> Path:
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = i % 4
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "caption": f"item {i} of group {label} with words",
                     "x": float(label + rng.normal()), "label": label})
    df = pd.DataFrame(rows)
    if not wide_mib:
        df.to_csv(root / "m.csv", index=False)
        return root / "m.csv"
    width = wide_mib * 2 ** 20 // n  # random letters: Parquet cannot compress them away
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    df["notes"] = [letters[rng.integers(0, 26, width)].tobytes().decode() for _ in range(n)]
    df.to_parquet(root / "m.parquet", row_group_size=1000)
    return root / "m.parquet"


def whole_read(manifest: Path) -> dict:
    """What reading every column of the manifest costs (no training), in a fresh process."""
    import crossfuse.engine  # noqa: F401  (the imports a run has, so the peaks compare)
    from crossfuse.data import read_manifest

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    columns = len(read_manifest(manifest).columns)
    return {"columns": columns, "peak_before_read_mib": round(before, 1),
            "peak_main_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def one(manifest: Path) -> dict:
    """One training epoch on ``manifest`` (built by another process, so its peak is not counted)."""
    from crossfuse.config import parse_config
    from crossfuse.engine import train

    n = sum(1 for _ in (manifest.parent / "img").iterdir())
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config({
            "data": {"manifest": str(manifest), "check_files": False, "split": {"val_size": 0.05, "test_size": 0.05}},
            "modalities": {
                "image": {"kind": "image", "columns": ["image"],
                          "encoder": {"name": "small_cnn", "channels": [8, 16], "image_size": 64}},
                "text": {"kind": "text", "columns": ["caption"], "encoder": {"name": "gru", "embed_dim": 16,
                                                                              "hidden": 16}},
                "tabular": {"kind": "tabular", "columns": ["x"], "encoder": "mlp"}},
            "train": {"epochs": 1, "batch_size": 64, "num_workers": 2, "progress": False},
            "output_dir": str(Path(tmp) / "out")})
        start = time.perf_counter()
        train(cfg, save=False)
        seconds = time.perf_counter() - start
    return {"items": n, "seconds": round(seconds, 1), "items_per_s": round(n * 0.9 / seconds, 1),
            "peak_main_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_worker_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    p.add_argument("--wide-mib", type=int, default=0, help="a Parquet manifest with an unused column of this size")
    p.add_argument("--build", nargs=2, metavar=("DIR", "N"), help=argparse.SUPPRESS)
    p.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--whole-read", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.build:
        print(json.dumps({"manifest": str(build(Path(args.build[0]), int(args.build[1]), args.wide_mib))}))
        return
    if args.one or args.whole_read:
        print(json.dumps(one(args.one) if args.one else whole_read(args.whole_read)))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, "
          f"python {platform.python_version()}")

    def run(*extra: str) -> dict:
        out = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def data(root: str, n: int, wide_mib: int = 0) -> str:  # built in a process of its own
        return run("--build", root, str(n), "--wide-mib", str(wide_mib))["manifest"]

    if args.wide_mib:
        print(f"Parquet manifest with an unused {args.wide_mib} MiB column")
        print("| items | training epoch: peak main MiB | same without the column | reading every column: peak MiB "
              "(before the read) |")
        print("|---|---|---|---|")
        for n in args.sizes:
            with tempfile.TemporaryDirectory() as wide_dir, tempfile.TemporaryDirectory() as narrow_dir:
                wide_manifest = data(wide_dir, n, args.wide_mib)
                wide, narrow = run("--one", wide_manifest), run("--one", data(narrow_dir, n))
                whole = run("--whole-read", wide_manifest)
            print(f"| {n} | {wide['peak_main_mib']} | {narrow['peak_main_mib']} | {whole['peak_main_mib']} "
                  f"({whole['peak_before_read_mib']}) |", flush=True)
        return
    print("| items | epoch seconds | items/s | peak main MiB | peak worker MiB |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            r = run("--one", data(tmp, n))
        print(f"| {r['items']} | {r['seconds']} | {r['items_per_s']} | {r['peak_main_mib']} | {r['peak_worker_mib']} |",
              flush=True)


if __name__ == "__main__":
    main()
