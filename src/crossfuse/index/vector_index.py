"""A nearest-neighbour index over L2-normalised embeddings (cosine similarity = inner product).

Kinds:
- ``exact``: every vector scored. FAISS's flat index when FAISS is installed, otherwise a
  chunked numpy matrix product (the fallback: same results, no extra dependency).
- ``ivf``: FAISS inverted lists (k-means cells, ``nprobe`` cells visited per query).
- ``hnsw``: FAISS hierarchical navigable small-world graph (``ef_search`` candidates per query).

Each vector carries an external id (any JSON value: a manifest row, an id string, a dict); search
returns those ids. ``add`` may be called again later (incremental). ``save`` writes
``index.json`` + ``ids.json`` + the vectors (FAISS's own binary format, or ``vectors.npy``)
into a temporary directory renamed into place: a killed save leaves the previous index or none.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from crossfuse.atomic import atomic_directory, read_json
from crossfuse.errors import ConfigError, CrossfuseError

log = logging.getLogger(__name__)

INDEX_KINDS = ("exact", "ivf", "hnsw")
PARAM_LIMITS = {"nlist": 1 << 24, "nprobe": 1 << 24, "M": 512, "ef_construction": 1 << 16, "ef_search": 1 << 16}
META_FILE, IDS_FILE, FAISS_FILE, NUMPY_FILE = "index.json", "ids.json", "vectors.faiss", "vectors.npy"


def faiss_available() -> bool:
    # FAISS's loader logs each CPU-specific build it tries and fails to find (a harmless
    # ModuleNotFoundError for swigfaiss_avx2 that reads like an error): keep it quiet
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim == 1:
        x = x[None, :]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class VectorIndex:
    """Cosine-similarity search over vectors with external ids.

    ``params``: ``nlist`` (IVF cells; default about 4 sqrt(n) at the first add), ``nprobe``
    (cells visited; default 32), ``M`` (HNSW links per node; 32), ``ef_construction`` (200),
    ``ef_search`` (128). Larger nprobe / ef_search trade speed for recall.
    """

    def __init__(self, dim: int, kind: str = "exact", backend: Optional[str] = None, **params: Any):
        if kind not in INDEX_KINDS:
            raise ConfigError(f"index kind must be one of {', '.join(INDEX_KINDS)}. Got {kind!r}.")
        have_faiss = faiss_available()
        if backend is None:
            backend = "faiss" if have_faiss else "numpy"
        if backend == "faiss" and not have_faiss:
            raise CrossfuseError("the FAISS backend needs the 'faiss-cpu' package: pip install 'crossfuse[index]'")
        if backend == "numpy" and kind != "exact":
            log.warning("FAISS is not installed (pip install 'crossfuse[index]'): using an exact index instead "
                        "of %s", kind)
            kind = "exact"
        self.dim, self.kind, self.backend = int(dim), kind, backend
        self.params: Dict[str, Any] = {"nprobe": 32, "M": 32, "ef_construction": 200, "ef_search": 128, **params}
        self.ids: List[Any] = []
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)  # numpy backend
        self._faiss = None  # built lazily (IVF needs data to train its cells)
        self.meta: Dict[str, Any] = {}  # index.json of a loaded index (model, modality, ...)

    def __len__(self) -> int:
        return len(self.ids)

    # --- building -------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, ids: Optional[Sequence[Any]] = None) -> "VectorIndex":
        """Add vectors (normalised here) with their ids (default: running positions)."""
        x = _normalise(vectors)
        if x.shape[1] != self.dim:
            raise CrossfuseError(f"the index holds {self.dim}-d vectors; got {x.shape[1]}-d")
        ids = list(range(len(self.ids), len(self.ids) + len(x))) if ids is None else list(ids)
        if len(ids) != len(x):
            raise CrossfuseError(f"{len(x)} vectors but {len(ids)} ids")
        if self.backend == "numpy":
            self._vectors = np.concatenate([self._vectors, x]) if len(self._vectors) else x
        else:
            if self._faiss is None:
                self._faiss = self._build_faiss(x)
            self._faiss.add(x)
        self.ids += ids
        return self

    def _build_faiss(self, first: np.ndarray):
        import faiss

        p = self.params
        if self.kind == "exact":
            return faiss.IndexFlatIP(self.dim)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, int(p["M"]), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(p["ef_construction"])
            index.hnsw.efSearch = int(p["ef_search"])
            return index
        # IVF: cells learned by k-means on the first batch added (FAISS wants >= 39 points per cell)
        nlist = int(p.get("nlist") or max(1, min(int(4 * math.sqrt(len(first))), len(first) // 39)))
        p["nlist"] = nlist
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = first
        if len(first) > 64 * nlist:  # k-means on a sample is nearly as good and much faster
            sample = first[np.random.default_rng(0).choice(len(first), 64 * nlist, replace=False)]
        index.train(sample)
        index.nprobe = min(int(p["nprobe"]), nlist)
        self._quantizer = quantizer  # keep the quantizer alive as long as the index
        return index

    def set_search_params(self, **params: Any) -> None:
        """Change ``nprobe`` (IVF) or ``ef_search`` (HNSW) of a built index."""
        self.params.update(params)
        if self._faiss is not None:
            self._apply_search_params()

    def _apply_search_params(self) -> None:
        if self.kind == "ivf":
            self._faiss.nprobe = min(int(self.params["nprobe"]), int(self.params.get("nlist") or 1))
        elif self.kind == "hnsw":
            self._faiss.hnsw.efSearch = int(self.params["ef_search"])

    # --- searching ------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 10) -> Tuple[np.ndarray, List[List[Any]]]:
        """Top ``k`` per query: (scores (Q, k'), ids) with k' = min(k, len(index)), best first."""
        if not len(self):
            raise CrossfuseError("the index is empty: add vectors before searching")
        q = _normalise(queries)
        if q.shape[1] != self.dim:
            raise CrossfuseError(f"the index holds {self.dim}-d vectors; the query is {q.shape[1]}-d")
        k = min(int(k), len(self))
        scores, positions = self.search_positions(q, k)
        return scores, [[self.ids[p] for p in row if p >= 0] for row in positions]

    def search_positions(self, q: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Like ``search`` on already-normalised float32 queries, returning positions (-1: none)."""
        if self.backend == "faiss":
            return self._faiss.search(q, k)
        scores = np.empty((len(q), k), dtype=np.float32)
        positions = np.empty((len(q), k), dtype=np.int64)
        for s in range(0, len(q), 256):  # (256 x N) scores at a time
            block = q[s:s + 256] @ self._vectors.T
            top = np.argpartition(-block, k - 1, axis=1)[:, :k]
            top_scores = np.take_along_axis(block, top, 1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            positions[s:s + 256] = np.take_along_axis(top, order, 1)
            scores[s:s + 256] = np.take_along_axis(top_scores, order, 1)
        return scores, positions

    # --- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path, extra: Optional[Dict[str, Any]] = None) -> Path:
        """Write the index into directory ``path`` (replaced atomically); ``extra`` goes to index.json."""
        meta = {"format": "crossfuse-index/1", "dim": self.dim, "kind": self.kind, "backend": self.backend,
                "count": len(self), "params": self.params, **(extra or {})}
        with atomic_directory(path) as tmp:
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
            (tmp / IDS_FILE).write_text(json.dumps(self.ids))
            if self.backend == "faiss" and self._faiss is not None:
                import faiss

                faiss.write_index(self._faiss, str(tmp / FAISS_FILE))
            else:
                np.save(tmp / NUMPY_FILE, self._vectors)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "VectorIndex":
        """Read an index directory; every value of index.json is checked before it is used, and a
        damaged directory is a CrossfuseError naming the file."""
        path = Path(path)
        if not (path / META_FILE).is_file():
            raise CrossfuseError(f"{path} is not a crossfuse index (no {META_FILE}); build one with `crossfuse index`")
        meta = read_json(path / META_FILE)
        problems = meta_problems(meta)
        if problems:
            raise CrossfuseError(f"{path / META_FILE} cannot be loaded:\n" + "\n".join(f"  - {p}" for p in problems))
        backend = meta["backend"]
        if backend == "faiss" and not faiss_available():
            raise CrossfuseError(f"{path} was built with FAISS ({meta['kind']}): pip install 'crossfuse[index]'")
        index = cls(meta["dim"], meta["kind"], backend=backend, **meta["params"])
        index.ids = read_json(path / IDS_FILE)
        if not isinstance(index.ids, list):
            raise CrossfuseError(f"{path / IDS_FILE} must hold a list of ids")
        index.meta = meta
        try:
            if backend == "faiss" and (path / FAISS_FILE).is_file():
                import faiss

                index._faiss = faiss.read_index(str(path / FAISS_FILE))
                if index._faiss.d != index.dim:
                    raise CrossfuseError(f"{path / FAISS_FILE} holds {index._faiss.d}-d vectors, "
                                         f"{META_FILE} says {index.dim}")
                index._apply_search_params()
            elif (path / NUMPY_FILE).is_file():
                vectors = np.load(path / NUMPY_FILE, allow_pickle=False, mmap_mode="r")
                if vectors.ndim != 2 or vectors.shape[1] != index.dim or vectors.dtype != np.float32:
                    raise CrossfuseError(f"{path / NUMPY_FILE} holds {vectors.dtype} {vectors.shape}; "
                                         f"{META_FILE} says float32 (n, {index.dim})")
                index._vectors = np.array(vectors)
        except CrossfuseError:
            raise
        except Exception as exc:  # FAISS and numpy raise their own types for damaged files
            raise CrossfuseError(f"{path}: the stored vectors cannot be read: {exc}") from exc
        if len(index.ids) != (index._faiss.ntotal if index._faiss is not None else len(index._vectors)):
            raise CrossfuseError(f"{path}: {IDS_FILE} and the stored vectors disagree in length; rebuild the index")
        return index


def meta_problems(meta: Any) -> List[str]:
    """What is wrong with an index.json's values (types and ranges), all at once."""
    if not isinstance(meta, dict):
        return ["must hold a mapping"]
    problems = []
    dim = meta.get("dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 65536:
        problems.append(f"'dim' must be an int in [1, 65536]; got {dim!r}")
    if meta.get("kind") not in INDEX_KINDS:
        problems.append(f"'kind' must be one of {', '.join(INDEX_KINDS)}; got {meta.get('kind')!r}")
    if meta.get("backend") not in ("faiss", "numpy"):
        problems.append(f"'backend' must be faiss or numpy; got {meta.get('backend')!r}")
    params = meta.get("params")
    if not isinstance(params, dict):
        problems.append(f"'params' must be a mapping; got {params!r}")
    else:
        for key, value in params.items():
            if key not in PARAM_LIMITS:
                problems.append(f"unknown parameter 'params.{key}'; known: {', '.join(PARAM_LIMITS)}")
            elif value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                        or not 1 <= value <= PARAM_LIMITS[key]):
                problems.append(f"'params.{key}' must be an int in [1, {PARAM_LIMITS[key]}]; got {value!r}")
    return problems
