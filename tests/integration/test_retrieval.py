"""Retrieval end to end on tiny real files: train, evaluate, index, search (CLI and Python)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from crossfuse.cli.main import main
from crossfuse.engine import Retriever
from crossfuse.index import VectorIndex

from conftest import make_flickr8k, make_pairs, tiny_retrieval_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    manifest = make_pairs(root / "data")
    cfg = root / "config.yaml"
    cfg.write_text(yaml.safe_dump(tiny_retrieval_config(manifest, root / "run")))
    assert main(["-q", "train", str(cfg)]) == 0
    return root, manifest, root / "run"


def test_training_learns_a_shared_space_and_writes_the_report(trained):
    _, _, run = trained
    for f in ["model/config.json", "model/model.safetensors", "model/processors.json", "metrics.json", "summary.md",
              "training_curves.png", "search_examples.png", "history.json", "checkpoint.safetensors"]:
        assert (run / f).is_file(), f
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["directions"]) == {"image->text", "text->image"}
    t2i = m["directions"]["text->image"]
    assert t2i["queries"] == 12 and t2i["gallery"] == 12
    # 12 test pictures: chance R@1 is 1/12 and chance R@5 5/12; colour words are easy to learn
    assert t2i["recall@5"] >= 0.75 and t2i["recall@1"] > 0.25, t2i
    assert m["recall_mean"] > 0.5
    history = json.loads((run / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert "| text->image |" in (run / "summary.md").read_text()


def test_cli_index_and_search_text_and_image_queries(trained, capsys):
    root, manifest, run = trained
    index_dir = root / "index"
    assert main(["-q", "index", str(run / "model"), str(manifest), "--out", str(index_dir)]) == 0
    meta = json.loads((index_dir / "index.json").read_text())
    assert meta["modality"] == "image" and meta["count"] == 60
    capsys.readouterr()
    assert main(["-q", "search", "--model", str(run / "model"), str(index_dir), "red above blue", "--top", "3",
                 "--json",
                 "--grid", str(root / "grid.png")]) == 0
    out = json.loads(capsys.readouterr().out.split("grid:")[0])
    hits = out[0]["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    import pandas as pd

    df = pd.read_csv(manifest)
    top_captions = [df.iloc[h["row"] - 1]["caption"] for h in hits]
    assert top_captions[0] == "red above blue", top_captions  # ids map back to manifest rows
    assert hits[0]["id"] == df.iloc[hits[0]["row"] - 1]["id"]
    assert (root / "grid.png").stat().st_size > 1000

    # image -> text: a caption index queried with an image file
    text_index = root / "index-text"
    assert main(["-q", "index", str(run / "model"), str(manifest), "--modality", "text", "--out",
                 str(text_index)]) == 0
    assert json.loads((text_index / "index.json").read_text())["count"] == 30  # 30 distinct captions
    query = manifest.parent / df.iloc[4]["image"]
    capsys.readouterr()
    assert main(["-q", "search", "--model", str(run / "model"), str(text_index), str(query), "--top", "5",
                 "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["results"]
    assert df.iloc[4]["caption"] in [h["value"] for h in hits]


def test_index_add_appends_and_python_api_matches_cli(trained, tmp_path):
    root, manifest, run = trained
    import pandas as pd

    df = pd.read_csv(manifest)
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    df.iloc[:30].assign(image=lambda d: str(manifest.parent) + "/" + d["image"]).to_csv(first, index=False)
    df.iloc[30:].assign(image=lambda d: str(manifest.parent) + "/" + d["image"]).to_csv(second, index=False)
    out = tmp_path / "idx"
    # absolute paths outside the manifests' folder: read only with the explicit option
    assert main(["-q", "index", str(run / "model"), str(first), "--out", str(out)]) == 2
    assert main(["-q", "index", str(run / "model"), str(first), "--out", str(out), "--allow-outside-paths"]) == 0
    assert main(["-q", "index", str(run / "model"), str(second), "--out", str(out), "--add",
                 "--allow-outside-paths"]) == 0
    index = VectorIndex.load(out)
    assert len(index) == 60 and len(index.meta["manifests"]) == 2

    retriever = Retriever.load(run / "model")
    hits = retriever.search(index, ["green above white"], top=2)[0]
    assert len(hits) == 2 and {"rank", "score", "row", "value", "id"} <= set(hits[0])
    vectors, modality = retriever.embed_queries(["green above white", "nothing known"])
    assert modality == "text" and vectors.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_loading_one_tower_gives_the_same_embeddings(trained):
    import pandas as pd

    from crossfuse.errors import CrossfuseError

    _, manifest, run = trained
    full = Retriever.load(run / "model")
    image_only = Retriever.load(run / "model", modalities=["image"])
    assert image_only.modalities == ["image"] and list(image_only.processors) == ["image"]
    assert not any(k.startswith(("encoders.text", "projections.text")) for k in image_only.model.state_dict())
    df = pd.read_csv(manifest).head(8)
    a = full.embed_frame(df, manifest.parent, ["image"])["image"][0]
    b = image_only.embed_frame(df, manifest.parent)["image"][0]
    np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(CrossfuseError, match="no modality audio"):
        Retriever.load(run / "model", modalities=["audio"])


def test_evaluate_cli_on_a_retrieval_model(trained, capsys):
    root, manifest, run = trained
    assert main(["-q", "evaluate", str(run / "model"), str(manifest), "--out", str(root / "eval")]) == 0
    m = json.loads((root / "eval" / "metrics.json").read_text())
    # no group column: every row is its own pair, so a caption shared by two pictures is two
    # queries, each with only its own picture relevant (and ties count against the query)
    t2i = m["directions"]["text->image"]
    assert t2i["queries"] == 60 and t2i["gallery"] == 60
    assert m["directions"]["image->text"]["recall@1"] <= 0.05  # the twin caption always ties
    # with the caption as the group, identical captions are one query with both pictures relevant
    assert main(["-q", "evaluate", str(run / "model"), str(manifest), "--out", str(root / "eval2"),
                 "--group-column", "caption"]) == 0
    grouped = json.loads((root / "eval2" / "metrics.json").read_text())["directions"]
    assert grouped["text->image"]["queries"] == 30
    assert grouped["image->text"]["recall@1"] > 0.5


def test_siglip_loss_and_frozen_cached_towers_train(tmp_path, tiny_sentence_transformer):
    manifest = make_pairs(tmp_path / "data", repeats=1)
    cfg = tiny_retrieval_config(manifest, tmp_path / "run", epochs=3, loss="siglip")
    cfg["modalities"]["text"]["encoder"] = {"name": "sentence_transformer", "path": str(tiny_sentence_transformer)}
    cfg["modalities"]["text"].pop("processor")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(path)]) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["loss"] == "siglip" and set(m["directions"]) == {"image->text", "text->image"}
    retriever = Retriever.load(tmp_path / "run" / "model")
    assert retriever.model.bias.requires_grad and float(retriever.model.bias.detach()) != -10.0  # the bias learned
    assert retriever.cache_root is not None  # the frozen text tower reads the embedding cache


def test_refit_trains_again_on_train_and_val_for_the_best_epoch_count(tmp_path):
    from crossfuse.config import parse_config
    from crossfuse.engine import train_retrieval

    manifest = make_pairs(tmp_path / "data", repeats=1)
    cfg = tiny_retrieval_config(manifest, tmp_path / "run", epochs=4)
    cfg["train"]["refit"] = True

    class Epochs:  # records (trainer, epoch) at each epoch end, of both training phases
        seen = []

        def on_epoch_end(self, trainer, state):
            self.seen.append((id(trainer), state["epoch"], trainer.cfg.epochs))

    cb = Epochs()
    run = train_retrieval(parse_config(cfg), save=False, callbacks=[cb])
    best = run.train.best_epoch
    phases = sorted({t for t, _, _ in cb.seen}, key=[t for t, _, _ in cb.seen].index)
    assert len(phases) == 2
    refit = [(e, n) for t, e, n in cb.seen if t == phases[1]]
    assert refit == [(e, best) for e in range(1, best + 1)]  # a fresh run of exactly best_epoch epochs
    t2i = run.metrics["directions"]["text->image"]
    # the test split, scored by the refit model: 6 captions against 6 pictures (R@1 by chance: 1/6)
    assert t2i["queries"] == 6 and t2i["gallery"] == 6 and t2i["recall@10"] == 1.0 and t2i["recall@1"] > 1 / 6


def test_three_towers_train_every_pair_and_search_audio_by_text(tmp_path, capsys):
    manifest = make_pairs(tmp_path / "data", audio=True)
    cfg = tiny_retrieval_config(manifest, tmp_path / "run", epochs=8)
    cfg["modalities"]["sound"] = {"kind": "audio", "columns": ["sound"], "processor": {"duration": 0.25},
                                  "encoder": {"name": "audio_cnn", "channels": [4, 8], "n_mels": 16}}
    cfg["data"]["on_bad_item"] = "missing"  # rows without sound still pair image with text
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["-q", "validate", str(path)]) == 1  # it lists the 15 empty cells ...
    out = capsys.readouterr().out
    assert "task: retrieval into 16-d" in out and "15 problem(s)" in out and "treat the bad cells as missing" in out
    assert main(["-q", "train", str(path)]) == 0  # ... which training then treats as missing
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(m["directions"]) == {"image->text", "text->image", "image->sound", "sound->image", "sound->text",
                                    "text->sound"}
    assert m["monitor_pair"] == ["image", "text"]  # the first two modalities of the config
    # rows without audio are left out of the audio directions only: 12 test rows, 9 with sound
    assert m["directions"]["sound->text"]["queries"] == 9 and m["directions"]["text->sound"]["gallery"] == 9
    assert m["directions"]["text->image"]["queries"] == 12 and m["n"] == 12
    retriever = Retriever.load(tmp_path / "run" / "model")
    assert retriever.modalities == ["image", "sound", "text"]

    sounds = tmp_path / "sounds"
    assert main(["-q", "index", str(tmp_path / "run" / "model"), str(manifest), "--modality", "sound",
                 "--out", str(sounds)]) == 0
    assert json.loads((sounds / "index.json").read_text())["count"] == 45  # 60 rows, 15 without sound
    capsys.readouterr()
    assert main(["-q", "search", "--model", str(tmp_path / "run" / "model"), str(sounds), "blue above red",
                 "--top", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["results"]
    assert len(hits) == 3 and all(h["value"].endswith(".wav") for h in hits)
    wav = str(manifest.parent / "wav" / "1.wav")
    captions = tmp_path / "captions"
    assert main(["-q", "index", str(tmp_path / "run" / "model"), str(manifest), "--modality", "text",
                 "--out", str(captions)]) == 0
    capsys.readouterr()
    assert main(["-q", "search", "--model", str(tmp_path / "run" / "model"), str(captions), wav, "--top", "2",
                 "--json"]) == 0  # audio -> text
    assert len(json.loads(capsys.readouterr().out)[0]["results"]) == 2


def test_training_from_a_flickr_folder_groups_the_captions_of_an_image(tmp_path):
    from crossfuse.config import parse_config
    from crossfuse.engine import train_retrieval

    root = make_flickr8k(tmp_path / "Flickr8k")
    cfg = tiny_retrieval_config(root, tmp_path / "run", epochs=2)
    cfg["modalities"]["image"]["encoder"]["image_size"] = 8
    cfg["data"].pop("id_column")
    cfg["data"]["split"] = {"column": "split"}
    run = train_retrieval(parse_config(cfg))
    assert run.retriever.meta["group_column"] == "image_id"
    assert run.split_sizes == {"train": 10, "val": 5, "test": 5}  # 2 / 1 / 1 images, 5 captions each
    t2i, i2t = run.metrics["directions"]["text->image"], run.metrics["directions"]["image->text"]
    assert (t2i["queries"], t2i["gallery"]) == (5, 1)  # five captions, one distinct test image
    assert (i2t["queries"], i2t["gallery"]) == (1, 5)
    assert i2t["recall@1"] == 1.0 and t2i["recall@1"] == 1.0  # one image: every ranking is right


def test_clear_errors_for_retrieval_configs(tmp_path, capsys):
    manifest = make_pairs(tmp_path / "data", repeats=1)
    cfg = tiny_retrieval_config(manifest, tmp_path / "run", group_column="nope", monitor_pair=["image", "audio"])
    del cfg["modalities"]["text"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "at least two modalities" in err and "group_column" in err and "monitor_pair" in err


def test_without_faiss_every_index_is_exact_numpy(trained, tmp_path, monkeypatch, capsys):
    import sys

    root, manifest, run = trained
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    from crossfuse.index import faiss_available

    assert not faiss_available()
    assert main(["-q", "index", str(run / "model"), str(manifest), "--kind", "hnsw", "--out", str(tmp_path / "i")]) == 0
    meta = json.loads((tmp_path / "i" / "index.json").read_text())
    assert (meta["backend"], meta["kind"]) == ("numpy", "exact") and (tmp_path / "i" / "vectors.npy").is_file()
    assert "FAISS is not installed" in capsys.readouterr().err  # a warning, even with -q
    assert main(["-q", "search", "--model", str(run / "model"), str(tmp_path / "i"), "red above blue",
                 "--top", "2"]) == 0


def test_search_without_an_index_argument_uses_the_default_one(trained, tmp_path, monkeypatch, capsys):
    root, manifest, run = trained
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "search", "red above blue"]) == 2
    assert "no index given and none at runs/latest/index" in capsys.readouterr().err
    shutil.copytree(run / "model", "runs/latest/model")  # where `crossfuse train` puts it by default
    assert main(["-q", "index", "runs/latest/model", str(manifest)]) == 0  # --out defaults to runs/latest/index
    capsys.readouterr()
    assert main(["-q", "search", "red above blue", "--top", "2", "--json"]) == 0  # as in the README
    out = json.loads(capsys.readouterr().out)
    assert out[0]["query"] == "red above blue" and len(out[0]["results"]) == 2
    assert main(["-q", "search", "runs/latest/index"]) == 2
    assert "at least one query" in capsys.readouterr().err


def test_index_values_are_resolved_so_search_grids_work_from_any_folder(trained, tmp_path, monkeypatch, capsys):
    root, manifest, run = trained
    monkeypatch.chdir(manifest.parent)
    assert main(["-q", "index", str(run / "model"), "pairs.csv", "--out", str(run / "index")]) == 0  # relative
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["-q", "search", str(run / "index"), "red above blue", "--top", "3", "--json",
                 "--grid", "grid.png"]) == 0
    hits = json.loads(capsys.readouterr().out.split("grid:")[0])[0]["results"]
    assert all(Path(h["value"]).is_absolute() and Path(h["value"]).is_file() for h in hits)
    assert (elsewhere / "grid.png").stat().st_size > 0


def test_faiss_loader_noise_is_silenced(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("faiss")
    code = ("import logging; logging.basicConfig(level=logging.INFO); from crossfuse.index import VectorIndex; "
            "VectorIndex(4).add(__import__('numpy').ones((2, 4)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "swigfaiss" not in result.stderr and "ModuleNotFoundError" not in result.stderr
