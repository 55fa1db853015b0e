"""A trained retrieval model with its processors: embed rows and free-form queries, build an index
over a collection, search it, evaluate it."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from crossfuse.data import Collator, ManifestDataset, apply_policy, check_columns, find_problems, usable_rows
from crossfuse.data.anonymize import anonymize_inputs, model_settings
from crossfuse.data.processors import FILE_KINDS
from crossfuse.data.processors.base import FileProcessor, resolve_path
from crossfuse.data.processors.image import open_image
from crossfuse.engine.distributed import is_main, split_map
from crossfuse.engine.extract import cache_root, with_cache
from crossfuse.engine.placement import default_device
from crossfuse.engine.retrieval_eval import (MONITOR, _group_codes, _unique_rows, collect_embeddings,
                                             direction_metrics, recall_mean, write_retrieval_report)
from crossfuse.errors import CrossfuseError, DataError
from crossfuse.index import VectorIndex
from crossfuse.metrics import plot_search_results
from crossfuse.models import RetrievalModel, load_model, save_model

log = logging.getLogger(__name__)


class Retriever:
    """A trained RetrievalModel with its processors: embed, index, search, evaluate."""

    def __init__(self, model: RetrievalModel, processors: Mapping[str, Any], meta: Dict[str, Any],
                 cache_root: Optional[Path] = None):
        self.model, self.processors, self.meta = model, dict(processors), meta
        self.cache_root = cache_root
        self.allow_outside_paths = False  # as Predictor's: a manifest's files stay in its folder
        self.anonymize = model_settings(meta, "the model")  # data.anonymize of its training, applied alike
        self.cache_encrypt = bool(((meta.get("config") or {}).get("cache") or {}).get("encrypt"))
        self.model.eval()

    @classmethod
    def load(cls, path: str | Path, modalities: Optional[Sequence[str]] = None) -> "Retriever":
        """``modalities``: load only these towers (e.g. the query's, to search a ready index)."""
        model, processors, meta = load_model(path, modalities=modalities)
        if not isinstance(model, RetrievalModel):
            raise CrossfuseError(f"{path} is a {meta.get('task', {}).get('kind', 'fusion')} model, not a retrieval "
                                 "model (train one with data.task: retrieval)")
        return cls(model, processors, meta, cache_root=cache_root((meta.get("config") or {}).get("cache") or {}))

    def save(self, path: str | Path) -> Path:
        return save_model(path, self.model, self.processors, self.meta)

    @property
    def modalities(self) -> List[str]:
        return list(self.model.modalities)

    @property
    def device(self) -> torch.device:
        return default_device()

    def _check_modality(self, modality: str) -> None:
        if modality not in self.processors:
            raise CrossfuseError(f"the model has no modality '{modality}'; it has {', '.join(self.modalities)}")

    @torch.inference_mode()
    def embed_frame(self, df: pd.DataFrame, base_dir: Path, modalities: Optional[Sequence[str]] = None,
                    missing=(), batch_size: int = 64, num_workers: int = 0, progress: bool = False,
                    distributed: bool = False) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """Shared-space embeddings of ``df``'s rows: {modality: (vectors (n, d), present (n,))}.
        ``distributed``: every process a launcher started calls this together; each embeds its part
        of the rows (engine.distributed) and each returns the whole, in order."""
        mods = list(modalities or self.modalities)
        for m in mods:
            self._check_modality(m)
        df, _ = anonymize_inputs(df, self.anonymize, self.processors)
        self.model.to(self.device).eval()

        def part(rows: slice) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
            rows_df = df.iloc[rows]
            sources = with_cache(self.model, {m: self.processors[m] for m in mods}, rows_df, base_dir,
                                 self.cache_root, batch_size=batch_size, num_workers=num_workers, device=self.device,
                                 missing=missing, progress=progress and is_main(), encrypt=self.cache_encrypt)
            loader = DataLoader(ManifestDataset(rows_df, sources, base_dir, train=False, missing=missing),
                                batch_size=batch_size, num_workers=num_workers, collate_fn=Collator(sources))
            return collect_embeddings(self.model, loader, self.device, mods, progress=progress and is_main())

        return split_map(len(df), part) if distributed else part(slice(0, len(df)))

    def embed_queries(self, queries: Sequence[str], modality: Optional[str] = None,
                      base_dir: Path = Path(".")) -> Tuple[np.ndarray, str]:
        """Embed free-form queries: sentences, or image/audio file paths. Returns (vectors, modality)."""
        modality = modality or self.query_modality(queries[0])
        self._check_modality(modality)
        proc = self.processors[modality]
        df = pd.DataFrame({c: list(queries) for c in proc.columns})
        # a query file is named by the user at the command line, not by a manifest
        problems = find_problems(df, {modality: proc}, "<query>", base_dir, None, "retrieval", allow_outside=True)
        if problems:
            raise DataError(problems)
        vectors, present = self.embed_frame(df, base_dir, [modality])[modality]
        return vectors[present], modality

    def query_modality(self, query: str) -> str:
        """A path to an existing image or audio file is that modality; anything else is text."""
        return query_modality(query, {m: p.kind for m, p in self.processors.items()})

    def build_index(self, df: pd.DataFrame, base_dir: Path, modality: str, kind: str = "exact",
                    id_column: Optional[str] = None, index: Optional[VectorIndex] = None, batch_size: int = 64,
                    num_workers: int = 0, progress: bool = True, file: str = "<dataframe>",
                    on_bad_item: str = "skip", distributed: bool = False, **params: Any) -> VectorIndex:
        """Index ``df``'s items of ``modality`` (or add them to ``index``). Each vector's id maps back to
        its row: {"row": 1-based row number, "value": the item, id_column: its id}. Identical items
        (an image listed once per caption) are indexed once."""
        self._check_modality(modality)
        proc = self.processors[modality]
        df, _ = anonymize_inputs(df, self.anonymize, self.processors)  # the index stores the values it shows
        check_columns(df, {modality: proc}, file, None)
        problems = find_problems(df, {modality: proc}, file, base_dir, None, "retrieval",
                                 allow_outside=self.allow_outside_paths)
        if problems and on_bad_item == "error":
            raise DataError(problems)
        for p in problems[:20]:
            log.warning("not indexed: %s", p)
        kept, _ = apply_policy(df, problems, "skip", None)
        if not len(kept):
            raise DataError(problems, hint=f"none of the {len(df)} rows of {file} can be indexed")
        col = proc.columns[0]
        kept = kept.drop_duplicates(subset=proc.columns)
        vectors, present = self.embed_frame(kept, base_dir, [modality], batch_size=batch_size,
                                            num_workers=num_workers, progress=progress,
                                            distributed=distributed)[modality]
        rows = kept[present]
        values = rows[col].tolist()
        if isinstance(proc, FileProcessor):  # stored resolved: results and grids work from any folder
            values = [str(resolve_path(v, base_dir).resolve()) for v in values]
        ids = [{"row": int(r) + 1, "value": str(v), **({id_column: _jsonable(i)} if id_column else {})}
               for r, v, i in zip(rows.index, values, rows[id_column].tolist() if id_column else [None] * len(rows))]
        if index is None:
            index = VectorIndex(self.model.output_dim, kind, **params)
        index.add(vectors[present], ids)
        log.info("Indexed %d %s items (%d in the index)", len(ids), modality, len(index))
        return index

    def search(self, index: VectorIndex, queries: Sequence[str] | str, top: int = 10,
               modality: Optional[str] = None, base_dir: Path = Path(".")) -> List[List[Dict[str, Any]]]:
        """Top ``top`` items of ``index`` for each query: [{"rank", "score", **id}, ...] per query."""
        single = isinstance(queries, str)
        queries = [queries] if single else list(queries)
        vectors, _ = self.embed_queries(queries, modality, base_dir)
        scores, ids = index.search(vectors, top)
        out = [[{"rank": k + 1, "score": float(s), **(i if isinstance(i, dict) else {"id": i})}
                for k, (s, i) in enumerate(zip(srow, irow))] for srow, irow in zip(scores, ids)]
        return out

    def evaluate_frame(self, df: pd.DataFrame, base_dir: Path, file: str = "<dataframe>",
                       group_column: Optional[str] = None, out_dir: Optional[Path] = None, batch_size: int = 64,
                       num_workers: int = 0, on_bad_item: str = "missing", history=None,
                       extra: Optional[Dict[str, Any]] = None, progress: bool = False, known_missing=(),
                       check_files: bool = True, distributed: bool = False) -> Dict[str, Any]:
        """Recall@1/5/10, median/mean rank and mAP for every modality pair, both directions.

        With ``on_bad_item="missing"`` a row with an empty or bad cell still counts in the
        directions between its other modalities. ``distributed``: every process a launcher started
        calls this together; each checks and embeds its part of the rows, every process returns the
        same metrics and rank 0 alone writes the report."""
        group_column = group_column or self.meta.get("group_column")

        def check(rows: slice) -> Dict[str, np.ndarray]:
            kept, bad = usable_rows(df.iloc[rows], self.processors, file, base_dir, on_bad_item, task="retrieval",
                                    open_files=check_files, allow_outside=self.allow_outside_paths)
            bad = sorted(bad)
            return {"kept": df.index.get_indexer(kept.index), "bad_rows": np.array([r for r, _ in bad], dtype=np.int64),
                    "bad_modalities": np.array([m for _, m in bad], dtype=object)}

        checked = split_map(len(df), check) if distributed else check(slice(0, len(df)))
        kept = df.iloc[checked["kept"]]
        missing = set(zip(checked["bad_rows"].tolist(), checked["bad_modalities"].tolist())) | set(known_missing)
        groups = _group_codes(kept, group_column)
        emb = self.embed_frame(kept, base_dir, missing=missing, batch_size=batch_size, num_workers=num_workers,
                               progress=progress, distributed=distributed)
        mods = self.modalities
        pairs = [(a, b) for i, a in enumerate(mods) for b in mods[i + 1:]]
        per_direction = direction_metrics(emb, groups, pairs)
        pair = self.meta.get("monitor_pair") or mods[:2]
        metrics = {"directions": per_direction, MONITOR: recall_mean(per_direction, pair),
                   "monitor_pair": list(pair), "n": int(len(kept))}
        if out_dir is not None and is_main():
            write_retrieval_report(Path(out_dir), metrics, history, extra)
            self._results_grid(kept, base_dir, emb, groups, pair, Path(out_dir) / "search_examples.png")
        return metrics

    def _results_grid(self, df: pd.DataFrame, base_dir: Path, emb, groups: np.ndarray, pair: Sequence[str],
                      path: Path, n_queries: int = 6, top: int = 5) -> None:
        """The first few queries of the pair's second modality (text, usually) against the first."""
        g_mod, q_mod = pair[0], pair[1]
        (gv, gm), (qv, qm) = emb[g_mod], emb[q_mod]
        gi = np.flatnonzero(gm)
        gi = gi[_unique_rows(gv[gi], groups[gi])]
        qi = np.flatnonzero(qm)
        if not len(gi) or not len(qi):
            return
        picks = qi[np.linspace(0, len(qi) - 1, min(n_queries, len(qi))).astype(int)]
        kinds = {m: {"kind": self.processors[m].kind, "tile": self.processors[m].tile} for m in pair}
        value = lambda m, r: display_value(df.iloc[r][self.processors[m].columns[0]], base_dir)  # noqa: E731
        queries = []
        for r in picks:
            scores = gv[gi] @ qv[r]
            best = np.argsort(-scores)[:top]
            queries.append({**kinds[q_mod], "value": value(q_mod, r),
                            "results": [{**kinds[g_mod], "value": value(g_mod, gi[j]), "score": float(scores[j]),
                                         "relevant": bool(groups[gi[j]] == groups[r])} for j in best]})
        plot_search_results(queries, path, f"{q_mod} -> {g_mod}: top {top} (green: the query's pair)",
                            open_image=open_image)


def query_modality(query: str, kinds: Mapping[str, str]) -> str:
    """The modality (of ``kinds``: name -> image/text/audio/...) a free-form query belongs to: an
    existing image or audio file is that kind, anything else is text."""
    by_kind = {k: m for m, k in kinds.items()}
    lower = str(query).lower()
    if Path(str(query)).is_file():
        for proc in FILE_KINDS:  # each file kind knows its extensions
            if lower.endswith(proc.extensions) and proc.kind in by_kind:
                return by_kind[proc.kind]
    if "text" not in by_kind:
        raise CrossfuseError(f"'{query}' is not an image or audio file the model can read, and the model has no "
                             "text tower")
    return by_kind["text"]


def display_value(value: Any, base_dir: Path) -> str:
    """A path made absolute when it names a file relative to the manifest; text as it is."""
    p = Path(str(value))
    if p.is_absolute():
        return str(p)
    return str(base_dir / p) if (base_dir / p).exists() else str(value)


def _jsonable(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
