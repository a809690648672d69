"""DDIM sampling and its deterministic inversion (Song et al. 2021, arXiv:2010.02502).

Notation: code ``alphas_cumprod[t]`` is the DDIM paper's alpha_t (= abar_t of DDPM);
``alpha``/``sigma`` are the marginal's sqrt(abar_t) and sqrt(1 - abar_t). One step from t to
the next grid point s < t is eq. 12 with the noise scale of eq. 16:

    x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma_ts^2) eps_hat + sigma_ts z,
    sigma_ts = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s),

with abar_s = 1 after the last grid point, so the output is the last x0-prediction. eta = 0 is
the deterministic DDIM (an Euler step of the probability-flow ODE in (x / alpha, sigma / alpha),
Song et al. 2021, eq. 14); eta = 1 over all T steps is DDPM's ancestral chain with the
posterior ("fixed-small") variance, and it draws the same noise as :func:`ddpm_sample`.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from diffjax.diffusion import alpha_sigma, eps_from_x0, predict_x0_and_eps, x0_from_eps
from diffjax.samplers.common import (
    Trajectory,
    call_model,
    check_common_args,
    check_defined_x0,
    check_flag,
    check_key,
    constrain,
    initial_state,
    step_noise,
)
from diffjax.samplers.timesteps import spaced_timesteps
from diffjax.schedules import DiffusionSchedule

__all__ = ["ddim_invert", "ddim_sample"]


def _check_eta(eta) -> float:
    try:
        value = float(eta)
    except (TypeError, jax.errors.ConcretizationTypeError) as error:
        raise TypeError(f"eta must be a real number in [0, 1], got {eta!r}.") from error
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta}.")
    return value


@functools.partial(
    jax.jit,
    static_argnames=(
        "shape",
        "dtype",
        "prediction_type",
        "clip_x0",
        "stochastic",
        "return_trajectory",
        "out_sharding",
    ),
)
def _ddim_loop(
    model,
    schedule,
    key,
    x_T,
    timesteps,
    alphas_cumprod_next,
    eta,
    *,
    shape,
    dtype,
    prediction_type,
    clip_x0,
    stochastic,
    return_trajectory,
    out_sharding,
):
    x, noise_key = initial_state(key, x_T, shape, dtype, out_sharding)

    def step(x, inputs):
        t, abar_next = inputs
        prediction, t_batch = call_model(model, x, t)
        alpha, sigma = alpha_sigma(schedule, t_batch, x.ndim, dtype)
        x0, eps = predict_x0_and_eps(prediction, x, alpha, sigma, prediction_type)
        if clip_x0:
            # Re-derive eps from the clipped x0 so the step stays on the line through x_t.
            x0 = jnp.clip(x0, -1.0, 1.0)
            eps = eps_from_x0(x, x0, alpha, sigma)
        abar = schedule.alphas_cumprod[t]
        noise_scale = eta * jnp.sqrt((1.0 - abar_next) / (1.0 - abar) * (1.0 - abar / abar_next))
        # Rounding can make 1 - abar_s - sigma_ts^2 a hair negative when eta = 1 and s = t - 1.
        direction = jnp.sqrt(jnp.maximum(1.0 - abar_next - noise_scale**2, 0.0))
        x_next = jnp.sqrt(abar_next).astype(dtype) * x0 + direction.astype(dtype) * eps
        if stochastic:
            x_next = x_next + noise_scale.astype(dtype) * step_noise(
                noise_key, t, shape, dtype, out_sharding
            )
        return constrain(x_next, out_sharding), (x, x0) if return_trajectory else None

    x, history = jax.lax.scan(step, x, (timesteps, alphas_cumprod_next))
    if return_trajectory:
        return x, Trajectory(timesteps, *history)
    return x


def ddim_sample(
    model_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    schedule: DiffusionSchedule,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    num_steps: int = 50,
    eta: float = 0.0,
    spacing: str = "leading",
    prediction_type: str = "eps",
    clip_x0: bool = False,
    x_T: jnp.ndarray | None = None,
    return_trajectory: bool = False,
    dtype: DTypeLike = jnp.float32,
    out_sharding: jax.sharding.Sharding | None = None,
):
    """DDIM sampling (Song et al. 2021, eqs. 12 and 16) as one ``lax.scan`` over S timesteps.

    Args:
      model_fn: ``model_fn(x_t [B, ...], t int32 [B]) -> prediction [B, ...]`` of type
        ``prediction_type``. A :class:`jax.tree_util.Partial` whose bound arguments are the
        params avoids a recompile when the params change.
      schedule: the discrete schedule the model was trained with (T steps).
      key: PRNG key; split into the key of x_T and the key of the per-step noise (eta > 0).
      shape: ``(B, ...)`` of the samples, e.g. ``(16, 32, 32, 3)``.
      num_steps: S, 1 <= S <= T: the number of model calls.
      eta: 0 (deterministic) to 1 (ancestral): the scale of the fresh noise of eq. 16.
      spacing: ``'leading' | 'trailing' | 'linspace'`` (:func:`spaced_timesteps`); use
        ``'trailing'`` with zero-terminal-SNR schedules so the first step is at t = T-1.
      prediction_type: ``'eps' | 'x0' | 'v'``.
      clip_x0: clip each x0-prediction to [-1, 1] (for data scaled to that range).
      x_T: optional start ``[B, ...]`` (for interpolation, inversion, reproducibility);
        drawn from N(0, I) with ``key`` when None.
      return_trajectory: also return a :class:`Trajectory`.
      dtype: dtype of the state (float32, or bfloat16 for speed).
      out_sharding: optional sharding of ``[B, ...]`` (e.g. ``NamedSharding(mesh, P('data'))``)
        kept on the state and the noise throughout; the samples do not depend on it.

    Returns:
      Samples ``[B, ...]`` (the x0-prediction of the last step), or ``(samples, trajectory)``.

    Raises:
      ValueError / TypeError: for a bad argument, before anything is compiled.
    """
    model, shape, dtype = check_common_args(
        model_fn, schedule, shape, prediction_type, x_T, dtype, out_sharding
    )
    check_key(key)
    eta = _check_eta(eta)
    clip_x0 = check_flag(clip_x0, "clip_x0")
    return_trajectory = check_flag(return_trajectory, "return_trajectory")
    timesteps = spaced_timesteps(schedule.num_timesteps, num_steps, spacing)
    check_defined_x0(schedule, int(timesteps[0]), prediction_type)
    alphas_cumprod = schedule.alphas_cumprod
    alphas_cumprod_next = jnp.concatenate(
        [alphas_cumprod[timesteps[1:]], jnp.ones((1,), alphas_cumprod.dtype)]
    )
    return _ddim_loop(
        model,
        schedule,
        key,
        x_T,
        jnp.asarray(timesteps),
        alphas_cumprod_next,
        jnp.float32(eta),
        shape=shape,
        dtype=dtype,
        prediction_type=prediction_type,
        clip_x0=clip_x0,
        stochastic=eta > 0.0,
        return_trajectory=return_trajectory,
        out_sharding=out_sharding,
    )


@functools.partial(jax.jit, static_argnames=("prediction_type", "out_sharding"))
def _invert_loop(
    model, schedule, x0, timesteps, alphas_cumprod_current, *, prediction_type, out_sharding
):
    def step(x, inputs):
        t, abar_current = inputs
        prediction, t_batch = call_model(model, x, t)
        alpha, sigma = alpha_sigma(schedule, t_batch, x.ndim, x.dtype)
        _, eps = predict_x0_and_eps(prediction, x, alpha, sigma, prediction_type)
        x0_hat = x0_from_eps(
            x,
            eps,
            jnp.sqrt(abar_current).astype(x.dtype),
            jnp.sqrt(1.0 - abar_current).astype(x.dtype),
        )
        return constrain(alpha * x0_hat + sigma * eps, out_sharding), None

    x, _ = jax.lax.scan(step, constrain(x0, out_sharding), (timesteps, alphas_cumprod_current))
    return x


def ddim_invert(
    model_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    schedule: DiffusionSchedule,
    x0: jnp.ndarray,
    *,
    num_steps: int = 50,
    spacing: str = "leading",
    prediction_type: str = "eps",
    out_sharding: jax.sharding.Sharding | None = None,
) -> jnp.ndarray:
    """Deterministic DDIM inversion x0 -> x_T: eta = 0 DDIM run backwards over the same grid.

    Each step goes from the current grid level up to the next timestep t (ascending), holding
    the eps-prediction made at the state it starts from with the model told timestep t
    (the step of :func:`ddim_sample` at t, mirrored; Song et al. 2021, Sec. 4.3 / eq. 14
    integrated the other way). Sampling from the result with the same grid, eta = 0, returns
    ``x0`` up to the ODE discretisation error.

    Args:
      model_fn: ``model_fn(x_t [B, ...], t int32 [B]) -> prediction``.
      schedule: the discrete schedule.
      x0: data ``[B, ...]`` (floating point).
      num_steps: S, the number of model calls (as in :func:`ddim_sample`).
      spacing: ``'leading' | 'trailing' | 'linspace'``.
      prediction_type: ``'eps' | 'x0' | 'v'``.
      out_sharding: optional sharding of ``[B, ...]``.

    Returns:
      x_T ``[B, ...]`` at the first timestep of the sampling grid, in the dtype of ``x0``.
    """
    dtype = getattr(x0, "dtype", None)
    if not hasattr(x0, "shape") or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"x0 must be a floating-point array [B, ...], got {x0!r:.80}.")
    model, _, _ = check_common_args(
        model_fn, schedule, x0.shape, prediction_type, None, x0.dtype, out_sharding
    )
    ascending = spaced_timesteps(schedule.num_timesteps, num_steps, spacing)[::-1].copy()
    alphas_cumprod_current = jnp.concatenate(
        [jnp.ones((1,), schedule.alphas_cumprod.dtype), schedule.alphas_cumprod[ascending[:-1]]]
    )
    return _invert_loop(
        model,
        schedule,
        jnp.asarray(x0),
        jnp.asarray(ascending),
        alphas_cumprod_current,
        prediction_type=prediction_type,
        out_sharding=out_sharding,
    )
