"""search / compare / duplicates against brute force on synthetic unit vectors."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from lookalike.search.store.index import ImageIndex
from lookalike.search.retrieve.query import (DEFAULT_DUPE_THRESHOLD, compare, find_duplicates, group_vectors, knn_graph,
                                    search)

DIM = 16


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def build(tmp_path, vectors: np.ndarray) -> ImageIndex:
    root = tmp_path / "r"
    root.mkdir()
    backbone = {"model": "toy", "pooling": "avg", "dim": vectors.shape[1], "weights": None,
                "preprocess": {"mean": [0] * 3, "std": [1] * 3, "input_size": 8}}
    ix = ImageIndex.create(tmp_path / "ix", root=root, backbone=backbone)
    rows = ix.append_vectors(vectors)
    ix.commit(inserts=[(f"{i:04d}.png", 1, 1, f"h{i}", r) for i, r in enumerate(rows)])
    ix.close()
    return ImageIndex.open(tmp_path / "ix")


def test_search_matches_brute_force(tmp_path):
    rng = np.random.default_rng(1)
    vecs = unit(rng.standard_normal((200, DIM)))
    ix = build(tmp_path, vecs)
    queries = unit(rng.standard_normal((7, DIM)))
    results = search(ix, queries, k=5)
    for q, hits in zip(queries, results):
        d = np.linalg.norm(vecs - q, axis=1)  # the lab's definition, computed the slow way
        best = np.argsort(d)[:5]
        assert [h["id"] for h in hits] == [int(i) + 1 for i in best]
        assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
        for h, j in zip(hits, best):
            assert h["distance"] == pytest.approx(d[j], abs=1e-5)
            assert h["similarity"] == pytest.approx(float(vecs[j] @ q), abs=1e-5)
            assert h["distance"] == pytest.approx(np.sqrt(2 - 2 * h["similarity"]), abs=1e-5)
            assert h["path"].endswith(f"{j:04d}.png")
    ix.close()


def test_search_exclusions_and_small_index(tmp_path):
    vecs = unit(np.eye(4, DIM) + 0.01)
    ix = build(tmp_path, vecs)
    hits = search(ix, vecs[0], k=10)[0]
    assert len(hits) == 4 and hits[0]["id"] == 1 and hits[0]["distance"] == pytest.approx(0, abs=1e-3)
    assert [h["id"] for h in search(ix, vecs[0], k=2, exclude_ids=[1])[0]][0] != 1
    per_query = search(ix, vecs[:2], k=3, exclude_ids=[[1], None])
    assert 1 not in [h["id"] for h in per_query[0]] and per_query[1][0]["id"] == 2
    assert search(ix, vecs[:1], k=5, exclude_ids=[1, 2, 3, 4]) == [[]]
    ix.close()


def test_compare_matrix():
    rng = np.random.default_rng(2)
    vecs = unit(rng.standard_normal((30, DIM)))
    dist, sim = compare(vecs)
    assert dist.dtype == np.float32 and sim.dtype == np.float32 and dist.shape == (30, 30)
    brute = np.linalg.norm(vecs[:, None] - vecs[None], axis=2)
    assert np.allclose(dist, brute, atol=1e-5) and np.allclose(dist, dist.T)
    assert np.all(np.diag(dist) == 0) and np.allclose(np.diag(sim), 1)


def test_compare_2000_images_under_1gb():
    vecs = unit(np.random.default_rng(3).standard_normal((2000, 1280)))
    tracemalloc.start()
    dist, sim = compare(vecs)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert dist.shape == (2000, 2000)
    assert peak < 100 * 2**20  # two 16 MB matrices plus temporaries, far from an N x N x D broadcast (20 GB)


def test_knn_graph_blocks_agree_with_full():
    vecs = unit(np.random.default_rng(4).standard_normal((300, DIM)))
    full = {int(r): set(nn.tolist()) for rows, nns, _ in knn_graph(vecs, k=4, block=1000) for r, nn in zip(rows, nns)}
    small = {int(r): set(nn.tolist()) for rows, nns, _ in knn_graph(vecs, k=4, block=7) for r, nn in zip(rows, nns)}
    assert full == small and all(r not in nn for r, nn in full.items())


def test_groups_are_connected_components_of_close_pairs(tmp_path):
    rng = np.random.default_rng(5)
    centres = unit(rng.standard_normal((6, DIM)) * 10)
    members = [unit(c + 0.03 * rng.standard_normal((4, DIM))) for c in centres[:3]]  # 3 groups of 4
    loners = centres[3:]
    vecs = np.concatenate(members + [loners])
    groups = group_vectors(vecs, threshold=0.3, k=5)
    assert sorted(groups) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    # A chain a-b-c with only neighbouring links is one group (connected components, not cliques).
    a = unit(np.r_[1.0, 0, np.zeros(DIM - 2)])
    b = unit(np.r_[1.0, 0.2, np.zeros(DIM - 2)])
    c = unit(np.r_[1.0, 0.4, np.zeros(DIM - 2)])
    far = unit(np.r_[0, 0, 1.0, np.zeros(DIM - 3)])
    assert group_vectors(np.stack([a, b, c, far]), threshold=0.25, k=1) == [[0, 1, 2]]
    ix = build(tmp_path, vecs)
    assert find_duplicates(ix, threshold=0.3, k=5)[0] == [1, 2, 3, 4]
    assert find_duplicates(ix, threshold=0.0001) == []
    assert 0 < DEFAULT_DUPE_THRESHOLD < 1.4
    ix.close()


def test_vector_math_distance_and_blocked_top_k():
    from lookalike.search.vector_math import (blocked_top_k, distance_to_similarity, merge_top_k,
                                              similarity_to_distance, top_k)

    rng = np.random.default_rng(3)
    a, b = unit(rng.normal(size=(2, DIM)))
    sim = float(a @ b)
    assert similarity_to_distance(sim) == pytest.approx(float(np.linalg.norm(a - b)), abs=1e-6)
    assert distance_to_similarity(similarity_to_distance(sim)) == pytest.approx(sim, abs=1e-6)
    assert similarity_to_distance(1.0000001) == 0.0  # rounding above 1 is no error
    assert similarity_to_distance(np.array([1.0, -1.0])).dtype == np.float32

    db = unit(rng.normal(size=(57, DIM)))
    q = unit(rng.normal(size=(11, DIM)))
    own = np.arange(11)  # query i may not take database row i
    full = q @ db.T
    full[own, own] = -np.inf
    want = np.argsort(-full, axis=1, kind="stable")[:, :5]
    got = np.concatenate([cols for _, _, cols in blocked_top_k(q, db, 5, exclude=own, block=3)])
    assert np.array_equal(got, want)
    # Column blocks merged one at a time give the same k best as the whole row.
    best_s, best_c = np.zeros((11, 0), np.float32), np.zeros((11, 0), np.int64)
    for start in range(0, 57, 10):
        best_s, best_c = merge_top_k(best_s, best_c, full[:, start:start + 10], start, 5)
    assert np.array_equal(best_c, want) and np.array_equal(top_k(full, 5), want)


def test_eval_search_expansion_ranks_as_the_search_path(tmp_path):
    from lookalike.search.evaluation.search_path import expanded
    from lookalike.search.retrieve.query import Expansion, expanded_search

    rng = np.random.default_rng(5)
    centres = unit(rng.standard_normal((4, DIM)))
    vecs = unit(centres[np.arange(32) % 4] + 0.4 * rng.standard_normal((32, DIM)))
    ix = build(tmp_path, vecs)
    options = Expansion(qe=2, dba=3)
    queries = np.arange(6)
    hits = expanded_search(ix, vecs[queries], k=31, options=options, exclude_ids=[[int(q) + 1] for q in queries])
    ix.close()
    database, qvec = expanded(vecs.copy(), np.arange(32), vecs[queries], queries, options)
    assert not np.allclose(database, vecs) and not np.allclose(qvec, vecs[queries])  # both steps ran
    scores = qvec @ database.T
    scores[np.arange(6), queries] = -np.inf  # the query itself, as search leaves it out
    for q, found in enumerate(hits):
        order = np.argsort(-scores[q], kind="stable")[:10]
        assert [h["id"] for h in found[:10]] == [int(i) + 1 for i in order]
        assert [h["similarity"] for h in found[:10]] == pytest.approx(scores[q, order].tolist(), abs=1e-5)
