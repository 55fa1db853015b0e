"""One contract for every registered encoder: shape, gradients, determinism, mask, save -> load."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from crossfuse.encoders import ENCODERS
from crossfuse.fusion import FUSIONS
from crossfuse.heads import Head
from crossfuse.models import FusionModel
from crossfuse.types import Batch

B = 3


def build(name: str, request, **extra):
    """An instance of encoder ``name`` small enough for a test, and a batch of its input (which the
    encoder makes itself: ``Encoder.example_input``)."""
    cls = ENCODERS.get(name)
    fixtures = {"hf_transformer": "tiny_bert", "sentence_transformer": "tiny_sentence_transformer",
                "hf_audio": "tiny_wav2vec2"}
    small = {"small_cnn": {"image_size": 16}, "timm": {"arch": "resnet10t", "image_size": 64},
             "gru": {"vocab_size": 50, "embed_dim": 8, "hidden": 8},
             "lstm": {"vocab_size": 50, "embed_dim": 8, "hidden": 8},
             "audio_cnn": {"channels": [4, 8], "n_mels": 16}, "audio_gru": {"hidden": 8, "n_mels": 16},
             "audio_lstm": {"hidden": 8, "n_mels": 16}, "mlp": {"n_numeric": 2, "cardinalities": [4], "hidden": [8]}}
    kwargs = dict(small.get(name, {}))
    if name in fixtures:  # tiny random-weight models saved like hub models
        kwargs["path"] = str(request.getfixturevalue(fixtures[name]))
    elif cls.modality == "image" and name not in small:
        kwargs["image_size"] = 64  # torchvision backbones and the presets at a small size
    # minilm, efficientnet_lite0, whisper_*: the real packaged weights
    enc = ENCODERS.build(name, **kwargs, **extra)
    return enc, enc.example_input(B)


def perturbed(x, i: int):
    """A copy of input ``x`` whose item ``i`` is replaced by different values."""
    if isinstance(x, dict):
        out = {k: v.clone() for k, v in x.items()}
        if "input_ids" in out:
            out["input_ids"][i] = (out["input_ids"][i] + 3) % 40 + 1
            out["attention_mask"][i] = 1
        else:
            out["numeric"][i] += 5
            out["categorical"][i] = (out["categorical"][i] + 1) % 4
        return out
    out = x.clone()
    out[i] = torch.randn_like(out[i]) * 3
    return out


@pytest.fixture(params=ENCODERS.names())
def encoder_and_input(request):
    torch.manual_seed(0)
    return request.param, *build(request.param, request)


def test_output_shape_is_output_dim(encoder_and_input):
    name, enc, x = encoder_and_input
    enc.eval()
    with torch.no_grad():
        y = enc(x)
    assert y.shape == (B, enc.output_dim), name
    assert torch.isfinite(y).all()


def test_gradients_flow(encoder_and_input, request):
    name, enc, x = encoder_and_input
    if getattr(enc, "external_weights", False):  # frozen outside torch: nothing may claim to train
        assert not list(enc.parameters()) and not enc(x).requires_grad
        return
    if not any(p.requires_grad for p in enc.parameters()):  # presets start frozen; check they can train
        enc, x = build(name, request, trainable=True)
    enc.train()
    enc(x).square().mean().backward()
    # every trainable parameter is in the graph; a gradient can still be exactly zero at init (timm's
    # zero-initialised last norm of a block) or for a dropped stochastic-depth block. Heads that
    # forward never uses are left out: HF's pooler (we pool the tokens), EfficientNet-Lite0's
    # ImageNet classifier (only the retrieval bridge reads it)
    unused = (".pooler.", "._fc.")
    missing = [n for n, p in enc.named_parameters()
               if p.requires_grad and not any(u in f".{n}" for u in unused) and p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters()), name


def test_eval_mode_is_deterministic(encoder_and_input):
    _, enc, x = encoder_and_input
    enc.eval()
    with torch.no_grad():
        assert torch.equal(enc(x), enc(x))


def test_save_load_gives_identical_outputs(encoder_and_input, tmp_path):
    name, enc, x = encoder_and_input
    enc.eval()
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(tmp_path / "w.safetensors"))
    rebuilt = ENCODERS.build(name, **enc.rebuild_kwargs())
    rebuilt.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    rebuilt.eval()
    with torch.no_grad():
        assert torch.allclose(enc(x), rebuilt(x), atol=1e-6)


def test_missing_modality_mask_is_honoured(encoder_and_input):
    """Item 0 lacks this modality: changing its input must not change the model's output for it."""
    name, enc, x = encoder_and_input
    other = ENCODERS.build("mlp", n_numeric=2, hidden=[8])
    model = FusionModel({"m": enc, "tab": other}, FUSIONS.build("concat", input_dims={"m": enc.output_dim,
                                                                                      "tab": other.output_dim}),
                        Head(enc.output_dim + other.output_dim + 2, 2, hidden=[8]))
    model.eval()
    tab = {"numeric": torch.randn(B, 2), "categorical": torch.zeros(B, 0, dtype=torch.long)}
    mask = {"m": torch.tensor([False, True, True]), "tab": torch.ones(B, dtype=torch.bool)}
    with torch.no_grad():
        a = model(Batch({"m": x, "tab": tab}, mask)).logits
        b = model(Batch({"m": perturbed(x, 0), "tab": tab}, mask)).logits
    assert torch.allclose(a[0], b[0], atol=1e-6), name


@pytest.mark.parametrize("name", [n for n in ENCODERS.names() if getattr(ENCODERS.get(n), "provides_tokenizer", False)
                                  or n in ("torchvision", "resnet18", "hf_audio", "efficientnet_lite0", "timm")])
def test_freezing_and_partial_unfreezing(name, request):
    frozen, x = build(name, request, trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert len(frozen.state_dict()) == len({id(v) for v in frozen.state_dict().values()})  # no key twice
    frozen.train()
    assert not any(m.training for m in frozen.modules() if isinstance(m, torch.nn.BatchNorm2d))
    partial, _ = build(name, request, trainable=False, unfreeze_last=1)
    trainable = [n for n, p in partial.named_parameters() if p.requires_grad]
    assert trainable and len(trainable) < len(list(partial.parameters()))


@pytest.mark.parametrize("fixture", ["tiny_hubert", "tiny_whisper"])
def test_hf_audio_loads_hubert_and_whisper_encoders(fixture, request, tmp_path):
    enc = ENCODERS.build("hf_audio", path=str(request.getfixturevalue(fixture)))
    enc.eval()
    x = torch.randn(2, 16000) * 0.1
    with torch.no_grad():
        y = enc(x)
    assert y.shape == (2, enc.output_dim) and torch.isfinite(y).all()
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(tmp_path / "w.safetensors"))
    rebuilt = ENCODERS.build("hf_audio", **enc.rebuild_kwargs())
    rebuilt.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    rebuilt.eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), y, atol=1e-6)


def test_specaugment_masks_bands_in_training_only():
    enc = ENCODERS.build("audio_cnn", channels=[4], n_mels=16, specaugment={"freq_mask": 4, "time_mask": 5})
    x = torch.randn(2, 4000)
    enc.frontend.eval()
    clean = enc.frontend(x)
    enc.frontend.train()
    masked = enc.frontend(x)
    assert torch.equal(enc.frontend.eval()(x), clean)
    assert (masked == 0).sum() > (clean == 0).sum()


def test_an_items_features_do_not_depend_on_its_batch(encoder_and_input):
    """In eval mode item 0's features are the same alone as in a batch with others (no leakage
    through padding, normalisation or pooling across items)."""
    name, enc, x = encoder_and_input
    enc.eval()
    first = {k: v[:1] for k, v in x.items()} if isinstance(x, dict) else x[:1]
    if isinstance(x, dict) and "attention_mask" in x:  # alone, the padded width shrinks to its own
        width = int(first["attention_mask"].sum())
        first = {k: v[:, :width] for k, v in first.items()}
    with torch.no_grad():
        together, alone = enc(x)[0], enc(first)[0]
    assert torch.allclose(together, alone, atol=1e-4, rtol=1e-4), name
