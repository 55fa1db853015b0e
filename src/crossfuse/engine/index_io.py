"""Indexes on disk: build one over a manifest with a saved retrieval model, search it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd

from crossfuse.data import manifest_chunks
from crossfuse.data.processors import PROCESSORS
from crossfuse.data.processors.image import open_image
from crossfuse.engine.distributed import is_main
from crossfuse.engine.retriever import Retriever, query_modality
from crossfuse.errors import CrossfuseError
from crossfuse.index import VectorIndex
from crossfuse.metrics import plot_search_results
from crossfuse.models import read_json


def index_manifest(model_dir: Path, manifest: Path, out: Path, modality: Optional[str] = None, kind: str = "exact",
                   add: bool = False, batch_size: int = 64, num_workers: int = 0, allow_outside_paths: bool = False,
                   **params: Any) -> VectorIndex:
    """Build (or with ``add`` extend) the index at ``out`` over a manifest's items of one modality."""
    retriever = Retriever.load(model_dir)
    retriever.allow_outside_paths = allow_outside_paths
    if manifest.is_dir():
        from crossfuse.data import read_flickr

        df, base_dir = read_flickr(manifest), manifest
    else:  # only the columns the index reads (a wide Parquet manifest is never loaded whole)
        id_col = retriever.meta.get("id_column")
        columns = [c for p in retriever.processors.values() for c in p.columns] + ([id_col] if id_col else [])
        df, base_dir = pd.concat(list(manifest_chunks(manifest, columns))), manifest.parent
    modality = modality or _default_gallery(retriever)
    existing = None
    if add and (out / "index.json").is_file():
        existing = VectorIndex.load(out)
        if existing.meta.get("modality") != modality:
            raise CrossfuseError(f"{out} indexes '{existing.meta.get('modality')}', not '{modality}'")
    index = retriever.build_index(df, base_dir, modality, kind, id_column=retriever.meta.get("id_column"),
                                  index=existing, batch_size=batch_size, num_workers=num_workers, file=str(manifest),
                                  distributed=True, **params)  # under torchrun: one part of the rows per process
    sources = list((existing.meta.get("manifests") if existing else None) or []) + [str(manifest.resolve())]
    extra = {"model": str(Path(model_dir).resolve()), "modality": modality, "manifests": sources}
    if is_main():  # one index, written by rank 0
        index.save(out, extra)
    index.meta = {**index.meta, **extra}
    return index


def model_beside(index_dir: Path, meta: Dict[str, Any]) -> Path:
    """The model an index was built with, looked for only beside the index. index.json records
    the model's directory, but a directory named by a file is never opened elsewhere: only its
    last component is taken, under the index's own parent (runs/x/index -> runs/x/model)."""
    recorded = str(meta.get("model") or "model")
    name = Path(recorded).name
    candidate = index_dir.resolve().parent / name
    if name in ("", ".", "..") or not (candidate / "config.json").is_file():
        raise CrossfuseError(f"the model of index {index_dir} is not beside it (looked for {candidate}); index.json "
                             f"says it was built with {recorded}: pass --model with the model directory to use")
    return candidate


def _default_gallery(retriever: Retriever) -> str:
    """The first non-text modality (search text for images or audio), else the first."""
    for m in retriever.modalities:
        if retriever.processors[m].kind != "text":
            return m
    return retriever.modalities[0]


def search_index(index_dir: Path, queries: Sequence[str], top: int = 10, modality: Optional[str] = None,
                 model_dir: Optional[Path] = None, grid: Optional[Path] = None) -> List[List[Dict[str, Any]]]:
    """Search an index saved by ``index_manifest``; its model is found through index.json."""
    index = VectorIndex.load(index_dir)
    model_dir = Path(model_dir) if model_dir is not None else model_beside(Path(index_dir), index.meta)
    if not (model_dir / "config.json").is_file():
        raise CrossfuseError(f"{model_dir} is not a crossfuse model directory (no config.json)")
    states = read_json(model_dir / "processors.json")
    if not isinstance(states, dict):
        raise CrossfuseError(f"{model_dir / 'processors.json'} must hold a mapping of modalities")
    kinds = {m: state.get("kind", "") if isinstance(state, dict) else "" for m, state in states.items()}
    modality = modality or query_modality(queries[0], kinds)
    retriever = Retriever.load(model_dir, modalities=[modality])  # only the query's tower is needed
    hits = retriever.search(index, queries, top, modality)
    if grid is not None:
        def look(kind: str) -> Dict[str, str]:  # how the grid draws an item of this kind
            return {"kind": kind, "tile": PROCESSORS[kind].tile if kind in PROCESSORS else "text"}

        gallery = look(kinds.get(index.meta.get("modality"), "text"))
        plot_search_results([{**look(kinds[modality]), "value": q,
                              "results": [{**gallery, "value": h["value"], "score": h["score"]} for h in hs]}
                             for q, hs in zip(queries, hits)], grid, open_image=open_image)
    return hits
