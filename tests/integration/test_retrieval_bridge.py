"""The zero-shot class-name bridge: EfficientNet-Lite0's ImageNet head + a frozen text encoder."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from crossfuse.cli.main import main
from crossfuse.engine import Retriever

from conftest import make_pairs, tiny_retrieval_config

pytest.importorskip("efficientnet_lite_pytorch")


def bridge_config(manifest, out, text_model, **bridge):
    cfg = tiny_retrieval_config(manifest, out, epochs=2)
    cfg["modalities"]["image"] = {"kind": "image", "columns": ["image"],
                                  "encoder": {"name": "efficientnet_lite0", "image_size": 32}}
    cfg["modalities"]["text"] = {"kind": "text", "columns": ["caption"],
                                 "encoder": {"name": "sentence_transformer", "path": str(text_model),
                                             "trainable": False}}
    cfg["retrieval"]["bridge"] = {"top": 3, **bridge}
    return cfg


@pytest.fixture(scope="module")
def bridged(tmp_path_factory, tiny_sentence_transformer):
    root = tmp_path_factory.mktemp("bridge")
    manifest = make_pairs(root / "data", repeats=1)
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump(bridge_config(manifest, root / "run", tiny_sentence_transformer)))
    assert main(["-q", "train", str(path)]) == 0
    return root, manifest, root / "run"


def test_bridge_block_is_the_probability_weighted_class_name_embedding(bridged):
    import pandas as pd

    from crossfuse.models.factory import embed_texts

    root, manifest, run = bridged
    r = Retriever.load(run / "model")
    model = r.model
    assert model.output_dim == 16 + 16 and model.bridge["source"] == "image" and model.bridge["target"] == "text"
    names = model.encoders["image"].class_names()
    assert len(names) == 1000 and names[1] == "goldfish"
    # the stored class embeddings are the text encoder's embeddings of "A <name>."
    expected = embed_texts(model.encoders["text"], r.processors["text"], [f"A {n}." for n in names[:5]], root)
    torch.testing.assert_close(model.bridge_classes[:5], expected)

    df = pd.read_csv(manifest).head(4)
    emb = r.embed_frame(df, manifest.parent)
    inputs = r.processors["image"].collate([r.processors["image"].load(row, manifest.parent, False)
                                            for row in df.to_dict("records")])[0]
    with torch.no_grad():
        feats = model.encoders["image"](inputs)
        probs = model.encoders["image"].classify(feats).softmax(-1)
        top = probs.topk(3, dim=-1)
        by_hand = torch.einsum("bk,bkd->bd", top.values / top.values.sum(-1, keepdim=True),
                               model.bridge_classes[top.indices])
        by_hand = torch.nn.functional.normalize(by_hand, dim=-1) * 0.5 ** 0.5
    np.testing.assert_allclose(emb["image"][0][:, 16:], by_hand.numpy(), rtol=1e-4, atol=1e-6)
    # unit length overall: half learned, half bridge
    np.testing.assert_allclose(np.linalg.norm(emb["image"][0], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb["text"][0][:, 16:], axis=1), 0.5 ** 0.5, rtol=1e-5)


def test_bridged_model_indexes_and_searches_in_its_wider_space(bridged, capsys):
    root, manifest, run = bridged
    assert main(["-q", "index", str(run / "model"), str(manifest), "--out", str(root / "idx")]) == 0
    assert json.loads((root / "idx" / "index.json").read_text())["dim"] == 32
    capsys.readouterr()
    assert main(["-q", "search", "--model", str(run / "model"), str(root / "idx"), "red above blue", "--top", "3",
                 "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["results"]) == 3


def test_bridge_needs_a_named_classifier_and_a_frozen_text_encoder(tmp_path, tiny_sentence_transformer, capsys):
    manifest = make_pairs(tmp_path / "data", repeats=1)
    cfg = bridge_config(manifest, tmp_path / "run", tiny_sentence_transformer, weight=1.5)
    cfg["modalities"]["image"]["encoder"] = {"name": "small_cnn", "channels": [4], "image_size": 16}
    cfg["modalities"]["text"]["encoder"]["trainable"] = True
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "3 problem(s)" in err and "pretrained classifier over named classes" in err
    assert "'text' must be frozen" in err and "bridge.weight must be in [0, 1)" in err
