"""EDM's Euler and Heun samplers on the Karras noise grid, with stochastic churn (Karras et al.
2022, "Elucidating the Design Space of Diffusion-Based Generative Models", arXiv:2206.00364,
Algorithms 1 and 2), for any process.

The samplers work in EDM's coordinates y = x / alpha and s = sigma / alpha, where every
process's probability-flow ODE is dy/ds = eps_hat; the grid is eq. 5's
s_i = (s_max^(1/rho) + i / (N - 1) (s_min^(1/rho) - s_max^(1/rho)))^rho with s_N = 0
(:func:`~diffjax.samplers.grids.karras_sigmas`, s_min 0.002, s_max 80, rho 7, clipped to the
process's range), mapped to the process's times through log-SNR. Step i (Algorithm 2):

1. churn: s_hat = s_i (1 + gamma_i), gamma_i = min(S_churn / N, sqrt(2) - 1) where
   S_tmin <= s_i <= S_tmax (else 0), y_hat = y_i + sqrt(s_hat^2 - s_i^2) S_noise z;
2. Euler: y_{i+1} = y_hat + (s_{i+1} - s_hat) eps_hat(y_hat, s_hat)
   (:func:`~diffjax.samplers.steps.euler_step`);
3. Heun (``'heun'`` only, and not on the last step, which lands on s = 0): the average of the
   slopes at both ends (:func:`~diffjax.samplers.steps.heun_step`).

So Heun makes NFE = 2N - 1 model calls, Euler N. With S_churn = 0 the samplers are
deterministic ODE solvers. Churn evaluates the model at s_hat, off the grid, so it needs a
continuous process (whose time at s_hat is computed in-graph); on a discrete schedule the grid's
noise levels are rounded to the nearest distinct timesteps and churn is not available.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from diffjax import predictions
from diffjax.processes import Marginal, check_process, is_discrete
from diffjax.samplers.common import check_real
from diffjax.samplers.grids import (
    DEFAULT_SIGMA_MAX,
    DEFAULT_SIGMA_MIN,
    check_defined_start,
    karras_times,
    make_grid,
)
from diffjax.samplers.runner import Plan, Point, run_plan
from diffjax.samplers.steps import euler_step, heun_step
from diffjax.samplers.timesteps import concrete_schedule_array, log_snr_timesteps

__all__ = ["euler_plan", "euler_sample", "heun_plan", "heun_sample"]


def _point_at_ratio(
    process: Any, ratio: jnp.ndarray, dtype: Any, variance_preserving: bool
) -> Point:
    """The grid point where sigma / alpha = ``ratio`` (traced), for a continuous process."""
    t = process.t_from_log_snr(-2.0 * jnp.log(ratio))
    alpha, sigma = process.alpha_sigma(t)
    d_alpha, d_sigma = process.derivatives(t)
    marginal = Marginal(
        alpha.astype(dtype), sigma.astype(dtype), jnp.asarray(d_alpha, dtype),
        jnp.asarray(d_sigma, dtype), variance_preserving,
    )  # fmt: skip
    return Point(t, process.model_time(t).astype(jnp.float32), marginal)


def _edm_body(model, process, x, carry, step, noise_key, settings, options):
    current, nxt = step.current, step.next
    if settings.static["churn"]:
        ratio = current.marginal.sigma / current.marginal.alpha
        ratio_hat = ratio * (1.0 + step.coefficients["gamma"])
        point = _point_at_ratio(
            process, ratio_hat, settings.dtype, current.marginal.variance_preserving
        )
        kick = jnp.sqrt(ratio_hat**2 - ratio**2) * options["s_noise"]
        y_hat = x / current.marginal.alpha + kick * settings.noise(noise_key, step)
        x_hat = point.marginal.alpha * y_hat
    else:
        point, x_hat = current, x
    _, x0, eps = settings.denoise(model, point, x_hat)
    here, there = point.marginal, nxt.marginal
    x_euler = euler_step(x_hat, x0, here.alpha, here.sigma, there.alpha, there.sigma)
    if not settings.static["heun"]:
        return x_euler, carry, x0

    def heun(_):
        _, _, eps_next = settings.denoise(model, nxt, x_euler)
        return heun_step(x_hat, eps, eps_next, here.alpha, here.sigma, there.alpha, there.sigma)

    # The last step lands on sigma = 0, where the slope is 0 / 0: Euler (NFE = 2N - 1).
    return jax.lax.cond(there.sigma > 0, heun, lambda _: x_euler, None), carry, x0


def _discrete_times(schedule: Any, num_steps: int, sigma_max: float, rho: float) -> np.ndarray:
    alpha = concrete_schedule_array(schedule.sqrt_alphas_cumprod, "the EDM sampler")
    sigma = concrete_schedule_array(schedule.sqrt_one_minus_alphas_cumprod, "the EDM sampler")
    with np.errstate(divide="ignore"):
        lambdas = np.log(alpha) - np.log(sigma)
    return log_snr_timesteps(
        lambdas, num_steps, "karras", min_log_snr=-2.0 * math.log(sigma_max),
        start_at_t_max=False, rho=rho,
    )  # fmt: skip


def _edm_plan(
    process: Any, heun: bool, num_steps: int, sigma_min: float, sigma_max: float, rho: float,
    s_churn: float, s_tmin: float, s_tmax: float, s_noise: float, prediction_type: str,
) -> Plan:  # fmt: skip
    check_process(process)
    predictions.check_prediction_supported(prediction_type, process)
    s_churn = check_real(s_churn, "s_churn", 0.0, math.inf)
    s_noise = check_real(s_noise, "s_noise", 0.0, math.inf)
    s_tmin = check_real(s_tmin, "s_tmin", 0.0, math.inf)
    s_tmax = check_real(s_tmax, "s_tmax", 0.0, math.inf)
    if is_discrete(process):
        if s_churn > 0:
            raise ValueError(
                f"s_churn={s_churn} evaluates the model between the schedule's timesteps, which "
                f"a discrete schedule cannot; use a continuous process or s_churn=0."
            )
        times = _discrete_times(process, num_steps, sigma_max, rho)
    else:
        times = karras_times(process, num_steps, sigma_min, sigma_max, rho)
    grid = make_grid(process, times)
    check_defined_start(grid, prediction_type, process)
    ratios = np.float64(grid.sigma[:-1]) / np.float64(grid.alpha[:-1])
    active = (ratios >= s_tmin) & (ratios <= s_tmax)
    gamma = np.where(active, min(s_churn / len(times), math.sqrt(2.0) - 1.0), 0.0)
    return Plan(
        body=_edm_body,
        grid=grid,
        coefficients=dict(gamma=gamma),
        prediction_type=prediction_type,
        variance_preserving=is_discrete(process) or process.variance_preserving,
        start_scale=1.0 if is_discrete(process) else float(grid.sigma[0]),
        static=(("churn", s_churn > 0), ("heun", heun)),
        options=dict(s_noise=s_noise),
    )


def euler_plan(
    process: Any, *, num_steps: int = 18, sigma_min: float = DEFAULT_SIGMA_MIN,
    sigma_max: float = DEFAULT_SIGMA_MAX, rho: float = 7.0, s_churn: float = 0.0,
    s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
    prediction_type: str,
) -> Plan:  # fmt: skip
    """Checks the EDM Euler sampler's options and builds its grid (see :func:`euler_sample`):
    Karras et al. 2022, Algorithm 2 without its Heun correction, on the grid of eq. 5."""
    return _edm_plan(
        process, False, num_steps, sigma_min, sigma_max, rho, s_churn, s_tmin, s_tmax, s_noise,
        prediction_type,
    )  # fmt: skip


def heun_plan(
    process: Any, *, num_steps: int = 18, sigma_min: float = DEFAULT_SIGMA_MIN,
    sigma_max: float = DEFAULT_SIGMA_MAX, rho: float = 7.0, s_churn: float = 0.0,
    s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
    prediction_type: str,
) -> Plan:  # fmt: skip
    """Checks the EDM Heun sampler's options and builds its grid (see :func:`heun_sample`):
    Karras et al. 2022, Algorithms 1-2, on the grid of eq. 5."""
    return _edm_plan(
        process, True, num_steps, sigma_min, sigma_max, rho, s_churn, s_tmin, s_tmax, s_noise,
        prediction_type,
    )  # fmt: skip


_ARGS_DOC = """
    Args:
      model_fn: ``model_fn(x_in [B, ...], t_in [B]) -> prediction [B, ...]``.
      process: the schedule or continuous process (concrete: the grid is built in NumPy).
      key: PRNG key (or ``[B]`` per-sample keys): x_T and the churn noise.
      shape: ``(B, ...)`` of the samples.
      num_steps: N, the number of noise levels before s = 0 (EDM uses 18 for CIFAR-10).
      sigma_min, sigma_max, rho: the Karras grid (eq. 5), in s = sigma / alpha, clipped to
        the process's range.
      s_churn, s_tmin, s_tmax, s_noise: EDM's stochasticity (Algorithm 2); s_churn = 0 is the
        deterministic sampler; churn needs a continuous process.
      prediction_type: what the model predicts ('edm' for EDM's preconditioned network).
      clip_x0: clip each x0-prediction to [-1, 1].
      x_T: optional start ``[B, ...]`` (default sigma(t_0) N(0, I), or N(0, I) for a schedule).
      return_trajectory: also return a :class:`Trajectory`.
      dtype: dtype of the state.
      out_sharding: optional sharding of ``[B, ...]``.
      guide: ``guide(x_t, t, alpha, sigma, x0_hat, eps_hat) -> (x0_hat, eps_hat)`` after each
        network call (:mod:`diffjax.samplers.guidance`), before ``clip_x0``; None for none.

    Returns:
      Samples ``[B, ...]``, or ``(samples, trajectory)``.
"""


def euler_sample(
    model_fn: Callable, process: Any, key: jax.Array, shape: tuple[int, ...], *,
    num_steps: int = 18, sigma_min: float = DEFAULT_SIGMA_MIN,
    sigma_max: float = DEFAULT_SIGMA_MAX, rho: float = 7.0, s_churn: float = 0.0,
    s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
    prediction_type: str, clip_x0: bool = False, x_T: jnp.ndarray | None = None,
    return_trajectory: bool = False, dtype: DTypeLike = jnp.float32,
    out_sharding: jax.sharding.Sharding | None = None,
    guide: Callable | None = None,
):  # fmt: skip
    """EDM's Euler sampler (Karras et al. 2022, Algorithm 2 without its Heun correction): N
    model calls on the Karras grid, one ``lax.scan``.
    """
    plan = euler_plan(
        process, num_steps=num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho,
        s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise,
        prediction_type=prediction_type,
    )  # fmt: skip
    return run_plan(
        plan, model_fn, process, key, shape, clip_x0=clip_x0, x_T=x_T,
        return_trajectory=return_trajectory, dtype=dtype, out_sharding=out_sharding,
        guide=guide,
    )  # fmt: skip


def heun_sample(
    model_fn: Callable, process: Any, key: jax.Array, shape: tuple[int, ...], *,
    num_steps: int = 18, sigma_min: float = DEFAULT_SIGMA_MIN,
    sigma_max: float = DEFAULT_SIGMA_MAX, rho: float = 7.0, s_churn: float = 0.0,
    s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
    prediction_type: str, clip_x0: bool = False, x_T: jnp.ndarray | None = None,
    return_trajectory: bool = False, dtype: DTypeLike = jnp.float32,
    out_sharding: jax.sharding.Sharding | None = None,
    guide: Callable | None = None,
):  # fmt: skip
    """EDM's Heun sampler (Karras et al. 2022, Algorithms 1-2): NFE = 2N - 1 model calls on
    the Karras grid, the last step Euler, one ``lax.scan``.
    """
    plan = heun_plan(
        process, num_steps=num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho,
        s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise,
        prediction_type=prediction_type,
    )  # fmt: skip
    return run_plan(
        plan, model_fn, process, key, shape, clip_x0=clip_x0, x_T=x_T,
        return_trajectory=return_trajectory, dtype=dtype, out_sharding=out_sharding,
        guide=guide,
    )  # fmt: skip


euler_sample.__doc__ += _ARGS_DOC
heun_sample.__doc__ += _ARGS_DOC
