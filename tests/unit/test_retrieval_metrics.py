"""Chunked retrieval metrics against a naive full-matrix oracle."""
from __future__ import annotations

import numpy as np
import pytest

from crossfuse.metrics.retrieval import retrieval_metrics


def naive(queries, gallery, qg, gg, ks=(1, 5, 10)):
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    scores = q @ g.T
    ranks, aps = [], []
    for i in range(len(q)):
        order = np.argsort(-scores[i], kind="stable")
        rel = gg[order] == qg[i]
        # pessimistic ties, as the chunked version: an item's rank counts everything scoring >= it
        item_ranks = np.array([(scores[i] >= scores[i, j]).sum() for j in order])
        ranks.append(item_ranks[rel].min())
        aps.append(np.mean([(scores[i][gg == qg[i]] >= scores[i, j]).sum() / item_ranks[n]
                            for n, j in enumerate(order) if rel[n]]))
    ranks = np.array(ranks, dtype=float)
    return {**{f"recall@{k}": np.mean(ranks <= k) for k in ks}, "median_rank": np.median(ranks),
            "mean_rank": ranks.mean(), "mAP": np.mean(aps)}


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_metrics_equal_the_full_matrix_oracle(chunk):
    rng = np.random.default_rng(0)
    gallery_groups = np.arange(40)                       # 40 images
    query_groups = np.repeat(np.arange(40), 3)           # 3 captions each
    gallery = rng.normal(size=(40, 8))
    queries = gallery[query_groups] + rng.normal(scale=1.5, size=(120, 8))
    got = retrieval_metrics(queries, gallery, query_groups, gallery_groups, chunk=chunk)
    want = naive(queries, gallery, query_groups, gallery_groups)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    # the other direction, with several relevant items per query (mAP over all of them)
    back = retrieval_metrics(gallery, queries, gallery_groups, query_groups, chunk=chunk)
    oracle = naive(gallery, queries, gallery_groups, query_groups)
    assert back["mAP"] == pytest.approx(oracle["mAP"]) and back["recall@5"] == pytest.approx(oracle["recall@5"])


def test_perfect_and_hopeless_retrieval():
    eye = np.eye(5)
    perfect = retrieval_metrics(eye, eye, np.arange(5), np.arange(5), ks=(1,))
    assert perfect["recall@1"] == 1 and perfect["median_rank"] == 1 and perfect["mAP"] == 1
    reversed_ = retrieval_metrics(eye, eye, np.arange(5), np.arange(5)[::-1], ks=(1,))
    assert reversed_["recall@1"] == pytest.approx(0.2)  # only the middle item maps to itself
    with pytest.raises(ValueError, match="at least one relevant"):
        retrieval_metrics(eye, eye, np.arange(5), np.arange(5) + 10)
