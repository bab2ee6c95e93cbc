"""Retrieval quality measures, each as its benchmark defines it.

- `holidays_ap`: INRIA Holidays' average precision (its `holidays_map.py`): the area under the
  precision-recall curve by the trapezoid rule, one trapezoid per positive, between the precision just before
  the positive and the precision at it (1.0 before a positive at rank 0).
- `map_at_r`, `r_precision`: as in Musgrave, Belongie and Lim, "A Metric Learning Reality Check" (ECCV 2020):
  with R the number of positives of a query, R-precision is the fraction of positives among the first R
  results, and MAP@R the mean over those R positions of the precision at each position holding a positive.
- `precision_at_k`, `recall_at_k`: the fraction of the first k results that are positives, and the fraction of
  the positives found in the first k.

Junk images (the ground truth's "junk" list, e.g. the query's own near-copies that count neither way) are taken
out of a ranking before any measure, so they neither help nor hurt: the images after them move up.
A query with no positives has no defined AP; callers leave it out of the means and count it.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def positive_ranks(ranking: Sequence, positives: Iterable, junk: Iterable = ()) -> np.ndarray:
    """0-based ranks of the positives in `ranking` (ids, best first) once the junk ids are taken out."""
    pos, bad = set(positives), set(junk)
    ranks, rank = [], 0
    for item in ranking:
        if item in bad:
            continue
        if item in pos:
            ranks.append(rank)
        rank += 1
    return np.asarray(ranks, dtype=np.int64)


def holidays_ap(ranks: Sequence[int], n_positives: int) -> float:
    """Holidays' trapezoid AP from the sorted 0-based ranks of the positives found and the number of positives
    in all (positives never ranked contribute nothing). ValueError when `n_positives` is 0."""
    if n_positives <= 0:
        raise ValueError("average precision needs at least one positive")
    ranks = [int(r) for r in ranks]
    rel = np.zeros((1, max(ranks) + 1 if ranks else 1), bool)
    rel[0, ranks] = True
    return float(holidays_ap_rows(rel, np.asarray([n_positives]))[0])


def holidays_ap_rows(rel: np.ndarray, n_positives: np.ndarray) -> np.ndarray:
    """Holidays' trapezoid AP of each row of a boolean relevance matrix (a query's results in rank order), over
    its number of positives in all: each positive adds the mean of the precision just before it and at it."""
    found = np.cumsum(rel, axis=1)  # positives up to and including each place
    rank = np.arange(rel.shape[1])[None, :]
    before = np.where(rank == 0, 1.0, (found - rel) / np.maximum(rank, 1))
    at = found / (rank + 1)
    return np.where(rel, (before + at) / 2.0, 0.0).sum(axis=1) / np.maximum(n_positives, 1)


def relevance(ranking: Sequence, positives: Iterable, junk: Iterable = ()) -> np.ndarray:
    """Boolean relevance of each result of `ranking` with the junk taken out."""
    pos, bad = set(positives), set(junk)
    return np.asarray([item in pos for item in ranking if item not in bad], dtype=bool)


def precision_at_k(rel: np.ndarray, k: int) -> float:
    """Positives among the first k results, over k (a ranking shorter than k counts its missing places as misses)."""
    return float(np.count_nonzero(rel[:k])) / k


def recall_at_k(rel: np.ndarray, k: int, n_positives: int) -> float:
    """Fraction of all positives found in the first k results (ValueError when there are none)."""
    if n_positives <= 0:
        raise ValueError("recall needs at least one positive")
    return float(np.count_nonzero(rel[:k])) / n_positives


def r_precision(rel: np.ndarray, n_positives: int) -> float:
    """Positives among the first R results, over R (R = the number of positives)."""
    if n_positives <= 0:
        raise ValueError("R-precision needs at least one positive")
    return float(np.count_nonzero(rel[:n_positives])) / n_positives


def map_at_r(rel: np.ndarray, n_positives: int) -> float:
    """MAP@R: the mean, over the first R places, of the precision at each place that holds a positive."""
    if n_positives <= 0:
        raise ValueError("MAP@R needs at least one positive")
    top = np.asarray(rel[:n_positives], dtype=bool)
    if not top.any():
        return 0.0
    precision = np.cumsum(top) / np.arange(1, len(top) + 1)
    return float(precision[top].sum()) / n_positives
