"""Cross-modal generation as its own output (``crossfuse imagine``): a modality's features imagined
from each row's other modalities by a model trained with ``missing.imagine``, and, against a
gallery of real items, the nearest real items to each imagined vector ("what image would this
caption be").

Similarity is cosine in the modality's standardised space (the running statistics the generator
learns in), where an ImageNet CNN's all-positive activations do not make every pair look alike.
When the gallery is the manifest itself, each row's own real item is known, and its rank among
the neighbours measures the imagination (recall@1 / @k; chance is k / gallery size).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd
import torch

from crossfuse.atomic import atomic_directory
from crossfuse.data import read_manifest
from crossfuse.data.processors.image import open_image
from crossfuse.engine.inference import kept
from crossfuse.engine.predictor import Predictor
from crossfuse.engine.retriever import display_value
from crossfuse.errors import CrossfuseError
from crossfuse.index import VectorIndex
from crossfuse.metrics import plot_search_results
from crossfuse.progress import Progress

log = logging.getLogger(__name__)


@torch.inference_mode()
def modality_vectors(predictor: Predictor, df: pd.DataFrame, base_dir: Path, modality: str, missing,
                     imagine: bool, progress: bool = False) -> Dict[str, np.ndarray]:
    """Per row: ``modality``'s real features (``imagine=False``; ``have``: rows that have it) or its
    features imagined from the row's other modalities with ``modality`` treated as absent
    (``have``: rows with at least one other modality), both standardised."""
    model = predictor.model
    imagination = model.imagination
    loader = predictor.loader(df, base_dir, missing)
    predictor._place()
    model.eval()
    vectors, have, index = [], [], []
    for batch in Progress(loader, "imagine" if imagine else f"embed {modality}", enabled=progress, unit="batch"):
        batch = batch.to(predictor.device)
        features = model.encode(batch).features
        if imagine:
            mask = {m: (v.bool() if m != modality else torch.zeros_like(v, dtype=torch.bool))
                    for m, v in batch.mask.items()}
            filled, imagined, _ = imagination(features, mask)
            vec, ok = filled[modality], imagined[modality]
        else:
            vec, ok = features[modality], batch.mask[modality].bool()
        vectors.append(kept(imagination.stats[modality].standardise(vec.float())))
        have.append(kept(ok))
        index.append(kept(batch.index))
    order = torch.cat(index).argsort()
    return {"vectors": torch.cat(vectors)[order].numpy(), "have": torch.cat(have)[order].numpy()}


def imagine_manifest(model_dir: Path, manifest: Path, modality: str, out_dir: Path,
                     gallery: Optional[Path] = None, top: int = 5, grid_rows: int = 8, on_bad_item: str = "error",
                     allow_outside_paths: bool = False, overwrite: bool = False) -> Dict[str, Any]:
    """Write ``out_dir``: imagined.npy (float32 (n, d), the model's feature space of ``modality``),
    imagined.csv (row, id, the modalities it was imagined from), and with a gallery (the manifest
    itself when ``gallery`` is None) neighbours.csv and neighbours.png. Returns the summary."""
    predictor = Predictor.load(model_dir)
    predictor.allow_outside_paths = allow_outside_paths
    model = predictor.model
    if getattr(model, "imagination", None) is None:
        raise CrossfuseError(f"{model_dir}: this model does not imagine absent modalities; train it with "
                             "missing.imagine (e.g. missing.imagine.kind=mlp)")
    mods = list(model.fusion.modalities)
    if modality not in mods:
        raise CrossfuseError(f"--modality {modality!r}: the model's modalities are {', '.join(mods)}")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise CrossfuseError(f"{out_dir} is not empty; choose another --out or pass --overwrite")
    df = read_manifest(manifest)
    kept, missing = predictor.prepare(df, manifest.parent, str(manifest), with_target=False,
                                      on_bad_item=on_bad_item)
    if not len(kept):
        raise CrossfuseError(f"{manifest}: no usable rows")
    queries = modality_vectors(predictor, kept, manifest.parent, modality, missing, imagine=True, progress=True)
    ok = queries["have"]
    if not ok.any():
        raise CrossfuseError(f"{manifest}: no row has a modality besides {modality} to imagine it from")
    if (~ok).any():
        log.warning("%d row(s) have no modality besides %s: nothing to imagine from; left out", int((~ok).sum()),
                    modality)
    rows = kept[ok]
    vectors = queries["vectors"][ok]
    sources = _sources(predictor, missing, rows, [m for m in mods if m != modality])
    id_col = predictor.meta.get("id_column")
    table = pd.DataFrame({"row": rows.index.to_numpy() + 1,
                          **({id_col: rows[id_col].to_numpy()} if id_col and id_col in rows.columns else {}),
                          "imagined_from": sources})
    summary: Dict[str, Any] = {"modality": modality, "rows": int(len(rows)), "left_out": int((~ok).sum()),
                               "dim": int(vectors.shape[1])}
    column = predictor.processors[modality].columns[0]
    with atomic_directory(out_dir) as tmp:
        np.save(tmp / "imagined.npy", vectors.astype(np.float32), allow_pickle=False)
        table.to_csv(tmp / "imagined.csv", index=False)
        if top > 0:
            gal_path = gallery or manifest
            same = gallery is None or Path(gallery).resolve() == Path(manifest).resolve()
            if same:
                g_rows, g_missing = kept, missing
            else:
                g_rows, g_missing = predictor.prepare(read_manifest(gal_path), gal_path.parent, str(gal_path),
                                                      with_target=False, on_bad_item=on_bad_item)
            real = modality_vectors(predictor, g_rows, gal_path.parent, modality, g_missing, imagine=False,
                                    progress=True)
            g_ok = np.flatnonzero(real["have"])
            if not len(g_ok):
                raise CrossfuseError(f"{gal_path}: no row has modality {modality} to search among")
            index = VectorIndex(vectors.shape[1], backend="numpy").add(real["vectors"][g_ok], ids=list(g_ok))
            scores, hits = index.search(vectors, top)
            summary.update(gallery=str(gal_path), gallery_items=int(len(g_ok)), top=int(top))
            neighbours = _neighbour_table(rows, g_rows, hits, scores, column, id_col)
            neighbours.to_csv(tmp / "neighbours.csv", index=False)
            if same:  # each row's own real item is known: where does the imagined vector find it?
                own = {g_rows.index[p]: p for p in g_ok}
                ranks = [next((r for r, p in enumerate(h) if g_rows.index[p] == i), None) if i in own else None
                         for i, h in zip(rows.index, hits)]
                judged = [r for i, r in zip(rows.index, ranks) if i in own]
                if judged:
                    summary["recall_at_1"] = float(np.mean([r == 0 for r in judged]))
                    summary[f"recall_at_{top}"] = float(np.mean([r is not None for r in judged]))
                    summary["chance_at_1"] = 1.0 / len(g_ok)
            _grid(predictor, rows, g_rows, hits, scores, modality, manifest.parent, gal_path.parent,
                  tmp / "neighbours.png", grid_rows, same)
        (tmp / "summary.json").write_text(pd.Series(summary).to_json(indent=2))
    return summary


def _sources(predictor: Predictor, missing, rows: pd.DataFrame, others: List[str]) -> List[str]:
    """Per row, the other modalities it has (what its imagined vector comes from)."""
    bad = {(r, m) for r, m in missing}
    out = []
    for r in rows.index:
        have = [m for m in others if (r, m) not in bad
                and not rows.loc[r, predictor.processors[m].columns].isna().all()]
        out.append("+".join(have))
    return out


def _neighbour_table(rows, g_rows, hits, scores, column: str, id_col: Optional[str]) -> pd.DataFrame:
    records = []
    for i, (r, h, s) in enumerate(zip(rows.index, hits, scores)):
        for rank, (p, score) in enumerate(zip(h, s), start=1):
            g = g_rows.index[p]
            records.append({"row": r + 1, "rank": rank, "gallery_row": g + 1,
                            **({f"gallery_{id_col}": g_rows.loc[g, id_col]} if id_col in g_rows.columns else {}),
                            f"gallery_{column}": g_rows.loc[g, column], "score": float(score)})
    return pd.DataFrame.from_records(records)


SHOWN_FIRST = {"text": 0, "image": 1, "audio": 2, "tabular": 3}  # which present modality a grid row shows


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _grid(predictor, rows, g_rows, hits, scores, modality, base_dir, g_base, path: Path, n: int, same: bool) -> None:
    """The first rows (evenly spread): one of the row's other modalities as the query (text first,
    as the most readable), then the
    nearest real items of ``modality``; green when it is the row's own item."""
    others = [m for m in predictor.model.fusion.modalities if m != modality]
    picks = np.linspace(0, len(rows) - 1, min(n, len(rows))).astype(int)
    proc = predictor.processors[modality]
    queries = []
    for i in picks:
        r = rows.index[i]
        have = [m for m in others if not rows.loc[r, predictor.processors[m].columns].isna().all()] or others
        shown = min(have, key=lambda m: SHOWN_FIRST.get(predictor.processors[m].kind, len(SHOWN_FIRST)))
        q_proc = predictor.processors[shown]
        value = rows.loc[r, q_proc.columns[0]] if len(q_proc.columns) == 1 else \
            ", ".join(f"{c}={_short(rows.loc[r, c])}" for c in q_proc.columns)
        queries.append({"kind": q_proc.kind, "tile": q_proc.tile, "value": display_value(value, base_dir),
                        "results": [{"kind": proc.kind, "tile": proc.tile,
                                     "value": display_value(g_rows.loc[g_rows.index[p], proc.columns[0]], g_base),
                                     "score": float(s), **({"relevant": bool(g_rows.index[p] == r)} if same else {})}
                                    for p, s in zip(hits[i], scores[i])]})
    plot_search_results(queries, path, f"imagined {modality} -> nearest real {modality}"
                        + (" (green: the row's own)" if same else ""), open_image=open_image)
