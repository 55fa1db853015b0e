"""Modality dropout, corruptions and Shapley attribution over modalities."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from crossfuse.config import parse_config
from crossfuse.data.processors import AudioProcessor, ImageProcessor, TabularProcessor, TextProcessor
from crossfuse.encoders import ENCODERS
from crossfuse.engine.missing import drop_modalities, modality_shapley
from crossfuse.errors import ConfigError
from crossfuse.fusion import FUSIONS
from crossfuse.heads import Head
from crossfuse.models import FusionModel
from crossfuse.types import Batch


def test_modality_dropout_never_empties_an_item():
    torch.manual_seed(0)
    mask = {"a": torch.ones(2000, dtype=torch.bool), "b": torch.tensor([True, False] * 1000)}
    out = drop_modalities(mask, {"a": 0.5, "b": 0.5})
    kept = torch.stack([out["a"], out["b"]], 1)
    assert kept.any(1).all()  # everyone keeps something
    assert not (out["b"] & ~mask["b"]).any()  # nothing absent comes back
    assert out["a"][1::2].all()  # items with only "a" keep it
    # kept when not dropped (1/2), or dropped together with "a" and then picked to stay (1/4 * 1/2)
    assert 0.58 < out["b"][::2].float().mean() < 0.67
    assert torch.equal(drop_modalities(mask, {"a": 0.0, "b": 0.0})["b"], mask["b"])


def test_modality_dropout_config_is_checked():
    raw = {"modalities": {"image": {"kind": "image", "columns": ["i"], "encoder": "small_cnn"}},
           "train": {"modality_dropout": {"imgae": 0.2}}}
    with pytest.raises(ConfigError, match="'train.modality_dropout.imgae': no modality 'imgae'"):
        parse_config(raw)
    raw["train"]["modality_dropout"] = 1.0
    with pytest.raises(ConfigError, match=r"'train.modality_dropout' must be in \[0, 1\)"):
        parse_config(raw)


def test_corruptions():
    g = torch.Generator().manual_seed(0)
    text = TextProcessor(["t"])
    text.fit(__import__("pandas").DataFrame({"t": ["a b c d e f g h"]}), None, wants_tokenizer=True)
    inputs, _ = text.collate(["a b c d e f g h", "a"])
    out = text.corrupt(inputs, "token_dropout", 0.99, g)
    assert out["attention_mask"].sum(1).tolist() == [1, 1]  # one token always stays
    assert torch.equal(text.corrupt(inputs, "token_dropout", 0.0, g)["input_ids"], inputs["input_ids"])

    img = ImageProcessor(["i"], size=20, mean=[0.5] * 3, std=[0.5] * 3)
    x = torch.ones(2, 3, 20, 20)
    occluded = img.corrupt(x, "occlusion", 0.25, g)
    assert ((occluded == 0).float().mean(dim=(1, 2, 3)) == 0.25).all()

    audio = AudioProcessor(["a"])
    wave = torch.sin(torch.linspace(0, 800, 16000)).repeat(2, 1)
    noisy = audio.corrupt(wave, "noise_snr", 0.0, g)
    snr = 10 * torch.log10(wave.pow(2).mean(1) / (noisy - wave).pow(2).mean(1))
    assert torch.allclose(snr, torch.zeros(2), atol=0.2)

    tab = TabularProcessor(["x"])
    out = tab.corrupt({"numeric": torch.zeros(1000, 1), "categorical": torch.ones(1000, 1, dtype=torch.long)},
                      "noise", 2.0, g)
    assert 1.8 < out["numeric"].std() < 2.2 and (out["categorical"] == 0).all()
    with pytest.raises(NotImplementedError):
        tab.corrupt({}, "blur", 1.0, g)


def tiny_model(fusion="attention", **params):
    torch.manual_seed(0)
    encs = {m: ENCODERS.build("mlp", n_numeric=3, hidden=[4]) for m in ("a", "b", "c")}
    fusion = FUSIONS.build(fusion, input_dims={m: 4 for m in encs}, **params)
    return FusionModel(encs, fusion, Head(fusion.output_dim, 3, hidden=[8])).eval()


def loader_for(n=10, absent_c=()):
    torch.manual_seed(1)
    batches = []
    inputs = {m: {"numeric": torch.randn(n, 3), "categorical": torch.zeros(n, 0, dtype=torch.long)} for m in "abc"}
    mask = {m: torch.ones(n, dtype=torch.bool) for m in "abc"}
    for i in absent_c:
        mask["c"][i] = False
    batches.append(Batch(inputs, mask, index=torch.arange(n)))
    return batches


@pytest.mark.parametrize("fusion", ["attention", "concat", "gated", "lowrank"])
def test_shapley_values_add_up_and_ignore_absent_modalities(fusion):
    model = tiny_model(fusion)
    batches = loader_for(absent_c=[2, 5])
    result = modality_shapley(model, batches, "cpu")
    phi = result["per_item"]
    batch = batches[0]
    with torch.no_grad():
        full = model(batch).logits
        target = full.argmax(1)
        empty = model.fuse(model.encode(batch), {m: torch.zeros(10, dtype=torch.bool) for m in "abc"}).logits
    v_all = torch.softmax(full, 1).gather(1, target[:, None])[:, 0]
    v_none = torch.softmax(empty, 1).gather(1, target[:, None])[:, 0]
    assert np.allclose(phi.sum(1), (v_all - v_none).numpy(), atol=1e-5)  # efficiency
    assert np.all(phi[[2, 5], 2] == 0)  # an absent modality contributes nothing
    assert abs(sum(result["mean_abs_share"].values()) - 1) < 1e-6


def test_a_modality_the_model_ignores_gets_zero_shapley():
    model = tiny_model("weighted", dim=4, weights={"a": 1.0, "b": 1.0, "c": 0.0})
    phi = modality_shapley(model, loader_for(), "cpu")["per_item"]
    assert np.allclose(phi[:, 2], 0, atol=1e-6) and np.abs(phi[:, :2]).sum() > 0
