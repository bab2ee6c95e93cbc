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
