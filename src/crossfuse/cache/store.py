"""On-disk embedding store: append-only shards, memory-mapped reads, atomic writes.

Layout of one namespace (one encoder + weights + preprocessing):

    <root>/<namespace>/meta.json
    <root>/<namespace>/<shard>.npy          (n, dim) float32
    <root>/<namespace>/<shard>.keys.json    the n content keys, in row order

A shard is written as .npy first and .keys.json last, each to a temporary name renamed into
place, so a shard exists only once its keys file does: a killed writer leaves at most an orphan
.npy (ignored, removed by ``clear``/``prune``), never a half-read entry. Every writer process
writes its own shard names, so several processes can fill one namespace at once without locks.
Reads memory-map the shards: a million 1,024-d vectors are not loaded into RAM to read a few.
"""
from __future__ import annotations

import io
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from crossfuse.atomic import atomic_write

KEYS_SUFFIX = ".keys.json"


def default_root() -> Path:
    return Path(os.environ.get("CROSSFUSE_CACHE", Path.home() / ".cache" / "crossfuse" / "embeddings"))


class EmbeddingStore:
    """Vectors of one namespace, looked up by content key."""

    def __init__(self, root: str | Path, namespace: str, meta: Optional[Dict] = None):
        self.dir = Path(root) / namespace
        self.dir.mkdir(parents=True, exist_ok=True)
        if meta is not None and not (self.dir / "meta.json").is_file():
            atomic_write(self.dir / "meta.json", json.dumps(meta, indent=2))
        self._index: Dict[str, Tuple[int, int]] = {}
        self._shards: List[Path] = []
        self._maps: Dict[int, np.ndarray] = {}
        self.refresh()

    def refresh(self) -> None:
        """Pick up shards written since (by this or other processes)."""
        known = set(self._shards)
        for keys_file in sorted(self.dir.glob(f"*{KEYS_SUFFIX}")):
            npy = keys_file.with_name(keys_file.name[: -len(KEYS_SUFFIX)] + ".npy")
            if npy in known or not npy.is_file():
                continue
            self._shards.append(npy)
            shard = len(self._shards) - 1
            for row, key in enumerate(json.loads(keys_file.read_text())):
                self._index.setdefault(key, (shard, row))

    def __len__(self) -> int:
        return len(self._index)

    @contextmanager
    def writing(self) -> Iterator["EmbeddingStore"]:
        """Hold this namespace's writer lock (an advisory file lock): a second process that wants
        to extract into it waits, then finds (after ``refresh``) what the first one wrote, so
        concurrent runs never extract the same items twice."""
        import fcntl

        with open(self.dir / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                self.refresh()
                yield self
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def get(self, key: str) -> Optional[np.ndarray]:
        where = self._index.get(key)
        if where is None:
            return None
        shard, row = where
        if shard not in self._maps:
            self._maps[shard] = np.load(self._shards[shard], mmap_mode="r")
        return np.array(self._maps[shard][row])

    def put_many(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Write one new shard holding ``vectors`` (n, dim) under ``keys``."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")
        if not len(keys):
            return
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        buffer = io.BytesIO()
        np.save(buffer, vectors)
        atomic_write(self.dir / f"{name}.npy", buffer.getvalue())
        atomic_write(self.dir / f"{name}{KEYS_SUFFIX}", json.dumps(list(keys)))  # the commit point
        self.refresh()

    def info(self) -> Dict:
        orphans = [p for p in self.dir.glob("*.npy") if not p.with_name(p.stem + KEYS_SUFFIX).is_file()]
        size = sum(p.stat().st_size for p in self.dir.iterdir() if p.is_file())
        meta = json.loads((self.dir / "meta.json").read_text()) if (self.dir / "meta.json").is_file() else {}
        return {"namespace": self.dir.name, "entries": len(self), "shards": len(self._shards),
                "orphans": len(orphans), "bytes": size, **{k: meta[k] for k in ("encoder", "dim") if k in meta}}


def namespaces(root: str | Path) -> List[EmbeddingStore]:
    root = Path(root)
    return [EmbeddingStore(root, p.name) for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []


def clear(root: str | Path, namespace: Optional[str] = None) -> int:
    """Delete one namespace or the whole cache; returns the number of files removed.

    A namespace is a plain directory name inside ``root`` (as ``crossfuse cache info`` lists
    them): a path, an absolute name or '..' is refused, so nothing outside the cache is deleted."""
    import shutil

    from crossfuse.errors import CrossfuseError

    root = Path(root)
    if namespace is not None and (namespace in ("", ".", "..") or Path(namespace).name != namespace
                                  or "/" in namespace or "\\" in namespace):
        raise CrossfuseError(f"'{namespace}' is not a cache namespace: give a name as `crossfuse cache info` lists "
                             "it, not a path")
    targets = [root / namespace] if namespace else ([p for p in root.iterdir() if p.is_dir()] if root.is_dir() else [])
    count = 0
    for t in targets:
        if t.is_symlink():  # a link placed in the cache is removed, never followed
            t.unlink()
        elif t.is_dir():
            count += sum(1 for _ in t.iterdir())
            shutil.rmtree(t)
    return count
