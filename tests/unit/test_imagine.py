"""Imagining absent modalities (missing.imagine): what the generators read, what fusion sees, the
CVAE's KL term, the GAN's alternation, config checks and a trained model saved and loaded."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from crossfuse.config import parse_config
from crossfuse.encoders import ENCODERS
from crossfuse.engine import train
from crossfuse.engine.predictor import Predictor
from crossfuse.errors import ConfigError
from crossfuse.fusion import FUSIONS
from crossfuse.heads import Head
from crossfuse.models import FusionModel
from crossfuse.models.imagine import IMAGINERS, gaussian_kl
from crossfuse.types import Batch, CachedFeatures
from tests.conftest import tiny_config

DIMS = {"a": 6, "b": 4, "c": 5}


def features_and_mask(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(n, d, generator=g) * (1 + 3 * i) for i, (m, d) in enumerate(DIMS.items())}
    mask = {"a": torch.tensor([1, 0, 1, 0, 1, 1, 0, 1]).bool(), "b": torch.tensor([1, 1, 0, 0, 1, 0, 1, 1]).bool(),
            "c": torch.tensor([0, 1, 1, 0, 1, 1, 1, 0]).bool()}
    return features, mask


@pytest.mark.parametrize("kind", IMAGINERS.names())
def test_the_generator_never_reads_the_features_it_imagines(kind):
    torch.manual_seed(0)
    im = IMAGINERS.build(kind, input_dims=DIMS)
    im.train()
    features, mask = features_and_mask()
    im(features, mask, {m: torch.ones(8, dtype=torch.bool) for m in DIMS})  # running statistics learnt
    im.eval()
    out, imagined, loss = im(features, mask)
    assert loss is None  # no training loss outside training
    for m in DIMS:  # absent where another modality is present; item 3 has none, so nothing is imagined
        assert imagined[m].tolist() == (~mask[m] & torch.tensor([1, 1, 1, 0, 1, 1, 1, 1]).bool()).tolist()
        assert torch.equal(out[m][mask[m]], features[m][mask[m]])  # real features untouched
        perturbed = dict(features)
        perturbed[m] = features[m] + 100 * torch.randn_like(features[m])  # every item's, present or not
        again, _, _ = im(perturbed, mask)
        assert torch.allclose(again[m][imagined[m]], out[m][imagined[m]])
        # an item's imagined vector depends on the other modalities' features
        other = next(o for o in DIMS if o != m)
        moved = dict(features)
        moved[other] = features[other] + 5.0 * torch.randn_like(features[other])  # a shift LayerNorm would undo
        changed, _, _ = im(moved, mask)
        rows = imagined[m] & mask[other]
        assert rows.any() and not torch.allclose(changed[m][rows], out[m][rows])


@pytest.mark.parametrize("train_encoders", [False, True])
def test_the_generators_losses_reach_the_encoders_only_when_asked(train_encoders):
    torch.manual_seed(0)
    im = IMAGINERS.build("mlp", input_dims=DIMS, train_encoders=train_encoders)
    im.train()
    features, mask = features_and_mask()
    features = {m: f.clone().requires_grad_(True) for m, f in features.items()}
    out, imagined, loss = im(features, mask, {m: torch.ones(8, dtype=torch.bool) for m in DIMS})
    # the reconstruction and an imagined vector's own values (what the task's loss reads)
    (loss + sum(out[m][imagined[m]].sum() for m in DIMS)).backward()
    for m in DIMS:
        grad = features[m].grad
        if train_encoders:  # a modality's features feed the other modalities' generators
            assert grad is not None and grad.abs().sum() > 0
        else:  # the generators read them detached
            assert grad is None or torch.equal(grad, torch.zeros_like(grad))
    assert all(p.grad is not None for p in im.parameters() if p.requires_grad)


def small_model(fusion: str, imagine: str = "mlp") -> FusionModel:
    encoders = {m: ENCODERS.build("mlp", n_numeric=d, hidden=[d]) for m, d in DIMS.items()}
    dims = {m: e.output_dim for m, e in encoders.items()}
    cls = FUSIONS.get(fusion)
    if cls.decision_level:
        f = FUSIONS.build(fusion, input_dims=dims, n_outputs=3)
        head = Head(f.output_dim, None, hidden=[], dropout=0.0)
    else:
        f = FUSIONS.build(fusion, input_dims=dims)
        head = Head(f.output_dim, 3, hidden=[8], dropout=0.0)
    return FusionModel(encoders, f, head, imagination=IMAGINERS.build(imagine, input_dims=dims))


VECTOR_FUSIONS = FUSIONS.names()  # transformer too: over one token per modality it reads vectors


@pytest.mark.parametrize("fusion", VECTOR_FUSIONS)
def test_imagined_features_reach_every_fusion_method_marked_as_imagined(fusion):
    torch.manual_seed(0)
    model = small_model(fusion).eval()
    features, mask = features_and_mask()
    batch = Batch({m: CachedFeatures(v) for m, v in features.items()}, mask)
    out = model(batch)
    assert out.imagined["a"].tolist() == [False, True, False, False, False, False, True, False]
    assert torch.equal(out.mask["a"], mask["a"])  # the reported mask stays the items' own presence
    plain = model.fuse(model.encode(batch), mask, imagine=False)
    assert plain.imagined is None
    rows = torch.stack([out.imagined[m] for m in DIMS], 1).any(1)
    assert not torch.allclose(out.logits[rows], plain.logits[rows])  # imagination changes those items
    assert torch.allclose(out.logits[~rows], plain.logits[~rows])  # and no other
    with torch.no_grad():  # the marker is how fusion tells an imagined vector from a real one
        for p in model.imagination.marker.parameters():
            p.add_(torch.randn_like(p))
    marked = model(batch)
    assert not torch.allclose(marked.logits[rows], out.logits[rows])
    assert torch.allclose(marked.logits[~rows], out.logits[~rows])


def test_token_level_fusion_is_refused_with_imagination():
    encoders = {m: ENCODERS.build("mlp", n_numeric=d, hidden=[d]) for m, d in DIMS.items()}
    dims = {m: e.output_dim for m, e in encoders.items()}
    fusion = FUSIONS.build("transformer", input_dims=dims, sequences=True)
    with pytest.raises(ConfigError, match="reads token sequences"):
        FusionModel(encoders, fusion, Head(fusion.output_dim, 3), imagination=IMAGINERS.build("mlp", input_dims=dims))


def test_cvae_kl_term_matches_a_hand_computation():
    mu = torch.tensor([[0.5, -1.0], [0.0, 2.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [math.log(0.25), 0.0]])
    # KL(N(mu, s^2) || N(0, 1)) per dimension = (s^2 + mu^2 - 1 - log s^2) / 2
    by_hand = [((1 + 0.25 - 1 - 0) + (4 + 1 - 1 - math.log(4))) / 2,
               ((0.25 + 0 - 1 - math.log(0.25)) + (1 + 4 - 1 - 0)) / 2]
    assert gaussian_kl(mu, logvar).tolist() == pytest.approx(by_hand, rel=1e-6)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    assert gaussian_kl(mu, logvar).tolist() == pytest.approx(torch.distributions.kl_divergence(q, p).sum(1).tolist())


def test_cvae_imagines_from_the_prior_mean_and_samples_when_asked():
    torch.manual_seed(0)
    features, mask = features_and_mask()
    im = IMAGINERS.build("cvae", input_dims=DIMS).eval()
    first, _, _ = im(features, mask)
    second, _, _ = im(features, mask)
    assert torch.equal(first["a"], second["a"])  # z = 0: deterministic
    im = IMAGINERS.build("cvae", input_dims=DIMS, sample=True).eval()
    first, imagined, _ = im(features, mask)
    second, _, _ = im(features, mask)
    assert not torch.allclose(first["a"][imagined["a"]], second["a"][imagined["a"]])


def test_gan_updates_the_discriminator_and_the_generator_in_alternation():
    torch.manual_seed(0)
    im = IMAGINERS.build("gan", input_dims=DIMS, dropout=0.0).train()
    opt = torch.optim.SGD(im.parameters(), lr=0.1)
    features, mask = features_and_mask()
    observed = {m: torch.ones(8, dtype=torch.bool) for m in DIMS}

    def step():
        disc = {k: v.detach().clone() for k, v in im.discriminators.named_parameters()}
        gen = {k: v.detach().clone() for k, v in im.generators.named_parameters()}
        was_disc_step = im.discriminator_step
        opt.zero_grad(set_to_none=True)
        _, _, loss = im(features, mask, observed)
        loss.backward()
        opt.step()
        d_moved = any(not torch.equal(v, dict(im.discriminators.named_parameters())[k]) for k, v in disc.items())
        g_moved = any(not torch.equal(v, dict(im.generators.named_parameters())[k]) for k, v in gen.items())
        return was_disc_step, d_moved, g_moved

    results = [step() for _ in range(4)]
    assert [r[0] for r in results] == [True, False, True, False]
    for was_disc_step, d_moved, g_moved in results:
        assert d_moved == was_disc_step  # the discriminator learns on its steps only
        assert g_moved  # reconstruction trains the generator on every step
    # on a generator step the adversarial term reaches the generator: without it the gradient differs
    def generator_gradient(adv_weight):
        im.steps.fill_(1)  # a generator step
        im.adv_weight = adv_weight
        opt.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same noise both times
        _, _, loss = im(features, mask, observed)
        loss.backward()
        return [p.grad.clone() for p in im.generators.parameters()]

    assert any(not torch.allclose(a, b) for a, b in zip(generator_gradient(0.0), generator_gradient(0.1)))
    assert all(p.grad is None for p in im.discriminators.parameters())


def test_imagine_config_is_checked(items, tmp_path):
    raw = tiny_config(items, tmp_path / "run")
    raw["missing"] = {"imagine": {"kind": "vae"}}
    with pytest.raises(ConfigError, match="missing.imagine.kind"):
        parse_config(raw)
    from crossfuse.models.factory import component_problems

    raw["missing"] = {"imagine": {"kind": "cvae", "latent": 0}}
    raw["fusion"] = {"name": "transformer", "sequences": True}
    problems = component_problems(parse_config(raw))
    assert any("reads token sequences" in p for p in problems)
    assert any("latent" in p and "[1, 4096]" in p for p in problems)


@pytest.mark.parametrize("kind", ["mlp", "gan"])
def test_a_trained_model_imagines_the_same_after_saving_and_loading(items, tmp_path, kind):
    raw = tiny_config(items, tmp_path / "run", fusion="gated", epochs=2, modality_dropout=0.4)
    raw["missing"] = {"imagine": {"kind": kind, "hidden": [16]}}
    raw["trust"] = {"gate": False}  # (a gated-out modality would be imagined too)
    result = train(parse_config(raw))
    loaded = Predictor.load(tmp_path / "run" / "model")
    assert loaded.model.imagination.registry_name == kind
    df = pd.read_csv(items).iloc[:12].copy()
    df.loc[df.index[:6], "caption"] = np.nan  # text absent for half the rows: imagined
    before = result.predictor.predict_frame(df, items.parent, on_bad_item="missing")
    after = loaded.predict_frame(df, items.parent, on_bad_item="missing")
    assert before["imagined_text"].tolist() == [True] * 6 + [False] * 6
    assert not after["imagined_image"].any()
    proba = [c for c in before.columns if c.startswith("proba_")]
    np.testing.assert_allclose(before[proba].to_numpy(), after[proba].to_numpy(), atol=1e-6)
    metrics = loaded.evaluate_frame(pd.read_csv(items), items.parent, robustness=True, attribution=False)
    rob = metrics["robustness"]
    assert rob["imagined"] and set(rob["removed_without_imagination"]) == {"image", "text", "tabular"}


def test_crossfuse_imagine_writes_vectors_and_the_nearest_real_items(items, tmp_path):
    from crossfuse.cli.main import main as cli
    from crossfuse.engine.imagine import imagine_manifest

    raw = tiny_config(items, tmp_path / "run", fusion="concat", epochs=3, modality_dropout=0.4)
    raw["missing"] = {"imagine": {"kind": "mlp", "hidden": [16]}}
    train(parse_config(raw))
    model = tmp_path / "run" / "model"
    df = pd.read_csv(items)
    df.loc[:4, "image"] = np.nan  # rows without the image: imagined all the same, not judged
    df.loc[5, ["caption", "x", "size"]] = np.nan  # nothing to imagine from: left out
    manifest = items.parent / "some.csv"
    df.to_csv(manifest, index=False)
    out = tmp_path / "imagined"
    assert cli(["imagine", str(model), str(manifest), "--modality", "image", "--out", str(out), "--top", "3",
                "--on-bad-item", "missing"]) == 0
    vectors = np.load(out / "imagined.npy", allow_pickle=False)
    table = pd.read_csv(out / "imagined.csv")
    assert vectors.shape == (len(df) - 1, 8) and vectors.dtype == np.float32  # small_cnn [4, 8]: 8-d
    assert 6 not in table["row"].tolist() and table["imagined_from"].iloc[0] == "tabular+text"
    neighbours = pd.read_csv(out / "neighbours.csv")
    assert len(neighbours) == 3 * len(table) and set(neighbours["rank"]) == {1, 2, 3}
    assert neighbours["gallery_image"].notna().all()  # real images only
    assert not set(neighbours["gallery_row"]) & set(range(1, 6))  # rows 1-5 have no image to find
    assert (out / "neighbours.png").stat().st_size > 1000
    summary = pd.read_json(out / "summary.json", typ="series")
    assert summary["rows"] == len(df) - 1 and summary["left_out"] == 1 and summary["gallery_items"] == len(df) - 5
    assert 0.0 <= summary["recall_at_1"] <= summary["recall_at_3"]
    with pytest.raises(Exception, match="not empty"):
        imagine_manifest(model, manifest, "image", out)
    with pytest.raises(Exception, match="modalities are"):
        imagine_manifest(model, manifest, "audio", tmp_path / "x")
    raw = tiny_config(items, tmp_path / "plain", epochs=1)
    train(parse_config(raw))
    with pytest.raises(Exception, match="does not imagine"):
        imagine_manifest(tmp_path / "plain" / "model", manifest, "image", tmp_path / "y")


def test_imagination_trains_under_dp_sgd_and_the_gan_is_refused(items, tmp_path):
    raw = tiny_config(items, tmp_path / "run", fusion="gated", epochs=1, modality_dropout=0.3)
    del raw["modalities"]["text"]  # the GRU does not train privately
    raw["train"]["privacy"] = {"noise_multiplier": 1.0}
    # the per-item gradient check hides a modality of each checked item, so it runs through imagination
    raw["missing"] = {"imagine": {"kind": "cvae", "hidden": [16]}}
    result = train(parse_config(raw), save=False)
    assert result.metrics["privacy"]["epsilon"] > 0
    raw["missing"] = {"imagine": {"kind": "gan"}}
    with pytest.raises(ConfigError, match="kind: gan' cannot be used with 'train.privacy'"):
        parse_config(raw)
