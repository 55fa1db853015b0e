"""The processor contract: per-modality loading, checks, collation and JSON-serialisable state."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd
import torch

CellProblem = Tuple[int, str, str]  # (row position, column, message)


class Processor:
    """Turns a manifest row's cells into encoder input for one modality.

    Lifecycle: ``fit`` on the training rows, ``configure`` with the built encoder (image size,
    tokenizer), then ``load`` per item in DataLoader workers and ``collate`` per batch.
    ``load`` returns None for a missing or unreadable item; ``collate`` turns those into fill
    values and a False in the presence mask.
    """

    # what a modality kind is, declared by its processor (the registry of kinds is PROCESSORS):
    kind: str = ""
    default_encoder: str = ""  # the encoder a modality of this kind gets when its config names none
    extensions: Tuple[str, ...] = ()  # file kinds: the file name endings that infer a column as this kind
    single_column: bool = True  # False: one modality over several columns (tabular)
    missing_when_bad: bool = True  # a bad cell makes the modality missing (False: imputed, the modality stays)
    tile: str = "text"  # how a results grid draws an item: image (a thumbnail), file (its name) or text
    # corruption name -> strengths for robustness curves, mildest first (see ``corrupt``)
    corruptions: Dict[str, List[float]] = {}

    def __init__(self, columns: Sequence[str], **params: Any):
        self.columns = list(columns)
        self.params = dict(params)

    def fit(self, df: pd.DataFrame, base_dir: Path, wants_tokenizer: bool = False) -> None:
        """Learn state from the training rows (vocabularies, statistics)."""

    def configure(self, encoder: Any) -> None:
        """Adopt what the built encoder dictates (input size, normalisation, tokenizer)."""

    def encoder_kwargs(self) -> Dict[str, Any]:
        """Constructor arguments the encoder needs from the fitted state (vocabulary sizes...)."""
        return {}

    def check(self, df: pd.DataFrame, base_dir: Path, open_files: bool,
              allow_outside: bool = False) -> List[CellProblem]:
        """Every bad cell of this modality's columns. ``allow_outside``: file paths may point out of
        ``base_dir`` (the manifest's folder); otherwise such a cell is bad and its file is never opened."""
        raise NotImplementedError

    def load(self, row: Dict[str, Any], base_dir: Path, train: bool) -> Optional[Any]:
        raise NotImplementedError

    def collate(self, items: List[Optional[Any]]) -> Tuple[Any, torch.Tensor]:
        raise NotImplementedError

    def corrupt(self, inputs: Any, name: str, strength: float, generator: torch.Generator) -> Any:
        """Collated ``inputs`` with corruption ``name`` applied at ``strength`` (robustness tests)."""
        raise NotImplementedError(f"{type(self).__name__} has no corruption {name!r}")

    def linear_features(self, inputs: Any) -> torch.Tensor:
        """(N, d) float features of collated ``inputs`` for the linear baseline that every fusion
        report shows (crossfuse.engine.baseline): here the raw input, flattened."""
        tensors = inputs.values() if isinstance(inputs, dict) else [inputs]
        return torch.cat([t.float().flatten(1) for t in tensors], dim=1)

    def content_key(self, row: Dict[str, Any], base_dir: Path) -> Optional[str]:
        """A digest of the item's content for the embedding cache; None when it has none."""
        return None

    def cache_settings(self) -> Dict[str, Any]:
        """What of this processor's state changes encoder outputs (train-time augmentation does not)."""
        state = self.state()
        state["params"] = {k: v for k, v in state["params"].items() if k != "augment"}
        return state

    @property
    def augments(self) -> bool:
        return bool(self.params.get("augment"))

    def state(self) -> Dict[str, Any]:
        return {"kind": self.kind, "columns": self.columns, "params": self.params}

    def state_problems(self, encoder: Any) -> List[str]:
        """Why this processor (read from a model directory) cannot feed ``encoder``: sizes outside
        the processor's limits, or fitted state (vocabulary, feature counts) that disagrees with
        what the encoder was built for."""
        problems = self.limit_problems()
        if encoder.provides_tokenizer:
            return problems
        try:
            mine = self.encoder_kwargs()
        except Exception as exc:  # an incomplete state has nothing to compare
            return problems + [f"incomplete processor state: {type(exc).__name__}: {exc}"]
        built = encoder.rebuild_kwargs()
        problems += [f"'{k}' is {mine[k]!r} in the processor but {built[k]!r} in the encoder"
                     for k in mine if k in built and _plain(mine[k]) != _plain(built[k])]
        return problems

    def limit_problems(self) -> List[str]:
        """Sizes in ``params`` outside what this kind of processor accepts."""
        return []

    @classmethod
    def from_state(cls, state: Dict[str, Any]) -> "Processor":
        return cls(state["columns"], **state["params"])


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def limit(params: Dict[str, Any], key: str, low: float, high: float) -> List[str]:
    """A problem when ``params[key]`` (if set) is not a number in [low, high]."""
    value = params.get(key)
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        return [f"'{key}' must be a number in [{low}, {high}]; got {value!r}"]
    return []


def stack_present(items: List[Optional[torch.Tensor]], shape: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack per-item tensors of ``shape``, zeros standing in for missing items; and the presence mask."""
    mask = torch.tensor([x is not None for x in items])
    fill = torch.zeros(*shape)
    return torch.stack([fill if x is None else x for x in items]), mask


def file_digest(value: Any, base_dir: Path) -> Optional[str]:
    """sha256 of a file's bytes (None for a blank cell or a file that is not there)."""
    import hashlib

    if is_blank(value):
        return None
    path = resolve_path(value, base_dir)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:  # NaN
        return True
    return isinstance(value, str) and not value.strip()


class FileProcessor(Processor):
    """A modality whose cells are paths to files (images, audio): existence checks, parallel
    probing of each file's content, and content keys from the file bytes."""

    noun = "file"

    @property
    def column(self) -> str:
        return self.columns[0]

    def probe(self, path: Path, open_files: bool) -> Optional[str]:
        """Why the file at ``path`` is unusable, or None."""
        return None

    def check(self, df: pd.DataFrame, base_dir: Path, open_files: bool,
              allow_outside: bool = False) -> List[CellProblem]:
        from concurrent.futures import ThreadPoolExecutor

        problems: List[CellProblem] = []
        todo = []
        root = Path(base_dir).resolve()
        for pos, value in enumerate(df[self.column].tolist()):
            if is_blank(value):
                problems.append((pos, self.column, f"no {self.noun} path"))
                continue
            path = resolve_path(value, base_dir)
            if not allow_outside and not path.resolve().is_relative_to(root):
                problems.append((pos, self.column, f"{self.noun} path {value!r} leaves the manifest's folder {root}; "
                                 "set data.allow_outside_paths: true (or --allow-outside-paths) to read files "
                                 "elsewhere"))
            elif not path.is_file():
                problems.append((pos, self.column, f"{self.noun} file not found: {path}"))
            else:
                todo.append((pos, path))
        from crossfuse.threads import thread_count

        with ThreadPoolExecutor(max_workers=thread_count()) as pool:  # decoding releases the GIL
            found = pool.map(lambda item: (item[0], self.probe(item[1], open_files)), todo)
            problems += [(pos, self.column, msg) for pos, msg in found if msg is not None]
        return sorted(problems)

    def content_key(self, row: Dict[str, Any], base_dir: Path) -> Optional[str]:
        return file_digest(row[self.column], base_dir)


def resolve_path(value: Any, base_dir: Path) -> Path:
    p = Path(str(value))
    return p if p.is_absolute() else base_dir / p
