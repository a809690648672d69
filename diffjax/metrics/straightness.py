"""Straightness of an ODE sampler's paths (Liu et al. 2022, "Flow Straight and Fast",
arXiv:2209.03003, eq. 9):

    S(Z) = integral_0^1 E ||(Z_1 - Z_0) - dZ_t / dt||^2 dt,

zero exactly when every path is a straight line traversed at constant speed, so that one Euler
step is exact. Here from a discrete path x_0 (noise, t = 1), ..., x_N (the sample): the
velocity of segment k is (x_{k+1} - x_k) / (t_{k+1} - t_k), the chord is the whole path's
(x_N - x_0) / (t_N - t_0), and the integral is the dt-weighted mean over the segments,
averaged over samples and, to compare data sizes, over dimensions.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["straightness"]


def straightness(path: jnp.ndarray, times: jnp.ndarray) -> jnp.ndarray:
    """Per-dimension straightness of paths, float32 scalar (Liu et al. 2022, eq. 9; see above).

    Args:
      path: ``[N + 1, B, ...]`` states along each path, from the first time to the last.
      times: ``[N + 1]`` their times (decreasing from 1 towards 0 for diffjax's samplers).

    Returns:
      (1 / |t_N - t_0|) sum_k |dt_k| mean_{b, d} (chord - v_k)^2.

    Raises:
      ValueError: shapes that do not match, or fewer than two points.
    """
    path, times = jnp.asarray(path, jnp.float32), jnp.asarray(times, jnp.float32)
    if path.ndim < 2 or times.shape != path.shape[:1] or path.shape[0] < 2:
        raise ValueError(
            f"path must be [N + 1, B, ...] with N >= 1 and times [N + 1]; got shapes "
            f"{path.shape} and {times.shape}."
        )
    steps = jnp.diff(times)
    shape = (-1,) + (1,) * (path.ndim - 1)
    velocities = jnp.diff(path, axis=0) / steps.reshape(shape)
    chord = (path[-1] - path[0]) / (times[-1] - times[0])
    squared = jnp.mean(jnp.square(velocities - chord[None]), axis=tuple(range(1, path.ndim)))
    return jnp.sum(jnp.abs(steps) * squared) / jnp.abs(times[-1] - times[0])
