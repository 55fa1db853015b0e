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

An encrypted namespace (``cache.encrypt: true``; meta.json says ``"encrypted": true``) holds
``<shard>.npy.enc`` and ``<shard>.keys.json.enc`` instead, AES-256-GCM with the file's name as
associated data (crossfuse.encryption), the key from ``CROSSFUSE_KEY``; a shard is decrypted into
memory when first read, never to disk.
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
    """Vectors of one namespace, looked up by content key. ``encrypt``: a new namespace is written
    encrypted (an existing one is what its meta.json says); ``need_key=False`` opens an encrypted
    namespace without the key to report its size (no entries are read)."""

    def __init__(self, root: str | Path, namespace: str, meta: Optional[Dict] = None, encrypt: bool = False,
                 need_key: bool = True):
        self.dir = Path(root) / namespace
        self.dir.mkdir(parents=True, exist_ok=True)
        meta_file = self.dir / "meta.json"
        if meta is not None and not meta_file.is_file():
            atomic_write(meta_file, json.dumps({**meta, **({"encrypted": True} if encrypt else {})}, indent=2))
        self.encrypted = bool(_read_meta(meta_file).get("encrypted")) if meta_file.is_file() else encrypt
        self._key: Optional[bytes] = None
        if self.encrypted:
            from crossfuse.encryption import KEY_ENV, load_key

            if need_key or KEY_ENV in os.environ:
                self._key = load_key(what=f"the embedding cache namespace {self.dir}")
        self.suffix = ".enc" if self.encrypted else ""
        self._index: Dict[str, Tuple[int, int]] = {}
        self._shards: List[Path] = []
        self._maps: Dict[int, np.ndarray] = {}
        self.refresh()

    def _read(self, path: Path) -> bytes:
        data = path.read_bytes()
        if not self.encrypted:
            return data
        from crossfuse.encryption import decrypt_bytes

        return decrypt_bytes(data, self._key, path.name, path)

    def _write(self, path: Path, data: bytes) -> None:
        if self.encrypted:
            from crossfuse.encryption import encrypt_bytes

            data = encrypt_bytes(data, self._key, path.name)
        atomic_write(path, data)

    def refresh(self) -> None:
        """Pick up shards written since (by this or other processes)."""
        if self.encrypted and self._key is None:
            return
        known = set(self._shards)
        keys_suffix = KEYS_SUFFIX + self.suffix
        for keys_file in sorted(self.dir.glob(f"*{keys_suffix}")):
            npy = keys_file.with_name(keys_file.name[: -len(keys_suffix)] + ".npy" + self.suffix)
            if npy in known or not npy.is_file():
                continue
            self._shards.append(npy)
            shard = len(self._shards) - 1
            for row, key in enumerate(json.loads(self._read(keys_file))):
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
            path = self._shards[shard]
            self._maps[shard] = np.load(io.BytesIO(self._read(path))) if self.encrypted else \
                np.load(path, mmap_mode="r")
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
        self._write(self.dir / f"{name}.npy{self.suffix}", buffer.getvalue())
        self._write(self.dir / f"{name}{KEYS_SUFFIX}{self.suffix}", json.dumps(list(keys)).encode())  # the commit
        self.refresh()

    def info(self) -> Dict:
        npy = ".npy" + self.suffix
        shards = list(self.dir.glob(f"*{npy}"))
        orphans = [p for p in shards if not p.with_name(p.name[:-len(npy)] + KEYS_SUFFIX + self.suffix).is_file()]
        size = sum(p.stat().st_size for p in self.dir.iterdir() if p.is_file())
        meta = _read_meta(self.dir / "meta.json") if (self.dir / "meta.json").is_file() else {}
        locked = self.encrypted and self._key is None  # encrypted and no key: entries unknown
        return {"namespace": self.dir.name, "entries": None if locked else len(self),
                "shards": len(shards) - len(orphans), "orphans": len(orphans), "bytes": size,
                "encrypted": self.encrypted, **{k: meta[k] for k in ("encoder", "dim") if k in meta}}


def _read_meta(path: Path) -> Dict:
    from crossfuse.atomic import read_json

    meta = read_json(path)
    return meta if isinstance(meta, dict) else {}


def namespaces(root: str | Path) -> List[EmbeddingStore]:
    root = Path(root)
    return [EmbeddingStore(root, p.name, need_key=False) for p in sorted(root.iterdir()) if p.is_dir()] \
        if root.is_dir() else []


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
