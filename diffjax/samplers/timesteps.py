"""Timestep grids: which discrete timesteps a sampler visits, and in what order.

Every grid is a NumPy int32 array ``[S]`` of distinct 0-based timesteps in *descending* order
(the order in which a sampler visits them); the sampler ends with the x0-prediction made at the
last grid point. Grids are built once, in float64 NumPy, before anything is compiled; the
sampling loop then scans over them, so a grid's values never trigger a recompile, only its
length does.

Spacings
--------
``'leading'``   ``t = k * (T // S)`` for k = S-1 .. 0: ends at t = 0 but starts below T-1
                (DDIM's original choice, Song et al. 2021).
``'trailing'``  ``t = round(T - k T / S) - 1`` for k = 0 .. S-1: starts at T-1, ends at T/S - 1
                (needed for zero terminal SNR; Lin et al. 2024, Sec. 3.3).
``'linspace'``  ``round(linspace(T-1, 0, S))``: both ends (Nichol & Dhariwal 2021's respacing).
``'logsnr'``    uniform in lambda = log(alpha / sigma) = log_snr / 2 (Lu et al. 2022, Sec. 3.3).
``'karras'``    uniform in sigma^(1/rho) with sigma = exp(-lambda) and rho = 7 (Karras et al.
                2022, eq. 5).

The two lambda-based grids serve the fast ODE solvers. Measured with exact denoisers, what makes
10-20-step samples keep the data's fine structure is where the grid *ends*: the x0-prediction
at the last grid point is the output, and from a noisy point it is a blurred posterior mean
(mixture modes shrink to a fraction of their width). So these grids always end at t = 0, the
schedule's smallest noise level. At the other end no model call is spent below ``min_log_snr``
(default -6, i.e. sigma / alpha = 20): there the denoiser is essentially the data mean, so the
cosine schedule's terminal log-SNR of about -20 (and zero-terminal-SNR's -inf) does not eat the
step budget. Where the chain *starts* depends on how well x0 can be read off the model there:

* ``start_at_t_max=True`` (for 'v' and 'x0' models): the first call is at t = T-1, where
  x_T ~ N(0, I) is the exact marginal; x0 = alpha x_t - sigma v is well conditioned even at
  alpha = 0, and one step then crosses to log-SNR -6.
* ``start_at_t_max=False`` (for 'eps' models): x0 = (x_t - sigma eps) / alpha amplifies any error
  of the model by sigma / alpha (2e4 at the cosine schedule's T-1), and a solver's first big
  step passes alpha_1 / alpha_0 (1000 there) of it on: measured with an exact denoiser plus a
  1e-3 error, 10-step samples came out with 2x the data's spread. So the chain starts at the
  first grid point with x_T ~ N(0, I) standing in for q(x_t) there, which is off by
  alpha_t E[x0] (alpha_t = 0.05 at log-SNR -6) in the mean, like DDIM's 'leading' spacing.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = [
    "SOLVER_SPACINGS",
    "SPACINGS",
    "check_num_steps",
    "concrete_schedule_array",
    "log_snr_timesteps",
    "spaced_timesteps",
    "solver_timesteps",
]

SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")
SOLVER_SPACINGS: tuple[str, ...] = ("logsnr", "karras") + SPACINGS


def check_num_steps(num_steps: int, num_timesteps: int | None) -> int:
    """Validates a number of sampling steps S against the schedule's T and returns it as an int.

    Args:
      num_steps: S.
      num_timesteps: a schedule's T, or None for a continuous process (no upper bound).

    Raises:
      TypeError: if ``num_steps`` is not an integer.
      ValueError: unless 1 <= S (<= T for a schedule).
    """
    allowed = "an int >= 1" if num_timesteps is None else f"an int in [1, {num_timesteps}]"
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise TypeError(f"num_steps must be {allowed}, got {num_steps!r}.")
    if num_timesteps is None and num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if num_timesteps is not None and not 1 <= num_steps <= num_timesteps:
        raise ValueError(
            f"num_steps must be in [1, T={num_timesteps}] for a schedule of {num_timesteps} "
            f"timesteps, got {num_steps}."
        )
    return int(num_steps)


def _check_spacing(spacing: str, allowed: tuple[str, ...]) -> None:
    if spacing not in allowed:
        raise ValueError(f"Unknown spacing {spacing!r}; expected one of {allowed}.")


def spaced_timesteps(num_timesteps: int, num_steps: int, spacing: str = "leading") -> np.ndarray:
    """S distinct timesteps out of T, descending, by a fixed rule in t (see the module docstring).

    'leading' is DDIM's linear sub-sequence (Song et al. 2021, DDIM, App. D.2), 'trailing' that
    of Lin et al. 2024, Sec. 3.3, and 'linspace' Improved DDPM's respacing (Nichol & Dhariwal
    2021, Sec. 4).

    Args:
      num_timesteps: T of the schedule.
      num_steps: S, 1 <= S <= T.
      spacing: ``'leading' | 'trailing' | 'linspace'``.

    Returns:
      int32 ``[S]``, strictly descending, in [0, T). With S = T every spacing gives T-1 .. 0.
    """
    num_steps = check_num_steps(num_steps, num_timesteps)
    _check_spacing(spacing, SPACINGS)
    if spacing == "leading":
        timesteps = np.arange(num_steps)[::-1] * (num_timesteps // num_steps)
    elif spacing == "trailing":
        timesteps = np.round(num_timesteps - np.arange(num_steps) * num_timesteps / num_steps) - 1
    else:
        timesteps = np.round(np.linspace(num_timesteps - 1, 0, num_steps))
    return timesteps.astype(np.int32)


def concrete_schedule_array(values: jnp.ndarray, name: str) -> np.ndarray:
    """Reads a schedule array as float64 NumPy; a clear error if it is a tracer inside ``jit``.

    Grids and per-step coefficients are computed in NumPy before compiling, so the schedule must
    be a concrete array: close over it (``jax.jit(lambda key: sample(..., schedule, key, ...))``)
    rather than passing it as a traced argument.
    """
    try:
        return np.asarray(values, dtype=np.float64)
    except Exception as error:  # jax raises several tracer errors; all mean the same here.
        raise TypeError(
            f"{name} needs a concrete schedule (its grid is built in NumPy before compiling), "
            f"but the schedule is a traced value ({type(values).__name__}). Close over the "
            "schedule inside jax.jit instead of passing it as an argument."
        ) from error


def _strictly_descending(nearest: np.ndarray, num_timesteps: int) -> np.ndarray:
    """Makes ascending candidate timesteps distinct while keeping them in [0, T).

    A run of equal candidates (several lambda targets rounding to one t, near t = 0 where lambda
    changes fastest per step) is spread upwards one step at a time; then each entry is capped so
    that the largest ones still fit below T. Both sequences are strictly increasing, so is their
    minimum.
    """
    ascending = np.sort(nearest)
    offsets = np.arange(len(ascending))
    ascending = np.maximum.accumulate(ascending - offsets) + offsets
    ascending = np.minimum(ascending, num_timesteps - len(ascending) + offsets)
    return ascending[::-1].astype(np.int32)


def log_snr_timesteps(
    lambdas: np.ndarray,
    num_steps: int,
    spacing: str = "logsnr",
    min_log_snr: float = -6.0,
    start_at_t_max: bool = True,
    rho: float = 7.0,
) -> np.ndarray:
    """A grid uniform in lambda (or Karras-style in sigma = exp(-lambda)) rounded to distinct t.

    Uniform in lambda is DPM-Solver's step-size schedule (Lu et al. 2022, arXiv:2206.00927);
    'karras' is the grid of Karras et al. 2022, eq. 5.

    Targets lie between lambda_lo = max(lambda_{T-1}, min_log_snr / 2) and lambda_hi = lambda_0;
    each goes to the timestep with the nearest lambda. With ``start_at_t_max`` the first grid
    point is then moved to T-1, so the chain starts where x_T ~ N(0, I) is exact (see the module
    docstring for when not to).

    Args:
      lambdas: float64 ``[T]``, lambda_t = log(alpha_t / sigma_t), non-increasing (-inf allowed
        at t = T-1 for zero terminal SNR).
      num_steps: S, 1 <= S <= T.
      spacing: ``'logsnr'`` (uniform in lambda) or ``'karras'`` (uniform in sigma^(1/rho)).
      min_log_snr: log-SNR = 2 lambda below which no grid point is placed (but T-1 with
        ``start_at_t_max``).
      start_at_t_max: make T-1 the first grid point.
      rho: Karras et al.'s exponent; larger puts more points at low noise.

    Returns:
      int32 ``[S]``, strictly descending, from T-1 (or the timestep of lambda_lo) to 0.
    """
    num_timesteps = lambdas.shape[0]
    num_steps = check_num_steps(num_steps, num_timesteps)
    _check_spacing(spacing, ("logsnr", "karras"))
    lambda_hi = lambdas[0]
    lambda_lo = max(lambdas[-1], 0.5 * min_log_snr)
    if not lambda_lo < lambda_hi:
        raise ValueError(
            f"min_log_snr={min_log_snr} must be below the schedule's largest log-SNR "
            f"{2 * lambda_hi:.3f} (at t = 0)."
        )
    if spacing == "logsnr":
        targets = np.linspace(lambda_lo, lambda_hi, num_steps)
    else:
        ramp = np.linspace(0.0, 1.0, num_steps)
        root_sigma_max, root_sigma_min = np.exp(-lambda_lo / rho), np.exp(-lambda_hi / rho)
        targets = -rho * np.log(root_sigma_max + ramp * (root_sigma_min - root_sigma_max))
    finite = np.where(np.isfinite(lambdas), lambdas, -np.inf)
    nearest = np.argmin(np.abs(finite[None, :] - targets[:, None]), axis=1)
    if start_at_t_max:
        nearest[0] = num_timesteps - 1
    return _strictly_descending(nearest, num_timesteps)


def solver_timesteps(
    sqrt_alphas_cumprod: np.ndarray,
    sqrt_one_minus_alphas_cumprod: np.ndarray,
    num_steps: int,
    spacing: str = "logsnr",
    min_log_snr: float = -6.0,
    start_at_t_max: bool = True,
) -> np.ndarray:
    """The grid of a fast ODE solver: :func:`log_snr_timesteps` or :func:`spaced_timesteps`
    (uniform in lambda as DPM-Solver's, Lu et al. 2022, arXiv:2206.00927; Karras et al. 2022,
    eq. 5; or a fixed rule in t).

    Args:
      sqrt_alphas_cumprod: float64 ``[T]``, alpha_t.
      sqrt_one_minus_alphas_cumprod: float64 ``[T]``, sigma_t.
      num_steps: S.
      spacing: one of :data:`SOLVER_SPACINGS`.
      min_log_snr: see :func:`log_snr_timesteps` (ignored by the t-based
        spacings).
      start_at_t_max: like ``min_log_snr``.

    Returns:
      int32 ``[S]``, strictly descending.
    """
    _check_spacing(spacing, SOLVER_SPACINGS)
    if spacing in SPACINGS:
        return spaced_timesteps(sqrt_alphas_cumprod.shape[0], num_steps, spacing)
    with np.errstate(divide="ignore"):
        lambdas = np.log(sqrt_alphas_cumprod) - np.log(sqrt_one_minus_alphas_cumprod)
    return log_snr_timesteps(lambdas, num_steps, spacing, min_log_snr, start_at_t_max)
