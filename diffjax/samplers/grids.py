"""Sampling grids: the points a sampler visits, with every constant it needs there, in float64.

A :class:`Grid` lists S points in visiting order (from noise towards data) plus the end point:
the process time of each point, its marginal (alpha, sigma and, for continuous processes, their
time derivatives), the network's time input and the key index of any noise drawn there. The
arrays are computed once in float64 NumPy from the concrete process (DESIGN rule 6) and stored
as float32; the scan runner (:mod:`diffjax.samplers.runner`) reads point k and point k + 1 in
step k, so a grid's values never trigger a recompile, only its length does.

Every grid ends at the data: the last entry is alpha = 1, sigma = 0, so a first-order step onto
it returns the x0-prediction of the last model call.

Time lists: :mod:`diffjax.samplers.timesteps` picks integer timesteps of a discrete schedule;
for continuous processes this module provides

* :func:`karras_sigmas` (Karras et al. 2022, eq. 5): sigma_i = (s_max^(1/rho) + i / (N - 1)
  (s_min^(1/rho) - s_max^(1/rho)))^rho in s = sigma / alpha, mapped to t through log-SNR;
* :func:`log_snr_times`: uniform in lambda = log(alpha / sigma) (Lu et al. 2022, Sec. 3.3);
* :func:`uniform_times`: uniform in t, optionally through SD3's :func:`~diffjax.losses.time_shift`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import predictions
from diffjax.processes import Marginal, is_discrete
from diffjax.samplers.timesteps import check_num_steps, concrete_schedule_array

__all__ = [
    "DEFAULT_SIGMA_MAX",
    "DEFAULT_SIGMA_MIN",
    "Grid",
    "check_defined_start",
    "data_end_time",
    "karras_sigmas",
    "karras_times",
    "log_snr_times",
    "make_grid",
    "uniform_times",
]

DEFAULT_SIGMA_MIN = 0.002
"""EDM's smallest noise level s = sigma / alpha at which a model is still called."""
DEFAULT_SIGMA_MAX = 80.0
"""EDM's largest noise level."""


class Grid(NamedTuple):
    """The points of a sampling run (a pytree of arrays; S points plus the end point).

    Attributes:
      time: ``[S + 1]`` process times (int32 for a schedule, float32 in [0, 1] otherwise; the
        end point's is 0).
      model_time: ``[S + 1]`` the network's time input at each point.
      alpha, sigma: ``[S + 1]`` float32 marginal coefficients; ``alpha[S] = 1``, ``sigma[S] = 0``.
      d_alpha, d_sigma: ``[S + 1]`` float32 time derivatives, or None for a schedule.
      noise_index: ``[S]`` int32 fold-in index of the noise drawn in each step.
    """

    time: np.ndarray
    model_time: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    d_alpha: np.ndarray | None
    d_sigma: np.ndarray | None
    noise_index: np.ndarray

    @property
    def num_points(self) -> int:
        """S, the number of grid points before the end point (static)."""
        return self.noise_index.shape[0]


def make_grid(process: Any, times: np.ndarray) -> Grid:
    """The :class:`Grid` of ``process`` at the given times, in visiting order, plus the end point.

    Args:
      process: a concrete schedule or continuous process.
      times: ``[S]`` int timesteps of a schedule, or float times in [0, 1] of a process.

    Returns:
      The grid, its float constants computed in float64 and stored as float32.
    """
    times = np.asarray(times)
    if is_discrete(process):
        alphas = concrete_schedule_array(process.sqrt_alphas_cumprod, "the sampler")[times]
        sigmas = concrete_schedule_array(process.sqrt_one_minus_alphas_cumprod, "the sampler")[
            times
        ]
        return Grid(
            time=np.concatenate([times, [0]]).astype(np.int32),
            model_time=np.concatenate([times, [0]]).astype(np.int32),
            alpha=np.concatenate([alphas, [1.0]]).astype(np.float32),
            sigma=np.concatenate([sigmas, [0.0]]).astype(np.float32),
            d_alpha=None,
            d_sigma=None,
            noise_index=times.astype(np.int32),
        )
    times = _concrete_times(times)
    alphas, sigmas = process.alpha_sigma(times, np)
    with np.errstate(divide="ignore", invalid="ignore"):
        d_alphas, d_sigmas = process.derivatives(np.concatenate([times, [0.0]]), np)
        model_times = process.model_time(np.concatenate([times, [0.0]]), np)
    return Grid(
        time=np.concatenate([times, [0.0]]).astype(np.float32),
        model_time=np.nan_to_num(model_times, neginf=0.0).astype(np.float32),
        alpha=np.concatenate([np.broadcast_to(alphas, times.shape), [1.0]]).astype(np.float32),
        sigma=np.concatenate([np.broadcast_to(sigmas, times.shape), [0.0]]).astype(np.float32),
        d_alpha=_finite(np.broadcast_to(d_alphas, times.shape[0] + 1)),
        d_sigma=_finite(np.broadcast_to(d_sigmas, times.shape[0] + 1)),
        noise_index=np.arange(times.shape[0], dtype=np.int32),
    )


def _finite(values: np.ndarray) -> np.ndarray:
    """float32, with the infinite derivatives of a VP process at t = 0 (sigma' = -alpha alpha'
    / sigma) set to 0: no sampler evaluates the velocity at the end point."""
    values = np.asarray(values, np.float64)
    return np.where(np.isfinite(values), values, 0.0).astype(np.float32)


def _concrete_times(times: Any) -> np.ndarray:
    try:
        times = np.asarray(times, np.float64)
    except jax.errors.TracerArrayConversionError as error:
        raise TypeError(
            "the sampler needs a concrete process (its grid is built in NumPy before compiling); "
            "close over the process inside jax.jit instead of passing it as an argument."
        ) from error
    if times.ndim != 1 or not np.all((times >= 0.0) & (times <= 1.0)):
        raise ValueError(f"grid times must be a 1-D array in [0, 1], got {times!r}.")
    return times


def _process_float(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, jax.errors.ConcretizationTypeError) as error:
        raise TypeError(
            f"the sampler needs a concrete process ({name} is traced); close over the process "
            f"inside jax.jit instead of passing it as an argument."
        ) from error


def _sigma_ratio(process: Any, t: float) -> float:
    alpha, sigma = process.alpha_sigma(np.float64(_process_float(t, "t")), np)
    with np.errstate(divide="ignore"):
        return float(np.float64(sigma) / np.float64(alpha))


def data_end_time(process: Any, sigma_min: float = DEFAULT_SIGMA_MIN) -> float:
    """The time where sigma / alpha = ``sigma_min`` (clipped to [0, 1]): the last model call of
    a continuous grid, after which a sampler steps to the data (EDM's sigma_min, the end of the
    grid of Karras et al. 2022, eq. 5)."""
    with np.errstate(divide="ignore"):
        t = process.t_from_log_snr(np.float64(-2.0 * math.log(sigma_min)), np)
    return float(np.clip(t, 0.0, 1.0))


def _check_range(sigma_min: float, sigma_max: float, rho: float | None = None) -> None:
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}.")
    if rho is not None and not rho > 0:
        raise ValueError(f"rho must be > 0 (7 in Karras et al. 2022), got {rho}.")


def karras_sigmas(
    num_steps: int,
    sigma_min: float = DEFAULT_SIGMA_MIN,
    sigma_max: float = DEFAULT_SIGMA_MAX,
    rho: float = 7.0,
) -> np.ndarray:
    """Karras et al. 2022, eq. 5: N noise levels from sigma_max down to sigma_min, float64 [N].

    sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.
    """
    num_steps = check_num_steps(num_steps, None)
    _check_range(sigma_min, sigma_max, rho)
    if num_steps == 1:
        return np.asarray([sigma_max], np.float64)
    ramp = np.linspace(0.0, 1.0, num_steps)
    root_max, root_min = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (root_max + ramp * (root_min - root_max)) ** rho


def karras_times(
    process: Any, num_steps: int, sigma_min: float = DEFAULT_SIGMA_MIN,
    sigma_max: float = DEFAULT_SIGMA_MAX, rho: float = 7.0,
) -> np.ndarray:  # fmt: skip
    """The Karras grid of a continuous process, as times: ``sigma_max`` and ``sigma_min`` are
    clipped to the process's range of sigma / alpha, then mapped to t through log-SNR
    (:func:`karras_sigmas`, Karras et al. 2022, eq. 5)."""
    _check_range(sigma_min, sigma_max, rho)
    top = min(sigma_max, _sigma_ratio(process, 1.0))
    bottom = max(sigma_min, _sigma_ratio(process, 0.0))
    if not bottom < top:
        raise ValueError(
            f"the process {process.name!r} spans sigma/alpha in [{_sigma_ratio(process, 0.0):.4g}, "
            f"{_sigma_ratio(process, 1.0):.4g}], which does not overlap [sigma_min, sigma_max] = "
            f"[{sigma_min}, {sigma_max}]."
        )
    sigmas = karras_sigmas(num_steps, bottom, top, rho)
    return np.clip(process.t_from_log_snr(-2.0 * np.log(sigmas), np), 0.0, 1.0)


def log_snr_times(
    process: Any, num_steps: int, *, min_log_snr: float = -6.0, start_at_t_max: bool = True,
    sigma_min: float = DEFAULT_SIGMA_MIN,
) -> np.ndarray:  # fmt: skip
    """Times uniform in lambda = log(alpha / sigma) for a continuous process, descending: the
    step-size schedule of DPM-Solver (Lu et al. 2022, arXiv:2206.00927).

    The grid runs from t = 1 (with ``start_at_t_max``; else from the time of log-SNR
    ``min_log_snr``) down to :func:`data_end_time`; between the first two points it is uniform
    in lambda from max(lambda(1), min_log_snr / 2). This is the continuous counterpart of
    :func:`diffjax.samplers.timesteps.log_snr_timesteps`.

    Args:
      process: a continuous process.
      num_steps: S >= 1.
      min_log_snr: no point below this log-SNR except t = 1 with ``start_at_t_max``.
      start_at_t_max: make t = 1 the first point.
      sigma_min: the data end's sigma / alpha.

    Returns:
      float64 ``[S]`` in [0, 1], strictly descending.
    """
    num_steps = check_num_steps(num_steps, None)
    end = data_end_time(process, sigma_min)
    with np.errstate(divide="ignore"):
        lambda_hi = -math.log(max(_sigma_ratio(process, end), 1e-300))
        lambda_top = (
            -math.log(_sigma_ratio(process, 1.0)) if _sigma_ratio(process, 1.0) > 0 else math.inf
        )
    lambda_lo = max(lambda_top, 0.5 * min_log_snr)
    if not lambda_lo < lambda_hi:
        raise ValueError(
            f"min_log_snr={min_log_snr} must be below the process's largest log-SNR "
            f"{2 * lambda_hi:.3f} (at t = {end:.4g})."
        )
    lambdas = np.linspace(lambda_lo, lambda_hi, num_steps)
    times = np.clip(process.t_from_log_snr(2.0 * lambdas, np), 0.0, 1.0)
    if start_at_t_max:
        times[0] = 1.0
    return times


def uniform_times(
    num_steps: int, t_max: float = 1.0, t_min: float = 0.0, shift: float = 1.0
) -> np.ndarray:
    """S times uniform in t from ``t_max``, float64 [S], then SD3's shift t' = s t / (1 + (s - 1) t)
    (Esser et al. 2024, eq. 23).

    With ``t_min = 0`` the times are linspace(t_max, 0, S + 1) without the 0 (the last step lands
    on the data from t_max / S, like DDIM's 'trailing' spacing); with ``t_min > 0`` they are
    linspace(t_max, t_min, S), so the last model call is at t_min and the last step, t_min to 0,
    is short (the grid of diffusers' flow-matching schedulers, whose t_min is 1/1000).
    """
    num_steps = check_num_steps(num_steps, None)
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}.")
    if not shift > 0:
        raise ValueError(f"shift must be > 0 (1: no shift), got {shift}.")
    if t_min == 0.0:
        times = np.linspace(t_max, 0.0, num_steps + 1)[:-1]
    else:
        times = np.linspace(t_max, t_min, num_steps)
    return shift * times / (1.0 + (shift - 1.0) * times)


def as_jax(grid: Grid) -> Grid:
    """The grid's arrays as JAX arrays (for the jitted runner)."""
    return jax.tree.map(jnp.asarray, grid)


ZERO_SNR_ALPHA = 1e-8
"""An alpha (or prediction determinant) below this is zero SNR: cos(pi / 2) rounds to 6e-17, not
0, for the cosine process at t = 1."""


def check_defined_at(
    m: Marginal, prediction_type: str, process: Any, where: str
) -> None:  # fmt: skip
    """Raises ``ValueError`` if ``prediction_type`` cannot recover x0 at the scalar marginal
    ``m`` (``where`` names the time in the message).

    At zero SNR (alpha = 0: a zero-terminal-SNR schedule's last step, t = 1 of the cosine or
    rectified-flow process) x0 = (x_t - sigma eps) / alpha is 0 / 0: an eps-prediction carries no
    information on x0 there (Lin et al. 2024, Sec. 3.2), and other types fail where their
    determinant vanishes likewise (below :data:`ZERO_SNR_ALPHA` in magnitude).
    """
    if np.all(np.abs(np.asarray(predictions.determinant(prediction_type, m))) >= ZERO_SNR_ALPHA):
        return
    alternatives = "'v' or 'x0'" if is_discrete(process) else "'v', 'x0' or 'flow'"
    raise ValueError(
        f"The {'schedule' if is_discrete(process) else 'process'} has zero SNR at {where} "
        f"(alpha = {float(m.alpha):.3g}), where an {prediction_type!r} prediction cannot "
        f"recover x0; use prediction_type {alternatives} there, or start below it."
    )


def check_defined_start(grid: Grid, prediction_type: str, process: Any) -> None:
    """:func:`check_defined_at` the grid's first model call."""
    first = Marginal(
        np.float64(grid.alpha[0]), np.float64(grid.sigma[0]),
        None if grid.d_alpha is None else np.float64(grid.d_alpha[0]),
        None if grid.d_sigma is None else np.float64(grid.d_sigma[0]),
        process.variance_preserving if not is_discrete(process) else True,
    )  # fmt: skip
    where = f"t={int(grid.time[0])}" if is_discrete(process) else f"t={float(grid.time[0]):.4g}"
    check_defined_at(first, prediction_type, process, where)
