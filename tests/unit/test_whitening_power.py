"""The signed power applied before a whitening, chosen by how the descriptor pools."""

import numpy as np
import pytest

from lookalike.search.describe.whitening import fit_whitening, power_for, power_normalise


@pytest.mark.parametrize("pooling, power", [("avg", 0.5), ("rmac", 0.5), ("RMAC", 0.5), (None, 0.5),
                                            ("gem", 1.0), ("gem:2", 1.0)])
def test_sum_poolings_take_a_square_root_and_max_like_ones_do_not(pooling, power):
    assert power_for(pooling) == power


def test_power_normalise_keeps_signs_and_unit_length():
    x = np.array([[4.0, -1.0, 0.0]], np.float32)
    y = power_normalise(x, 0.5)
    np.testing.assert_allclose(y, np.array([[2.0, -1.0, 0.0]]) / np.sqrt(5.0), rtol=1e-6)
    np.testing.assert_array_equal(power_normalise(x, 1.0), x)


def test_a_fitted_whitening_carries_its_power_to_new_vectors():
    rng = np.random.default_rng(0)
    vectors = rng.random((64, 8)).astype(np.float32)
    w = fit_whitening(vectors, power=0.5)
    assert w.power == 0.5
    manual = fit_whitening(power_normalise(vectors, 0.5), power=1.0)
    np.testing.assert_allclose(w(vectors[:5]), manual(power_normalise(vectors[:5], 0.5)), atol=1e-5)
