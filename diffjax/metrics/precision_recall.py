"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall
Metric for Assessing Generative Models", arXiv:1904.06991, eqs. 1-3).

Each set's manifold is the union of balls around its points whose radius is the distance to
the point's k-th nearest neighbour in the same set (k = 3). Precision is the fraction of
generated points inside the real manifold; recall is the fraction of real points inside the
generated manifold. Distances are Euclidean in feature space, computed in float64 blocks of
``block_size`` rows so memory stays bounded by ``block_size * N``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["precision_recall"]


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * a @ b.T
    return np.maximum(squared, 0.0)


def _kth_neighbour_radii(points: np.ndarray, k: int, block_size: int) -> np.ndarray:
    """Squared distance of each point to its k-th nearest other point of the same set."""
    radii = np.empty(points.shape[0])
    for start in range(0, points.shape[0], block_size):
        block = _squared_distances(points[start : start + block_size], points)
        # Index k of the sorted row: index 0 is the point itself at distance 0.
        radii[start : start + block_size] = np.partition(block, k, axis=1)[:, k]
    return radii


def _coverage(
    queries: np.ndarray, centres: np.ndarray, radii: np.ndarray, block_size: int
) -> float:
    """Fraction of ``queries`` within the radius of at least one centre."""
    inside = 0
    for start in range(0, queries.shape[0], block_size):
        block = _squared_distances(queries[start : start + block_size], centres)
        inside += int(np.any(block <= radii[None, :], axis=1).sum())
    return inside / queries.shape[0]


def precision_recall(
    real: Any, generated: Any, *, k: int = 3, block_size: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall of ``generated`` against ``real`` features, each set's
    manifold the union of its k-NN balls (Kynkäänniemi et al. 2019, eqs. 1-3).

    Args:
      real: float ``[N, D]`` features of real data.
      generated: float ``[M, D]`` features of samples.
      k: the neighbourhood size (3 in the paper).
      block_size: rows of distances computed at once.

    Returns:
      ``(precision, recall)``, each in [0, 1].
    """
    real, generated = np.asarray(real, np.float64), np.asarray(generated, np.float64)
    if real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1]:
        raise ValueError(
            f"features must be [N, D] with the same D, got {real.shape} and {generated.shape}."
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}.")
    if min(real.shape[0], generated.shape[0]) <= k:
        raise ValueError(
            f"each set needs more than k = {k} points, got {real.shape[0]} real and "
            f"{generated.shape[0]} generated."
        )
    real_radii = _kth_neighbour_radii(real, k, block_size)
    generated_radii = _kth_neighbour_radii(generated, k, block_size)
    precision = _coverage(generated, real, real_radii, block_size)
    recall = _coverage(real, generated, generated_radii, block_size)
    return precision, recall
