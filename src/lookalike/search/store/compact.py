"""Compact vectors: float16 storage and a PCA reduction (e.g. 1280 -> 256) fitted on the indexed vectors.

Both keep vectors comparable by the same metric: the PCA projection is re-normalised, so a reduced vector is
again a unit vector and distance = sqrt(2 - 2 * cosine) still holds. A PCA saves as an `.npz` of plain arrays
(read with `allow_pickle=False`), with its shapes checked on load.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import LookalikeError

# Rows used to fit a PCA: enough for a stable covariance in its top directions (benchmarks/results/ann_settings.md).
PCA_FIT_ROWS = 100_000
# Rows per block when converting or projecting a large (possibly memory-mapped) array.
_BLOCK = 65_536


def normalise(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows in place (float32); zero rows stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    x /= norms
    return x


def as_float16(vectors: np.ndarray) -> np.ndarray:
    """Unit float32 rows -> float16, block by block (half the bytes; components of a unit vector lie in [-1, 1],
    where float16 keeps ~3 significant digits)."""
    out = np.empty(vectors.shape, np.float16)
    for s in range(0, len(vectors), _BLOCK):
        out[s:s + _BLOCK] = vectors[s:s + _BLOCK]
    return out


def sample_rows(n: int, m: int, seed: int = 0) -> np.ndarray:
    """Up to m sorted row numbers out of n (sorted: a memory-mapped array is read in file order)."""
    if n <= m:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))


class Pca:
    """A linear projection to `dim` dimensions (mean removed, top principal directions), then L2-normalised."""

    def __init__(self, mean: np.ndarray, components: np.ndarray) -> None:
        self.mean = np.ascontiguousarray(mean, dtype=np.float32).reshape(-1)
        self.components = np.ascontiguousarray(components, dtype=np.float32)  # (in_dim, dim)
        if self.components.ndim != 2 or self.components.shape[0] != self.mean.shape[0]:
            raise ValueError(f"PCA shapes do not match: mean {self.mean.shape}, components {self.components.shape}")

    @property
    def in_dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def dim(self) -> int:
        return int(self.components.shape[1])

    @classmethod
    def fit(cls, vectors: np.ndarray, dim: int, max_rows: int = PCA_FIT_ROWS, seed: int = 0) -> "Pca":
        """Fit on (a sample of at most `max_rows` of) `vectors`, (N, D) with N >= 2."""
        n, d = vectors.shape
        if not 0 < dim <= d:
            raise LookalikeError(f"PCA dimension {dim} must be between 1 and the vectors' {d}")
        if n < 2:
            raise LookalikeError("a PCA needs at least 2 vectors")
        rows = sample_rows(n, max_rows, seed)
        mean = np.zeros(d, np.float64)
        cov = np.zeros((d, d), np.float64)
        for s in range(0, len(rows), _BLOCK):
            x = np.asarray(vectors[rows[s:s + _BLOCK]], dtype=np.float64)
            mean += x.sum(0)
            cov += x.T @ x
        mean /= len(rows)
        cov = cov / len(rows) - np.outer(mean, mean)
        evals, evecs = np.linalg.eigh(cov)  # ascending
        top = evecs[:, ::-1][:, :dim]
        return cls(mean, top)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """(N, in_dim) -> (N, dim) float32 unit rows, block by block."""
        vectors = np.atleast_2d(vectors)
        if vectors.shape[1] != self.in_dim:
            raise LookalikeError(f"vectors have dimension {vectors.shape[1]}, the PCA expects {self.in_dim}")
        out = np.empty((len(vectors), self.dim), np.float32)
        for s in range(0, len(vectors), _BLOCK):
            x = np.asarray(vectors[s:s + _BLOCK], dtype=np.float32) - self.mean
            out[s:s + _BLOCK] = x @ self.components
        return normalise(out)

    def save(self, path) -> None:
        """Atomically write an `.npz` of plain arrays (no pickled objects)."""
        from ...atomic import atomic_write

        with atomic_write(Path(path), "wb") as fh:
            np.savez(fh, mean=self.mean, components=self.components)

    @classmethod
    def load(cls, path) -> "Pca":
        """Read a PCA written by `save`; LookalikeError when the file is damaged or not one."""
        try:
            with np.load(os.fspath(path), allow_pickle=False) as z:
                mean, comps = z["mean"], z["components"]
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise LookalikeError(f"PCA file {path} is unreadable ({exc.__class__.__name__})") from None
        if mean.ndim != 1 or comps.ndim != 2 or comps.shape[0] != mean.shape[0] or not np.isfinite(comps).all():
            raise LookalikeError(f"PCA file {path} is damaged (shapes {mean.shape}, {comps.shape})")
        return cls(mean, comps)
