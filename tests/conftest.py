"""Fixtures that build tiny real files (PNG, CSV, a random-weight BERT) in temporary directories."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the embedding cache of a test session lives in its own temporary directory, never in ~/.cache
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["CROSSFUSE_CACHE"] = tempfile.mkdtemp(prefix="crossfuse-test-cache-")
atexit.register(shutil.rmtree, os.environ["CROSSFUSE_CACHE"], ignore_errors=True)  # gone with the session

CLASSES = ("cat", "dog", "fish")
COLORS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "fish": (40, 40, 200)}
WORDS = {"cat": "whiskers purring", "dog": "barking fetch", "fish": "swimming scales"}


TONES = {"cat": 330.0, "dog": 660.0, "fish": 1320.0}


def write_tone(path: Path, freq: float, seconds: float = 0.5, sr: int = 8000, channels: int = 1,
               rng: np.random.Generator | None = None) -> None:
    """A sine tone with a little noise, as a real WAV file."""
    import soundfile as sf

    rng = rng or np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + rng.normal(0, 0.01, t.shape)
    sf.write(str(path), np.stack([wave] * channels, 1) if channels > 1 else wave, sr)


def make_items(root: Path, n: int = 48, seed: int = 0, name: str = "manifest.csv", audio: bool = False) -> Path:
    """n items over three classes: a coloured PNG, a caption, a number and a category per item
    (and, with ``audio``, a WAV tone whose pitch follows the class)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    if audio:
        (root / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = CLASSES[i % 3]
        pixels = np.clip(np.array(COLORS[label]) + rng.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        rows.append({"id": f"item{i}", "image": f"img/{i}.png", "caption": f"a small {WORDS[label]} thing number {i}",
                     "x": float(CLASSES.index(label) + rng.normal(0, 0.3)),
                     "size": ["s", "m", "l"][int(rng.integers(3))], "label": label})
        if audio:
            write_tone(root / "wav" / f"{i}.wav", TONES[label] * rng.uniform(0.97, 1.03), rng=rng)
            rows[-1]["sound"] = f"wav/{i}.wav"
    path = root / name
    suffix = path.suffix
    df = pd.DataFrame(rows)
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    return path


def tiny_config(manifest: Path, out_dir: Path, fusion: str = "concat", epochs: int = 2, **train) -> dict:
    """A config dict for a model small enough to train in a second."""
    return {
        "data": {"manifest": str(manifest), "target": "label", "id_column": "id",
                 "split": {"val_size": 0.25, "test_size": 0.25, "seed": 0}},
        "modalities": {
            "image": {"kind": "image", "columns": ["image"],
                      "encoder": {"name": "small_cnn", "channels": [4, 8], "image_size": 16}},
            "text": {"kind": "text", "columns": ["caption"], "encoder": {"name": "gru", "embed_dim": 8, "hidden": 8},
                     "processor": {"max_length": 16}},
            "tabular": {"kind": "tabular", "columns": ["x", "size"], "encoder": {"name": "mlp", "hidden": [8]}},
        },
        "fusion": {"name": fusion},
        "head": {"hidden": [16], "dropout": 0.0},
        "train": {"epochs": epochs, "batch_size": 8, "lr": 0.01, "progress": False, **train},
        "output_dir": str(out_dir),
    }


@pytest.fixture
def items(tmp_path) -> Path:
    return make_items(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A random-weight BERT with a WordPiece tokenizer, saved like a hub model (save_pretrained)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    root = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "small", "thing", "number"] + \
        [w for ws in WORDS.values() for w in ws.split()] + [str(i) for i in range(100)]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    tok.save(str(root / "tokenizer.json"))
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def tiny_sentence_transformer(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT laid out as a sentence-transformers model directory (mean pooling + normalize)."""
    import shutil

    root = tmp_path_factory.mktemp("tiny_st")
    for f in tiny_bert.iterdir():
        shutil.copy(f, root / f.name)
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 16,
                                                                "pooling_mode_mean_tokens": True}))
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    return root


def _tiny_hf(tmp_path_factory, name: str, config):
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp(name)
    transformers.AutoModel.from_config(config).save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def tiny_wav2vec2(tmp_path_factory) -> Path:
    import transformers

    return _tiny_hf(tmp_path_factory, "tiny_wav2vec2", transformers.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
        conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2))


@pytest.fixture(scope="session")
def tiny_hubert(tmp_path_factory) -> Path:
    import transformers

    return _tiny_hf(tmp_path_factory, "tiny_hubert", transformers.HubertConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
        conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2))


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory) -> Path:
    """A random Whisper whose encoder takes 1 s windows (max_source_positions=50)."""
    import transformers

    return _tiny_hf(tmp_path_factory, "tiny_whisper", transformers.WhisperConfig(
        d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80, max_source_positions=50, max_target_positions=32,
        vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1))


PALETTE = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30),
           "black": (10, 10, 10), "white": (245, 245, 245)}


def make_pairs(root: Path, seed: int = 0, repeats: int = 2, audio: bool = False) -> Path:
    """Image-caption pairs: a picture with one colour above another, captioned 'red above blue'.
    Every ordered pair of colours, ``repeats`` noisy pictures each (one group per picture). With
    ``audio``, a tone whose pitch names the top colour, missing on every fourth row."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    if audio:
        (root / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for top in PALETTE:
        for bottom in PALETTE:
            if top == bottom:
                continue
            for r in range(repeats):
                i = len(rows)
                pixels = np.zeros((16, 16, 3))
                pixels[:8], pixels[8:] = PALETTE[top], PALETTE[bottom]
                pixels = np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / "img" / f"{i}.png")
                rows.append({"id": f"pic{i}", "image": f"img/{i}.png", "caption": f"{top} above {bottom}",
                             "split": ["train", "train", "train", "val", "test"][i % 5]})
                if audio:
                    pitch = 300.0 * 1.5 ** list(PALETTE).index(top)
                    write_tone(root / "wav" / f"{i}.wav", pitch, seconds=0.25, rng=rng)
                    rows[-1]["sound"] = f"wav/{i}.wav" if i % 4 else None
    path = root / "pairs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def tiny_retrieval_config(manifest: Path, out_dir: Path, epochs: int = 12, **retrieval) -> dict:
    return {
        "data": {"manifest": str(manifest), "task": "retrieval", "id_column": "id"},
        "modalities": {
            "image": {"kind": "image", "columns": ["image"],
                      "encoder": {"name": "small_cnn", "channels": [8, 16], "image_size": 16}},
            "text": {"kind": "text", "columns": ["caption"], "encoder": {"name": "gru", "embed_dim": 16, "hidden": 16},
                     "processor": {"max_length": 8}},
        },
        "retrieval": {"embed_dim": 16, "dropout": 0.0, **retrieval},
        "train": {"epochs": epochs, "batch_size": 16, "lr": 0.01, "weight_decay": 0.0, "progress": False,
                  "early_stopping": {"patience": 100}},
        "output_dir": str(out_dir),
    }


FLICKR_NAMES = ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg", "1002674143_1b742ab4b8.jpg",
                "1003163366_44323f5815.jpg"]


def make_flickr8k(root, token_lines=None, split_lists=True):
    """A Flickr8K folder as distributed: 4 images, 5 captions each, split lists 2/1/1."""
    (root / "Flicker8k_Dataset").mkdir(parents=True)
    for i, name in enumerate(FLICKR_NAMES):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / "Flicker8k_Dataset" / name)
    lines = token_lines or [f"{name}#{k}\tcaption {k} of image {i} ." for i, name in enumerate(FLICKR_NAMES)
                            for k in range(5)]
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    if split_lists:
        (root / "Flickr_8k.trainImages.txt").write_text("\n".join(FLICKR_NAMES[:2]) + "\n")
        (root / "Flickr_8k.devImages.txt").write_text(FLICKR_NAMES[2] + "\n")
        (root / "Flickr_8k.testImages.txt").write_text(FLICKR_NAMES[3] + "\n")
    return root


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """What the serving tests serve: a tiny attention-fusion classifier (image + tabular + text),
    a tiny image-text retrieval model and two indexes over its pairs (images, captions)."""
    import yaml

    from crossfuse.cli.main import main

    root = tmp_path_factory.mktemp("served")
    items = make_items(root / "items", n=48)
    (root / "fusion.yaml").write_text(yaml.safe_dump(tiny_config(items, root / "fusion", fusion="attention",
                                                                 epochs=4)))
    assert main(["-q", "train", str(root / "fusion.yaml")]) == 0
    pairs = make_pairs(root / "pairs")
    (root / "retrieval.yaml").write_text(yaml.safe_dump(tiny_retrieval_config(pairs, root / "retrieval", epochs=12)))
    assert main(["-q", "train", str(root / "retrieval.yaml")]) == 0
    model = root / "retrieval" / "model"
    assert main(["-q", "index", str(model), str(pairs), "--out", str(root / "retrieval" / "pics")]) == 0
    assert main(["-q", "index", str(model), str(pairs), "--modality", "text",
                 "--out", str(root / "retrieval" / "captions")]) == 0
    return {"root": root, "items": items, "pairs": pairs, "fusion": root / "fusion" / "model", "retrieval": model,
            "indexes": {"pics": root / "retrieval" / "pics", "captions": root / "retrieval" / "captions"}}


def start_serve(*args, env=None):
    """`crossfuse serve ARGS` on a free port of 127.0.0.1, returned once it listens:
    (process, port, the lines it printed)."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "crossfuse", "serve", *map(str, args), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    deadline = time.time() + 120
    while time.time() < deadline:
        lines.append(proc.stdout.readline())
        if "Application startup complete" in lines[-1] or "Uvicorn running" in lines[-1]:
            return proc, port, lines
        assert proc.poll() is None, "".join(lines)
    proc.kill()
    raise AssertionError("the server did not start in 120 s:\n" + "".join(lines))
