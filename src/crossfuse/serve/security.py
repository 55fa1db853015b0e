"""API keys, TLS and the rules for when a server may listen beyond this machine."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import os
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from crossfuse.errors import CrossfuseError

KEYS_ENV = "CROSSFUSE_API_KEYS"


class ApiKeys:
    """Keys held only as SHA-256 digests; a presented key is compared with each in constant time."""

    def __init__(self, keys: Iterable[str]):
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys if k]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, presented: str) -> bool:
        d = hashlib.sha256(presented.encode()).digest()
        ok = False
        for known in self._digests:  # every key compared, so the time does not tell which matched
            ok |= hmac.compare_digest(d, known)
        return ok


def read_keys(path: Optional[Path] = None, env: Optional[str] = None) -> ApiKeys:
    """Keys from a file (one per line, '#' comments) and from CROSSFUSE_API_KEYS (comma-separated)."""
    keys: List[str] = []
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise CrossfuseError(f"cannot read the API keys file {path}: {exc}") from None
        keys += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise CrossfuseError(f"the API keys file {path} holds no key (one key per line)")
    env = os.environ.get(KEYS_ENV, "") if env is None else env
    keys += [k.strip() for k in env.split(",") if k.strip()]
    short = [k for k in keys if len(k) < 16]
    if short:
        raise CrossfuseError(f"{len(short)} API key(s) shorter than 16 characters; use long random keys, e.g. "
                             "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return ApiKeys(keys)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_problems(host: str, tls: bool, keys: bool) -> List[str]:
    """What a server listening on ``host`` lacks to be reachable from other machines."""
    if is_loopback(host):
        return []
    return ([] if tls else ["TLS (--tls-cert/--tls-key or --tls-self-signed)"]) + \
        ([] if keys else ["API keys (--api-keys-file or CROSSFUSE_API_KEYS)"])


def self_signed(out_dir: Path, hosts: Iterable[str] = ("localhost", "127.0.0.1")) -> Tuple[Path, Path, str]:
    """A development certificate and key (EC P-256, 30 days) for ``hosts``; returns (cert, key,
    SHA-256 fingerprint of the certificate). The key file is readable by its owner only."""
    from crossfuse.errors import require

    require("cryptography", "serve", "--tls-self-signed")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    names = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crossfuse development server")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = out_dir / "cert.pem", out_dir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    return cert_path, key_path, fingerprint
