"""Load on `crossfuse serve`: requests/s and latency under concurrent clients, with and without
dynamic batching, next to the in-process batch rate of the same model on the same items.

    python benchmarks/serve_load.py                  # demo model + a search index (about 10 min on 2 cores)
    python benchmarks/serve_load.py --requests 128   # quicker

What it does: builds the demo data if needed (data/demo), trains the demo's attention model
(demo.yaml, from scratch: small CNN + GRU + MLP) and a small image-text retrieval model on the
same data, indexes the images, then for each mode (batching: --max-batch 32 --max-wait-ms 5;
none: --max-batch 1) starts the server on 127.0.0.1 and runs ``--requests`` requests at each
concurrency (1, 4, 16, 64) with an asyncio client (one item per request: an image upload as
base64 JSON, the caption and the two numbers; search: one caption as a text query, top 10).
The in-process figure is Predictor.predict_frame / Retriever search over the same items in
batches of 64, files decoded as the server decodes them. Client and server share this machine's
cores, so the served figures are a floor for a server with cores of its own.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_models(out: Path, data: Path, epochs: int):
    from crossfuse.cli.main import main
    from crossfuse.data.demo import build_digits_demo

    if not (data / "manifest.csv").is_file():
        build_digits_demo(data, seed=0)
    import yaml

    if not (out / "fusion" / "model" / "config.json").is_file():
        cfg = yaml.safe_load((ROOT / "src/crossfuse/resources/demo.yaml").read_text())
        cfg["data"]["manifest"] = str(data / "manifest.csv")
        cfg["train"].update(epochs=epochs, progress=False)
        cfg["output_dir"] = str(out / "fusion")
        (out / "fusion.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["-q", "train", str(out / "fusion.yaml")]) == 0
    if not (out / "retrieval" / "index" / "index.json").is_file():
        cfg = {"data": {"manifest": str(data / "manifest.csv"), "task": "retrieval", "id_column": "id"},
               "modalities": {"image": {"kind": "image", "columns": ["image"],
                                        "encoder": {"name": "small_cnn", "channels": [16, 32, 64], "image_size": 32}},
                              "text": {"kind": "text", "columns": ["caption"],
                                       "encoder": {"name": "gru", "embed_dim": 32, "hidden": 32},
                                       "processor": {"max_length": 32}}},
               "retrieval": {"embed_dim": 64}, "train": {"epochs": epochs, "batch_size": 64, "progress": False},
               "output_dir": str(out / "retrieval")}
        (out / "retrieval.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["-q", "train", str(out / "retrieval.yaml")]) == 0
        assert main(["-q", "index", str(out / "retrieval" / "model"), str(data / "manifest.csv"),
                     "--out", str(out / "retrieval" / "index")]) == 0
    return out / "fusion" / "model", out / "retrieval" / "index"


def plain(v):
    return v.item() if hasattr(v, "item") else v


def bodies(data: Path, n: int):
    df = pd.read_csv(data / "manifest.csv").head(n)
    predict = [json.dumps({"inputs": {"image": base64.b64encode((data / r.image).read_bytes()).decode(),
                                      "caption": r.caption, "remainder": plain(r.remainder),
                                      "loops": plain(r.loops)}}).encode() for r in df.itertuples()]
    search = [json.dumps({"index": "index", "query": r.caption, "top": 10}).encode() for r in df.itertuples()]
    return df, predict, search


async def _client(port: int, path: str, payloads, jobs, latencies, errors):
    """One keep-alive HTTP/1.1 connection sending JSON POSTs. A client this small (asyncio streams,
    no HTTP library) costs the shared cores little: httpx's AsyncClient tops out near 300
    requests/s on this machine even against /health, which the server answers 3,000 times a
    second."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in jobs:
            body = payloads[i % len(payloads)]
            head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            t0 = time.perf_counter()
            writer.write(head + body)
            await writer.drain()
            status_head = await reader.readuntil(b"\r\n\r\n")
            lines = status_head.split(b"\r\n")
            length = next(int(h.split(b":", 1)[1]) for h in lines if h.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            errors.append(lines[0].split()[1] != b"200")
    finally:
        writer.close()


async def load(url: str, path: str, payloads, concurrency: int, requests: int):
    port = int(url.rsplit(":", 1)[1])
    latencies, errors = [], []
    await _client(port, path, payloads, iter(range(2)), [], [])  # warm
    jobs = iter(range(requests))
    start = time.perf_counter()
    results = await asyncio.gather(*[_client(port, path, payloads, jobs, latencies, errors)
                                     for _ in range(concurrency)], return_exceptions=True)
    wall = time.perf_counter() - start
    failed = sum(isinstance(r, Exception) for r in results)
    lat = np.array(latencies) * 1000
    return {"rps": len(latencies) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "errors": int(sum(errors)) + failed + requests - len(latencies)}


def start_server(model: Path, index: Path, max_batch: int, threads: int | None):
    port = free_port()
    cmd = [sys.executable, "-m", "crossfuse", "-q", "serve", str(model), "--index", str(index), "--port", str(port),
           "--max-batch", str(max_batch), "--max-wait-ms", "5"]
    if threads:
        cmd += ["--workers-threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        line = proc.stdout.readline()
        if "Application startup complete" in line or "Uvicorn running" in line:
            break
        if proc.poll() is not None:
            raise SystemExit(f"the server did not start: {line}{proc.stdout.read()}")
    # drain the server's log so its pipe never fills
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, f"http://127.0.0.1:{port}"


def in_process(model: Path, index: Path, df: pd.DataFrame, data: Path, repeats: int = 3):
    import torch

    from crossfuse.engine import Predictor, Retriever
    from crossfuse.index import VectorIndex

    pred = Predictor.load(model)
    pred.cache_root = None  # as the server: every item through its encoders
    rows = df[["image", "caption", "remainder", "loops"]]
    pred.predict_frame(rows.head(64), data, batch_size=64)
    t0 = time.perf_counter()
    for _ in range(repeats):
        pred.predict_frame(rows, data, batch_size=64)
    predict_rate = repeats * len(rows) / (time.perf_counter() - t0)
    vi = VectorIndex.load(index)
    ret = Retriever.load(model.parent.parent / "retrieval" / "model")
    ret.cache_root = None
    captions = df["caption"].tolist()
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(repeats):
            for s in range(0, len(captions), 64):
                vecs, _ = ret.embed_queries(captions[s:s + 64], "text")
                vi.search(vecs, 10)
    search_rate = repeats * len(captions) / (time.perf_counter() - t0)
    return predict_rate, search_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "serve-bench")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    ap.add_argument("--epochs", type=int, default=8, help="training epochs of the served models (load does not "
                    "depend on them)")
    ap.add_argument("--requests", type=int, default=384, help="requests per concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--threads", type=int, help="torch threads of the server's worker (default: torch's)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model, index = train_models(args.out, args.data, args.epochs)
    df, predict_bodies, search_bodies = bodies(args.data, 512)
    predict_rate, search_rate = in_process(model, index, df, args.data)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; in-process batch rate "
          f"(batches of 64): predict {predict_rate:.0f} items/s, search {search_rate:.0f} queries/s\n")
    results = {"in_process": {"predict": predict_rate, "search": search_rate}, "runs": []}
    print("| endpoint | batching | clients | requests/s | / in-process | p50 ms | p99 ms | errors | items per batch "
          "| worker busy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode, max_batch in (("dynamic", 32), ("none", 1)):
        proc, url = start_server(model, index, max_batch, args.threads)
        try:
            import httpx

            for path, payloads, rate in (("/v1/predict", predict_bodies, predict_rate),
                                         ("/v1/search", search_bodies, search_rate)):
                for c in args.concurrency:
                    before = httpx.get(url + "/health").json()
                    r = asyncio.run(load(url, path, payloads, c, args.requests))
                    after = httpx.get(url + "/health").json()
                    per_batch = (after["items"] - before["items"]) / max(1, after["batches"] - before["batches"])
                    busy = (after["busy_seconds"] - before["busy_seconds"]) / (args.requests / r["rps"])
                    r.update(endpoint=path, batching=mode, clients=c, ratio=r["rps"] / rate, items_per_batch=per_batch,
                             worker_busy=busy)
                    results["runs"].append(r)
                    print(f"| {path} | {mode} | {c} | {r['rps']:.0f} | {r['ratio']:.2f} | {r['p50_ms']:.1f} | "
                          f"{r['p99_ms']:.1f} | {r['errors']} | {per_batch:.1f} | {busy:.0%} |", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    (args.out / "serve_load.json").write_text(json.dumps(results, indent=2))
    print(f"\nresults: {args.out / 'serve_load.json'}")


if __name__ == "__main__":
    main()
