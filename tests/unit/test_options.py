"""One test per option that had none: schedules, momentum, class weights, min_delta, precision,
augmentations, MFCC features, CLS pooling, fixed late-fusion weights, index search parameters."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from crossfuse.config.schema import Config, TrainConfig
from crossfuse.data.processors import AudioProcessor, ImageProcessor
from crossfuse.encoders import ENCODERS
from crossfuse.engine.pipeline import _balancing
from crossfuse.engine.task import TaskSpec
from crossfuse.engine.trainer import Trainer, resolve_precision
from crossfuse.fusion import FUSIONS


def _trainer(**train):
    return Trainer(TrainConfig(accelerator="cpu", **train), None, None, "f1_macro", True)


def test_step_schedule_multiplies_by_gamma_every_step_size_epochs():
    factor = _trainer(scheduler="step", step_size=2, gamma=0.5)._schedule(steps_per_epoch=3)
    assert [factor(s) for s in (0, 5, 6, 11, 12)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    warm = _trainer(scheduler="none", warmup_epochs=1.0)._schedule(steps_per_epoch=4)
    assert [warm(s) for s in (0, 3, 4, 40)] == [0.25, 1.0, 1.0, 1.0]


def test_sgd_gets_the_momentum_and_weight_decay():
    opt = _trainer(optimizer="sgd", momentum=0.8, weight_decay=0.0)._optimizer(torch.nn.Linear(2, 2))
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.8


def test_balanced_class_weights_are_inverse_frequencies():
    cfg = Config(train=TrainConfig(class_weights="balanced", sampler="balanced"))
    task = TaskSpec("classification", labels=["a", "b"])
    class_w, sample_w = _balancing(cfg, task, np.array([0, 1, 1, 1]))
    assert torch.allclose(class_w, torch.tensor([2.0, 2 / 3]))
    assert torch.allclose(sample_w, torch.tensor([1.0, 1 / 3, 1 / 3, 1 / 3], dtype=torch.double))


def test_min_delta_decides_what_counts_as_an_improvement():
    t = _trainer()
    t.cfg.early_stopping.min_delta = 0.1
    assert t._improved(0.5, None) and not t._improved(0.55, 0.5) and t._improved(0.61, 0.5)
    t.higher_is_better = False
    assert not t._improved(0.45, 0.5) and t._improved(0.39, 0.5)


def test_precision_auto_is_fp32_on_a_cpu_and_explicit_values_pass_through():
    assert resolve_precision(TrainConfig(accelerator="cpu")) == "32-true"
    assert resolve_precision(TrainConfig(precision="bf16-mixed")) == "bf16-mixed"


def test_image_augmentation_changes_training_inputs_only(items):
    proc = ImageProcessor(["image"], size=16, mean=[0.5] * 3, std=[0.5] * 3,
                          augment={"hflip": True, "crop": 0.5, "rotation": 20, "translate": 0.2, "erase": 0.5})
    row = {"image": "img/0.png"}
    torch.manual_seed(0)
    train = [proc.load(row, items.parent, True) for _ in range(4)]
    evals = [proc.load(row, items.parent, False) for _ in range(2)]
    assert torch.equal(evals[0], evals[1]) and not all(torch.equal(t, evals[0]) for t in train)


def test_audio_augmentation_adds_noise_and_shifts_in_training_only():
    proc = AudioProcessor(["a"], sample_rate=8000, duration=0.5, augment={"noise_snr": [10, 10], "shift": 0.2})
    wave = np.sin(np.linspace(0, 200, 4000)).astype(np.float32)
    rng = np.random.default_rng(0)
    clean, noisy = proc.waveform(wave, False, rng), proc.waveform(wave, True, rng)
    assert np.array_equal(clean, proc.waveform(wave, False, rng))
    assert not np.allclose(clean, noisy) and len(noisy) == len(clean) == 4000


def test_mfcc_features_differ_from_log_mel_and_have_their_own_size():
    torch.manual_seed(0)
    wave = torch.randn(2, 4000) * 0.1
    mfcc = ENCODERS.build("audio_cnn", channels=[4], n_mels=16, features="mfcc", n_mfcc=8)
    logmel = ENCODERS.build("audio_cnn", channels=[4], n_mels=16)
    assert mfcc.frontend(wave).shape[1] == 8 and logmel.frontend(wave).shape[1] == 16


def test_cls_pooling_takes_the_first_token(tiny_bert):
    enc = ENCODERS.build("hf_transformer", path=str(tiny_bert), pooling="cls").eval()
    inputs = {"input_ids": torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}
    with torch.no_grad():
        hidden = enc.model(**inputs).last_hidden_state
        assert torch.allclose(enc(inputs), hidden[:, 0])


def test_fixed_late_fusion_weights_renormalise_over_present_modalities():
    f = FUSIONS.build("late", input_dims={"image": 3, "text": 3}, n_outputs=2, combine="fixed",
                      weights={"image": 0.7, "text": 0.3}).eval()
    feats = {"image": torch.randn(2, 3), "text": torch.randn(2, 3)}
    out = f(feats, {"image": torch.tensor([True, False]), "text": torch.tensor([True, True])})
    li, lt = f.heads["image"](feats["image"]), f.heads["text"](feats["text"])
    assert torch.allclose(out.fused[0], 0.7 * li[0] + 0.3 * lt[0], atol=1e-6)
    assert torch.allclose(out.fused[1], lt[1], atol=1e-6)  # image absent: text alone


def test_index_search_parameters_reach_faiss():
    pytest.importorskip("faiss")
    from crossfuse.index import VectorIndex

    x = np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)
    ivf = VectorIndex(8, "ivf", nlist=16, nprobe=2).add(x)
    assert ivf._faiss.nprobe == 2
    ivf.set_search_params(nprobe=64)
    assert ivf._faiss.nprobe == 16  # capped at the number of cells
    hnsw = VectorIndex(8, "hnsw", ef_search=7).add(x)
    assert hnsw._faiss.hnsw.efSearch == 7
    hnsw.set_search_params(ef_search=99)
    assert hnsw._faiss.hnsw.efSearch == 99
    exact_scores, _ = VectorIndex(8).add(x).search(x[:5], 3)
    assert np.allclose(exact_scores[:, 0], 1.0, atol=1e-5)  # each vector finds itself first


def test_bf16_and_fp32_vectors_never_share_a_cache_namespace():
    from crossfuse.engine.extract import fingerprint
    from crossfuse.engine.placement import inference_precision

    enc = ENCODERS.build("small_cnn", channels=[4], image_size=16)
    proc = ImageProcessor(["image"])
    proc.configure(enc)
    assert fingerprint(enc, proc, precision="bf16-mixed") != fingerprint(enc, proc, precision="32-true")
    assert inference_precision(torch.device("cpu"))[0] == "32-true"
