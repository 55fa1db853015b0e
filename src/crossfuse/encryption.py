"""Encryption at rest: AES-256-GCM (the ``cryptography`` package, ``crossfuse[privacy]``).

A model directory encrypted with ``crossfuse encrypt`` holds ``<file>.enc`` in place of each of its
files: ``CFENC1`` + a 12-byte random nonce + the ciphertext and its 16-byte tag, with the file's
name as associated data (so files cannot be swapped). Loading decrypts in memory and never writes
the plain bytes to disk; a wrong or missing key and any changed byte fail with an error naming the
file (authenticated encryption detects tampering). The key is 32 random bytes, base64, from
``CROSSFUSE_KEY`` or a key file (``crossfuse keygen`` makes one).
"""
from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Dict, Optional

from crossfuse.atomic import atomic_directory
from crossfuse.errors import CrossfuseError, MissingDependencyError

MAGIC = b"CFENC1"
SUFFIX = ".enc"
KEY_ENV = "CROSSFUSE_KEY"


def _aesgcm(key: bytes):
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise MissingDependencyError("encryption needs the 'cryptography' package: pip install 'crossfuse[privacy]'") \
            from None
    return AESGCM(key)


def new_key() -> str:
    """A fresh key as base64 text (32 random bytes)."""
    return base64.b64encode(os.urandom(32)).decode()


def load_key(key_file: Optional[Path] = None, what: str = "this") -> bytes:
    """The key from ``key_file``, else from $CROSSFUSE_KEY; a clear error when there is none or it is
    not 32 bytes of base64."""
    if key_file is not None:
        try:
            text, source = Path(key_file).read_text().strip(), str(key_file)
        except OSError as exc:
            raise CrossfuseError(f"cannot read the key file {key_file}: {exc.strerror or exc}") from None
    else:
        text, source = os.environ.get(KEY_ENV, "").strip(), f"${KEY_ENV}"
        if not text:
            raise CrossfuseError(f"{what} is encrypted: set {KEY_ENV} to its key (or pass --key-file)")
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise CrossfuseError(f"the key in {source} is not 32 bytes of base64 (make one with `crossfuse keygen`)")
    return key


def encrypt_bytes(data: bytes, key: bytes, name: str) -> bytes:
    nonce = os.urandom(12)
    return MAGIC + nonce + _aesgcm(key).encrypt(nonce, data, name.encode())


def decrypt_bytes(blob: bytes, key: bytes, name: str, file: Path) -> bytes:
    from cryptography.exceptions import InvalidTag

    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 12 + 16:
        raise CrossfuseError(f"{file} is not a crossfuse-encrypted file")
    nonce = blob[len(MAGIC):len(MAGIC) + 12]
    try:
        return _aesgcm(key).decrypt(nonce, blob[len(MAGIC) + 12:], name.encode())
    except InvalidTag:
        raise CrossfuseError(f"{file} cannot be decrypted: the key is wrong or the file was changed") from None


def is_encrypted(directory: Path) -> bool:
    return any(p.name.endswith(SUFFIX) for p in Path(directory).iterdir()) if Path(directory).is_dir() else False


def read_decrypted(directory: Path, names, key: bytes) -> Dict[str, bytes]:
    """The plain bytes of each of ``names`` in an encrypted directory, in memory only."""
    out = {}
    for name in names:
        file = Path(directory) / (name + SUFFIX)
        if not file.is_file():
            raise CrossfuseError(f"{directory} is encrypted but has no {file.name}")
        out[name] = decrypt_bytes(file.read_bytes(), key, name, file)
    return out


def encrypt_directory(directory: Path, key: bytes) -> list:
    """Replace every file of ``directory`` by its encrypted ``.enc`` (the directory is rebuilt and
    renamed into place, so a kill leaves the old one); sub-folders are refused. Returns the names."""
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir())
    if any(p.is_dir() for p in files):
        raise CrossfuseError(f"{directory} has sub-folders (an ensemble's members?): encrypt each model directory")
    if any(p.name.endswith(SUFFIX) for p in files):
        raise CrossfuseError(f"{directory} is already encrypted")
    with atomic_directory(directory) as tmp:
        for p in files:
            (tmp / (p.name + SUFFIX)).write_bytes(encrypt_bytes(p.read_bytes(), key, p.name))
    return [p.name for p in files]


def decrypt_directory(directory: Path, key: bytes) -> list:
    """The reverse of encrypt_directory: every ``.enc`` back to its plain file, checked first."""
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if p.name.endswith(SUFFIX))
    if not files:
        raise CrossfuseError(f"{directory} is not encrypted")
    plain = {p.name[:-len(SUFFIX)]: decrypt_bytes(p.read_bytes(), key, p.name[:-len(SUFFIX)], p) for p in files}
    with atomic_directory(directory) as tmp:
        for name, data in plain.items():
            (tmp / name).write_bytes(data)
    return sorted(plain)
