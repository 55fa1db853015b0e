"""``crossfuse serve``: the app under uvicorn, with the security rules checked before it starts."""
from __future__ import annotations

import logging
import shutil
import ssl
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Sequence

from crossfuse.errors import CrossfuseError, require
from crossfuse.serve.security import exposure_problems, read_keys, self_signed

log = logging.getLogger("crossfuse.serve")


def index_args(values: Sequence[str]) -> dict:
    """--index NAME=DIR or DIR (named after its folder)."""
    out = {}
    for v in values:
        name, _, path = v.partition("=") if "=" in v else (Path(v).name, "", v)
        if name in out:
            raise CrossfuseError(f"two indexes are named {name!r}; name them with --index NAME=DIR")
        if not (Path(path) / "index.json").is_file():
            raise CrossfuseError(f"--index {v}: {path} is not an index directory (no index.json); make one with "
                                 "`crossfuse index`")
        out[name] = Path(path)
    return out


def serve(model_dir: Path, indexes: Mapping[str, Path], host: str = "127.0.0.1", port: int = 8000,
          threads: Optional[int] = None, tls_cert: Optional[Path] = None, tls_key: Optional[Path] = None,
          tls_self_signed: bool = False, api_keys_file: Optional[Path] = None, insecure: bool = False,
          max_batch: int = 32, max_wait_ms: float = 5.0, max_body_mb: float = 20.0, timeout_s: float = 30.0,
          cors_origins: Sequence[str] = (), ready=None) -> None:
    """Load, check and serve until interrupted. ``ready``: called with the base URL once listening."""
    uvicorn = require("uvicorn", "serve", "crossfuse serve")
    from crossfuse.serve.app import create_app

    if (tls_cert is None) != (tls_key is None):
        raise CrossfuseError("give both --tls-cert and --tls-key (or --tls-self-signed)")
    if tls_self_signed and tls_cert is not None:
        raise CrossfuseError("--tls-self-signed makes its own certificate: leave out --tls-cert/--tls-key")
    keys = read_keys(api_keys_file)
    tls = tls_cert is not None or tls_self_signed
    missing = exposure_problems(host, tls, bool(keys))
    if missing and not insecure:
        raise CrossfuseError(f"--host {host} makes the server reachable from other machines, and it has no "
                             f"{' and no '.join(missing)}; add them, or pass --insecure to serve anyway")
    if missing:
        log.warning("serving on %s without %s (--insecure)", host, " and ".join(missing))
    throwaway = None  # the self-signed certificate's folder, removed when the server stops (a Ctrl-C; a
    # SIGTERM ends the process where it stands and leaves the certificate, never the key)
    if tls_self_signed:
        hosts = ["localhost", "127.0.0.1"] + ([host] if host not in ("localhost", "127.0.0.1", "0.0.0.0") else [])
        throwaway = Path(tempfile.mkdtemp(prefix="crossfuse-tls-"))
        tls_cert, tls_key, fingerprint = self_signed(throwaway, hosts)
        print(f"self-signed certificate {tls_cert}\n  SHA-256 fingerprint {fingerprint}\n"
              f"  clients: curl --cacert {tls_cert} ...", flush=True)
    app = create_app(model_dir, indexes, api_keys=keys, max_batch=max_batch, max_wait_ms=max_wait_ms,
                     max_body_mb=max_body_mb, timeout_s=timeout_s, threads=threads, cors_origins=cors_origins)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_keep_alive=5,
                            ssl_certfile=str(tls_cert) if tls_cert else None,
                            ssl_keyfile=str(tls_key) if tls_key else None)
    config.load()
    if config.ssl is not None:
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    if throwaway is not None:  # the key lives on in the loaded context only; clients still read the certificate
        Path(tls_key).unlink()
    server = uvicorn.Server(config)
    scheme = "https" if tls else "http"
    print(f"serving {model_dir} at {scheme}://{host}:{port}/ (API docs at /docs; "
          f"{'API keys required' if keys else 'no API keys'}; indexes: {', '.join(indexes) or 'none'})", flush=True)
    if ready is not None:
        ready(f"{scheme}://{host}:{port}")
    try:
        server.run()
    finally:
        if throwaway is not None:
            shutil.rmtree(throwaway, ignore_errors=True)
