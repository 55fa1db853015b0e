"""Search latency and throughput: exact vs approximate (FAISS IVF, HNSW) on random 512-d vectors.

    python benchmarks/search_latency.py            # 1M vectors (about 2 GiB for the vectors)
    python benchmarks/search_latency.py --n 100000 # quicker

Two kinds of random data (``--data``), normalised (cosine similarity):
- ``clustered`` (default): each vector is a random centre plus as much random noise (groups of
  about 100, cosine about 0.5 inside a group), as real embeddings cluster by meaning; queries
  come from the same generator, so their true top 10 lie in their group.
- ``uniform``: independent Gaussian vectors and queries. In 512 dimensions a query's nearest
  neighbours are barely nearer than any other vector, so no approximate index can find them
  reliably: this shows the worst case, not a realistic one.
Recall@10 of each approximate setting is measured against the exact top 10. Latency is one query
at a time (p50 / p99); throughput is one query at a time and in batches of 1,000.
"""
from __future__ import annotations

import argparse
import platform
import resource
import time

import numpy as np

from crossfuse.index import VectorIndex


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_unit(n: int, d: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - s), d), dtype=np.float32)
        out[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def clustered(n: int, d: int, seed: int, centres: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, d), dtype=np.float32) / np.sqrt(d)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def timed(index: VectorIndex, queries: np.ndarray, k: int, single: int):
    lat = []
    for q in queries[:single]:
        t = time.perf_counter()
        index.search_positions(q[None, :], k)
        lat.append(time.perf_counter() - t)
    lat = np.array(lat)
    t = time.perf_counter()
    _, pos = index.search_positions(queries, k)
    batch_s = time.perf_counter() - t
    return {"p50_ms": 1e3 * np.percentile(lat, 50), "p99_ms": 1e3 * np.percentile(lat, 99),
            "qps_single": 1 / lat.mean(), "qps_batch": len(queries) / batch_s}, pos


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 64, 128, 256])
    ap.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=80)
    ap.add_argument("--data", choices=["clustered", "uniform"], default="clustered")
    ap.add_argument("--nlist", type=int, default=1024, help="IVF cells")
    ap.add_argument("--skip", nargs="*", default=[], choices=["ivf", "hnsw"])
    args = ap.parse_args()
    import faiss

    print(f"machine: {platform.machine()}, {faiss.omp_get_max_threads()} threads, {platform.processor() or '?'}; "
          f"faiss {faiss.__version__}")
    print(f"data: {args.n:,} x {args.dim} {args.data} random unit vectors; {args.queries} queries; k={args.k}")
    if args.data == "uniform":
        base, queries = random_unit(args.n, args.dim, 0), random_unit(args.queries, args.dim, 1)
    else:
        centres = random_unit(max(1, args.n // 100), args.dim, 2)
        base, queries = clustered(args.n, args.dim, 0, centres), clustered(args.queries, args.dim, 1, centres)
    rows = []

    exact = VectorIndex(args.dim, "exact")
    t = time.perf_counter()
    exact.add(base)
    built = time.perf_counter() - t
    print(f"exact: built in {built:.1f} s")
    stats, truth = timed(exact, queries, args.k, args.single)
    rows.append(("exact (flat)", "-", built, stats, 1.0))
    del exact  # one index in memory at a time, so the peak below is the data plus the largest index

    def sweep(kind: str, values, param: str, **build):
        index = VectorIndex(args.dim, kind, **build)
        t = time.perf_counter()
        index.add(base)
        built = time.perf_counter() - t
        print(f"{kind}: built in {built:.1f} s ({build})")
        for v in values:
            index.set_search_params(**{param: v})
            stats, found = timed(index, queries, args.k, args.single)
            rows.append((kind, f"{param}={v}", built, stats, recall(found, truth)))
            print(f"  {param}={v}: recall@{args.k} {rows[-1][-1]:.3f}, p50 {stats['p50_ms']:.2f} ms", flush=True)
        del index

    if "ivf" not in args.skip:
        sweep("ivf", args.nprobe, "nprobe", nlist=args.nlist)
    if "hnsw" not in args.skip:
        sweep("hnsw", args.ef_search, "ef_search", M=args.hnsw_m, ef_construction=args.ef_construction)

    ex = rows[0][3]
    print(f"\n| index | setting | build s | recall@{args.k} | p50 ms | p99 ms | q/s (one at a time) | "
          "q/s (batch 1000) | speed-up vs exact (p50) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, setting, built, s, r in rows:
        print(f"| {kind} | {setting} | {built:.1f} | {r:.3f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
              f"{s['qps_single']:.0f} | {s['qps_batch']:.0f} | {ex['p50_ms'] / s['p50_ms']:.1f}x |")
    ok = [(ex["p50_ms"] / s["p50_ms"], kind, setting, r) for kind, setting, _, s, r in rows[1:] if r >= 0.95]
    if ok:
        speed, kind, setting, r = max(ok)
        print(f"\nfastest setting with recall@{args.k} >= 0.95: {kind} {setting} (recall {r:.3f}), "
              f"{speed:.1f}x the exact index's single-query speed (target >= 10x)")
    else:
        print(f"\nno approximate setting reached recall@{args.k} >= 0.95")
    print(f"peak memory: {peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
