"""Trainer options: a separate learning rate for fine-tuned encoders; group-preserving random splits."""
from __future__ import annotations

import pandas as pd
import torch

from crossfuse.config.schema import SplitConfig, TrainConfig
from crossfuse.data import split_frame
from crossfuse.engine.trainer import Trainer


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoders = torch.nn.ModuleDict({"image": torch.nn.Linear(3, 3)})
        self.head = torch.nn.Linear(3, 2)


def test_encoder_lr_puts_encoder_weights_in_their_own_group():
    model = Tiny()
    opt = Trainer(TrainConfig(lr=1e-2, encoder_lr=1e-4, accelerator="cpu"), None, None, "loss", False)._optimizer(model)
    lrs = sorted((g["lr"], len(g["params"])) for g in opt.param_groups)
    assert lrs == [(1e-4, 2), (1e-2, 2)]
    enc_ids = {id(p) for p in model.encoders.parameters()}
    slow = next(g for g in opt.param_groups if g["lr"] == 1e-4)
    assert {id(p) for p in slow["params"]} == enc_ids
    plain = Trainer(TrainConfig(lr=1e-2, accelerator="cpu"), None, None, "loss", False)._optimizer(model)
    assert len(plain.param_groups) == 1


def test_random_split_by_group_keeps_each_group_on_one_side():
    df = pd.DataFrame({"image_id": [i // 5 for i in range(200)], "caption": [str(i) for i in range(200)]})
    parts = split_frame(df, SplitConfig(column=None, val_size=0.2, test_size=0.2, seed=3), None, False,
                        groups="image_id")
    sides = [set(parts[p]["image_id"]) for p in ("train", "val", "test")]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert sum(len(p) for p in parts.values()) == 200
    assert [len(s) for s in sides] == [24, 8, 8]
