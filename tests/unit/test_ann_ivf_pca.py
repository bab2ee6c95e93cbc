"""IVF-Flat on a PCA with an exact rerank (what `auto` builds for large indexes), and the narrower search
settings of the `dupes` graph pass (`Backend.graph_settings`)."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.search.store import ann
from lookalike.search.retrieve.dupes_graph import find_duplicates
from lookalike.search.retrieve.query import group_vectors


def decaying(n: int, dim: int = 96, seed: int = 0, spread: float = 0.5) -> np.ndarray:
    """Clustered unit vectors whose variance decays over the dimensions, as CNN features' does (a PCA then
    keeps most of it; isotropic noise would be a PCA's worst case)."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(1.0 + np.arange(dim))
    centres = rng.normal(size=(150, dim)) * scale
    x = centres[rng.integers(0, 150, n)] + spread * rng.normal(size=(n, dim)) * scale
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


@pytest.fixture(scope="module")
def data():
    x = decaying(20_300)
    ids = np.arange(20_000, dtype=np.int64) * 3 + 1
    return ids, x[:20_000], x[20_000:]


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_ivf_on_a_pca_with_rerank_reaches_the_exact_top_10(data, storage):
    ids, base, queries = data
    _, truth = ann.build("exact", ids, base).search(queries, 10)
    backend = ann.build("ivf", ids, base, pca=32, nlist=128, nprobe=16, rerank=10, storage=storage)
    assert backend.params()["pca"] == 32 and backend.params()["rerank"] == 10
    lookup = ann.vector_lookup(ids, base)
    dist, found = backend.search(queries, 10, lookup=lookup)
    without = recall_at(backend.search(queries, 10)[1], truth)  # PCA similarities only
    with_rerank = recall_at(found, truth)
    assert with_rerank >= 0.95 and with_rerank > without
    # reranked distances are the exact ones
    exact = np.sqrt(np.clip(2 - 2 * np.einsum("qkd,qd->qk", lookup(found.reshape(-1)).reshape(*found.shape, -1),
                                                      queries), 0, None))
    assert np.allclose(dist, exact, atol=1e-4)


def test_per_call_knobs_do_not_change_the_backend(data):
    ids, base, queries = data
    backend = ann.build("ivf", ids, base, pca=32, nlist=128, nprobe=16, rerank=10)
    lookup = ann.vector_lookup(ids, base)
    _, truth = ann.build("exact", ids, base).search(queries, 10)
    _, narrow = backend.search_similarities(queries, 10, lookup, rerank=1, knobs={"nprobe": 1})
    _, wide = backend.search_similarities(queries, 10, lookup)
    assert recall_at(narrow, truth) < recall_at(wide, truth)
    assert backend.nprobe == 16 and backend.rerank == 10
    rerank, knobs = backend.graph_settings(11)
    assert rerank <= backend.rerank and 1 <= knobs["nprobe"] <= backend.nprobe


def with_near_copies(n: int = 3000, dim: int = 96, copies: int = 400, seed: int = 5) -> np.ndarray:
    """Images and near-copies of some of them: as with CNN features, a near-copy is far closer to its
    original than distinct images are to each other."""
    rng = np.random.default_rng(seed)
    base = decaying(n, dim, seed, spread=1.0)
    src = rng.integers(0, n, copies)
    near = base[src] + rng.uniform(0.01, 0.04, (copies, 1)) * rng.normal(size=(copies, dim))
    x = np.concatenate([base, near])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[rng.permutation(len(x))].astype(np.float32)


@pytest.mark.parametrize("threshold", [0.3, 0.6])
def test_dupes_through_ivf_on_a_pca_equal_the_exact_groups(threshold):
    x = with_near_copies()
    ids = np.arange(len(x), dtype=np.int64) * 2 + 7
    expected = [[int(ids[i]) for i in g] for g in group_vectors(x, threshold, k=10)]
    assert expected
    backend = ann.build("ivf", ids, x, pca=32, nlist=32, nprobe=16, rerank=10)
    got = find_duplicates(backend, ids, x, threshold, k=10, lookup=ann.vector_lookup(ids, x))
    assert got == expected


def test_auto_builds_ivf_on_a_pca_past_hnsw_and_ivfpq_past_the_budget():
    d = 1280
    kind, params = ann.choose(1_000_000, d)
    assert kind == "ivf" and params["pca"] == 256 and params["rerank"] > 1 and params["nprobe"] >= 1
    assert ann.choose(ann.HNSW_FULL_MAX_ROWS, d)[0] == "hnsw"
    assert ann.choose(ann.HNSW_FULL_MAX_ROWS + 1, d)[0] == "ivf"
    # the PCA-256 one-byte codes no longer fit 3 GB: IVF-PQ
    assert ann.choose(20_000_000, d)[0] == "ivfpq"
    assert ann.plan("ivf", 1_000_000, d) == ann.choose(1_000_000, d)
