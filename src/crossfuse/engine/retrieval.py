"""Cross-modal retrieval end to end: contrastive training, evaluation, indexing and search.

``train_retrieval`` trains a RetrievalModel (one tower per modality, frozen backbones read from
the embedding cache by default) on a manifest of pairs; ``Retriever`` embeds rows or free-form
queries (a sentence, an image or audio file), builds a VectorIndex over a collection and searches it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

import crossfuse
from crossfuse.atomic import atomic_write
from crossfuse.config.schema import Config
from crossfuse.data import (Collator, ManifestDataset, apply_policy, check_columns, find_problems,
                            missing_cells, read_manifest, split_frame, usable_rows)
from crossfuse.data.manifest import AUDIO_EXTS, IMAGE_EXTS
from crossfuse.data.processors.base import FileProcessor, resolve_path
from crossfuse.data.processors.image import open_image
from crossfuse.engine.extract import cache_root, with_cache
from crossfuse.engine.pipeline import (RunResult, default_encoders, evaluation_part, infer_roles, load_table, save_run,
                                      validate_data, write_split)
from crossfuse.engine.inference import default_device
from crossfuse.engine.trainer import Trainer, seed_all
from crossfuse.errors import ConfigError, CrossfuseError, DataError
from crossfuse.index import VectorIndex
from crossfuse.progress import Progress
from crossfuse.threads import set_threads
from crossfuse.metrics import plot_search_results, plot_training_curves, retrieval_metrics
from crossfuse.models import RetrievalModel, build_retrieval_model, component_problems, load_model, pair_loss, \
    param_counts, read_json, save_model

log = logging.getLogger(__name__)

MONITOR = "recall_mean"  # mean of Recall@1/5/10 in both directions of the monitored pair


# --- metrics over embedded rows ------------------------------------------------------------
def _unique_rows(vectors: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Positions of the first row of each distinct (group, embedding): an image listed once per
    caption is one gallery item (and one query), while distinct captions stay distinct."""
    seen, keep = set(), []
    for i, (g, v) in enumerate(zip(groups, vectors.astype(np.float16))):
        key = (int(g), v.tobytes())
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return np.array(keep, dtype=np.int64)


def direction_metrics(embeddings: Mapping[str, Tuple[np.ndarray, np.ndarray]], groups: np.ndarray,
                      pairs: Sequence[Tuple[str, str]], chunk: int = 1024) -> Dict[str, Dict[str, float]]:
    """Retrieval metrics for each (query modality, gallery modality) in ``pairs``, both ways.

    ``embeddings[m] = (vectors (n, d), present (n,) bool)`` over the same n rows; ``groups`` (n,)
    tells which rows belong together. Queries with no relevant gallery item are left out.
    """
    out: Dict[str, Dict[str, float]] = {}
    for a, b in pairs:
        for q, g in ((a, b), (b, a)):
            qv, qm = embeddings[q]
            gv, gm = embeddings[g]
            qi, gi = np.flatnonzero(qm), np.flatnonzero(gm)
            qi, gi = qi[_unique_rows(qv[qi], groups[qi])], gi[_unique_rows(gv[gi], groups[gi])]
            qi = qi[np.isin(groups[qi], groups[gi])]
            if not len(qi):
                continue
            out[f"{q}->{g}"] = {**retrieval_metrics(qv[qi], gv[gi], groups[qi], groups[gi], chunk=chunk),
                                "gallery": int(len(gi))}
    return out


def collect_embeddings(model, loader: DataLoader, device, modalities: Sequence[str],
                       each: Optional[Callable[[Any, Any], None]] = None, progress: bool = False
                       ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """{modality: (embeddings (n, d), present (n,))} over every batch of ``loader``, run through
    ``model``'s forward; ``each(output, batch)`` also sees every batch (e.g. for a loss)."""
    vecs: Dict[str, List[np.ndarray]] = {m: [] for m in modalities}
    masks: Dict[str, List[np.ndarray]] = {m: [] for m in modalities}
    for batch in Progress(loader, "embed", enabled=progress, unit="batch"):
        batch = batch.to(device)
        out = model(batch)
        if each is not None:
            each(out, batch)
        for m in modalities:
            vecs[m].append(out.embeddings[m].float().cpu().numpy())
            masks[m].append(out.mask[m].cpu().numpy())
    return {m: (np.concatenate(vecs[m]), np.concatenate(masks[m]).astype(bool)) for m in modalities}


def recall_mean(metrics: Dict[str, Dict[str, float]], pair: Sequence[str]) -> float:
    a, b = pair
    values = [metrics[d][f"recall@{k}"] for d in (f"{a}->{b}", f"{b}->{a}") if d in metrics for k in (1, 5, 10)]
    return float(np.mean(values)) if values else 0.0


# --- the trained model ------------------------------------------------------------------------
class Retriever:
    """A trained RetrievalModel with its processors: embed, index, search, evaluate."""

    def __init__(self, model: RetrievalModel, processors: Mapping[str, Any], meta: Dict[str, Any],
                 cache_root: Optional[Path] = None):
        self.model, self.processors, self.meta = model, dict(processors), meta
        self.cache_root = cache_root
        self.allow_outside_paths = False  # as Predictor's: a manifest's files stay in its folder
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
                    missing=(), batch_size: int = 64, num_workers: int = 0, progress: bool = False
                    ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """Shared-space embeddings of ``df``'s rows: {modality: (vectors (n, d), present (n,))}."""
        mods = list(modalities or self.modalities)
        for m in mods:
            self._check_modality(m)
        sources = with_cache(self.model, {m: self.processors[m] for m in mods}, df, base_dir, self.cache_root,
                             batch_size=batch_size, num_workers=num_workers, device=self.device, missing=missing,
                             progress=progress)
        loader = DataLoader(ManifestDataset(df, sources, base_dir, train=False, missing=missing), batch_size=batch_size,
                            num_workers=num_workers, collate_fn=Collator(sources))
        self.model.to(self.device).eval()
        return collect_embeddings(self.model, loader, self.device, mods, progress=progress)

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
        return query_modality(query, {m: getattr(p, "kind", "") for m, p in self.processors.items()})

    def build_index(self, df: pd.DataFrame, base_dir: Path, modality: str, kind: str = "exact",
                    id_column: Optional[str] = None, index: Optional[VectorIndex] = None, batch_size: int = 64,
                    num_workers: int = 0, progress: bool = True, file: str = "<dataframe>",
                    on_bad_item: str = "skip", **params: Any) -> VectorIndex:
        """Index ``df``'s items of ``modality`` (or add them to ``index``). Each vector's id maps back to
        its row: {"row": 1-based row number, "value": the item, id_column: its id}. Identical items
        (an image listed once per caption) are indexed once."""
        self._check_modality(modality)
        proc = self.processors[modality]
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
                                            num_workers=num_workers, progress=progress)[modality]
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
                       check_files: bool = True) -> Dict[str, Any]:
        """Recall@1/5/10, median/mean rank and mAP for every modality pair, both directions.

        With ``on_bad_item="missing"`` a row with an empty or bad cell still counts in the
        directions between its other modalities."""
        group_column = group_column or self.meta.get("group_column")
        kept, missing = usable_rows(df, self.processors, file, base_dir, on_bad_item, task="retrieval",
                                    open_files=check_files, allow_outside=self.allow_outside_paths)
        missing = missing | set(known_missing)
        groups = _group_codes(kept, group_column)
        emb = self.embed_frame(kept, base_dir, missing=missing, batch_size=batch_size, num_workers=num_workers,
                               progress=progress)
        mods = self.modalities
        pairs = [(a, b) for i, a in enumerate(mods) for b in mods[i + 1:]]
        per_direction = direction_metrics(emb, groups, pairs)
        pair = self.meta.get("monitor_pair") or mods[:2]
        metrics = {"directions": per_direction, MONITOR: recall_mean(per_direction, pair),
                   "monitor_pair": list(pair), "n": int(len(kept))}
        if out_dir is not None:
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
        kinds = {m: getattr(self.processors[m], "kind", "text") for m in pair}
        value = lambda m, r: _display_value(df.iloc[r][self.processors[m].columns[0]], base_dir)  # noqa: E731
        queries = []
        for r in picks:
            scores = gv[gi] @ qv[r]
            best = np.argsort(-scores)[:top]
            queries.append({"kind": kinds[q_mod], "value": value(q_mod, r),
                            "results": [{"kind": kinds[g_mod], "value": value(g_mod, gi[j]), "score": float(scores[j]),
                                         "relevant": bool(groups[gi[j]] == groups[r])} for j in best]})
        plot_search_results(queries, path, f"{q_mod} -> {g_mod}: top {top} (green: the query's pair)",
                            open_image=open_image)


def query_modality(query: str, kinds: Mapping[str, str]) -> str:
    """The modality (of ``kinds``: name -> image/text/audio/...) a free-form query belongs to: an
    existing image or audio file is that kind, anything else is text."""
    by_kind = {k: m for m, k in kinds.items()}
    lower = str(query).lower()
    if Path(str(query)).is_file():
        if lower.endswith(IMAGE_EXTS) and "image" in by_kind:
            return by_kind["image"]
        if lower.endswith(AUDIO_EXTS) and "audio" in by_kind:
            return by_kind["audio"]
    if "text" not in by_kind:
        raise CrossfuseError(f"'{query}' is not an image or audio file the model can read, and the model has no "
                             "text tower")
    return by_kind["text"]


def _display_value(value: Any, base_dir: Path) -> str:
    """A path made absolute when it names a file relative to the manifest; text as it is."""
    p = Path(str(value))
    if p.is_absolute():
        return str(p)
    return str(base_dir / p) if (base_dir / p).exists() else str(value)


def _jsonable(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _group_codes(df: pd.DataFrame, column: Optional[str]) -> np.ndarray:
    if column and column in df.columns:
        return pd.factorize(df[column].astype(str))[0].astype(np.int64)
    return np.arange(len(df), dtype=np.int64)


def write_retrieval_report(out_dir: Path, metrics: Dict[str, Any], history=None,
                           extra: Optional[Dict[str, Any]] = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "metrics.json", json.dumps({**metrics, **(extra or {})}, indent=2))
    if history:
        atomic_write(out_dir / "history.json", json.dumps(history, indent=2))
        plot_training_curves(history, out_dir / "training_curves.png", MONITOR)
    lines = ["# crossfuse: cross-modal retrieval", ""]
    lines += [f"- {k}: {v}" for k, v in (extra or {}).items() if isinstance(v, (str, int, float))]
    lines += [f"- rows evaluated: {metrics['n']}", f"- {MONITOR} ({' <-> '.join(metrics['monitor_pair'])}): "
              f"{metrics[MONITOR]:.4f}", "",
              "| direction | queries | gallery | R@1 | R@5 | R@10 | median rank | mean rank | mAP |",
              "|---|---|---|---|---|---|---|---|---|"]
    for d, m in metrics["directions"].items():
        lines.append(f"| {d} | {m['queries']} | {m['gallery']} | {m['recall@1']:.4f} | {m['recall@5']:.4f} | "
                     f"{m['recall@10']:.4f} | {m['median_rank']:.0f} | {m['mean_rank']:.1f} | {m['mAP']:.4f} |")
    atomic_write(out_dir / "summary.md", "\n".join(lines) + "\n")


# --- training ---------------------------------------------------------------------------------
class RetrievalRun(RunResult):
    """A RunResult whose predictor is a Retriever (also reachable as ``retriever``)."""

    @property
    def retriever(self) -> "Retriever":
        return self.predictor


def resolve_retrieval_config(cfg: Config, df: pd.DataFrame, flickr: bool = False) -> Config:
    """No target; the group column (Flickr: image_id); modalities inferred when not given."""
    r = cfg.retrieval
    if r.group_column is None and flickr:
        r = dataclasses.replace(r, group_column="image_id")
    data = dataclasses.replace(cfg.data, target=None, task="retrieval")
    cfg = dataclasses.replace(cfg, data=data, retrieval=r)
    if not cfg.modalities:
        cfg = dataclasses.replace(cfg, modalities=infer_roles(cfg, df, [cfg.data.id_column, cfg.data.split.column,
                                                                        r.group_column]))
    cfg = default_encoders(cfg)
    problems = component_problems(cfg)
    if len(cfg.modalities) < 2:
        problems.append(f"retrieval needs at least two modalities; got {', '.join(cfg.modalities) or 'none'}")
    if r.group_column and r.group_column not in df.columns:
        problems.append(f"retrieval.group_column: no column '{r.group_column}' in the manifest")
    if r.monitor_pair is not None and (len(r.monitor_pair) != 2 or not set(r.monitor_pair) <= set(cfg.modalities)):
        problems.append(f"retrieval.monitor_pair must name two of the modalities ({', '.join(cfg.modalities)}); "
                        f"got {r.monitor_pair}")
    if cfg.train.early_stopping.metric not in (None, MONITOR, "loss"):
        problems.append(f"train.early_stopping.metric must be {MONITOR} or loss for retrieval")
    if problems:
        raise ConfigError(problems)
    return cfg


def train_retrieval(cfg: Config, df: Optional[pd.DataFrame] = None, base_dir: Optional[Path] = None,
                    resume: bool = False, callbacks: Sequence[Any] = (), save: bool = True) -> RetrievalRun:
    """Train a shared embedding space on a manifest of pairs, evaluate it on the test split, save it."""
    file, flickr = "<dataframe>", False
    if cfg.train.threads is not None:
        set_threads(cfg.train.threads)
    if df is None:
        df, base_dir, file = load_table(cfg)
        flickr = Path(cfg.data.manifest).is_dir()
    base_dir = Path(base_dir or ".")
    cfg = resolve_retrieval_config(cfg, df, flickr)
    r = cfg.retrieval
    processors, problems = validate_data(cfg, df, base_dir, file)
    df, policy_report = apply_policy(df, problems, cfg.data.on_bad_item, None)
    missing = missing_cells(problems, processors)
    groups = pd.Series(_group_codes(df, r.group_column), index=df.index)
    splits = split_frame(df, cfg.data.split, None, stratify=False, file=file, groups=r.group_column)
    seed_all(cfg.train.seed)
    model = build_retrieval_model(cfg, processors, splits["train"], base_dir)
    total, trainable = param_counts(model)
    log.info("Retrieval model over %s into %d-d; %s parameters (%s trainable)", ", ".join(model.modalities),
             r.embed_dim, f"{total:,}", f"{trainable:,}")

    root = cache_root(cfg.cache)
    clock = time.perf_counter()
    sources = with_cache(model, processors, df, base_dir, root, batch_size=cfg.cache.batch_size,
                         num_workers=cfg.train.num_workers, missing=missing, progress=cfg.train.progress)
    timings = {"extract_seconds": time.perf_counter() - clock}
    collate = Collator(sources)

    def dataset(rows: pd.DataFrame, is_train: bool) -> ManifestDataset:
        return ManifestDataset(rows, sources, base_dir, groups.loc[rows.index].to_numpy(), train=is_train,
                               missing=missing)

    order = list(cfg.modalities)
    pair = list(r.monitor_pair or order[:2])
    monitor = cfg.train.early_stopping.metric or MONITOR

    def step_loss(out, batch):
        return pair_loss(out, batch.target, r.loss)

    @torch.no_grad()
    def evaluate(m, loader):
        targets, losses = [], []

        def loss_and_groups(out, batch):
            losses.append(float(pair_loss(out, batch.target, r.loss)) * len(batch))
            targets.append(batch.target.cpu().numpy())

        was = m.training
        m.eval()
        emb = collect_embeddings(m, loader, trainer.fabric.device, order, each=loss_and_groups)
        m.train(was)
        g = np.concatenate(targets)
        per = direction_metrics(emb, g, [tuple(pair)])
        flat = {f"{d}_R@{k}": v[f"recall@{k}"] for d, v in per.items() for k in (1, 5, 10)}
        return {MONITOR: recall_mean(per, pair), "loss": sum(losses) / max(1, len(g)), **flat}

    out_dir = Path(cfg.output_dir) if save else None
    trainer = Trainer(cfg.train, None, None, monitor, monitor != "loss",
                      checkpoint_path=None if out_dir is None else out_dir / "checkpoint.safetensors",
                      callbacks=callbacks, step_loss=step_loss, evaluate=evaluate)
    has_val = len(splits["val"]) > 0
    clock = time.perf_counter()
    result = trainer.fit(model, dataset(splits["train"], True), dataset(splits["val"], False) if has_val else None,
                         collate, resume=resume)
    refit_epochs = None
    if cfg.train.refit and has_val and result.best_epoch:
        # a fresh model on train + val for the epoch count early stopping chose
        refit_epochs = result.best_epoch
        log.info("Refit on train + val (%d rows) for %d epochs", len(splits["train"]) + len(splits["val"]),
                 refit_epochs)
        both = pd.concat([splits["train"], splits["val"]]).sort_index()
        seed_all(cfg.train.seed)
        model = build_retrieval_model(cfg, processors, both, base_dir)
        refit_cfg = dataclasses.replace(cfg.train, epochs=refit_epochs)
        refitter = Trainer(refit_cfg, None, None, monitor, monitor != "loss", callbacks=callbacks, step_loss=step_loss)
        refitter.fit(model, dataset(both, True), None, collate)
    timings["train_seconds"] = time.perf_counter() - clock
    model.to("cpu").eval()
    temperature = float(1 / model.scale.detach())
    log.info("Learned temperature: %.4f", temperature)

    meta = {"crossfuse_version": crossfuse.__version__, "task": {"kind": "retrieval"}, "target": None,
            "id_column": cfg.data.id_column, "group_column": r.group_column, "monitor_pair": pair,
            "config": cfg.to_dict()}
    retriever = Retriever(model, processors, meta, cache_root=root)
    retriever.allow_outside_paths = cfg.data.allow_outside_paths
    eval_part = evaluation_part(splits)
    sizes = {k: len(v) for k, v in splits.items()}
    extra = {"evaluated_on": eval_part, "modalities": ", ".join(order), "loss": r.loss,
             "temperature": round(temperature, 4), "best_epoch": result.best_epoch,
             "epochs_run": len(result.history), "refit_epochs": refit_epochs or "none",
             **{k: round(v, 2) for k, v in timings.items()},
             **{f"{k}_items": v for k, v in sizes.items()},
             **{f"policy_{k}": v for k, v in policy_report.items()}}
    is_main = trainer.is_main
    clock = time.perf_counter()
    metrics = retriever.evaluate_frame(splits[eval_part], base_dir, file, r.group_column,
                                       out_dir=out_dir if (out_dir is not None and is_main) else None,
                                       batch_size=cfg.cache.batch_size, history=result.history, extra=extra,
                                       known_missing=missing, check_files=False)
    timings["evaluate_seconds"] = time.perf_counter() - clock
    if out_dir is not None and is_main:
        save_run(out_dir, retriever, cfg)
        write_split(out_dir, splits, cfg.data.id_column)
    return RetrievalRun(retriever, metrics, result, out_dir, sizes, timings)


# --- indexes on disk ----------------------------------------------------------------------------
def index_manifest(model_dir: Path, manifest: Path, out: Path, modality: Optional[str] = None, kind: str = "exact",
                   add: bool = False, batch_size: int = 64, num_workers: int = 0, allow_outside_paths: bool = False,
                   **params: Any) -> VectorIndex:
    """Build (or with ``add`` extend) the index at ``out`` over a manifest's items of one modality."""
    retriever = Retriever.load(model_dir)
    retriever.allow_outside_paths = allow_outside_paths
    if manifest.is_dir():
        from crossfuse.data import read_flickr

        df, base_dir = read_flickr(manifest), manifest
    else:
        df, base_dir = read_manifest(manifest), manifest.parent
    modality = modality or _default_gallery(retriever)
    existing = None
    if add and (out / "index.json").is_file():
        existing = VectorIndex.load(out)
        if existing.meta.get("modality") != modality:
            raise CrossfuseError(f"{out} indexes '{existing.meta.get('modality')}', not '{modality}'")
    index = retriever.build_index(df, base_dir, modality, kind, id_column=retriever.meta.get("id_column"),
                                  index=existing, batch_size=batch_size, num_workers=num_workers, file=str(manifest),
                                  **params)
    sources = list((existing.meta.get("manifests") if existing else None) or []) + [str(manifest.resolve())]
    extra = {"model": str(Path(model_dir).resolve()), "modality": modality, "manifests": sources}
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
        if getattr(retriever.processors[m], "kind", "") != "text":
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
        g_kind = kinds.get(index.meta.get("modality"), "text")
        plot_search_results([{"kind": kinds[modality], "value": q, "results": [{"kind": g_kind, "value": h["value"],
                                                                               "score": h["score"]} for h in hs]}
                             for q, hs in zip(queries, hits)], grid, open_image=open_image)
    return hits
