"""DDIM sampling and its deterministic inversion (Song et al. 2021, arXiv:2010.02502), for any
process.

One step from the current grid point to the next is eq. 12 with the noise scale of eq. 16
(:func:`~diffjax.samplers.steps.ddim_step`, :func:`~diffjax.samplers.steps.ddim_noise_scale`):

    x_next = alpha_next x0_hat + sqrt(sigma_next^2 - sigma_ts^2) eps_hat + sigma_ts z,

written in alpha and sigma of both ends, with (alpha, sigma) = (1, 0) after the last grid point,
so the output is the last x0-prediction. eta = 0 is the deterministic DDIM (an Euler step of the
probability-flow ODE in (x / alpha, sigma / alpha), eq. 14; on rectified flow with a uniform
grid it is exactly the flow's Euler sampler); eta = 1 over all T steps of a schedule is DDPM's
ancestral chain with the posterior ("fixed-small") variance, and it draws the same noise as
:func:`~diffjax.samplers.ddpm_sample`. The noise scales are computed in float64 on the grid.

Grids: a schedule's timesteps by ``spacing`` (:func:`~diffjax.samplers.spaced_timesteps`); a
continuous process's times uniform from ``t_max`` to 1/S of it, like 'trailing', or from ``t_max``
to ``t_min`` when that is given (:func:`~diffjax.samplers.grids.uniform_times`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from diffjax import predictions
from diffjax.processes import check_process, is_discrete
from diffjax.samplers.common import check_common_args, check_real
from diffjax.samplers.grids import check_defined_start, make_grid, uniform_times
from diffjax.samplers.runner import Plan, run_plan
from diffjax.samplers.steps import ddim_noise_scale, ddim_step
from diffjax.samplers.timesteps import concrete_schedule_array, spaced_timesteps

__all__ = ["CONTINUOUS_SPACINGS", "ddim_invert", "ddim_plan", "ddim_sample"]

CONTINUOUS_SPACINGS: tuple[str, ...] = ("uniform",)


def _ddim_body(model, process, x, carry, step, noise_key, settings, options):
    _, x0, eps = settings.denoise(model, step.current, x)
    noise = settings.noise(noise_key, step) if settings.static["stochastic"] else None
    nxt = step.next.marginal
    return (
        ddim_step(x0, eps, nxt.alpha, nxt.sigma, step.coefficients["noise_scale"], noise),
        carry,
        x0,
    )


def _grid_times(
    process: Any,
    num_steps: int,
    spacing: str | None,
    t_max: float | None,
    t_min: float | None = None,
) -> np.ndarray:
    if is_discrete(process):
        for name, value in (("t_max", t_max), ("t_min", t_min)):
            if value is not None:
                raise ValueError(
                    f"{name} is for continuous processes; a schedule's grid is set by spacing."
                )
        return spaced_timesteps(process.num_timesteps, num_steps, spacing or "leading")
    spacing = spacing or "uniform"
    if spacing not in CONTINUOUS_SPACINGS:
        raise ValueError(
            f"Unknown spacing {spacing!r} for a continuous process; expected one of "
            f"{CONTINUOUS_SPACINGS}."
        )
    t_max = 1.0 if t_max is None else check_real(t_max, "t_max", 0.0, 1.0)
    if t_max == 0.0:
        raise ValueError("t_max must be > 0.")
    t_min = 0.0 if t_min is None else check_real(t_min, "t_min", 0.0, t_max)
    return uniform_times(num_steps, t_max=t_max, t_min=t_min)


def _diffusers_grid(
    process: Any, times: np.ndarray, steps_offset: int, set_alpha_to_one: bool
) -> Any:
    """The grid with diffusers' ``DDIMScheduler`` options: timesteps shifted by
    ``steps_offset``, and the end point at timestep 0's noise level unless
    ``set_alpha_to_one``."""
    if (steps_offset, set_alpha_to_one) == (0, True):
        return make_grid(process, times)
    if not is_discrete(process):
        raise ValueError("steps_offset and set_alpha_to_one are options of a schedule's grid.")
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, (int, np.integer)):
        raise TypeError(f"steps_offset must be an int, got {steps_offset!r}.")
    if not 0 <= times[0] + steps_offset < process.num_timesteps:
        raise ValueError(
            f"steps_offset={steps_offset} moves the grid's first timestep {times[0]} outside "
            f"[0, {process.num_timesteps - 1}]."
        )
    grid = make_grid(process, times + steps_offset)
    if set_alpha_to_one:
        return grid
    end_alpha = concrete_schedule_array(process.sqrt_alphas_cumprod, "the sampler")[0]
    end_sigma = concrete_schedule_array(process.sqrt_one_minus_alphas_cumprod, "the sampler")[0]
    return grid._replace(
        alpha=np.append(grid.alpha[:-1], np.float32(end_alpha)),
        sigma=np.append(grid.sigma[:-1], np.float32(end_sigma)),
    )


def ddim_plan(
    process: Any,
    *,
    num_steps: int = 50,
    eta: float = 0.0,
    spacing: str | None = None,
    t_max: float | None = None,
    t_min: float | None = None,
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
    prediction_type: str,
) -> Plan:
    """Checks DDIM's options and builds its grid (see :func:`ddim_sample`): the steps of
    Song et al. 2021, DDIM eqs. 12 and 16, on a sub-sequence of the timesteps (Sec. 4.2)."""
    check_process(process)
    predictions.check_prediction_supported(prediction_type, process)
    eta = check_real(eta, "eta", 0.0, 1.0, " (0: deterministic DDIM, 1: DDPM-like)")
    if not isinstance(set_alpha_to_one, (bool, np.bool_)):
        raise TypeError(f"set_alpha_to_one must be True or False, got {set_alpha_to_one!r}.")
    times = _grid_times(process, num_steps, spacing, t_max, t_min)
    grid = _diffusers_grid(process, times, steps_offset, bool(set_alpha_to_one))
    check_defined_start(grid, prediction_type, process)
    alpha, sigma = np.float64(grid.alpha), np.float64(grid.sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        noise_scale = ddim_noise_scale(alpha[:-1], sigma[:-1], alpha[1:], sigma[1:], eta, np)
    return Plan(
        body=_ddim_body,
        grid=grid,
        coefficients=dict(noise_scale=np.nan_to_num(noise_scale)),
        prediction_type=prediction_type,
        variance_preserving=is_discrete(process) or process.variance_preserving,
        start_scale=1.0 if is_discrete(process) else float(grid.sigma[0]),
        static=(("stochastic", eta > 0.0),),
    )


def ddim_sample(
    model_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    process: Any,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    num_steps: int = 50,
    eta: float = 0.0,
    spacing: str | None = None,
    t_max: float | None = None,
    t_min: float | None = None,
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
    prediction_type: str,
    clip_x0: bool = False,
    x_T: jnp.ndarray | None = None,
    return_trajectory: bool = False,
    dtype: DTypeLike = jnp.float32,
    out_sharding: jax.sharding.Sharding | None = None,
    guide: Callable | None = None,
):
    """DDIM sampling (Song et al. 2021, eqs. 12 and 16) as one ``lax.scan`` over S points.

    Args:
      model_fn: ``model_fn(x_in [B, ...], t_in [B]) -> prediction [B, ...]`` of type
        ``prediction_type``. A :class:`jax.tree_util.Partial` whose bound arguments are the
        params avoids a recompile when the params change.
      process: the schedule (T steps) or continuous process the model was trained with.
      key: PRNG key (or ``[B]`` per-sample keys); split into the key of x_T and the key of the
        per-step noise (eta > 0).
      shape: ``(B, ...)`` of the samples, e.g. ``(16, 32, 32, 3)``.
      num_steps: S: the number of model calls (1 <= S <= T for a schedule).
      eta: 0 (deterministic) to 1 (ancestral): the scale of the fresh noise of eq. 16.
      spacing: for a schedule ``'leading'`` (default) ``| 'trailing' | 'linspace'``
        (:func:`spaced_timesteps`; use ``'trailing'`` with zero terminal SNR so the first step
        is at t = T-1); for a continuous process ``'uniform'`` (default).
      t_max: the first time of a continuous grid (default 1); below 1 for 'eps' models of
        processes with alpha(1) = 0.
      t_min: the last time of a continuous grid, > 0 to end with a short step t_min -> 0
        (default: none, the 'trailing'-like grid).
      steps_offset: added to a schedule's grid (diffusers' ``DDIMScheduler`` option; Stable
        Diffusion's published scheduler configs have 1: 'leading' then visits 751 .. 1 for
        S = 4).
      set_alpha_to_one: False ends the last step at timestep 0's noise level
        (``alpha_cumprod[0]``) instead of the data, as diffusers' ``DDIMScheduler`` with
        ``set_alpha_to_one=False`` (Stable Diffusion's configs) does; the output is then
        ``alpha_0 x0_hat + sigma_0 eps_hat``, not the last x0-prediction.
      prediction_type: what the model predicts (:data:`~diffjax.predictions.PREDICTION_TYPES`).
      clip_x0: clip each x0-prediction to [-1, 1] (for data scaled to that range).
      x_T: optional start ``[B, ...]`` (for interpolation, inversion, reproducibility);
        drawn with ``key`` when None: N(0, I) for a schedule, sigma(t_max) N(0, I) otherwise.
      return_trajectory: also return a :class:`Trajectory`.
      dtype: dtype of the state (float32, or bfloat16 for speed).
      out_sharding: optional sharding of ``[B, ...]`` (e.g. ``NamedSharding(mesh, P('data'))``)
        kept on the state and the noise throughout; the samples do not depend on it.
      guide: ``guide(x_t, t, alpha, sigma, x0_hat, eps_hat) -> (x0_hat, eps_hat)`` after each
        network call (:mod:`diffjax.samplers.guidance`), before ``clip_x0``; None for none.

    Returns:
      Samples ``[B, ...]`` (the x0-prediction of the last step), or ``(samples, trajectory)``.

    Raises:
      ValueError / TypeError: for a bad argument, before anything is compiled.
    """
    plan = ddim_plan(
        process, num_steps=num_steps, eta=eta, spacing=spacing, t_max=t_max, t_min=t_min,
        steps_offset=steps_offset, set_alpha_to_one=set_alpha_to_one,
        prediction_type=prediction_type,
    )  # fmt: skip
    return run_plan(
        plan, model_fn, process, key, shape, clip_x0=clip_x0, x_T=x_T,
        return_trajectory=return_trajectory, dtype=dtype, out_sharding=out_sharding,
        guide=guide,
    )  # fmt: skip


def _invert_body(model, process, x, carry, step, noise_key, settings, options):
    # The model is told the level t it steps to (step.current), at the state it starts from.
    _, _, eps = settings.denoise(model, step.current, x)
    here = step.coefficients
    x0_hat = (x - here["sigma_from"] * eps) / here["alpha_from"]
    target = step.current.marginal
    return target.alpha * x0_hat + target.sigma * eps, carry, x0_hat


def ddim_invert(
    model_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    process: Any,
    x0: jnp.ndarray,
    *,
    num_steps: int = 50,
    spacing: str | None = None,
    prediction_type: str,
    out_sharding: jax.sharding.Sharding | None = None,
) -> jnp.ndarray:
    """Deterministic DDIM inversion x0 -> x_T: eta = 0 DDIM run backwards over the same grid.

    Each step goes from the current level up to the next grid time t (ascending), holding
    the eps-prediction made at the state it starts from with the model told time t (the step of
    :func:`ddim_sample` at t, mirrored; Song et al. 2021, Sec. 4.3 / eq. 14 integrated the
    other way). Sampling from the result with the same grid, eta = 0, returns ``x0`` up to the
    ODE discretisation error.

    Args:
      model_fn: ``model_fn(x_in [B, ...], t_in [B]) -> prediction``.
      process: the schedule or continuous process.
      x0: data ``[B, ...]`` (floating point).
      num_steps: S, the number of model calls (as in :func:`ddim_sample`).
      spacing: as in :func:`ddim_sample`.
      prediction_type: what the model predicts.
      out_sharding: optional sharding of ``[B, ...]``.

    Returns:
      x_T ``[B, ...]`` at the first time of the sampling grid, in the dtype of ``x0``.
    """
    dtype = getattr(x0, "dtype", None)
    if not hasattr(x0, "shape") or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"x0 must be a floating-point array [B, ...], got {x0!r:.80}.")
    check_common_args(model_fn, process, x0.shape, None, None, x0.dtype, out_sharding)
    predictions.check_prediction_supported(prediction_type, process)
    ascending = _grid_times(process, num_steps, spacing, None)[::-1].copy()
    grid = make_grid(process, ascending)
    alpha_from = np.concatenate([[1.0], grid.alpha[:-2]])
    sigma_from = np.concatenate([[0.0], grid.sigma[:-2]])
    plan = Plan(
        body=_invert_body,
        grid=grid,
        coefficients=dict(alpha_from=alpha_from, sigma_from=sigma_from),
        prediction_type=prediction_type,
        variance_preserving=is_discrete(process) or process.variance_preserving,
    )
    return run_plan(
        plan, model_fn, process, jax.random.key(0), x0.shape, x_T=jnp.asarray(x0),
        dtype=x0.dtype, out_sharding=out_sharding,
    )  # fmt: skip
