"""A model or index directory is data: crafted files never run code, never make crossfuse read a
path they name, never allocate what they ask for, and always fail with an error naming the file."""
from __future__ import annotations

import json
import shutil
import time

import pandas as pd
import pytest
import yaml

from crossfuse.cache import clear
from crossfuse.cli.main import main
from crossfuse.engine import Predictor, search_index
from crossfuse.errors import CrossfuseError
from crossfuse.index import VectorIndex
from crossfuse.models import load_model

from conftest import make_items, make_pairs, tiny_config, tiny_retrieval_config


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    manifest = make_items(root / "data", n=36)
    cfg = root / "config.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(manifest, root / "run", epochs=1)))
    assert main(["-q", "train", str(cfg)]) == 0
    return root / "run" / "model", manifest


@pytest.fixture
def model_copy(saved, tmp_path):
    model, manifest = saved
    return shutil.copytree(model, tmp_path / "model"), manifest


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_package_named_in_config_json_is_never_imported(model_copy, tmp_path, monkeypatch):
    model, _ = model_copy
    evil = tmp_path / "site" / "evil"
    evil.mkdir(parents=True)
    marker = tmp_path / "ran"
    (evil / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('code ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    _edit(model / "config.json", lambda c: c["architecture"]["encoders"].update(
        text={"name": "minilm", "kwargs": {"package": "evil.x"}}))
    with pytest.raises(CrossfuseError, match=r"(?s)config.json cannot be loaded.*'package' = 'evil.x' names a weights"):
        load_model(model)
    assert not marker.exists()


@pytest.mark.parametrize("name,kwargs", [
    ("resnet18", {"weights_path": "/etc/passwd"}),
    ("resnet18", {"weights": "DEFAULT"}),  # a download
    ("sentence_transformer", {"path": "/tmp"}),
    ("whisper_ct2", {"path": "/tmp/model"}),
])
def test_weights_sources_in_config_json_are_refused(model_copy, name, kwargs):
    model, _ = model_copy
    _edit(model / "config.json", lambda c: c["architecture"]["encoders"].update(
        image={"name": name, "kwargs": kwargs}))
    with pytest.raises(CrossfuseError, match="names a weights source"):
        load_model(model)


def test_sizes_are_checked_against_the_weights_header_before_allocating(model_copy):
    model, _ = model_copy
    # 5 million x 8192 floats (160 GB) for the text embedding: refused from shapes alone
    _edit(model / "config.json", lambda c: c["architecture"]["encoders"]["text"]["kwargs"].update(
        vocab_size=5_000_000, embed_dim=8192))
    start = time.perf_counter()
    with pytest.raises(CrossfuseError, match=r"(?s)weights do not match the architecture.*encoders\.text\.embed\.weight"):
        load_model(model)
    assert time.perf_counter() - start < 30  # nothing of that size was allocated or initialised


def test_sizes_outside_the_limits_and_negative_sizes_are_refused(model_copy):
    model, _ = model_copy
    _edit(model / "config.json", lambda c: c["architecture"]["encoders"]["image"]["kwargs"].update(
        channels=[-8, 8]))
    with pytest.raises(CrossfuseError, match=r"'channels' parameter of small_cnn must hold numbers in \[1, 4096\]"):
        load_model(model)


def test_processors_json_is_checked_against_limits_and_the_encoders(model_copy):
    model, _ = model_copy
    _edit(model / "processors.json", lambda p: p["image"]["params"].update(size=100_000))
    with pytest.raises(CrossfuseError, match=r"(?s)processors.json cannot be loaded.*image: 'size' must be a number in"):
        load_model(model)


def test_tabular_statistics_that_disagree_with_the_encoder_are_refused(model_copy):
    model, _ = model_copy
    _edit(model / "processors.json", lambda p: p["tabular"]["numeric"].clear())
    with pytest.raises(CrossfuseError, match=r"tabular: 'n_numeric' is 0 in the processor but 1 in the encoder"):
        load_model(model)


@pytest.mark.parametrize("damage,match", [
    (lambda m: (m / "config.json").write_text('{"architecture": {'), r"config.json cannot be read as JSON"),
    (lambda m: (m / "config.json").write_text('{"task": {}}'), r"config.json: no 'architecture' with encoders"),
    (lambda m: (m / "processors.json").write_text('[1, 2]'), r"processors.json: expected a processor for each"),
    (lambda m: (m / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"),
     r"model.safetensors is not a readable safetensors file"),
    (lambda m: _edit(m / "config.json", lambda c: c["architecture"]["fusion"].update(name="concatt")),
     r"Unknown fusion 'concatt'. Did you mean 'concat'\?"),
    (lambda m: _edit(m / "config.json", lambda c: c["architecture"]["head"].update(out_dim=7)),
     r"'head.\d+.weight' is \(3, 16\) in model.safetensors but \(7, 16\) in config.json"),
])
def test_broken_model_directories_fail_with_the_file_named(model_copy, damage, match):
    model, _ = model_copy
    damage(model)
    with pytest.raises(CrossfuseError, match=match):
        Predictor.load(model)


def test_the_cli_reports_a_broken_model_without_a_traceback(model_copy, tmp_path, capsys):
    model, manifest = model_copy
    (model / "config.json").write_text("{")
    assert main(["-q", "predict", str(model), str(manifest), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "config.json cannot be read as JSON" in err and "Traceback" not in err


def test_an_untouched_copy_still_loads_and_predicts_as_the_original(saved, model_copy):
    original, manifest = saved
    copy, _ = model_copy
    df = pd.read_csv(manifest)
    a = Predictor.load(original).predict_frame(df, manifest.parent)
    b = Predictor.load(copy).predict_frame(df, manifest.parent)
    pd.testing.assert_frame_equal(a, b)


def test_manifest_paths_may_not_leave_the_manifest_folder_unless_allowed(saved, tmp_path, capsys):
    model, manifest = saved
    secret = tmp_path / "secret.png"
    shutil.copy(manifest.parent / "img" / "0.png", secret)
    df = pd.read_csv(manifest).head(6)
    df.loc[0, "image"] = "../../secret.png"  # from data/ up and out
    df.loc[1, "image"] = str(secret)  # absolute
    (tmp_path / "data" / "sub").mkdir(parents=True)
    bad = tmp_path / "data" / "sub" / "m.csv"
    df.to_csv(bad, index=False)
    out = tmp_path / "p.csv"
    assert main(["-q", "predict", str(model), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "row 1, column 'image': image path '../../secret.png' leaves the manifest's folder" in err
    assert "row 2, column 'image'" in err and "--allow-outside-paths" in err
    assert main(["-q", "predict", str(model), str(bad), "--out", str(out), "--on-bad-item", "missing"]) == 0
    assert len(pd.read_csv(out)) == 6  # the two rows go through with their image missing


def test_cache_clear_never_leaves_the_cache_root(tmp_path):
    root, outside = tmp_path / "cache", tmp_path / "precious"
    (root / "ns1").mkdir(parents=True)
    (root / "ns1" / "a.npy").write_bytes(b"x")
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    for name in ("../precious", str(outside), "..", "ns1/../../precious"):
        with pytest.raises(CrossfuseError, match="not a cache namespace"):
            clear(root, name)
    assert (outside / "keep.txt").is_file()
    (root / "link").symlink_to(outside, target_is_directory=True)
    assert clear(root, "link") == 0 and (outside / "keep.txt").is_file()  # the link goes, never its target
    assert clear(root, "ns1") == 1 and not (root / "ns1").exists()


@pytest.fixture(scope="module")
def retrieval_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_index")
    manifest = make_pairs(root / "data")
    cfg = root / "config.yaml"
    cfg.write_text(yaml.safe_dump(tiny_retrieval_config(manifest, root / "run", epochs=1)))
    assert main(["-q", "train", str(cfg)]) == 0
    assert main(["-q", "index", str(root / "run" / "model"), str(manifest)]) == 0  # beside: run/index
    return root / "run", manifest


def test_an_index_loads_its_model_only_from_beside_it_or_when_named(retrieval_index, tmp_path, capsys):
    run, _ = retrieval_index
    hits = search_index(run / "index", ["red above blue"], top=2)  # run/model, beside run/index
    assert len(hits[0]) == 2
    moved = shutil.copytree(run / "index", tmp_path / "elsewhere" / "index")
    _edit(moved / "index.json", lambda m: m.update(model=str(run / "model")))  # a real model, named by the file
    with pytest.raises(CrossfuseError, match="is not beside it.*pass --model"):
        search_index(moved, ["red above blue"])
    assert len(search_index(moved, ["red above blue"], top=2, model_dir=run / "model")[0]) == 2


@pytest.mark.parametrize("change,match", [
    (lambda m: m.update(dim=-5), r"'dim' must be an int in \[1, 65536\]; got -5"),
    (lambda m: m.update(kind="evil"), r"'kind' must be one of exact, ivf, hnsw"),
    (lambda m: m["params"].update(nprobe="all"), r"'params.nprobe' must be an int"),
    (lambda m: m["params"].update(lib="os"), r"unknown parameter 'params.lib'"),
    (lambda m: m.update(dim=8), r"holds float32 \(\d+, 16\); index.json says float32 \(n, 8\)|holds 16-d vectors"),
])
def test_index_json_values_are_validated(retrieval_index, tmp_path, change, match):
    run, _ = retrieval_index
    index = shutil.copytree(run / "index", tmp_path / "index")
    _edit(index / "index.json", change)
    with pytest.raises(CrossfuseError, match=match):
        VectorIndex.load(index)


def test_a_damaged_ids_file_is_named(retrieval_index, tmp_path):
    run, _ = retrieval_index
    index = shutil.copytree(run / "index", tmp_path / "index")
    (index / "ids.json").write_text("[{")
    with pytest.raises(CrossfuseError, match="ids.json cannot be read as JSON"):
        VectorIndex.load(index)
    (index / "ids.json").write_text(json.dumps([{"row": 1}]))
    with pytest.raises(CrossfuseError, match="disagree in length"):
        VectorIndex.load(index)
