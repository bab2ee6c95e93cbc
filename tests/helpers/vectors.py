"""A toy backbone record and random unit vectors, for index tests that need no model."""

from __future__ import annotations

import numpy as np

DIM = 8
BACKBONE = {"model": "toy", "pooling": "avg", "dim": DIM, "weights": None,
            "preprocess": {"mean": [0.5] * 3, "std": [0.5] * 3, "input_size": 32, "resize_size": 32}}


def unit(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """`n` seeded random unit vectors of `dim` float32 components."""
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def toy_index(tmp_path, n: int = 5):
    """A writer of a new index at `tmp_path/ix` over `tmp_path/photos` holding `n` rows `img<i>.jpg` of
    `unit(n)` (sizes 100 + i, mtimes 1000 + i, digests `d<i>`): (writer, root, vectors)."""
    from lookalike.search.store.index import ImageIndex

    root = tmp_path / "photos"
    root.mkdir(exist_ok=True)
    ix = ImageIndex.create(tmp_path / "ix", root=root, backbone=BACKBONE)
    vecs = unit(n)
    rows = ix.append_vectors(vecs)
    ix.commit(inserts=[(f"img{i}.jpg", 100 + i, 1000 + i, f"d{i}", r) for i, r in enumerate(rows)])
    return ix, root, vecs
