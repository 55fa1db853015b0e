"""What the server serves: a loaded model and search indexes, and requests turned into manifest rows.

Nothing here knows HTTP. A request's fields become one row per item, exactly as a manifest row
would look (uploaded files are written under the server's own upload folder and named by it,
decoded by the modality's processor, then deleted); a modality the item leaves out is absent
through the presence mask as in training; a batch of items is collated and run through the same
model, outputs and trust as ``crossfuse predict`` and ``search``. Decoding happens in each
request's own thread, so the one inference thread only collates and runs the model.
"""
from __future__ import annotations

import base64
import binascii
import io
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
import pandas as pd
import torch

from crossfuse.data import Collator
from crossfuse.data.processors.base import FileProcessor, is_blank
from crossfuse.data.processors.image import open_image, pixel_problem
from crossfuse.engine import Predictor, Retriever, TaskSpec
from crossfuse.engine.index_io import model_beside
from crossfuse.engine.inference import collect_outputs
from crossfuse.engine.retrieval_eval import collect_embeddings
from crossfuse.errors import CrossfuseError
from crossfuse.index import VectorIndex
from crossfuse.models import RetrievalModel, load_model

log = logging.getLogger(__name__)
MAX_ITEMS = 256  # items in one predict request
MAX_TOP = 100
THUMBNAIL_SIDE = 160


class RequestError(Exception):
    """A request the server refuses: the HTTP status, the field that is wrong, and why."""

    def __init__(self, status: int, message: str, field: Optional[str] = None, item: Optional[int] = None):
        super().__init__(message)
        self.status, self.message, self.field, self.item = status, message, field, item

    def body(self) -> Dict[str, Any]:
        return {"error": self.message, "field": self.field, "item": self.item}


@dataclass
class Item:
    """One input after its checks: a manifest-like row, the modalities it leaves out, and each
    present modality loaded by its processor (what a DataLoader worker would have produced)."""

    row: Dict[str, Any]
    absent: Set[str]
    loaded: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Query:
    """One search query (text, or an uploaded file), loaded by its modality's processor."""

    index: str
    modality: str
    top: int
    loaded: Any = None


def sniff(kind: str, data: bytes, max_pixels: Optional[int] = None) -> str:
    """The file type of ``data`` judged from its bytes (never from a name): a file extension for the
    upload; RequestError 415 when the bytes are not a file of ``kind``, 413 for an image whose
    header says it has more than ``max_pixels`` (refused before anything is decoded)."""
    if kind == "image":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as img:
                fmt, size = (img.format or "").lower(), img.size
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            fmt = ""
        if not fmt:
            raise RequestError(415, "not an image file (PNG, JPEG, GIF, BMP, WebP or TIFF)")
        problem = pixel_problem(size, max_pixels) if max_pixels is not None else None
        if problem:
            raise RequestError(413, problem)
        return {"jpeg": "jpg", "mpo": "jpg"}.get(fmt, fmt)
    if kind == "audio":
        import soundfile as sf

        try:
            fmt = sf.info(io.BytesIO(data)).format.lower()
        except Exception:  # libsndfile raises its own error types for unknown bytes
            raise RequestError(415, "not an audio file soundfile can read (WAV, FLAC, OGG or MP3)") from None
        return {"wav": "wav", "flac": "flac", "ogg": "ogg", "mp3": "mp3"}.get(fmt, "wav")
    raise RequestError(415, f"{kind} inputs are not sent as files")


def decode_base64(value: Any, column: str) -> bytes:
    """A JSON field holding a file: base64, optionally as a data URL (data:image/png;base64,...)."""
    if not isinstance(value, str):
        raise RequestError(422, f"a file field holds base64 text (or is sent as a multipart upload); got "
                           f"{type(value).__name__}", column)
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, "not valid base64", column) from None


class Service:
    """A model directory (fusion or retrieval) and any number of named search indexes, loaded once.

    ``indexes``: name -> index directory; an index's model is the served model when that is the
    retrieval model it was built with, else the model directory beside the index (as for
    ``crossfuse search``). Uploaded files live in a private temporary folder, each deleted as soon
    as it is decoded, the folder at ``close``.
    """

    def __init__(self, model_dir: Path, indexes: Optional[Mapping[str, Path]] = None,
                 upload_dir: Optional[Path] = None):
        self.model_dir = Path(model_dir)
        model, processors, meta = load_model(self.model_dir)
        self.meta = meta
        self.processors = dict(processors)
        # serving never writes the embedding cache: frozen encoders run on each request's items
        if isinstance(model, RetrievalModel):
            self.kind = "retrieval"
            self.retriever: Optional[Retriever] = Retriever(model, processors, meta)
            self.predictor: Optional[Predictor] = None
            model.to(self.retriever.device)
        else:
            self.kind = "fusion"
            self.predictor = Predictor(model, processors, TaskSpec.from_dict(meta["task"]), meta)
            self.retriever = None
            self.predictor._place()
            model.eval()
        self.indexes: Dict[str, Tuple[VectorIndex, Retriever]] = {}
        for name, path in (indexes or {}).items():
            self.indexes[name] = self._load_index(name, Path(path))
        self._own_upload_dir = upload_dir is None
        self.upload_dir = Path(upload_dir or tempfile.mkdtemp(prefix="crossfuse-serve-")).resolve()
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self._thumbnails: Dict[Tuple[str, int], bytes] = {}

    def _load_index(self, name: str, path: Path) -> Tuple[VectorIndex, Retriever]:
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise CrossfuseError(f"index name {name!r} must be letters, digits, '-' or '_' (it is part of URLs)")
        index = VectorIndex.load(path)
        if self.retriever is not None and _same_dir(index.meta.get("model"), self.model_dir):
            return index, self.retriever
        model_dir = model_beside(path, index.meta)
        if self.retriever is not None and model_dir.resolve() == self.model_dir.resolve():
            return index, self.retriever
        retriever = Retriever.load(model_dir)
        retriever.cache_root = None
        retriever.model.to(retriever.device)
        return index, retriever

    def close(self) -> None:
        if self._own_upload_dir:
            shutil.rmtree(self.upload_dir, ignore_errors=True)

    # ---- what the model reads ------------------------------------------------------------------

    @cached_property
    def fields(self) -> Dict[str, Tuple[str, Dict[str, Any]]]:
        """Every input field: column -> (modality, description) (the processors do not change, so
        it is built once, not per request)."""
        out: Dict[str, Tuple[str, Dict[str, Any]]] = {}
        for m, proc in self.processors.items():
            for col in proc.columns:
                if isinstance(proc, FileProcessor):
                    desc = {"type": "file", "kind": proc.kind, "accept": list(proc.extensions)}
                elif proc.kind == "tabular":
                    vocab = getattr(proc, "categorical_vocab", {})
                    desc = ({"type": "category", "values": list(vocab[col])} if col in vocab
                            else {"type": "number", **_stats(getattr(proc, "numeric", {}).get(col))})
                else:
                    desc = {"type": "text"}
                out[col] = (m, desc)
        return out

    def describe(self) -> Dict[str, Any]:
        """GET /v1/model: what the model is and what it reads."""
        fields = self.fields
        task = self.meta.get("task") or {}
        mods = [{"name": m, "kind": p.kind, "columns": list(p.columns),
                 "fields": [{"name": c, **fields[c][1]} for c in p.columns]} for m, p in self.processors.items()]
        arch = self.meta.get("architecture") or {}
        fusion = arch.get("fusion") if isinstance(arch.get("fusion"), dict) else {}
        return {"kind": self.kind, "task": task.get("kind", self.kind),
                "classes": list(task.get("labels") or []) if task.get("kind") == "classification" else [],
                "target": self.meta.get("target"), "fusion": fusion.get("name"),
                "modalities": mods, "input_schema": self.input_schema(),
                "indexes": [{"name": n, "modality": ix.meta.get("modality"), "count": len(ix),
                             "query_modalities": list(r.modalities)} for n, (ix, r) in self.indexes.items()]}

    def input_schema(self) -> Dict[str, Any]:
        """JSON Schema of one item of POST /v1/predict (every field optional: a modality may be absent)."""
        props: Dict[str, Any] = {}
        for col, (m, desc) in self.fields.items():
            if desc["type"] == "file":
                props[col] = {"type": ["string", "null"], "contentEncoding": "base64",
                              "description": f"{m}: a {desc['kind']} file, base64 (or a multipart upload)"}
            elif desc["type"] == "number":
                props[col] = {"type": ["number", "null"], "description": f"{m}: a number"}
            elif desc["type"] == "category":
                props[col] = {"type": ["string", "number", "null"], "description": f"{m}: one of "
                              + ", ".join(map(str, desc["values"][:20])) + ("..." if len(desc["values"]) > 20 else "")}
            else:
                props[col] = {"type": ["string", "null"], "description": f"{m}: text"}
        return {"type": "object", "properties": props, "additionalProperties": False}

    # ---- requests to rows ----------------------------------------------------------------------

    def parse_item(self, fields: Mapping[str, Any], files: Optional[Mapping[str, bytes]] = None,
                   position: Optional[int] = None) -> Item:
        """Check one item's fields (and uploads) and turn them into a row. Raises RequestError."""
        files = dict(files or {})
        known = self.fields
        id_col = self.meta.get("id_column")
        for name in list(fields) + list(files):
            if name not in known and name != id_col:
                raise RequestError(422, f"unknown field; the model reads {', '.join(known)}", name, position)
        row: Dict[str, Any] = {}
        absent: Set[str] = set()
        written: List[Path] = []
        try:
            for m, proc in self.processors.items():
                given = False
                for col in proc.columns:
                    value = files.get(col, fields.get(col))
                    row[col] = self._cell(proc, col, value, written, position)
                    given = given or not is_blank(row[col])
                if not given:
                    absent.add(m)
            if len(absent) == len(self.processors):
                raise RequestError(422, f"the item gives no modality; the model reads {', '.join(known)} (any of "
                                   "them may be left out, not all)", None, position)
            loaded = {m: None if m in absent else self._load(proc, row, m, position)
                      for m, proc in self.processors.items()}
        finally:
            _remove(written)  # decoded: the upload is not needed any more
        return Item(row, absent, loaded)

    def _load(self, proc, row: Dict[str, Any], modality: str, position: Optional[int] = None) -> Any:
        value = proc.load(row, self.upload_dir, False)
        if value is None:
            if isinstance(proc, FileProcessor):  # why: the processor's own probe says
                try:
                    self._probe(proc, Path(row[proc.column]))
                except RequestError as exc:
                    exc.field, exc.item = proc.column, position
                    raise
            raise RequestError(422, f"the {modality} input cannot be read", proc.columns[0], position)
        return value

    def _cell(self, proc, col: str, value: Any, written: List[Path], position: Optional[int]) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, bytes) and not value):
            return None
        try:
            if isinstance(proc, FileProcessor):
                data = value if isinstance(value, bytes) else decode_base64(value, col)
                return self._write_upload(proc, data, written)
            if proc.kind == "tabular":
                return _tabular_value(proc, col, value)
            if not isinstance(value, str):
                raise RequestError(422, f"text expected; got {type(value).__name__}")
            limit = 100_000
            if len(value) > limit:
                raise RequestError(413, f"text of {len(value):,} characters is over the limit of {limit:,}")
            return value
        except RequestError as exc:
            exc.field = exc.field or col
            exc.item = position
            raise

    def _write_upload(self, proc: FileProcessor, data: bytes, written: List[Path]) -> str:
        """Sniffed, then written under the upload folder; an image is probed when it is loaded (one
        decode), other kinds here from their headers."""
        ext = sniff(proc.kind, data, getattr(proc, "max_pixels", None))
        rel = Path(uuid.uuid4().hex + "." + ext)
        path = self.upload_dir / rel
        path.write_bytes(data)
        written.append(path)
        if proc.kind != "image":
            self._probe(proc, rel)
        return str(rel)

    def _probe(self, proc: FileProcessor, rel: Path) -> None:
        path = self.upload_dir / rel
        problem = proc.probe(path, True)
        if problem is not None:
            problem = problem.replace(str(path), "the upload")
            raise RequestError(413 if "over the limit" in problem else 422, problem)

    # ---- predict -------------------------------------------------------------------------------

    @torch.inference_mode()
    def predict(self, items: Sequence[Item]) -> List[Dict[str, Any]]:
        """One forward pass over ``items`` (the batcher gathers them from concurrent requests)."""
        if self.predictor is None:
            raise RequestError(409, "this is a retrieval model: use POST /v1/embed or /v1/search")
        batch = self._collate(self.processors, [it.loaded for it in items])
        out = collect_outputs(self.predictor.model, [batch], self.predictor.device)
        bad = ~np.isfinite(out["logits"]).all(axis=1)
        if bad.any():  # the batcher reruns the batch's requests one by one: only this one fails
            raise RequestError(422, f"the model's output is not finite for {int(bad.sum())} item(s): an input far "
                               "outside the training data's range (a number many orders of magnitude off?)")
        cols = self.predictor.result_columns(pd.DataFrame(index=range(len(items))), out)
        return [self._prediction({k: v[i] for k, v in cols.items()}, it) for i, it in enumerate(items)]

    def _collate(self, processors: Mapping[str, Any], loaded: Sequence[Dict[str, Any]]):
        regression = self.predictor is not None and self.predictor.task.kind == "regression"
        return Collator(processors, regression=regression)([(i, x, None) for i, x in enumerate(loaded)])

    def _prediction(self, r: Dict[str, Any], item: Item) -> Dict[str, Any]:
        task = self.predictor.task
        mods = list(self.predictor.model.fusion.modalities)
        res: Dict[str, Any] = {}
        if task.kind == "classification":
            res["label"] = str(r["prediction"])
            res["probabilities"] = {lab: float(r[f"proba_{lab}"]) for lab in task.labels}
        else:
            res["value"] = float(r["prediction"])
        res["present"] = {m: m not in item.absent for m in mods}
        res["weights"] = {m: _num(r[f"weight_{m}"]) for m in mods} if f"weight_{mods[0]}" in r else None
        res["trust"] = {m: _num(r[f"trust_{m}"]) for m in mods} if f"trust_{mods[0]}" in r else None
        res["used"] = {m: bool(r[f"used_{m}"]) for m in mods} if f"used_{mods[0]}" in r else None
        res["imagined"] = {m: bool(r[f"imagined_{m}"]) for m in mods} if f"imagined_{mods[0]}" in r else None
        return res

    @torch.inference_mode()
    def embed(self, items: Sequence[Item]) -> List[Dict[str, Any]]:
        """Shared-space embeddings of each item's present modalities (retrieval models)."""
        if self.retriever is None:
            raise RequestError(409, "embeddings are served for retrieval models; this model predicts: use "
                               "POST /v1/predict")
        batch = self._collate(self.processors, [it.loaded for it in items])
        emb = collect_embeddings(self.retriever.model, [batch], self.retriever.device, self.retriever.modalities)
        return [{"embeddings": {m: [float(x) for x in vec[i]] for m, (vec, present) in emb.items() if present[i]}}
                for i in range(len(items))]

    # ---- search --------------------------------------------------------------------------------

    def parse_query(self, index: Any, query: Any = None, upload: Optional[bytes] = None, top: Any = 10,
                    modality: Any = None) -> Query:
        if not isinstance(index, str) or index not in self.indexes:
            names = ", ".join(self.indexes) or "none: start the server with --index"
            raise RequestError(404 if isinstance(index, str) else 422, f"no index {index!r}; indexes: {names}",
                               "index")
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP:
            raise RequestError(422, f"top must be an integer in [1, {MAX_TOP}]; got {top!r}", "top")
        _, retriever = self.indexes[index]
        kinds = {m: retriever.processors[m].kind for m in retriever.modalities}
        if modality is not None and modality not in kinds:
            raise RequestError(422, f"the index's model has no modality {modality!r}; it has {', '.join(kinds)}",
                               "modality")
        if upload is not None:
            file_mods = [m for m in kinds if isinstance(retriever.processors[m], FileProcessor)
                         and (modality is None or m == modality)]
            if not file_mods:
                raise RequestError(415, "the index's model takes no file queries", "file")
            for m in file_mods:  # the upload's bytes decide its modality
                proc = retriever.processors[m]
                written: List[Path] = []
                try:
                    rel = self._write_upload(proc, upload, written)
                    return Query(index, m, top, self._load(proc, {proc.columns[0]: rel}, m))
                except RequestError as exc:
                    exc.field = "file"
                    last = exc
                finally:
                    _remove(written)
            raise last
        if not isinstance(query, str) or not query.strip():
            raise RequestError(422, "give a text query or upload a file", "query")
        text = modality or next((m for m, k in kinds.items() if k == "text"), None)
        if text is None or kinds[text] != "text":
            raise RequestError(422, "the index's model has no text tower: upload a file instead", "query")
        if len(query) > 10_000:
            raise RequestError(413, "a query of more than 10,000 characters", "query")
        proc = retriever.processors[text]
        return Query(index, text, top, self._load(proc, {proc.columns[0]: query}, text))

    @torch.inference_mode()
    def search(self, queries: Sequence[Query]) -> List[List[Dict[str, Any]]]:
        """Queries of one index and modality (the batcher groups them so) in one forward pass."""
        name, modality = queries[0].index, queries[0].modality
        index, retriever = self.indexes[name]
        batch = self._collate({modality: retriever.processors[modality]}, [{modality: q.loaded} for q in queries])
        vectors, _ = collect_embeddings(retriever.model, [batch], retriever.device, [modality])[modality]
        top = max(q.top for q in queries)
        scores, positions = index.search_positions(vectors, min(top, len(index)))
        out = []
        for q, srow, prow in zip(queries, scores, positions):
            out.append([self._hit(name, k, float(s), int(p)) for k, (s, p) in enumerate(zip(srow, prow))
                        if p >= 0][:q.top])
        return out

    def _hit(self, name: str, rank: int, score: float, position: int) -> Dict[str, Any]:
        index, _ = self.indexes[name]
        stored = index.ids[position]
        stored = dict(stored) if isinstance(stored, dict) else {"value": str(stored)}
        hit = {"rank": rank + 1, "score": score, **stored, "item": position}  # item: its place in the index
        if self.gallery_kind(name) == "image":
            hit["value"] = self._shown_path(name, str(stored.get("value", "")))
            hit["thumbnail"] = f"/v1/items/{name}/{position}/thumbnail"
        return hit

    def gallery_kind(self, name: str) -> str:
        index, retriever = self.indexes[name]
        proc = retriever.processors.get(index.meta.get("modality"))
        return proc.kind if proc is not None else "text"

    def _roots(self, name: str) -> List[Path]:
        """Folders the gallery's files may come from: those of the manifests the index was built from."""
        index, _ = self.indexes[name]
        return [Path(str(m)).resolve().parent for m in index.meta.get("manifests") or [] if isinstance(m, str)]

    def _shown_path(self, name: str, value: str) -> str:
        """A gallery file as clients see it: relative to its manifest's folder, never the server's path."""
        p = Path(value)
        for root in self._roots(name):
            if p.is_relative_to(root):
                return str(p.relative_to(root))
        return p.name

    def thumbnail(self, name: str, position: int) -> bytes:
        """A JPEG of at most THUMBNAIL_SIDE px of an image in the index, read only from the folders of
        the manifests the index was built from."""
        if name not in self.indexes:
            raise RequestError(404, f"no index {name!r}", "index")
        index, _ = self.indexes[name]
        if not 0 <= position < len(index):
            raise RequestError(404, f"no item {position} in index {name!r} ({len(index)} items)", "item")
        if self.gallery_kind(name) != "image":
            raise RequestError(404, f"index {name!r} holds {self.gallery_kind(name)} items, not images", "item")
        key = (name, position)
        if key not in self._thumbnails:
            stored = index.ids[position]
            path = Path(str(stored.get("value") if isinstance(stored, dict) else stored)).resolve()
            if not any(path.is_relative_to(r) for r in self._roots(name)) or not path.is_file():
                raise RequestError(404, f"the image of item {position} is not available", "item")
            try:
                img = open_image(path)
            except Exception:
                raise RequestError(404, f"the image of item {position} cannot be read", "item") from None
            img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=85)
            if len(self._thumbnails) > 4096:
                self._thumbnails.clear()
            self._thumbnails[key] = buf.getvalue()
        return self._thumbnails[key]


def _tabular_value(proc, col: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(422, f"a number or a category expected; got {type(value).__name__}")
    if col in getattr(proc, "numeric", {}):
        try:
            x = float(value)
        except ValueError:
            raise RequestError(422, f"not a number: {value!r}") from None
        problem = proc.cell_problem(col, x, numeric=True)  # the processor's own rule, as for a manifest
        if problem is not None:
            raise RequestError(422, problem)
        return x
    return str(value)


def _stats(s: Optional[Dict[str, float]]) -> Dict[str, float]:
    return {"median": float(s["median"])} if s else {}


def _num(v: Any) -> Optional[float]:
    x = float(v)
    return None if not np.isfinite(x) else x


def _remove(paths: Sequence[Path]) -> None:
    for p in paths:
        try:
            p.unlink()
        except OSError:
            pass


def _same_dir(recorded: Any, model_dir: Path) -> bool:
    try:
        return isinstance(recorded, str) and Path(recorded).resolve() == model_dir.resolve()
    except OSError:
        return False
