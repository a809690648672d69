"""Kernel Inception Distance: an unbiased MMD^2 with a cubic polynomial kernel.

Bińkowski et al. 2018 ("Demystifying MMD GANs", arXiv:1801.01401, Sec. 3 and eq. 4): with
k(x, y) = (x . y / D + 1)^3 and m samples from each set,

    MMD^2_u = 1/(m(m-1)) sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] - 2/m^2 sum_{i,j} k(x_i, y_j),

an unbiased estimate of the squared MMD (its expectation is 0 when both sets come from one
distribution, so it can be negative). KID is its mean over ``num_subsets`` random subsets of
``subset_size`` from each set, reported with the standard deviation over subsets, as
torch-fidelity and the paper's code do (100 subsets of 1000).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["kernel_inception_distance", "polynomial_mmd2"]


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def polynomial_mmd2(x: Any, y: Any) -> float:
    """The unbiased MMD^2 of Bińkowski et al. 2018, eq. 4 with the cubic kernel, for two
    equal-size sets.

    Args:
      x: float ``[m, D]`` features, m >= 2.
      y: float ``[m, D]`` features, m >= 2.

    Returns:
      MMD^2_u (may be slightly negative).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or x.shape != y.shape or x.shape[0] < 2:
        raise ValueError(f"x and y must both be [m, D] with m >= 2, got {x.shape} and {y.shape}.")
    m = x.shape[0]
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    features_1: Any,
    features_2: Any,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: mean and standard deviation of :func:`polynomial_mmd2` over random subsets
    (Bińkowski et al. 2018, "Demystifying MMD GANs", Sec. 3 and eq. 4).

    Each subset draws ``subset_size`` rows of each set without replacement, with a NumPy
    generator seeded by ``seed`` (so the value is reproducible).

    Args:
      features_1: float ``[N_1, D]``, N_1 >= ``subset_size``.
      features_2: float ``[N_2, D]``, N_2 >= ``subset_size``.
      num_subsets: number of subsets (100 in the paper's code and torch-fidelity).
      subset_size: rows per subset (1000 there).
      seed: seed of the subset draws.

    Returns:
      ``(mean, std)`` of MMD^2_u over the subsets.
    """
    features_1, features_2 = np.asarray(features_1), np.asarray(features_2)
    if features_1.ndim != 2 or features_2.ndim != 2 or features_1.shape[1] != features_2.shape[1]:
        raise ValueError(
            f"features must be [N, D] with the same D, got {features_1.shape} and "
            f"{features_2.shape}."
        )
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(
            f"num_subsets must be >= 1 and subset_size >= 2, got {num_subsets} and {subset_size}."
        )
    smallest = min(features_1.shape[0], features_2.shape[0])
    if smallest < subset_size:
        raise ValueError(
            f"KID subsets of {subset_size} need at least that many samples in each set; got "
            f"{features_1.shape[0]} and {features_2.shape[0]}. Lower the subset size or draw more "
            f"samples."
        )
    rng = np.random.default_rng(seed)
    values = [
        polynomial_mmd2(
            features_1[rng.choice(features_1.shape[0], subset_size, replace=False)],
            features_2[rng.choice(features_2.shape[0], subset_size, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))
