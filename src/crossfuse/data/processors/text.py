"""Text processor: a tokenizer trained on the training text, or the pretrained encoder's own."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd
import torch

from crossfuse.data.processors.base import CellProblem, Processor, is_blank, limit

PAD, UNK = "[PAD]", "[UNK]"
MAX_TOKENS = 8192  # the longest max_length a model may ask for
LINEAR_BINS = 2048  # bag-of-tokens width of the linear baseline's text features
CHARS_PER_TOKEN = 64  # a text is cut to max_length * this many characters before tokenizing


class TextProcessor(Processor):
    """Params: ``max_length`` (128); for the vocabulary built from training text ``vocab_size`` (8000)
    and ``lowercase`` (true). Words outside the vocabulary map to [UNK].

    State holds the tokenizer as its JSON text (``tokenizers`` format), never a pickle.
    """

    kind = "text"
    default_encoder = "gru"
    corruptions = {"token_dropout": [0.1, 0.3, 0.5, 0.8]}

    def __init__(self, columns, tokenizer_json: Optional[str] = None, **params):
        super().__init__(columns, **params)
        self.params.setdefault("max_length", 128)
        self.tokenizer = None
        if tokenizer_json is not None:
            from tokenizers import Tokenizer

            self._set(Tokenizer.from_str(tokenizer_json))

    @property
    def column(self) -> str:
        return self.columns[0]

    def fit(self, df: pd.DataFrame, base_dir: Path, wants_tokenizer: bool = False) -> None:
        """Build a word-level vocabulary from the training text: the ``vocab_size`` most frequent words.

        Counting is ours so that ties break by word and the vocabulary is the same on every run
        (a trainer whose ties depend on hash order would break resuming and reproducibility).
        """
        if not wants_tokenizer or self.tokenizer is not None:
            return
        from collections import Counter

        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

        norm = [normalizers.NFKC()] + ([normalizers.Lowercase()] if self.params.get("lowercase", True) else [])
        pre = pre_tokenizers.BertPreTokenizer()
        normalizer = normalizers.Sequence(norm)
        counts: Counter = Counter()
        for text in df[self.column].tolist():
            if not is_blank(text):
                counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(str(text))))
        size = int(self.params.get("vocab_size", 8000)) - 2
        words = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
        vocab = {PAD: 0, UNK: 1, **{w: i + 2 for i, (w, _) in enumerate(words)}}
        tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
        tok.normalizer = normalizer
        tok.pre_tokenizer = pre
        self._set(tok)

    def configure(self, encoder: Any) -> None:
        if encoder.provides_tokenizer and self.tokenizer is None:
            self._set(encoder.tokenizer())
        if encoder.max_length is not None:
            self.params["max_length"] = min(int(self.params["max_length"]), int(encoder.max_length))

    def _set(self, tok) -> None:
        pad_id = tok.token_to_id(PAD)
        if pad_id is None:
            pad_id = tok.token_to_id("<pad>") or 0
        tok.no_padding()
        tok.no_truncation()
        self.tokenizer, self.pad_id = tok, int(pad_id)

    def encoder_kwargs(self) -> Dict[str, Any]:
        return {"vocab_size": self.tokenizer.get_vocab_size(), "pad_id": self.pad_id}

    def check(self, df: pd.DataFrame, base_dir: Path, open_files: bool,
              allow_outside: bool = False) -> List[CellProblem]:
        return [(pos, self.column, "empty text") for pos, v in enumerate(df[self.column].tolist()) if is_blank(v)]

    def content_key(self, row: Dict[str, Any], base_dir: Path) -> Optional[str]:
        import hashlib

        value = row[self.column]
        return None if is_blank(value) else hashlib.sha256(str(value).encode()).hexdigest()

    def load(self, row: Dict[str, Any], base_dir: Path, train: bool) -> Optional[str]:
        """The cell as text, cut long before tokenizing: only ``max_length`` tokens are kept
        anyway, and a megabyte cell would otherwise be tokenized in full every epoch."""
        value = row[self.column]
        return None if is_blank(value) else str(value)[: int(self.params["max_length"]) * CHARS_PER_TOKEN]

    def limit_problems(self) -> List[str]:
        return limit(self.params, "max_length", 1, MAX_TOKENS) + limit(self.params, "vocab_size", 3, 10_000_000)

    def collate(self, items: List[Optional[str]]):
        mask = torch.tensor([x is not None for x in items])
        max_len = int(self.params["max_length"])
        encs = self.tokenizer.encode_batch([x or "" for x in items])
        ids = [e.ids[:max_len] if present else [] for e, present in zip(encs, mask.tolist())]
        width = max(1, max(len(i) for i in ids))
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(ids), width), dtype=torch.long)
        for r, seq in enumerate(ids):
            input_ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention[r, : len(seq)] = 1
        return {"input_ids": input_ids, "attention_mask": attention}, mask

    def linear_features(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Bag of tokens: log(1 + count) per token id, ids folded into LINEAR_BINS bins (the word-level
        vocabulary numbers words by frequency, so the most frequent words keep a bin each)."""
        ids, attention = inputs["input_ids"], inputs["attention_mask"].float()
        counts = torch.zeros(ids.shape[0], LINEAR_BINS)
        counts.scatter_add_(1, ids % LINEAR_BINS, attention)
        return torch.log1p(counts)

    def corrupt(self, inputs: Dict[str, torch.Tensor], name: str, strength: float,
                generator: torch.Generator) -> Dict[str, torch.Tensor]:
        """token_dropout: each token is deleted with probability ``strength`` (one always stays)."""
        if name != "token_dropout":
            return super().corrupt(inputs, name, strength, generator)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        out_ids, out_mask = torch.full_like(ids, self.pad_id), torch.zeros_like(mask)
        for r in range(ids.shape[0]):
            tokens = ids[r][mask[r].bool()]
            if len(tokens) == 0:
                continue
            keep = torch.rand(len(tokens), generator=generator) >= strength
            if not keep.any():
                keep[int(torch.randint(0, len(tokens), (1,), generator=generator))] = True
            kept = tokens[keep]
            out_ids[r, : len(kept)], out_mask[r, : len(kept)] = kept, 1
        return {"input_ids": out_ids, "attention_mask": out_mask}

    def state(self) -> Dict[str, Any]:
        s = super().state()
        s["tokenizer_json"] = self.tokenizer.to_str() if self.tokenizer is not None else None
        return s

    @classmethod
    def from_state(cls, state: Dict[str, Any]) -> "TextProcessor":
        return cls(state["columns"], tokenizer_json=state.get("tokenizer_json"), **state["params"])
