"""Tabular processor: standardised numerics with median imputation and categorical vocabularies."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd
import torch

from crossfuse.data.processors.base import CellProblem, Processor, is_blank

FLOAT32_MAX = float(np.finfo(np.float32).max)


class TabularProcessor(Processor):
    """Params: ``categorical`` lists columns to treat as categories even when numeric.

    Fitted state: per numeric column mean, std and median (the imputation value); per
    categorical column its vocabulary (index 0 is "unknown or missing").
    """

    kind = "tabular"
    default_encoder = "mlp"
    single_column = False
    missing_when_bad = False  # a bad number is imputed with the column's median
    corruptions = {"noise": [0.25, 0.5, 1.0, 2.0]}

    def __init__(self, columns, numeric: Optional[Dict[str, Dict[str, float]]] = None,
                 categorical_vocab: Optional[Dict[str, List[str]]] = None, **params):
        super().__init__(columns, **params)
        self.numeric = numeric or {}
        self.categorical_vocab = categorical_vocab or {}
        self._index = {c: {v: i + 1 for i, v in enumerate(vocab)} for c, vocab in self.categorical_vocab.items()}

    def _is_numeric(self, df: pd.DataFrame, col: str) -> bool:
        if col in (self.params.get("categorical") or []):
            return False
        if pd.api.types.is_bool_dtype(df[col]):
            return False
        if pd.api.types.is_numeric_dtype(df[col]):
            return True
        # a numeric column with a few typos is still numeric: its bad cells get reported
        values = [v for v in df[col].tolist() if not is_blank(v)]
        return bool(values) and sum(_finite(v) for v in values) >= 0.9 * len(values)

    def fit(self, df: pd.DataFrame, base_dir: Path, wants_tokenizer: bool = False) -> None:
        self.numeric, self.categorical_vocab = {}, {}
        for col in self.columns:
            if self._is_numeric(df, col):
                x = pd.to_numeric(df[col], errors="coerce").astype(float)
                x = x[np.isfinite(x)]
                mean = float(x.mean()) if len(x) else 0.0
                std = float(x.std(ddof=0)) if len(x) > 1 else 1.0
                self.numeric[col] = {"mean": mean, "std": std if std > 1e-12 else 1.0,
                                     "median": float(x.median()) if len(x) else 0.0}
            else:
                values = sorted({str(v) for v in df[col].tolist() if not is_blank(v)})
                self.categorical_vocab[col] = values
        self._index = {c: {v: i + 1 for i, v in enumerate(vocab)} for c, vocab in self.categorical_vocab.items()}

    def encoder_kwargs(self) -> Dict[str, Any]:
        return {"n_numeric": len(self.numeric),
                "cardinalities": [len(v) + 1 for v in self.categorical_vocab.values()]}

    def check(self, df: pd.DataFrame, base_dir: Path, open_files: bool,
              allow_outside: bool = False) -> List[CellProblem]:
        problems: List[CellProblem] = []
        for col in self.columns:
            numeric = col in self.numeric if self.numeric or self.categorical_vocab else self._is_numeric(df, col)
            problems += [(pos, col, msg) for pos, v in enumerate(df[col].tolist())
                         if (msg := self.cell_problem(col, v, numeric)) is not None]
        return sorted(problems)

    def cell_problem(self, col: str, value: Any, numeric: bool) -> Optional[str]:
        """Why one cell of ``col`` is bad (it is then imputed), or None. Once fitted, a number whose
        standardised value does not fit the encoder's float32 input counts as not finite."""
        if is_blank(value):
            return "missing value (NaN)"
        if numeric and not self._usable(col, value):
            return f"not a finite number: {value!r}" if not _finite(value) else \
                f"{value!r} is out of range: standardised it overflows float32"
        return None

    def _usable(self, col: str, value: Any) -> bool:
        if not _finite(value):
            return False
        s = self.numeric.get(col)
        z = (float(value) - s["mean"]) / s["std"] if s else 0.0
        return math.isfinite(z) and abs(z) <= FLOAT32_MAX

    def load(self, row: Dict[str, Any], base_dir: Path, train: bool) -> Optional[Dict[str, np.ndarray]]:
        if all(is_blank(row[c]) for c in self.columns):
            return None
        num = np.array([((_num(row[c]) if self._usable(c, row[c]) else s["median"]) - s["mean"]) / s["std"]
                        for c, s in self.numeric.items()], dtype=np.float32)
        cat = np.array([self._index[c].get(str(row[c]), 0) if not is_blank(row[c]) else 0
                        for c in self.categorical_vocab], dtype=np.int64)
        return {"numeric": num, "categorical": cat}

    def collate(self, items):
        mask = torch.tensor([x is not None for x in items])
        n_num, n_cat = len(self.numeric), len(self.categorical_vocab)
        num = torch.zeros(len(items), n_num)
        cat = torch.zeros(len(items), n_cat, dtype=torch.long)
        for r, x in enumerate(items):
            if x is not None:
                num[r] = torch.from_numpy(x["numeric"])
                cat[r] = torch.from_numpy(x["categorical"])
        return {"numeric": num, "categorical": cat}, mask

    def linear_features(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The standardised numbers and a one-hot block per categorical column (0: unknown; ids of
        columns with more than 255 values folded into 256 bins)."""
        blocks = [inputs["numeric"].float()]
        for c, vocab in enumerate(self.categorical_vocab.values()):
            width = min(len(vocab) + 1, 256)
            blocks.append(torch.nn.functional.one_hot(inputs["categorical"][:, c] % width, width).float())
        return torch.cat(blocks, dim=1)

    def corrupt(self, inputs: Dict[str, torch.Tensor], name: str, strength: float,
                generator: torch.Generator) -> Dict[str, torch.Tensor]:
        """noise: Gaussian noise of std ``strength`` on the standardised numerics, and each category
        replaced by "unknown" with probability min(1, strength / 2)."""
        if name != "noise":
            return super().corrupt(inputs, name, strength, generator)
        num, cat = inputs["numeric"], inputs["categorical"]
        noisy = num + torch.randn(num.shape, generator=generator).to(num) * strength
        unknown = torch.rand(cat.shape, generator=generator) < min(1.0, strength / 2)
        return {"numeric": noisy, "categorical": cat.masked_fill(unknown.to(cat.device), 0)}

    def state(self) -> Dict[str, Any]:
        s = super().state()
        s.update(numeric=self.numeric, categorical_vocab=self.categorical_vocab)
        return s

    @classmethod
    def from_state(cls, state: Dict[str, Any]) -> "TabularProcessor":
        return cls(state["columns"], numeric=state["numeric"], categorical_vocab=state["categorical_vocab"],
                   **state["params"])


def _num(v: Any) -> float:
    return float(v)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
