"""Retrieval measures against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.search.evaluation.metrics import holidays_ap_rows
from lookalike.search.evaluation.metrics import (holidays_ap, map_at_r, positive_ranks, precision_at_k, r_precision,
                                      recall_at_k, relevance)


def test_perfect_ranking_scores_one_everywhere():
    rel = relevance(["a", "b", "c", "x", "y"], positives={"a", "b", "c"})
    assert holidays_ap(positive_ranks(["a", "b", "c", "x"], {"a", "b", "c"}), 3) == pytest.approx(1.0)
    assert map_at_r(rel, 3) == r_precision(rel, 3) == precision_at_k(rel, 1) == recall_at_k(rel, 3, 3) == 1.0


def test_holidays_ap_by_hand():
    # One positive at rank 1 (0-based) of one: trapezoid between precision 0/1 before and 1/2 at it: 0.25.
    assert holidays_ap([1], 1) == pytest.approx(0.25)
    # Positives at ranks 0 and 2 of two: (1 + 1)/2 * 1/2 + (1/2 + 2/3)/2 * 1/2 = 0.5 + 0.291666...
    assert holidays_ap([0, 2], 2) == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)
    # A positive never ranked counts as nothing: one of two found first.
    assert holidays_ap([0], 2) == pytest.approx(0.5)
    assert holidays_ap([], 3) == 0.0
    with pytest.raises(ValueError):
        holidays_ap([], 0)


def _reference_ap(ranks, n_positives):
    """Holidays' `holidays_map.py` loop, written out: the mean of the precision before and at each positive."""
    ap = 0.0
    for found, rank in enumerate(sorted(ranks)):
        before = 1.0 if rank == 0 else found / rank
        ap += (before + (found + 1) / (rank + 1)) / 2.0 / n_positives
    return ap


def test_vectorised_ap_matches_the_reference():
    rng = np.random.default_rng(0)
    rel = rng.random((20, 30)) < 0.2
    rel[0] = False  # a row with no positive ranked
    n_pos = rel.sum(axis=1) + rng.integers(0, 3, 20)  # some positives never ranked
    n_pos[n_pos == 0] = 1
    expected = [_reference_ap(np.flatnonzero(r), n) for r, n in zip(rel, n_pos)]
    assert np.allclose(holidays_ap_rows(rel, n_pos), expected)
    assert np.allclose([holidays_ap(np.flatnonzero(r), n) for r, n in zip(rel, n_pos)], expected)


def test_junk_is_taken_out_of_the_ranking():
    ranking = ["j", "p", "x", "q"]
    assert list(positive_ranks(ranking, {"p", "q"}, junk={"j"})) == [0, 2]
    assert holidays_ap(positive_ranks(ranking, {"p", "q"}, junk={"j"}), 2) == pytest.approx(
        holidays_ap([0, 2], 2))
    assert list(relevance(ranking, {"p", "q"}, junk={"j", "x"})) == [True, True]


def test_map_at_r_and_r_precision_by_hand():
    # R = 3; first three results: hit, miss, hit -> MAP@R = (1/1 + 2/3) / 3, R-precision = 2/3.
    rel = np.array([True, False, True, True, False])
    assert map_at_r(rel, 3) == pytest.approx((1 + 2 / 3) / 3)
    assert r_precision(rel, 3) == pytest.approx(2 / 3)
    assert precision_at_k(rel, 2) == 0.5 and precision_at_k(rel, 10) == pytest.approx(0.3)
    assert recall_at_k(rel, 2, 3) == pytest.approx(1 / 3)
    assert map_at_r(np.zeros(4, bool), 2) == 0.0


def test_queries_without_positives_are_refused():
    for fn in (lambda: map_at_r(np.zeros(3, bool), 0), lambda: r_precision(np.zeros(3, bool), 0),
               lambda: recall_at_k(np.zeros(3, bool), 1, 0)):
        with pytest.raises(ValueError):
            fn()
