"""DDPM ancestral sampling (Ho et al. 2020, arXiv:2006.11239, Algorithm 2), over all T steps or
a respaced subset of them (Nichol & Dhariwal 2021, arXiv:2102.09672, Sec. 4).

Each step draws x_{t-1} ~ p(x_{t-1} | x_t) = N(mu~_t(x_t, x0_hat), v_t I) with
:func:`diffjax.p_mean_variance`: the posterior mean at the model's x0-prediction and the
fixed-small (beta~_t) or fixed-large (beta_t) variance; no noise is added at the last step, so
the sample is the posterior mean there, i.e. the last x0-prediction.

A subset t_S > ... > t_1 of the timesteps is a shorter Markov chain with
abar'_i = abar_{t_i}: :func:`respace_schedule` builds its betas,
beta'_i = 1 - abar'_i / abar'_{i-1},
and the same :func:`~diffjax.p_mean_variance` runs on that schedule while the model is called
with the original t_i.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
import numpy as np

from diffjax.diffusion import VARIANCE_TYPES, p_mean_variance
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
from diffjax.samplers.timesteps import check_num_steps, concrete_schedule_array, spaced_timesteps
from diffjax.schedules import DiffusionSchedule, make_schedule

__all__ = ["ddpm_sample", "respace_schedule"]


def respace_schedule(schedule: DiffusionSchedule, timesteps: np.ndarray) -> DiffusionSchedule:
    """The diffusion restricted to a subset of timesteps (Nichol & Dhariwal 2021, Sec. 4).

    abar'_i = abar_{t_i} for the ascending subset t_0 < ... < t_{S-1}, hence
    beta'_i = 1 - abar_{t_i} / abar_{t_{i-1}} (with abar_{t_{-1}} = 1), computed in float64.

    Args:
      schedule: the original schedule (concrete, not traced).
      timesteps: int ``[S]`` distinct timesteps of ``schedule``, in any order.

    Returns:
      A :class:`DiffusionSchedule` with S steps; its index i stands for original timestep t_i.
    """
    alphas_cumprod = concrete_schedule_array(schedule.alphas_cumprod, "respace_schedule")
    ascending = np.sort(np.asarray(timesteps))
    if ascending.size == 0 or len(np.unique(ascending)) != ascending.size:
        raise ValueError(f"timesteps must be distinct and non-empty, got {timesteps!r}.")
    if ascending[0] < 0 or ascending[-1] >= alphas_cumprod.shape[0]:
        raise ValueError(
            f"timesteps must lie in [0, {alphas_cumprod.shape[0]}), got [{ascending[0]}, "
            f"{ascending[-1]}]."
        )
    subset = alphas_cumprod[ascending]
    return make_schedule(1.0 - subset / np.concatenate([[1.0], subset[:-1]]))


@functools.partial(
    jax.jit,
    static_argnames=(
        "shape",
        "dtype",
        "prediction_type",
        "variance",
        "clip_x0",
        "return_trajectory",
        "out_sharding",
    ),
)
def _ddpm_loop(
    model,
    chain_schedule,
    key,
    x_T,
    model_timesteps,
    *,
    shape,
    dtype,
    prediction_type,
    variance,
    clip_x0,
    return_trajectory,
    out_sharding,
):
    x, noise_key = initial_state(key, x_T, shape, dtype, out_sharding)
    chain_indices = jnp.arange(model_timesteps.shape[0] - 1, -1, -1, dtype=jnp.int32)

    def step(x, inputs):
        index, t = inputs
        prediction, _ = call_model(model, x, t)
        index_batch = jnp.full((shape[0],), index, dtype=jnp.int32)
        posterior = p_mean_variance(
            chain_schedule, prediction, x, index_batch, prediction_type, variance, clip_x0
        )
        noise = step_noise(noise_key, t, shape, dtype, out_sharding)
        # Algorithm 2, line 4: z = 0 at the last step.
        noise_scale = jnp.where(index > 0, jnp.sqrt(posterior.variance), 0.0)
        x_next = constrain(posterior.mean + noise_scale * noise, out_sharding)
        return x_next, (x, posterior.pred_x0) if return_trajectory else None

    x, history = jax.lax.scan(step, x, (chain_indices, model_timesteps))
    if return_trajectory:
        return x, Trajectory(model_timesteps, *history)
    return x


def ddpm_sample(
    model_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    schedule: DiffusionSchedule,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    prediction_type: str = "eps",
    variance: str = "small",
    clip_x0: bool = False,
    num_steps: int | None = None,
    spacing: str = "linspace",
    x_T: jnp.ndarray | None = None,
    return_trajectory: bool = False,
    dtype: DTypeLike = jnp.float32,
    out_sharding: jax.sharding.Sharding | None = None,
):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) as one ``lax.scan``.

    Args:
      model_fn: ``model_fn(x_t [B, ...], t int32 [B]) -> prediction [B, ...]`` of type
        ``prediction_type`` (a :class:`jax.tree_util.Partial` over the params avoids
        recompiling when they change).
      schedule: the discrete schedule the model was trained with (T steps).
      key: PRNG key; split into the key of x_T and the key of the per-step noise.
      shape: ``(B, ...)`` of the samples.
      prediction_type: ``'eps' | 'x0' | 'v'``.
      variance: ``'small'`` (posterior beta~_t) or ``'large'`` (beta_t): Ho et al. Sec. 3.2.
      clip_x0: clip the x0-prediction to [-1, 1] before forming the posterior mean.
      num_steps: None for all T steps, else a respaced chain of S <= T steps
        (:func:`respace_schedule`, needs a concrete schedule).
      spacing: how the S timesteps are picked (:func:`spaced_timesteps`); ``'linspace'``
        keeps both t = T-1 and t = 0.
      x_T: optional start ``[B, ...]``; drawn from N(0, I) with ``key`` when None.
      return_trajectory: also return a :class:`Trajectory`.
      dtype: dtype of the state.
      out_sharding: optional sharding of ``[B, ...]``; the samples do not depend on it.

    Returns:
      Samples ``[B, ...]``, or ``(samples, trajectory)``.

    Raises:
      ValueError / TypeError: for a bad argument, before anything is compiled.
    """
    model, shape, dtype = check_common_args(
        model_fn, schedule, shape, prediction_type, x_T, dtype, out_sharding
    )
    check_key(key)
    if variance not in VARIANCE_TYPES:
        raise ValueError(f"Unknown variance {variance!r}; expected one of {VARIANCE_TYPES}.")
    clip_x0 = check_flag(clip_x0, "clip_x0")
    return_trajectory = check_flag(return_trajectory, "return_trajectory")
    num_timesteps = schedule.num_timesteps
    if num_steps is None:
        num_steps = num_timesteps
    num_steps = check_num_steps(num_steps, num_timesteps)
    timesteps = spaced_timesteps(num_timesteps, num_steps, spacing)
    check_defined_x0(schedule, int(timesteps[0]), prediction_type)
    chain_schedule = (
        schedule if num_steps == num_timesteps else respace_schedule(schedule, timesteps)
    )
    return _ddpm_loop(
        model,
        chain_schedule,
        key,
        x_T,
        jnp.asarray(timesteps),
        shape=shape,
        dtype=dtype,
        prediction_type=prediction_type,
        variance=variance,
        clip_x0=clip_x0,
        return_trajectory=return_trajectory,
        out_sharding=out_sharding,
    )
