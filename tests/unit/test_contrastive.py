"""The contrastive losses against values computed by hand on tiny batches."""
from __future__ import annotations

import math

import pytest
import torch

from crossfuse.layers import info_nce, sigmoid_loss
from crossfuse.models import RetrievalModel, RetrievalOutput, pair_loss


def test_info_nce_matches_hand_computation():
    # unit vectors: a0.b0 = 1, a0.b1 = 0, a1.b0 = 0.6, a1.b1 = 0.8
    a = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = torch.tensor(2.0)
    # a->b rows: logits [2, 0] and [1.2, 1.6]; b->a columns: [2, 1.2] and [0, 1.6]
    row0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    row1 = -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    col0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2)))
    col1 = -math.log(math.exp(1.6) / (1 + math.exp(1.6)))
    expected = ((row0 + row1) / 2 + (col0 + col1) / 2) / 2
    assert info_nce(a, b, s).item() == pytest.approx(expected, rel=1e-6)
    # equal to the CLIP formulation with cross-entropy on arange targets
    logits = s * a @ b.T
    clip = (torch.nn.functional.cross_entropy(logits, torch.arange(2))
            + torch.nn.functional.cross_entropy(logits.T, torch.arange(2))) / 2
    assert info_nce(a, b, s).item() == pytest.approx(clip.item(), rel=1e-6)


def test_info_nce_groups_make_duplicates_positives():
    # rows 0 and 1 are two captions of one image: each image row has two positives
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    groups = torch.tensor([0, 0, 1])
    logits = (a @ b.T).tolist()
    ls = lambda row: [x - math.log(sum(math.exp(y) for y in row)) for x in row]  # noqa: E731
    rows = [ls(r) for r in logits]
    cols = [ls([logits[i][j] for i in range(3)]) for j in range(3)]
    a_to_b = -((rows[0][0] + rows[0][1]) / 2 + (rows[1][0] + rows[1][1]) / 2 + rows[2][2]) / 3
    b_to_a = -((cols[0][0] + cols[0][1]) / 2 + (cols[1][0] + cols[1][1]) / 2 + cols[2][2]) / 3
    assert info_nce(a, b, torch.tensor(1.0), groups).item() == pytest.approx((a_to_b + b_to_a) / 2, rel=1e-6)


def test_sigmoid_loss_matches_hand_computation():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    t, bias = torch.tensor(10.0), torch.tensor(-5.0)
    logit = lambda x: 10.0 * x - 5.0  # noqa: E731
    lsig = lambda z: -math.log1p(math.exp(-z))  # noqa: E731  log sigmoid
    # pairs (i, j): dots a0.b0=.6 (+), a0.b1=0 (-), a1.b0=.8 (-), a1.b1=1 (+)
    row0 = lsig(logit(0.6)) + lsig(-logit(0.0))
    row1 = lsig(-logit(0.8)) + lsig(logit(1.0))
    assert sigmoid_loss(a, b, t, bias).item() == pytest.approx(-(row0 + row1) / 2, rel=1e-6)


def test_pair_loss_skips_rows_without_both_modalities():
    torch.manual_seed(0)
    e = {m: torch.nn.functional.normalize(torch.randn(4, 3), dim=1) for m in ("image", "text")}
    mask = {"image": torch.tensor([True, True, True, False]), "text": torch.tensor([True, True, True, True])}
    out = RetrievalOutput(e, mask, torch.tensor(5.0), torch.tensor(0.0))
    expected = info_nce(e["image"][:3], e["text"][:3], torch.tensor(5.0))
    assert pair_loss(out, None).item() == pytest.approx(expected.item(), rel=1e-6)


def test_learnable_temperature_gets_gradient_and_is_clamped():
    from crossfuse.encoders import ENCODERS

    enc = {"tab": ENCODERS.build("mlp", n_numeric=3, hidden=[4]),
           "tab2": ENCODERS.build("mlp", n_numeric=2, hidden=[4])}
    model = RetrievalModel(enc, embed_dim=4, temperature=0.07)
    assert model.scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.log_scale.fill_(10.0)
    assert model.scale.item() == 100.0  # CLIP's clamp
    frozen_t = RetrievalModel(enc, embed_dim=4, learn_temperature=False)
    assert not frozen_t.log_scale.requires_grad
