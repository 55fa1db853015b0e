"""AV-digits: scikit-learn's handwritten digits, a parity/size caption, and the digit spoken by
espeak-ng (28 voices, random rate and pitch) in white noise at -10..0 dB SNR.

    python benchmarks/datasets/av_digits.py data/av_digits      # needs espeak-ng (`make espeak-ng`)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from crossfuse.data.demo import build_av_digits

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, nargs="?", default=Path("data/av_digits"))
    path = build_av_digits(p.parse_args().out)
    df = pd.read_csv(path)
    print(f"{path}: {len(df)} items, {df['label'].nunique()} classes")
