"""The embedding cache: hits, a miss on each kind of change, concurrent writers, a killed write."""
from __future__ import annotations

import json
import multiprocessing as mp

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from crossfuse.cache import EmbeddingStore, clear, namespaces
from crossfuse.config import parse_config
from crossfuse.engine import train
from crossfuse.engine import extract as extract_module

from conftest import make_items


def test_store_round_trip_and_memory_mapped_reads(tmp_path):
    store = EmbeddingStore(tmp_path, "ns", meta={"encoder": "x", "dim": 4})
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    store.put_many(["a", "b", "c"], vectors)
    again = EmbeddingStore(tmp_path, "ns")  # another process's view
    assert len(again) == 3 and np.array_equal(again.get("b"), vectors[1]) and again.get("zz") is None
    assert isinstance(np.load(again._shards[0], mmap_mode="r"), np.memmap)
    assert again.info()["entries"] == 3 and again.info()["encoder"] == "x"


def _writer(root, start):
    store = EmbeddingStore(root, "shared")
    for chunk in range(5):
        keys = [f"k{start + chunk * 100 + i}" for i in range(100)]
        store.put_many(keys, np.array([[float(k[1:])] * 8 for k in keys], dtype=np.float32))


def test_concurrent_writers_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s)) for s in (0, 10000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = EmbeddingStore(tmp_path, "shared")
    assert len(store) == 1000
    for key in ("k0", "k499", "k10000", "k10499"):
        assert store.get(key)[0] == float(key[1:])


def test_a_killed_write_leaves_no_entry(tmp_path, monkeypatch):
    store = EmbeddingStore(tmp_path, "ns")
    store.put_many(["a"], np.ones((1, 2), dtype=np.float32))
    import crossfuse.cache.store as store_module

    real = store_module.atomic_write

    def die_before_commit(path, data):
        if path.name.endswith(".keys.json"):
            raise KeyboardInterrupt  # the process dies after the vectors, before the keys
        real(path, data)

    monkeypatch.setattr(store_module, "atomic_write", die_before_commit)
    with pytest.raises(KeyboardInterrupt):
        store.put_many(["b"], np.zeros((1, 2), dtype=np.float32))
    monkeypatch.setattr(store_module, "atomic_write", real)
    fresh = EmbeddingStore(tmp_path, "ns")
    assert len(fresh) == 1 and fresh.get("b") is None and np.array_equal(fresh.get("a"), [1, 1])
    assert fresh.info()["orphans"] == 1
    assert clear(tmp_path, "ns") >= 3 and not namespaces(tmp_path)


def frozen_config(manifest, out, cache_dir, size=32, **image_extra):
    return {
        "data": {"manifest": str(manifest), "split": {"val_size": 0.25, "test_size": 0.25}},
        "modalities": {
            "image": {"kind": "image", "columns": ["image"], "processor": {"size": size},
                      "encoder": {"name": "resnet18", "trainable": False, **image_extra}},
            "tabular": {"kind": "tabular", "columns": ["x"], "encoder": {"name": "mlp", "hidden": [8]}}},
        "train": {"epochs": 1, "batch_size": 8, "progress": False},
        "cache": {"dir": str(cache_dir)},
        "output_dir": str(out)}


@pytest.fixture
def extracted(monkeypatch):
    """Counts the items each run sends through a frozen encoder."""
    counts = []
    real = extract_module._extract

    def spy(enc, proc, m, rows, *args, **kw):
        counts.append(len(rows))
        return real(enc, proc, m, rows, *args, **kw)

    monkeypatch.setattr(extract_module, "_extract", spy)
    return counts


def test_cache_hits_and_misses(tmp_path, extracted):
    import torch
    from safetensors.torch import save_file

    manifest = make_items(tmp_path / "d", n=24)
    cache = tmp_path / "cache"
    first = train(parse_config(frozen_config(manifest, tmp_path / "r1", cache)))
    assert extracted == [24]
    second = train(parse_config(frozen_config(manifest, tmp_path / "r2", cache)))
    assert extracted == [24]  # every item hit: the encoder did not run during training
    assert second.metrics["accuracy"] == pytest.approx(first.metrics["accuracy"])

    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(manifest.parent / "img" / "5.png")
    train(parse_config(frozen_config(manifest, tmp_path / "r3", cache)))
    assert extracted[-1] == 1  # one changed file, one miss

    df = pd.read_csv(manifest)
    df.loc[0, "x"] = 99.0  # a change in another modality's column misses nothing here
    df.to_csv(manifest, index=False)
    n_before = len(extracted)
    train(parse_config(frozen_config(manifest, tmp_path / "r4", cache)))
    assert len(extracted) == n_before

    train(parse_config(frozen_config(manifest, tmp_path / "r5", cache, size=40)))
    assert extracted[-1] == 24  # another preprocessing setting misses everything

    torch.manual_seed(3)
    import torchvision

    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in torchvision.models.resnet18().state_dict().items()}, str(weights))
    train(parse_config(frozen_config(manifest, tmp_path / "r6", cache, weights_path=str(weights))))
    assert extracted[-1] == 24  # other weights miss everything
    assert len(namespaces(cache)) == 3


def test_cache_can_be_disabled(tmp_path, extracted):
    manifest = make_items(tmp_path / "d", n=12)
    raw = frozen_config(manifest, tmp_path / "r", tmp_path / "cache")
    raw["cache"]["enabled"] = False
    train(parse_config(raw))
    assert extracted == [] and not (tmp_path / "cache").exists()


def test_cache_cli(tmp_path, capsys):
    from crossfuse.cli.main import main

    EmbeddingStore(tmp_path, "enc-123", meta={"encoder": "resnet18", "dim": 2}).put_many(
        ["a", "b"], np.zeros((2, 2), dtype=np.float32))
    assert main(["cache", "info", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| enc-123 | resnet18 | 2 | 2 | 1 | 0 |" in out and "1 namespace(s), 2 vectors" in out
    assert main(["cache", "clear", "--dir", str(tmp_path)]) == 0
    assert not namespaces(tmp_path)


def test_jpeg_decoding_on_the_device_matches_pil(tmp_path):
    """The on-device path (nvjpeg on a GPU) exercised on the CPU: same vectors within resize
    differences, and its own namespace, since the pixels are not bit-identical to PIL's."""
    import torch

    from crossfuse.data.processors import ImageProcessor
    from crossfuse.encoders import ENCODERS
    from crossfuse.engine.extract import cache_modalities

    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        arr = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
        arr[:, :32] = [200, 30, 30]  # large flat areas: resizing differences stay small
        Image.fromarray(arr).save(tmp_path / f"{i}.jpg", quality=95)
        rows.append({"image": f"{i}.jpg"})
    df = pd.DataFrame(rows)
    torch.manual_seed(0)
    enc = ENCODERS.build("resnet18", trainable=False, image_size=32).eval()
    proc = ImageProcessor(["image"])
    proc.configure(enc)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoders = torch.nn.ModuleDict({"image": enc})

    pil = cache_modalities(Model(), {"image": proc}, df, tmp_path, tmp_path / "c", device=torch.device("cpu"),
                           progress=False, device_decode=False)["image"]
    dev = cache_modalities(Model(), {"image": proc}, df, tmp_path, tmp_path / "c", device=torch.device("cpu"),
                           progress=False, device_decode=True)["image"]
    assert pil.namespace != dev.namespace
    a = np.stack([pil.store.get(pil.keys[i]) for i in range(6)])
    b = np.stack([dev.store.get(dev.keys[i]) for i in range(6)])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.95, cos


def test_a_loaded_model_reads_the_cache_its_config_names(tmp_path, extracted):
    from crossfuse.engine import Predictor

    manifest = make_items(tmp_path / "d", n=12)
    train(parse_config(frozen_config(manifest, tmp_path / "r", tmp_path / "cache")))
    assert extracted == [12]
    predictor = Predictor.load(tmp_path / "r" / "model")
    assert predictor.cache_root == tmp_path / "cache"
    pred = predictor.predict_frame(pd.read_csv(manifest), manifest.parent)
    assert extracted == [12] and len(pred) == 12  # every item read from the cache


def test_fingerprint_memo_follows_in_place_weight_changes():
    import torch

    from crossfuse.data.processors import PROCESSORS
    from crossfuse.encoders import ENCODERS
    from crossfuse.engine.extract import fingerprint

    enc = ENCODERS.build("small_cnn", channels=[4], image_size=16)
    proc = PROCESSORS["image"](["image"], size=16)
    original = {k: v.clone() for k, v in enc.state_dict().items()}
    first = fingerprint(enc, proc)
    assert fingerprint(enc, proc) == first  # the memo: same weights, same digest
    with torch.no_grad():
        next(enc.parameters()).add_(1.0)  # in place: same storage, new version
    changed = fingerprint(enc, proc)
    assert changed != first
    enc.load_state_dict(original)
    assert fingerprint(enc, proc) == first
    fresh = ENCODERS.build("small_cnn", channels=[4], image_size=16)
    fresh.load_state_dict(original)
    assert fingerprint(fresh, proc) == first  # equal weights in another module: equal digest


class _Frozen(__import__("torch").nn.Module):
    """A model with one frozen image encoder (a fixed random projection of the pixels)."""

    def __init__(self, fail_at_batch=None):
        import torch

        from crossfuse.encoders import ENCODERS

        super().__init__()
        torch.manual_seed(0)
        enc = ENCODERS.build("small_cnn", channels=[4], image_size=16)
        for p in enc.parameters():
            p.requires_grad_(False)
        self.encoders = torch.nn.ModuleDict({"image": enc})
        self.calls, self.fail_at_batch = 0, fail_at_batch
        real = enc.forward

        def forward(x):
            self.calls += 1
            if self.calls == self.fail_at_batch:
                raise KeyboardInterrupt  # the run is killed during this batch
            return real(x)

        enc.forward = forward


def _image_processor(model):
    from crossfuse.data.processors import ImageProcessor

    proc = ImageProcessor(["image"])
    proc.configure(model.encoders["image"])
    return proc


def test_a_killed_extraction_keeps_what_it_finished(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(extract_module, "COMMIT_SECONDS", 0.0)  # commit after every batch
    manifest = make_items(tmp_path / "d", n=20)
    df = pd.read_csv(manifest)
    model = _Frozen(fail_at_batch=3)
    with pytest.raises(KeyboardInterrupt):
        extract_module.cache_modalities(model, {"image": _image_processor(model)}, df, manifest.parent,
                                        tmp_path / "cache", batch_size=4, device=torch.device("cpu"), progress=False)
    (store,) = namespaces(tmp_path / "cache")
    assert len(store) == 8  # two finished batches of 4 survive the kill
    again = _Frozen()
    extract_module.cache_modalities(again, {"image": _image_processor(again)}, df, manifest.parent,
                                    tmp_path / "cache", batch_size=4, device=torch.device("cpu"), progress=False)
    assert again.calls == 3 and len(namespaces(tmp_path / "cache")[0]) == 20  # only the 12 missing ones


def _extract_in_process(manifest, cache, counts):
    import torch

    df = pd.read_csv(manifest)
    model = _Frozen()
    extract_module.cache_modalities(model, {"image": _image_processor(model)}, df, manifest.parent, cache,
                                    batch_size=4, device=torch.device("cpu"), progress=False)
    counts.put(model.calls)


def test_concurrent_runs_on_one_cache_extract_each_item_once(tmp_path):
    manifest = make_items(tmp_path / "d", n=16)
    ctx = mp.get_context("spawn")
    counts = ctx.Queue()
    procs = [ctx.Process(target=_extract_in_process, args=(manifest, tmp_path / "cache", counts)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    calls = sorted(counts.get(timeout=5) for _ in procs)
    (store,) = namespaces(tmp_path / "cache")
    assert len(store) == 16 and sum(len(json.loads(k.read_text())) for k in store.dir.glob("*.keys.json")) == 16
    assert calls == [0, 4]  # one run extracted the 16 items in 4 batches; the other waited and found them all


def test_the_cache_message_counts_duplicates_apart(tmp_path, caplog):
    import torch

    manifest = make_items(tmp_path / "d", n=6)
    df = pd.read_csv(manifest)
    df = pd.concat([df, df.iloc[:2]], ignore_index=True)  # two files listed twice
    model = _Frozen()
    with caplog.at_level("INFO"):
        extract_module.cache_modalities(model, {"image": _image_processor(model)}, df, manifest.parent,
                                        tmp_path / "cache", device=torch.device("cpu"), progress=False)
    assert "8 items, 0 in the cache, 2 duplicates of other items, 6 to extract" in caplog.text


def test_an_encrypted_cache_stores_no_plain_vectors_and_needs_its_key(tmp_path, extracted, monkeypatch, capsys):
    pytest.importorskip("cryptography")
    from crossfuse.cli.main import main
    from crossfuse.encryption import new_key
    from crossfuse.engine import Predictor
    from crossfuse.errors import CrossfuseError

    key = new_key()
    monkeypatch.setenv("CROSSFUSE_KEY", key)
    manifest = make_items(tmp_path / "d", n=12)
    cache = tmp_path / "cache"
    cfg = frozen_config(manifest, tmp_path / "r", cache)
    cfg["cache"]["encrypt"] = True
    first = train(parse_config(cfg))
    assert extracted == [12]
    (store,) = namespaces(cache)
    files = sorted(p.name for p in store.dir.iterdir() if p.name not in ("meta.json", ".lock"))
    assert files and all(name.endswith(".enc") for name in files)
    assert json.loads((store.dir / "meta.json").read_text())["encrypted"] is True
    vector = store.get(next(iter(store._index)))
    raw = b"".join((store.dir / name).read_bytes() for name in files)
    assert vector.tobytes()[:16] not in raw  # no vector's bytes in the clear
    # a second run and the saved model read it back (no extraction), with the same results
    cfg["output_dir"] = str(tmp_path / "r2")
    assert train(parse_config(cfg)).metrics["accuracy"] == pytest.approx(first.metrics["accuracy"])
    pred = Predictor.load(tmp_path / "r" / "model").predict_frame(pd.read_csv(manifest), manifest.parent)
    assert extracted == [12] and len(pred) == 12
    # a plain run never shares it: another namespace, extracted again
    plain = frozen_config(manifest, tmp_path / "r3", cache)
    train(parse_config(plain))
    assert extracted == [12, 12] and len(namespaces(cache)) == 2
    # without the key: cache info still lists it, reading it fails naming the cache; a wrong key is refused
    monkeypatch.delenv("CROSSFUSE_KEY")
    assert main(["cache", "info", "--dir", str(cache)]) == 0
    assert "? (encrypted; no key)" in capsys.readouterr().out
    cfg["output_dir"] = str(tmp_path / "r4")
    with pytest.raises(CrossfuseError, match="embedding cache namespace .* is encrypted: set CROSSFUSE_KEY"):
        train(parse_config(cfg))
    monkeypatch.setenv("CROSSFUSE_KEY", new_key())
    with pytest.raises(CrossfuseError, match="the key is wrong or the file was changed"):
        EmbeddingStore(cache, store.dir.name)
