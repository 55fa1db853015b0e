"""VectorIndex: exact results, approximate recall, save/load round trips, incremental add, fallback."""
from __future__ import annotations

import json

import numpy as np
import pytest

from crossfuse.errors import ConfigError, CrossfuseError
from crossfuse.index import VectorIndex, faiss_available

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss-cpu is not installed")


def data(n=600, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(base, queries, k):
    scores = queries @ base.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("backend", ["numpy", pytest.param("faiss", marks=needs_faiss)])
def test_exact_index_returns_the_true_neighbours_with_ids(backend):
    base, queries = data(), data(20, seed=1)
    index = VectorIndex(16, "exact", backend=backend).add(base * 3.0, ids=[f"row{i}" for i in range(len(base))])
    scores, ids = index.search(queries, k=5)
    truth = brute_force(base, queries, 5)
    assert ids == [[f"row{j}" for j in row] for row in truth]
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ base.T, truth, 1), rtol=1e-5)  # cosine


@needs_faiss
@pytest.mark.parametrize("kind,params", [("ivf", {"nlist": 8, "nprobe": 8}), ("hnsw", {"ef_search": 64})])
def test_approximate_index_with_wide_search_finds_the_exact_neighbours(kind, params):
    base, queries = data(), data(20, seed=1)
    index = VectorIndex(16, kind, **params).add(base)
    _, ids = index.search(queries, k=5)
    truth = brute_force(base, queries, 5)
    recall = np.mean([len(set(a) & set(t)) / 5 for a, t in zip(ids, truth.tolist())])
    assert recall >= 0.95  # nprobe = nlist visits every cell: IVF is exact here


@pytest.mark.parametrize("kind", ["exact", pytest.param("ivf", marks=needs_faiss),
                                  pytest.param("hnsw", marks=needs_faiss)])
def test_save_load_round_trip_and_incremental_add(tmp_path, kind):
    base, queries = data(), data(10, seed=1)
    ids = [{"row": i + 1, "value": f"img/{i}.png"} for i in range(len(base))]
    index = VectorIndex(16, kind, nlist=8).add(base[:400], ids[:400])
    before = index.search(queries, 7)
    index.save(tmp_path / "idx", {"modality": "image"})
    assert not list(tmp_path.glob(".idx.*"))  # the temporary directory was renamed into place
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["count"] == 400 and meta["modality"] == "image" and meta["kind"] == index.kind
    loaded = VectorIndex.load(tmp_path / "idx")
    after = loaded.search(queries, 7)
    np.testing.assert_allclose(after[0], before[0], rtol=1e-6)
    assert after[1] == before[1]
    # incremental add: a copy of a new item is found first, with its id
    loaded.add(base[400:], ids[400:])
    assert len(loaded) == len(base)
    _, found = loaded.search(base[450:451], 1)
    assert found[0][0] == {"row": 451, "value": "img/450.png"}
    loaded.save(tmp_path / "idx")  # replacing an existing index
    assert len(VectorIndex.load(tmp_path / "idx")) == len(base)


def test_numpy_backend_falls_back_to_exact_for_approximate_kinds(caplog):
    index = VectorIndex(16, "hnsw", backend="numpy")
    assert index.kind == "exact"
    assert "FAISS is not installed" in caplog.text


def test_clear_errors():
    with pytest.raises(ConfigError, match="index kind"):
        VectorIndex(4, "annoy")
    index = VectorIndex(4, "exact", backend="numpy")
    with pytest.raises(CrossfuseError, match="empty"):
        index.search(np.ones((1, 4)), 3)
    with pytest.raises(CrossfuseError, match="4-d vectors; got 3-d"):
        index.add(np.ones((2, 3)))
    with pytest.raises(CrossfuseError, match="2 vectors but 1 ids"):
        index.add(np.ones((2, 4)), ids=["a"])
    index.add(np.eye(4)[:2])
    scores, ids = index.search(np.eye(4)[:1], k=10)  # k larger than the index: all of it
    assert ids == [[0, 1]] and scores.shape == (1, 2)


def test_load_reports_a_directory_that_is_not_an_index(tmp_path):
    with pytest.raises(CrossfuseError, match="not a crossfuse index"):
        VectorIndex.load(tmp_path)
