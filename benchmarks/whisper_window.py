"""Whisper tiny.en over short clips: each clip's own seconds (window: clip) vs Whisper's padded
30 s window (window: 30s). Prints the time per batch and whether a clip's pooled embedding depends
on how much padding it arrives with.

    python benchmarks/whisper_window.py [--clips 16] [--seconds 2.0]
"""
from __future__ import annotations

import argparse
import time

import torch

from crossfuse.encoders import ENCODERS


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    n = int(16000 * args.seconds)
    waves = torch.randn(args.clips, n) * 0.1
    times = {}
    for window in ("clip", "30s"):
        enc = ENCODERS.build("whisper_tiny_en", window=window)
        enc(waves[:1])  # warm up
        start = time.perf_counter()
        for _ in range(args.repeats):
            enc(waves)
        times[window] = (time.perf_counter() - start) / args.repeats
        print(f"window {window}: {times[window]:.3f} s per batch of {args.clips} x {args.seconds:g} s clips "
              f"({args.clips / times[window]:.1f} clips/s)")
    print(f"speed-up: {times['30s'] / times['clip']:.1f}x")
    enc = ENCODERS.build("whisper_tiny_en")
    short = torch.zeros(1, 4 * n)
    short[0, :n] = waves[0]
    diff = float((enc(waves[:1]) - enc(short)).abs().max())
    print(f"a {args.seconds:g} s clip padded to {4 * args.seconds:g} s: max embedding difference {diff:.2e}")


if __name__ == "__main__":
    main()
