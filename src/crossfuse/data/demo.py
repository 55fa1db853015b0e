"""The bundled offline demo set: scikit-learn's real handwritten digits with a text and a tabular view.

Each view alone is ambiguous by construction, so fusion has something to win:
- image: the real 8x8 digit scanned up to 32x32, with a random block occluded and pixel noise;
- text: a caption giving the digit's parity and whether it is below five, in varied wording
  (narrows it to 2-3 digits);
- tabular: ``remainder`` = digit mod 3 plus noise, and ``loops`` = whether it has a closed loop
  (narrows it to 1-4 digits, with some noise).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

PARITY = {0: ["even", "an even", "divisible by two"], 1: ["odd", "an odd", "not divisible by two"]}
SIZE = {0: ["small", "below five", "less than 5", "under five"], 1: ["large", "five or more", "at least 5",
                                                                    "above four"]}
TEMPLATES = [
    "a {size} {parity_adj} digit",
    "this digit is {parity} and {size}",
    "the writer drew a number that is {size} and {parity}",
    "{parity} number, {size}",
    "scanned digit: {size}, {parity}",
]
LOOPS = {0: "yes", 6: "yes", 8: "yes", 9: "yes", 4: "sometimes"}


def build_digits_demo(out_dir: str | Path, seed: int = 0, occlusion: float = 0.3, noise: float = 0.2,
                      limit: int | None = None) -> Path:
    """Write images/ and manifest.csv under ``out_dir``; returns the manifest path. Deterministic."""
    from sklearn.datasets import load_digits

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    n = len(digits.target) if limit is None else min(limit, len(digits.target))
    rows = []
    for i in range(n):
        d = int(digits.target[i])
        img = np.kron(digits.images[i] / 16.0, np.ones((4, 4)))  # 32x32, values in [0, 1]
        side = int(round(32 * np.sqrt(occlusion)))
        y, x = rng.integers(0, 32 - side + 1, size=2)
        img[y:y + side, x:x + side] = rng.uniform(0, 1)
        img = np.clip(img + rng.normal(0, noise, img.shape), 0, 1)
        name = f"images/digit_{i:04d}.png"
        Image.fromarray((img * 255).astype(np.uint8)).convert("RGB").save(out_dir / name)
        parity, size = d % 2, int(d >= 5)
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        p_words = PARITY[parity]
        short = template.startswith("a {size}")  # "a small even digit", not "a below five even digit"
        caption = template.format(size=SIZE[size][0 if short else rng.integers(len(SIZE[size]))],
                                  parity=p_words[rng.integers(len(p_words))],
                                  parity_adj=p_words[rng.integers(2)].replace("an ", ""))
        loops = LOOPS.get(d, "no")
        if rng.uniform() < 0.1:  # some annotators disagree
            loops = ["yes", "no", "sometimes"][rng.integers(3)]
        rows.append({"id": f"digit-{i:04d}", "image": name, "caption": caption,
                     "remainder": round(float(d % 3 + rng.normal(0, 0.4)), 3), "loops": loops, "label": d})
    path = out_dir / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029"]
VARIANTS = ["", "+m3", "+f2", "+f4"]


def speak(text: str, path: Path, voice: str, rate: int, pitch: int) -> None:
    """Synthesise ``text`` to a WAV file with espeak-ng (apt: espeak-ng)."""
    import shutil
    import subprocess

    exe = shutil.which("espeak-ng")
    if exe is None:
        from crossfuse.errors import MissingDependencyError

        raise MissingDependencyError("Spoken digits need the espeak-ng program: apt-get install espeak-ng "
                                     "(or `make espeak-ng`)")
    subprocess.run([exe, "-v", voice, "-s", str(rate), "-p", str(pitch), "-w", str(path), text], check=True,
                   capture_output=True)


def build_av_digits(out_dir: str | Path, seed: int = 0, snr_db: tuple = (-10.0, 0.0), seconds: float = 1.5,
                    limit: int | None = None, voices: Sequence[str] = VOICES, variants: Sequence[str] = VARIANTS,
                    image_noise: float = 0.2, occlusion: float = 0.3) -> Path:
    """The digits demo with a spoken view: each digit's word said by espeak-ng in one of 28 voices
    (``voices`` x ``variants``) at a random rate and pitch, placed at a random offset in a 1.5 s
    clip with white noise at a random SNR in ``snr_db`` (so hearing alone is not enough either).
    Columns: id, image, caption, audio, label. Deterministic for a seed: two sets built with the
    same seed and different voices (or image noise) hold the same items, labels, captions and
    splits, with only that view changed, which is how benchmarks/shift.py shifts one modality."""
    from concurrent.futures import ThreadPoolExecutor

    import soundfile as sf

    out_dir = Path(out_dir)
    manifest = build_digits_demo(out_dir, seed=seed, limit=limit, noise=image_noise, occlusion=occlusion)
    df = pd.read_csv(manifest).drop(columns=["remainder", "loops"])
    rng = np.random.default_rng(seed + 1)
    (out_dir / "clean").mkdir(exist_ok=True)
    (out_dir / "audio").mkdir(exist_ok=True)
    takes = [(int(d), voices[rng.integers(len(voices))] + variants[rng.integers(len(variants))],
              int(rng.integers(120, 230)), int(rng.integers(25, 75))) for d in df["label"]]
    unique = sorted(set(takes))

    def synth(take):
        d, voice, rate, pitch = take
        path = out_dir / "clean" / f"{d}_{voice.replace('+', '_')}_{rate}_{pitch}.wav"
        if not path.is_file():
            speak(NUMBER_WORDS[d], path, voice, rate, pitch)
        return take, path

    with ThreadPoolExecutor(max_workers=4) as pool:
        clean = dict(pool.map(synth, unique))
    sr = 16000
    n = int(seconds * sr)
    paths = []
    for i, take in enumerate(takes):
        import librosa

        wave, file_sr = sf.read(str(clean[take]), dtype="float32")
        wave = librosa.resample(wave, orig_sr=file_sr, target_sr=sr)[:n]
        clip = np.zeros(n, dtype=np.float32)
        start = int(rng.integers(0, n - len(wave) + 1))
        clip[start:start + len(wave)] = wave
        power = float(np.mean(wave ** 2)) + 1e-12
        snr = rng.uniform(*snr_db)
        clip += rng.normal(0, np.sqrt(power / 10 ** (snr / 10)), n).astype(np.float32)
        clip /= max(1.0, float(np.abs(clip).max()))
        name = f"audio/digit_{i:04d}.wav"
        sf.write(str(out_dir / name), clip, sr)
        paths.append(name)
    df.insert(3, "audio", paths)
    path = out_dir / "manifest.csv"
    df.to_csv(path, index=False)
    return path
