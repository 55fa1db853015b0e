"""Feature extraction into the embedding cache, and the stand-in that serves cached vectors.

A modality is cached when its encoder is frozen (no trainable parameter) and its processor does
no train-time augmentation: its outputs then depend only on the item's content, the encoder and
its weights, and the preprocessing settings, which together key the cache. Everything else
(a changed file, other weights, another image size) misses.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from crossfuse.cache import EmbeddingStore, default_root
from crossfuse.data import Collator, ManifestDataset
from crossfuse.data.processors import Processor
from crossfuse.data.processors.base import stack_present
from crossfuse.encoders import is_frozen
from crossfuse.engine.placement import default_device, inference_precision
from crossfuse.errors import CrossfuseError
from crossfuse.layers import world_size
from crossfuse.progress import Progress
from crossfuse.types import Batch, CachedFeatures

log = logging.getLogger(__name__)
COMMIT_SECONDS = 5.0  # extraction writes what it has at least this often


def fingerprint(encoder, processor: Processor, decoder: str = "default", precision: str = "32-true",
                encrypted: bool = False) -> str:
    """Digest of the encoder's identity, its weights, the processor's output-relevant settings, the
    image decoder (on-device JPEG decoding resizes slightly differently from PIL) and the precision
    the vectors are computed in (bf16 and fp32 vectors differ, so they never share a namespace).

    Hashing a large backbone's weights takes a moment, so the weight digest is remembered on the
    encoder together with each tensor's storage and version counter: any in-place change to a
    weight (or a new tensor) bumps those and the weights are hashed again.
    """
    settings = {"encoder": encoder.registry_name, "kwargs": encoder.rebuild_kwargs(),
                "processor": processor.cache_settings(), "decoder": decoder}
    if precision != "32-true":  # fp32 keys stay as they were, so existing caches keep their hits
        settings["precision"] = precision
    if encrypted:  # an encrypted namespace never shares a directory with a plain one
        settings["encrypted"] = True
    settings = json.dumps(settings, sort_keys=True, default=str)
    state = sorted(encoder.state_dict().items())
    try:
        stamp = tuple((name, t.data_ptr(), t._version, tuple(t.shape)) for name, t in state)
    except RuntimeError:  # inference tensors keep no version counter: never reuse a digest
        stamp = None
    memo = getattr(encoder, "_weights_digest", None)
    if memo is None or stamp is None or memo[0] != stamp:
        w = hashlib.sha256()
        for name, tensor in state:
            w.update(name.encode())
            w.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        memo = (stamp, w.hexdigest())
        object.__setattr__(encoder, "_weights_digest", memo)  # a plain attribute, not a module/buffer
    digest = hashlib.sha256((settings + memo[1]).encode()).hexdigest()
    return f"{encoder.registry_name}-{digest[:24]}"


def cache_root(cache: Any) -> Optional[Path]:
    """Where a config's embedding cache lives (a CacheConfig or its dict form); None when disabled."""
    get = cache.get if isinstance(cache, dict) else lambda k, d=None: getattr(cache, k, d)
    if not get("enabled", True):
        return None
    return Path(get("dir")) if get("dir") else default_root()


class CachedModality:
    """Takes a processor's place in the dataset for a cached modality: serves stored vectors."""

    kind = "cached"

    def __init__(self, root: Path, namespace: str, keys: Dict[int, Optional[str]], dim: int, columns: List[str]):
        self.root, self.namespace, self.keys, self.dim, self.columns = Path(root), namespace, keys, dim, columns
        self._store: Optional[EmbeddingStore] = None

    @property
    def store(self) -> EmbeddingStore:
        if self._store is None:  # opened per process: memory maps do not travel to workers
            self._store = EmbeddingStore(self.root, self.namespace)
        return self._store

    def load(self, row: Dict[str, Any], base_dir: Path, train: bool) -> Optional[torch.Tensor]:
        key = self.keys.get(row["__row__"])
        vec = None if key is None else self.store.get(key)
        return None if vec is None else torch.from_numpy(vec)

    def collate(self, items):
        values, mask = stack_present(items, (self.dim,))
        return CachedFeatures(values), mask

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_store"} | {"_store": None}


@torch.inference_mode()
def cache_modalities(model, processors: Mapping[str, Processor], df: pd.DataFrame, base_dir: Path,
                     root: Path, batch_size: int = 64, num_workers: int = 0, device: Optional[torch.device] = None,
                     missing=(), progress: bool = True, device_decode: Optional[bool] = None,
                     encrypt: bool = False, split_across_ranks: bool = False) -> Dict[str, CachedModality]:
    """Fill the cache for every cacheable modality over the rows of ``df``; return their stand-ins.

    Modalities of the model that ``processors`` leaves out are left out here too.
    ``device_decode``: decode JPEG images on ``device`` (nvjpeg on a GPU) instead of with PIL in
    the workers; None turns it on for a CUDA device when every image of a modality is a JPEG.
    ``encrypt``: the vectors are stored encrypted (cache.encrypt; the key from CROSSFUSE_KEY).
    ``split_across_ranks``: every process of a distributed run calls this together; the misses are
    split between them (``extraction_share``) and each returns once all are in the cache.
    """
    device = device or default_device()
    out: Dict[str, CachedModality] = {}
    share: Optional[Tuple[int, int]] = None  # (this process's part, parts): decided on the first miss
    for m, enc in model.encoders.items():
        proc = processors.get(m)
        if proc is None or not is_frozen(enc) or not hasattr(proc, "content_key"):
            continue
        if proc.augments:
            log.info("Modality %s: frozen encoder but train-time augmentation; not cached", m)
            continue
        on_device = _use_device_decode(proc, df, device, device_decode)
        precision, _ = inference_precision(device)
        namespace = fingerprint(enc, proc, "torchvision.io.decode_jpeg" if on_device else "default", precision,
                                encrypted=encrypt)
        store = EmbeddingStore(root, namespace, meta={"encoder": enc.registry_name, "dim": enc.output_dim,
                                                       "kwargs": enc.rebuild_kwargs()}, encrypt=encrypt)
        bad = {r for r, mod in missing if mod == m}
        keys: Dict[int, Optional[str]] = {}
        for row_id, row in zip(df.index, df[proc.columns].to_dict("records")):
            keys[int(row_id)] = None if int(row_id) in bad else proc.content_key(row, base_dir)
        extract = _extract_jpeg_on_device if on_device else _extract
        if not split_across_ranks or world_size() == 1:
            with store.writing():  # another run filling this namespace finishes first; its vectors count
                todo = _plan(m, keys, store, namespace)
                if todo:
                    extract(enc, proc, m, df.loc[todo], base_dir, keys, store, batch_size, num_workers, device,
                            progress)
        else:  # every process of a distributed run plans from the same state, then extracts its part
            import torch.distributed as dist

            share = share or extraction_share(root)
            store.refresh()
            todo = _plan(m, keys, store, namespace)
            dist.barrier()  # nobody writes before everyone has planned
            mine = todo[share[0]::share[1]]
            log.info("Modality %s: this process extracts %d of the %d (part %d of %d)", m, len(mine), len(todo),
                     share[0] + 1, share[1])
            if mine:
                extract(enc, proc, m, df.loc[mine], base_dir, keys, store, batch_size, num_workers, device, progress)
            dist.barrier()
            store.refresh()
            absent = sum(k is not None and k not in store for k in keys.values())
            if absent:
                raise CrossfuseError(f"Modality {m}: {absent} vectors extracted by other processes are not in the "
                                     f"cache at {store.dir}; is cache.dir on a filesystem every process of a node "
                                     "shares?")
        out[m] = CachedModality(root, namespace, keys, enc.output_dim, proc.columns)
    return out


def _plan(m: str, keys: Dict[int, Optional[str]], store: EmbeddingStore, namespace: str) -> List[int]:
    """The rows whose vectors are to extract: one per content key not in the store."""
    todo, seen = [], set()
    for row_id, key in keys.items():
        if key is not None and key not in store and key not in seen:
            todo.append(row_id)
            seen.add(key)
    present = [k for k in keys.values() if k is not None]
    cached = sum(k in store for k in present)
    log.info("Modality %s: %d items, %d in the cache, %d duplicates of other items, %d to extract (%s)",
             m, len(keys), cached, len(present) - cached - len(todo), len(todo), namespace)
    return todo


def extraction_share(root: Path) -> Tuple[int, int]:
    """(this process's part, number of parts) of a distributed run's cache misses.

    Rank 0 leaves a marker file in ``root`` and every process looks for it: when all see it, the
    cache is on a filesystem the whole run shares, and the misses are split over every rank (each
    item extracted once in the cluster). Otherwise each node fills its own cache, its misses split
    over its own processes (LOCAL_RANK of LOCAL_WORLD_SIZE as torchrun sets them, or SLURM's
    SLURM_LOCALID of SLURM_NTASKS_PER_NODE)."""
    import os
    import uuid

    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    token = [uuid.uuid4().hex if rank == 0 else None]
    dist.broadcast_object_list(token, src=0)
    marker = Path(root) / f".cluster-{token[0]}"
    if rank == 0:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    dist.barrier()
    seen: List[Any] = [None] * world
    dist.all_gather_object(seen, marker.is_file())
    dist.barrier()
    if rank == 0:
        marker.unlink(missing_ok=True)
    if all(seen):
        return rank, world
    log.info("The embedding cache at %s is not shared by every node: each node extracts its own", root)
    env = os.environ
    local = env.get("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
    per_node = env.get("LOCAL_WORLD_SIZE", env.get("SLURM_NTASKS_PER_NODE", "1")).split("(")[0]  # SLURM: "2(x3)"
    return int(local), max(1, int(per_node))


def with_cache(model, processors: Mapping[str, Processor], df: pd.DataFrame, base_dir: Path, root: Optional[Path],
               **kwargs: Any) -> Dict[str, Any]:
    """What a dataset reads per modality: ``processors``, each cacheable one replaced by its cached
    stand-in (``cache_modalities``, same keyword arguments); unchanged when ``root`` is None."""
    sources: Dict[str, Any] = dict(processors)
    if root is not None:
        sources.update(cache_modalities(model, processors, df, base_dir, root, **kwargs))
    return sources


def _extract(enc, proc, m, rows: pd.DataFrame, base_dir, keys, store, batch_size, num_workers, device, progress):
    ds = ManifestDataset(rows, {m: proc}, base_dir, train=False)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=Collator({m: proc}))
    enc = enc.to(device).eval()
    _, autocast = inference_precision(device)
    row_ids = rows.index.to_numpy()
    pending_keys: List[str] = []
    pending: List[np.ndarray] = []
    last_commit = time.monotonic()
    for batch in Progress(loader, f"extract {m}", enabled=progress, unit="batch"):
        batch: Batch = batch.to(device)
        with autocast:
            vectors = enc(batch.inputs[m]).float().cpu().numpy()
        take = np.flatnonzero(batch.mask[m].cpu().numpy())
        positions = batch.index.cpu().numpy()
        pending_keys += [keys[int(row_ids[positions[j]])] for j in take]
        pending += list(vectors[take])
        # a shard per few thousand vectors, or per few seconds of work: a killed run loses at most that
        if len(pending_keys) >= 4096 or time.monotonic() - last_commit >= COMMIT_SECONDS:
            store.put_many(pending_keys, np.stack(pending))
            pending_keys, pending, last_commit = [], [], time.monotonic()
    if pending_keys:
        store.put_many(pending_keys, np.stack(pending))


def _use_device_decode(proc, df: pd.DataFrame, device: torch.device, wanted: Optional[bool]) -> bool:
    # on-device decoding is nvjpeg's: JPEG images only, and no face hiding (which needs the pixels on the CPU)
    if proc.kind != "image" or wanted is False or proc.params.get("faces"):
        return False
    if wanted is None and device.type != "cuda":
        return False  # on a CPU, PIL in parallel workers is as fast and matches training exactly
    paths = df[proc.columns[0]].dropna().astype(str).str.lower()
    return bool(len(paths)) and bool(paths.str.endswith((".jpg", ".jpeg")).all())


class _RawFiles(torch.utils.data.Dataset):
    """File bytes as uint8 tensors (read in workers); decoding happens on the device."""

    def __init__(self, paths: List[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from torchvision.io import read_file

        try:
            return i, read_file(str(self.paths[i]))
        except (OSError, RuntimeError):
            return i, None


@torch.inference_mode()
def _extract_jpeg_on_device(enc, proc, m, rows: pd.DataFrame, base_dir, keys, store, batch_size, num_workers,
                            device, progress):
    """JPEGs decoded in batches on the device (torchvision.io.decode_jpeg: nvjpeg on a GPU), then
    resized and normalised there: the CPU only reads bytes, so it no longer caps a fast GPU."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as F

    from crossfuse.data.processors.base import resolve_path

    size, mean, std = proc.params["size"], proc.params["mean"], proc.params["std"]
    paths = [resolve_path(v, base_dir) for v in rows[proc.columns[0]].tolist()]
    loader = DataLoader(_RawFiles(paths), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=lambda items: items)
    enc = enc.to(device).eval()
    _, autocast = inference_precision(device)
    row_ids = rows.index.to_numpy()
    for items in Progress(loader, f"extract {m} (decode on {device.type})", enabled=progress, unit="batch"):
        good, images = [], []
        for i, data in items:
            try:
                img = decode_jpeg(data, mode=ImageReadMode.RGB, device=device) if data is not None else None
            except RuntimeError:  # a corrupt JPEG: this item stays out of the cache (missing)
                img = None
            if img is not None:
                good.append(i)
                images.append(F.resize(img, [size, size], antialias=True))
        if not good:
            continue
        x = F.normalize(torch.stack(images).float() / 255.0, mean, std)
        with autocast:
            vectors = enc(x).float().cpu().numpy()
        store.put_many([keys[int(row_ids[i])] for i in good], vectors)
