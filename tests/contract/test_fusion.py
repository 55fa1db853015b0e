"""One contract for every registered fusion method."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from crossfuse.errors import ConfigError
from crossfuse.fusion import FUSIONS

DIMS = {"image": 6, "text": 4, "tabular": 3}
B = 5


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(B, d, generator=g) for m, d in DIMS.items()}
    mask = {"image": torch.tensor([1, 0, 1, 1, 0]).bool(), "text": torch.tensor([1, 1, 0, 1, 0]).bool(),
            "tabular": torch.tensor([1, 1, 1, 0, 0]).bool()}
    return feats, mask


# every registered method with its defaults, plus the variants that take other code paths
VARIANTS = [(n, {}) for n in FUSIONS.names()] + [
    ("transformer", {"mode": "crossmodal", "dim": 8, "heads": 2}),
    ("transformer", {"sequences": True, "dim": 8, "heads": 2, "tokens": 2}),
    ("late", {"combine": "learned"}),
    ("weighted", {"weights": {"image": 2.0, "text": 1.0, "tabular": 1.0}}),
]


class SequenceAware:
    """Calls a token-level fusion with sequences derived from the vectors (length 4, last masked)."""

    def __init__(self, fusion):
        self.f = fusion

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __call__(self, feats, mask):
        seqs = {m: (x.unsqueeze(1).repeat(1, 4, 1) * torch.arange(1, 5).view(1, 4, 1),
                    torch.tensor([True, True, True, False]).repeat(x.shape[0], 1))
                for m, x in feats.items() if m != "tabular"}  # tabular stays one vector token
        return self.f(feats, mask, sequences=seqs)


def build(name, params):
    torch.manual_seed(0)
    cls = FUSIONS.get(name)
    extra = {"n_outputs": 3} if getattr(cls, "decision_level", False) else {}
    return FUSIONS.build(name, input_dims=DIMS, **extra, **params)


@pytest.fixture(params=VARIANTS, ids=[f"{n}{'-' + '-'.join(map(str, p.values())) if p else ''}" for n, p in VARIANTS])
def fusion(request):
    f = build(*request.param)
    return SequenceAware(f) if getattr(f, "wants_sequences", False) else f


def test_output_shape_is_output_dim(fusion):
    out = fusion(*inputs())
    assert out.fused.shape == (B, fusion.output_dim)
    assert torch.isfinite(out.fused).all()  # item 4 has no modality at all and still gives finite values


def test_gradients_reach_every_present_modality(fusion):
    feats, mask = inputs()
    feats = {m: f.requires_grad_(True) for m, f in feats.items()}
    fused = fusion(feats, mask).fused
    # a random readout: a plain sum can be constant (the sum of a LayerNorm output is its bias)
    (fused * torch.randn(fused.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    for m, f in feats.items():
        present = mask[m]
        assert f.grad[present].abs().sum() > 0, m
        assert torch.all(f.grad[~present] == 0), f"{m}: gradient leaked into missing items"


def test_eval_mode_is_deterministic(fusion):
    fusion.eval()
    with torch.no_grad():
        assert torch.equal(fusion(*inputs()).fused, fusion(*inputs()).fused)


def test_missing_modality_does_not_change_the_fused_vector(fusion):
    feats, mask = inputs()
    noisy = {m: torch.where(mask[m].unsqueeze(1), f, torch.randn_like(f) * 100) for m, f in feats.items()}
    fusion.eval()
    with torch.no_grad():
        assert torch.allclose(fusion(feats, mask).fused, fusion(noisy, mask).fused, atol=1e-6)


def test_weights_are_a_distribution_over_present_modalities(fusion):
    out = fusion(*inputs())
    if out.weights is None:  # these fuse without one weight per modality
        assert fusion.registry_name in ("concat", "tensor", "lowrank", "transformer")
        return
    feats, mask = inputs()
    stacked = torch.stack([mask[m] for m in fusion.modalities], 1)
    assert torch.all(out.weights[~stacked] == 0)
    sums = out.weights.sum(1)
    has_any = stacked.any(1)
    assert torch.allclose(sums[has_any], torch.ones(int(has_any.sum())), atol=1e-5)


def test_save_load_gives_identical_outputs(fusion, tmp_path):
    fusion.eval()
    save_file({k: v.contiguous() for k, v in fusion.state_dict().items()}, str(tmp_path / "f.safetensors"))
    rebuilt = FUSIONS.build(fusion.registry_name, input_dims=DIMS, **fusion.rebuild_kwargs())
    if isinstance(fusion, SequenceAware):
        rebuilt = SequenceAware(rebuilt)
    rebuilt.load_state_dict(load_file(str(tmp_path / "f.safetensors")))
    rebuilt.eval()
    with torch.no_grad():
        assert torch.allclose(fusion(*inputs()).fused, rebuilt(*inputs()).fused)


def test_fixed_weights_follow_config():
    f = FUSIONS.build("weighted", input_dims={"image": 2, "text": 2}, dim=4, weights={"image": 0.7, "text": 0.3})
    feats = {"image": torch.randn(2, 2), "text": torch.randn(2, 2)}
    out = f(feats, {"image": torch.tensor([True, False]), "text": torch.tensor([True, True])})
    assert torch.allclose(out.weights[0], torch.tensor([0.7, 0.3]))
    assert torch.allclose(out.weights[1], torch.tensor([0.0, 1.0]))  # renormalised over what is present
    assert not any(p.requires_grad for n, p in f.named_parameters() if n == "logits")


def test_bad_fusion_parameters_name_the_parameter():
    with pytest.raises(ConfigError, match=r"'dim' parameter of attention must be an int in \[1, 8192\]. Got 0"):
        FUSIONS.build("attention", input_dims=DIMS, dim=0)
    with pytest.raises(ConfigError, match=r"'heads' parameter of transformer must be an int in \[1, 64\]. Got 2.5"):
        FUSIONS.build("transformer", input_dims=DIMS, heads=2.5)
    with pytest.raises(ConfigError, match="weight >= 0 to each of"):
        FUSIONS.build("weighted", input_dims=DIMS, weights={"image": 1.0})


def test_tensor_fusion_refuses_an_output_too_large():
    with pytest.raises(ConfigError, match="lower 'dim' or use 'lowrank'"):
        FUSIONS.build("tensor", input_dims={f"m{i}": 4 for i in range(6)}, dim=16)


def test_tensor_fusion_keeps_unimodal_terms():
    """With z_i = [1; p_i] the fused tensor contains each p_i itself (the row/column of the 1s)."""
    f = FUSIONS.build("tensor", input_dims={"a": 3, "b": 2}, dim=2)
    feats = {"a": torch.randn(1, 3), "b": torch.randn(1, 2)}
    mask = {"a": torch.tensor([True]), "b": torch.tensor([True])}
    z = f(feats, mask).fused.view(3, 3)
    assert torch.allclose(z[0, 1:], f.proj["b"](feats["b"])[0]) and torch.allclose(z[1:, 0], f.proj["a"](feats["a"])[0])
    assert z[0, 0] == 1


def test_late_fusion_equals_the_present_heads_average():
    f = FUSIONS.build("late", input_dims={"a": 3, "b": 2}, n_outputs=4)
    feats = {"a": torch.randn(2, 3), "b": torch.randn(2, 2)}
    mask = {"a": torch.tensor([True, True]), "b": torch.tensor([True, False])}
    out = f(feats, mask).fused
    la, lb = f.heads["a"](feats["a"]), f.heads["b"](feats["b"])
    assert torch.allclose(out[0], (la[0] + lb[0]) / 2, atol=1e-6) and torch.allclose(out[1], la[1], atol=1e-6)
