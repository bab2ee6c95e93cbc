"""`dupes` through a search backend (`search/retrieve/dupes_graph.py`): the same groups as `query.group_vectors`."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.search.store import ann
from lookalike.search.retrieve.dupes_graph import components, find_duplicates, knn_edges
from lookalike.search.retrieve.query import distance_to_similarity, group_vectors


def with_near_copies(n: int = 1500, dim: int = 48, copies: int = 300, seed: int = 3) -> np.ndarray:
    """Clustered unit vectors plus near-copies of some of them (chains of copies too), shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, dim))
    base = centres[rng.integers(0, 30, n)] + 0.8 * rng.normal(size=(n, dim))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    src = rng.integers(0, n, copies)
    near = base[src] + rng.uniform(0.02, 0.09, (copies, 1)) * rng.normal(size=(copies, dim))
    chain = near[:40] + 0.05 * rng.normal(size=(40, dim))  # copies of copies: groups of 3
    x = np.concatenate([base, near, chain])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[rng.permutation(len(x))].astype(np.float32)


@pytest.mark.parametrize("threshold", [0.3, 0.6])
def test_exact_backend_gives_the_groups_of_query_py(threshold):
    x = with_near_copies()
    ids = np.arange(len(x), dtype=np.int64) + 1  # ids ascending with rows, as ImageIndex.ids()
    expected = [[int(ids[i]) for i in g] for g in group_vectors(x, threshold, k=10)]
    assert expected  # the set has near-duplicates to find
    got = find_duplicates(ann.build("exact", ids, x), ids, x, threshold, k=10)
    assert got == expected


def test_hnsw_backend_gives_the_same_groups_on_a_small_set():
    x = with_near_copies()
    ids = np.arange(len(x), dtype=np.int64) * 7 + 3
    expected = [[int(ids[i]) for i in g] for g in group_vectors(x, 0.6, k=10)]
    backend = ann.build("hnsw", ids, x, m=16, ef_search=128)
    seen = []
    got = find_duplicates(backend, ids, x, 0.6, k=10, progress=lambda d, t: seen.append((d, t)))
    assert got == expected
    assert seen and seen[-1] == (len(x), len(x))


def test_edges_leave_out_self_and_respect_the_threshold():
    x = with_near_copies(n=400, copies=50)
    ids = np.arange(len(x), dtype=np.int64)
    min_sim = distance_to_similarity(0.6)
    a, b = knn_edges(ann.build("exact", ids, x), ids, x, k=5, min_similarity=min_sim, block=64)
    assert len(a) and not (a == b).any()
    assert (np.einsum("ij,ij->i", x[a], x[b]) >= min_sim - 1e-5).all()
    assert np.bincount(a, minlength=len(x)).max() <= 5  # at most k edges per row


def test_masked_entries_are_not_grouped():
    x = with_near_copies(n=400, copies=50)
    ids = np.arange(len(x), dtype=np.int64)
    full = find_duplicates(ann.build("exact", ids, x), ids, x, 0.6)
    victim = full[0]
    backend = ann.build("exact", ids, x)
    backend.remove(victim[1:])
    keep = ~np.isin(ids, victim[1:])
    got = find_duplicates(backend, ids[keep], x[keep], 0.6)
    assert all(not set(victim[1:]) & set(g) for g in got)


def test_components_of_no_edges():
    assert components(np.arange(5), np.zeros(0, np.int64), np.zeros(0, np.int64)) == []
    assert components(np.array([10, 20, 30]), np.array([30]), np.array([10])) == [[10, 30]]
