"""The encoder contract and registry.

An encoder turns one modality's batch input into a (batch, output_dim) tensor and reports
``output_dim`` itself. Pretrained encoders can be frozen (``trainable: false``) or partially
unfrozen (``unfreeze_last: N`` trains only the last N blocks).
"""
from __future__ import annotations

import inspect
import re
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn

from crossfuse.registry import Registry

ENCODERS: Registry["Encoder"] = Registry("encoder")


class Encoder(nn.Module):
    modality: ClassVar[str] = ""
    # True when the encoder brings its own tokenizer (pretrained text models)
    provides_tokenizer: ClassVar[bool] = False
    # constructor parameters that say where weights come from (a path, a package, a hub id, a
    # download switch): training-time options. A saved model carries its weights, so a model
    # directory may hold them only unset or at the value the code itself defaults to.
    source_params: ClassVar[Tuple[str, ...]] = ()
    # accepted ranges of size-like parameters, checked with the config before any work (a typo
    # such as image_size=100000 would otherwise ask for 120 GB); subclasses may narrow them
    param_limits: ClassVar[Dict[str, Tuple[float, float]]] = {
        "image_size": (8, 4096), "channels": (1, 4096), "embed_dim": (1, 8192), "hidden": (1, 16384),
        "layers": (1, 64), "vocab_size": (2, 10_000_000), "pad_id": (0, 10_000_000), "dropout": (0.0, 0.99),
        "n_mels": (1, 512), "n_mfcc": (1, 512), "sample_rate": (1000, 192_000), "n_fft": (16, 16384),
        "hop_length": (1, 16384), "max_length": (1, 8192), "unfreeze_last": (0, 1000), "n_numeric": (0, 100_000),
        "cardinalities": (1, 10_000_000)}
    # what every encoder tells the rest of the package (set in __init__ where they apply):
    output_dim: int  # size of forward's (B, output_dim) features, computed, never typed by hand
    _init_kwargs: Dict[str, Any]  # constructor kwargs that rebuild the architecture (see rebuild_kwargs)
    data_config: Optional[Dict[str, Any]] = None  # images: {input_size, mean, std} the processor adopts
    sample_rate: Optional[int] = None  # audio: the rate the encoder's front-end or model expects
    max_length: Optional[int] = None  # text: the most tokens the model takes

    @property
    def gives_sequences(self) -> bool:
        """Whether ``forward_sequence`` is implemented (token-level fusion can use it)."""
        return type(self).forward_sequence is not Encoder.forward_sequence

    def forward_sequence(self, inputs: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, T, output_dim) per-position features and their (B, T) validity mask, for encoders that
        have positions (tokens, patches, frames)."""
        raise NotImplementedError(f"{type(self).__name__} gives no sequence")

    def example_input(self, batch: int = 3, generator: Optional[torch.Generator] = None) -> Any:
        """A batch of random inputs in this encoder's input format (contract tests build their
        inputs from the component itself). Images follow ``data_config``; audio is 0.25 s at
        ``sample_rate``; text and tabular encoders override it with what they were built for."""
        g = generator or torch.Generator().manual_seed(0)
        if self.modality == "image":
            _, h, w = (self.data_config or {"input_size": [3, 32, 32]})["input_size"]
            return torch.randn(batch, 3, h, w, generator=g)
        if self.modality == "audio":
            return torch.randn(batch, int((self.sample_rate or 16000) // 4), generator=g) * 0.1
        raise NotImplementedError(f"{type(self).__name__} has no example input")

    def class_names(self) -> Optional[List[str]]:
        """Names of the classes ``classify`` scores, for encoders that keep a pretrained classifier
        (an ImageNet head); None otherwise."""
        return None

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits from this encoder's output features (see ``class_names``)."""
        raise NotImplementedError(f"{type(self).__name__} has no classifier")

    @classmethod
    def saved_kwargs(cls, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """Rebuild kwargs read from a model directory, brought up to date: an option added since the
        model was saved gets the value that reproduces how it was trained (not today's default)."""
        return dict(kwargs)

    def rebuild_kwargs(self) -> Dict[str, Any]:
        """Constructor kwargs that rebuild this architecture with no external files.

        Weights come from model.safetensors afterwards, so pretrained sources are left out.
        """
        return dict(self._init_kwargs)

    # --- freezing -------------------------------------------------------------------------
    def set_trainable(self, module: nn.Module, trainable: bool, unfreeze_last: Optional[int]) -> None:
        """Freeze ``module`` unless ``trainable``; then unfreeze its last ``unfreeze_last`` blocks."""
        self._frozen = []  # a plain list: a registered submodule would appear twice in the state dict
        if trainable and not unfreeze_last:
            return
        for p in module.parameters():
            p.requires_grad_(False)
        if unfreeze_last:
            blocks = parameter_blocks(module)
            for name in blocks[-unfreeze_last:]:
                for pname, p in module.named_parameters():
                    if pname == name or pname.startswith(name + "."):
                        p.requires_grad_(True)
        else:
            self._frozen = [module]
            module.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        for frozen in getattr(self, "_frozen", []):
            frozen.eval()  # a frozen backbone keeps its batch-norm statistics and no dropout
        return self


def rebuild_problems(cls: type, kwargs: Dict[str, Any]) -> List[str]:
    """Why ``kwargs`` read from a model directory may not rebuild encoder class ``cls``: a weights
    source named by the file (it could import a module, read a file or go online), or an HF
    config that asks for remote code."""
    defaults = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()}
    problems = []
    for name in cls.source_params:
        value = kwargs.get(name)
        if value is None or value is False or (name in defaults and value == defaults[name]):
            continue
        problems.append(f"parameter '{name}' = {value!r} names a weights source; a saved model holds its "
                        "weights and may not name files, packages or downloads")
    hf_config = kwargs.get("hf_config")
    if isinstance(hf_config, dict) and hf_config.get("auto_map"):
        problems.append("hf_config has 'auto_map' (code from outside transformers); refused")
    return problems


def is_frozen(encoder: nn.Module) -> bool:
    """No trainable parameter: its outputs depend only on its input (cacheable, never checkpointed)."""
    return not any(p.requires_grad for p in encoder.parameters())


def hf_model(transformers, path: Optional[str], hf_config: Optional[Dict[str, Any]], what: str):
    """An HF ``AutoModel``: from ``path`` (weights included), or rebuilt from a saved config dict
    (architecture only; the weights follow from model.safetensors)."""
    from crossfuse.errors import ConfigError

    if hf_config is not None:
        config_cls = type(transformers.AutoConfig.for_model(hf_config["model_type"]))
        return transformers.AutoModel.from_config(config_cls.from_dict(dict(hf_config)))
    if path is None:
        raise ConfigError(f"The {what} encoder needs 'path' (a local model directory or, online, a hub id).")
    return transformers.AutoModel.from_pretrained(path)


def parameter_blocks(module: nn.Module) -> List[str]:
    """Names of the module's blocks in registration order.

    A block is a parameter name cut after its first numeric part ("features.7", "encoder.layer.5",
    "layer4.1"), or its first part when none is numeric ("embeddings", "fc").
    """
    blocks: List[str] = []
    for name, _ in module.named_parameters():
        parts = name.split(".")
        cut = next((i for i, part in enumerate(parts[:-1]) if re.fullmatch(r"\d+", part)), None)
        block = ".".join(parts[: cut + 1]) if cut is not None else parts[0]
        if not blocks or blocks[-1] != block:
            if block not in blocks:
                blocks.append(block)
    return blocks
