"""KID: the estimator against a brute-force sum, its unbiasedness, and its growth with a shift."""

import numpy as np
import pytest

from diffjax.metrics import kid


def _brute_force_mmd2(x, y):
    m, dim = x.shape

    def k(a, b):
        return (a @ b / dim + 1.0) ** 3

    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    across = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return within / (m * (m - 1)) - 2 * across / m**2


def test_mmd2_matches_the_double_sum():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((7, 3)) + 0.5
    assert kid.polynomial_mmd2(x, y) == pytest.approx(_brute_force_mmd2(x, y), rel=1e-12)


def test_mmd2_is_unbiased_on_two_samples_of_one_distribution():
    # E[MMD^2_u] = 0 exactly for two independent samples of one law; the mean of R independent
    # replications lies within 4 standard errors of 0 (false-failure odds ~6e-5).
    rng = np.random.default_rng(1)
    values = np.array(
        [
            kid.polynomial_mmd2(rng.standard_normal((50, 8)), rng.standard_normal((50, 8)))
            for _ in range(400)
        ]
    )
    standard_error = values.std(ddof=1) / np.sqrt(values.size)
    assert abs(values.mean()) < 4 * standard_error
    # The biased V-statistic (diagonal kept) would sit far above 0 on the same draws.
    shifted = kid.polynomial_mmd2(rng.standard_normal((50, 8)), rng.standard_normal((50, 8)) + 0.5)
    assert shifted > 10 * standard_error


def test_kid_grows_with_a_shift_and_is_reproducible():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((300, 8))
    means = [
        kid.kernel_inception_distance(
            real, rng.standard_normal((300, 8)) + shift, num_subsets=20, subset_size=100
        )[0]
        for shift in (0.0, 0.3, 1.0)
    ]
    assert means[0] < means[1] < means[2]
    fake = rng.standard_normal((300, 8))
    first = kid.kernel_inception_distance(real, fake, num_subsets=5, subset_size=100, seed=7)
    assert first == kid.kernel_inception_distance(
        real, fake, num_subsets=5, subset_size=100, seed=7
    )


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="KID subsets of 1000 need at least that many samples"):
        kid.kernel_inception_distance(np.zeros((10, 2)), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="same D"):
        kid.kernel_inception_distance(np.zeros((10, 2)), np.zeros((10, 3)), subset_size=5)
