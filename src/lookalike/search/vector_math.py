"""The vector maths every search stage shares, each formula written once.

Vectors are L2-normalised, so similarity is the cosine (a dot product) and distance the Euclidean distance
between unit vectors: distance = sqrt(2 - 2 * similarity). Top-k selection over a similarity matrix is done
block by block, so no step ever holds more than `BLOCK_BYTES` of scores whatever the collection size.
"""

from __future__ import annotations

from typing import Iterator, Optional, Union, overload

import numpy as np

# Scores held at once by a blocked top-k: (rows x columns) float32 similarities and their int64 orders.
BLOCK_BYTES = 64 * 2**20


@overload
def similarity_to_distance(sim: float) -> float: ...


@overload
def similarity_to_distance(sim: np.ndarray) -> np.ndarray: ...


def similarity_to_distance(sim: Union[float, np.ndarray]) -> Union[float, np.ndarray]:
    """Euclidean distance between unit vectors of cosine `sim`: sqrt(2 - 2 sim), 0 for sim >= 1 (rounding).
    An array gives a float32 array of its shape, a number gives a float."""
    dist = np.sqrt(np.clip(2.0 - 2.0 * np.asarray(sim), 0.0, None))
    return float(dist) if dist.ndim == 0 else dist.astype(np.float32, copy=False)


@overload
def distance_to_similarity(dist: float) -> float: ...


@overload
def distance_to_similarity(dist: np.ndarray) -> np.ndarray: ...


def distance_to_similarity(dist: Union[float, np.ndarray]) -> Union[float, np.ndarray]:
    """The inverse of `similarity_to_distance`: the cosine of unit vectors `dist` apart, 1 - dist^2 / 2."""
    sim = 1.0 - np.square(np.asarray(dist)) / 2.0
    return float(sim) if sim.ndim == 0 else sim


def rows_per_block(columns: int, bytes_per_score: int = 4, block_bytes: int = BLOCK_BYTES) -> int:
    """How many rows of `columns` scores (of `bytes_per_score` bytes each) fit in `block_bytes`, at least 1."""
    return max(1, block_bytes // max(1, columns * bytes_per_score))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest scores of each row, best first (ties in column order)."""
    if k >= scores.shape[1]:
        return np.argsort(-scores, axis=1, kind="stable")
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def merge_top_k(best_scores: np.ndarray, best_columns: np.ndarray, scores: np.ndarray, offset: int,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Running top-k over column blocks: the k best of (`best_scores`, `best_columns`) and of `scores`, a block
    of columns starting at column `offset`. Start from (n, 0) arrays; the result is sorted best first."""
    top = top_k(scores, min(k, scores.shape[1]))
    cand_s = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
    cand_c = np.concatenate([best_columns, top + offset], axis=1)
    keep = top_k(cand_s, min(k, cand_s.shape[1]))
    return np.take_along_axis(cand_s, keep, axis=1), np.take_along_axis(cand_c, keep, axis=1)


def blocked_top_k(queries: np.ndarray, database: np.ndarray, k: int, exclude: Optional[np.ndarray] = None,
                  block: Optional[int] = None) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """The k most similar database rows of each query row, computed in blocks of query rows: yields
    (rows of the block, similarities (b, k), database columns (b, k)), best first. `exclude[i]`: a database
    column query i may not take (e.g. itself; -1: none). Fewer than k columns: k is the number of columns;
    an excluded column that cannot be avoided comes last with similarity -inf."""
    queries = np.ascontiguousarray(queries, np.float32)
    database = np.ascontiguousarray(database, np.float32)
    k = max(0, min(k, len(database)))
    block = block or rows_per_block(len(database), 12)
    for start in range(0, len(queries), block):
        rows = slice(start, min(len(queries), start + block))
        sims = queries[rows] @ database.T
        if exclude is not None:
            own = np.asarray(exclude[rows], np.int64)
            hit = np.flatnonzero(own >= 0)
            sims[hit, own[hit]] = -np.inf
        cols = top_k(sims, k)
        yield rows, np.take_along_axis(sims, cols, axis=1), cols
