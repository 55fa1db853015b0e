"""Audio processor: decode, mix down, resample, trim/pad, normalise loudness, augment when training.

Decoding is soundfile's (WAV, FLAC, OGG, MP3 where libsndfile has it); resampling is librosa's
(soxr). The output is a fixed-length mono waveform; spectrogram front-ends live in the encoders
so that they run on the GPU.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from crossfuse.data.processors.base import FileProcessor, is_blank, limit, resolve_path, stack_present

SILENCE_PEAK = 1e-4  # below this (about -80 dBFS) a clip carries no signal
MAX_DURATION = 600.0  # seconds: the longest window a model may ask clips to be cut or padded to


def read_audio(path: Path, sample_rate: int, max_seconds: Optional[float] = None) -> np.ndarray:
    """Mono float32 waveform at ``sample_rate``; with ``max_seconds`` only that much of the start
    of the file is decoded (an hour-long clip costs what its first seconds cost)."""
    import soundfile as sf

    frames = -1
    if max_seconds is not None:
        frames = int(np.ceil(max_seconds * sf.info(str(path)).samplerate)) + 1
    data, sr = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
    wave = data.mean(axis=1)
    if sr != sample_rate and len(wave):
        import librosa

        wave = librosa.resample(wave, orig_sr=sr, target_sr=sample_rate)
    return np.ascontiguousarray(wave, dtype=np.float32)


def add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white noise at ``snr_db`` relative to the clip's own power."""
    power = float(np.mean(wave ** 2)) + 1e-12
    noise = rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), wave.shape).astype(np.float32)
    return wave + noise


class AudioProcessor(FileProcessor):
    """Params: ``sample_rate`` (16000), ``duration`` seconds (2.0; longer clips are trimmed, shorter
    zero-padded), ``loudness_db`` (-20: RMS normalised to this dBFS; null keeps levels),
    ``expected_channels`` (null: any, mixed down; a number makes other counts a bad item),
    ``augment``: {noise_snr: [low, high] dB, shift: max fraction of the clip}.
    """

    kind = "audio"
    default_encoder = "audio_cnn"
    tile = "file"
    extensions = (".wav", ".flac", ".ogg", ".mp3")
    noun = "audio"
    corruptions = {"noise_snr": [20.0, 10.0, 0.0, -5.0, -10.0]}

    def __init__(self, columns, **params):
        super().__init__(columns, **params)
        self.params.setdefault("sample_rate", 16000)
        self.params.setdefault("duration", 2.0)
        self.params.setdefault("loudness_db", -20.0)
        self.params.setdefault("expected_channels", None)
        self.params.setdefault("augment", {})

    @property
    def n_samples(self) -> int:
        return int(round(self.params["sample_rate"] * self.params["duration"]))

    def limit_problems(self) -> List[str]:
        return limit(self.params, "sample_rate", 1000, 192_000) + limit(self.params, "duration", 0.01, MAX_DURATION)

    def configure(self, encoder: Any) -> None:
        rate = encoder.sample_rate
        if rate:  # the encoder's front-end or pretrained model fixes the rate
            self.params["sample_rate"] = int(rate)

    def probe(self, path: Path, open_files: bool) -> Optional[str]:
        import soundfile as sf

        try:
            info = sf.info(str(path))
        except Exception as exc:  # libsndfile raises for anything it cannot parse
            return f"cannot read audio {path}: {exc}"
        expected = self.params.get("expected_channels")
        if expected and info.channels != expected:
            return f"audio {path} has {info.channels} channels, expected {expected}"
        if info.frames == 0:
            return f"empty audio (no samples): {path}"
        if open_files:
            try:
                data, _ = sf.read(str(path), dtype="float32", always_2d=True)
            except Exception as exc:
                return f"cannot read audio {path}: {exc}"
            if not np.isfinite(data).all():
                return f"audio {path} holds non-finite samples"
            if np.abs(data).max(initial=0.0) < SILENCE_PEAK:
                return f"silent audio (peak below -80 dBFS): {path}"
        return None

    def waveform(self, wave: np.ndarray, train: bool, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """Trim/pad, normalise loudness and (training only) augment one mono waveform."""
        n = self.n_samples
        aug = self.params.get("augment") or {}
        rng = rng or np.random.default_rng()
        if len(wave) > n:
            start = int(rng.integers(0, len(wave) - n + 1)) if (train and aug.get("shift")) else 0
            wave = wave[start:start + n]
        target = self.params.get("loudness_db")
        if target is not None:
            rms = float(np.sqrt(np.mean(wave ** 2))) if len(wave) else 0.0
            if rms > 0:
                wave = wave * (10 ** (target / 20) / rms)
        if len(wave) < n:
            wave = np.pad(wave, (0, n - len(wave)))
        if train and aug.get("shift"):
            wave = np.roll(wave, int(rng.integers(-1, 2) * rng.uniform(0, aug["shift"]) * n))
        if train and aug.get("noise_snr"):
            low, high = aug["noise_snr"]
            wave = add_noise(wave, float(rng.uniform(low, high)), rng)
        return wave.astype(np.float32)

    def load(self, row: Dict[str, Any], base_dir: Path, train: bool) -> Optional[torch.Tensor]:
        value = row[self.column]
        if is_blank(value):
            return None
        # the window the clip is cut to (twice that with shift augmentation, to draw the start from)
        shift = train and (self.params.get("augment") or {}).get("shift")
        seconds = float(self.params["duration"]) * (2 if shift else 1)
        try:
            wave = read_audio(resolve_path(value, base_dir), self.params["sample_rate"], max_seconds=seconds)
        except Exception as exc:  # changed after validation: missing, not a crash mid-epoch
            warnings.warn(f"{value}: unreadable audio treated as missing ({exc})")
            return None
        if not len(wave):
            return None
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())  # follows the worker's torch seed
        return torch.from_numpy(self.waveform(wave, train, np.random.default_rng(seed)))

    def linear_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Log power in 64 frequency bands, its mean and standard deviation over 32 ms frames."""
        window = max(16, int(self.params["sample_rate"] * 0.032))
        spec = torch.stft(inputs.float(), n_fft=window, hop_length=window // 2, window=torch.hann_window(window),
                          return_complex=True).abs().pow(2)  # (N, freq, frames)
        bands = torch.nn.functional.adaptive_avg_pool1d(spec.transpose(1, 2), 64).transpose(1, 2)
        logs = torch.log(bands + 1e-10)
        return torch.cat([logs.mean(-1), logs.std(-1)], dim=1)

    def corrupt(self, inputs: torch.Tensor, name: str, strength: float, generator: torch.Generator) -> torch.Tensor:
        """noise_snr: white noise at ``strength`` dB SNR relative to each clip's power."""
        if name != "noise_snr":
            return super().corrupt(inputs, name, strength, generator)
        power = inputs.pow(2).mean(1, keepdim=True) + 1e-12
        noise = torch.randn(inputs.shape, generator=generator).to(inputs)
        return inputs + noise * (power / 10 ** (strength / 10)).sqrt()

    def collate(self, items: List[Optional[torch.Tensor]]):
        return stack_present(items, (self.n_samples,))
