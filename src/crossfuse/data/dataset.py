"""A streaming dataset over manifest rows: files are read in DataLoader workers, one item at a time."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from crossfuse.data.processors import Processor
from crossfuse.types import Batch


class ManifestDataset(Dataset):
    """Rows of a manifest; ``__getitem__`` loads each modality through its processor.

    Only the manifest's cells live in memory (paths, short strings, numbers); images are read
    from disk per item, so memory does not grow with the number of items beyond the table.
    ``missing`` holds (row, modality) pairs known to be bad, served as missing without a retry.
    """

    def __init__(self, df: pd.DataFrame, processors: Mapping[str, Processor], base_dir: Path,
                 targets: Optional[np.ndarray] = None, train: bool = False,
                 missing: Iterable[Tuple[int, str]] = ()):
        self.processors = dict(processors)
        self.base_dir = Path(base_dir)
        self.train = train
        cols = sorted({c for p in self.processors.values() for c in p.columns})
        self.columns = {c: df[c].to_numpy(dtype=object) for c in cols}
        self.rows = df.index.to_numpy()
        self.targets = targets
        self.missing: Set[Tuple[int, str]] = set(missing)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row_id = int(self.rows[i])
        row = {c: values[i] for c, values in self.columns.items()}
        row["__row__"] = row_id  # lets a cached modality find the row's content key
        items = {m: None if (row_id, m) in self.missing else p.load(row, self.base_dir, self.train)
                 for m, p in self.processors.items()}
        target = None if self.targets is None else self.targets[i]
        return i, items, target


class Collator:
    """Builds a Batch: each processor collates its modality and reports the presence mask."""

    def __init__(self, processors: Mapping[str, Processor], regression: bool = False):
        self.processors = dict(processors)
        self.regression = regression

    def __call__(self, samples: List[Tuple[int, Dict[str, Any], Any]]) -> Batch:
        inputs, mask = {}, {}
        for m, proc in self.processors.items():
            inputs[m], mask[m] = proc.collate([s[1][m] for s in samples])
        target = None
        if samples[0][2] is not None:
            dtype = torch.float32 if self.regression else torch.long
            target = torch.tensor(np.array([s[2] for s in samples]), dtype=dtype)
        return Batch(inputs=inputs, mask=mask, target=target, index=torch.tensor([s[0] for s in samples]))
