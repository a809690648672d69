"""DPM-Solver++(2M): a second-order multistep solver of the probability-flow ODE in data-prediction
form (Lu et al. 2022, "DPM-Solver++", arXiv:2211.01095, Algorithm 2).

With lambda_t = log(alpha_t / sigma_t), h_i = lambda_{t_i} - lambda_{t_{i-1}} and
r_i = h_{i-1} / h_i, one step from grid point t_{i-1} to t_i is

    x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} + alpha_{t_i} (1 - e^{-h_i}) D_i,
    D_i = (1 + 1 / (2 r_i)) x0_{i-1} - 1 / (2 r_i) x0_{i-2},

where x0_j is the (optionally clipped) x0-prediction at t_j and the first step uses
D_1 = x0_0. With ``order=1`` every D_i = x0_{i-1}: that is DDIM with eta = 0.

Coefficients are computed once in float64 NumPy from the concrete schedule, written so that
nothing is infinite:
alpha_{t_i} (1 - e^{-h_i}) = alpha_{t_i} - alpha_{t_{i-1}} sigma_{t_i} / sigma_{t_{i-1}}
and 1 / (2 r_i) = h_i / (2 h_{i-1}), which is 0 after a zero-terminal-SNR start (h_1 = inf).
After the last grid point (t = 0 for the default grid) the solver steps to sigma = 0, where
h = inf and a second-order extrapolation in lambda diverges; that step is first order, so the
sample is the x0-prediction at the last grid point. See :mod:`diffjax.samplers.timesteps` for
why the grid must end at t = 0 and why its start is clipped at a log-SNR of -6.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
import numpy as np

from diffjax.diffusion import alpha_sigma, predict_x0_and_eps
from diffjax.samplers.common import (
    Trajectory,
    call_model,
    check_common_args,
    check_defined_x0,
    check_flag,
    check_key,
    constrain,
    initial_state,
)
from diffjax.samplers.timesteps import concrete_schedule_array, solver_timesteps
from diffjax.schedules import DiffusionSchedule

__all__ = ["SOLVER_ORDERS", "dpm_solver_coefficients", "dpm_solver_sample"]

SOLVER_ORDERS: tuple[int, ...] = (1, 2)


def dpm_solver_coefficients(
    sqrt_alphas_cumprod: np.ndarray,
    sqrt_one_minus_alphas_cumprod: np.ndarray,
    timesteps: np.ndarray,
    order: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step coefficients of DPM-Solver++(2M) on a grid, in float64.

    Step k goes from grid point k to grid point k + 1 (or to sigma = 0 after the last one):
    x_{k+1} = state_scale[k] x_k
              + data_scale[k] ((1 + correction[k]) x0_k - correction[k] x0_{k-1}).

    Args:
      sqrt_alphas_cumprod: float64 ``[T]``, alpha_t.
      sqrt_one_minus_alphas_cumprod: float64 ``[T]``, sigma_t (> 0 for every t).
      timesteps: int ``[S]`` descending grid.
      order: 1 (DDIM) or 2 (DPM-Solver++(2M)).

    Returns:
      ``(state_scale, data_scale, correction)``, each float64 ``[S]``.
    """
    alpha = sqrt_alphas_cumprod[timesteps]
    sigma = sqrt_one_minus_alphas_cumprod[timesteps]
    alpha_next = np.concatenate([alpha[1:], [1.0]])
    sigma_next = np.concatenate([sigma[1:], [0.0]])
    state_scale = sigma_next / sigma
    data_scale = alpha_next - alpha * state_scale
    correction = np.zeros_like(alpha)
    if order == 2 and len(timesteps) > 2:
        with np.errstate(divide="ignore"):
            lambdas = np.log(alpha) - np.log(sigma)
        steps = np.diff(lambdas)  # h_1 .. h_{S-1}, between consecutive grid points
        # Steps 1 .. S-2 land on grid points; step 0 and the last step (to sigma = 0) stay
        # first order.
        correction[1:-1] = steps[1:] / (2.0 * steps[:-1])
    return state_scale, data_scale, correction


@functools.partial(
    jax.jit,
    static_argnames=(
        "shape",
        "dtype",
        "prediction_type",
        "clip_x0",
        "return_trajectory",
        "out_sharding",
    ),
)
def _dpm_solver_loop(
    model,
    schedule,
    key,
    x_T,
    timesteps,
    state_scale,
    data_scale,
    correction,
    *,
    shape,
    dtype,
    prediction_type,
    clip_x0,
    return_trajectory,
    out_sharding,
):
    x, _ = initial_state(key, x_T, shape, dtype, out_sharding)

    def step(carry, inputs):
        x, previous_x0 = carry
        t, scale_x, scale_data, weight = inputs
        prediction, t_batch = call_model(model, x, t)
        alpha, sigma = alpha_sigma(schedule, t_batch, x.ndim, dtype)
        x0, _ = predict_x0_and_eps(prediction, x, alpha, sigma, prediction_type)
        if clip_x0:
            x0 = jnp.clip(x0, -1.0, 1.0)
        weight = weight.astype(dtype)
        data = (1.0 + weight) * x0 - weight * previous_x0
        x_next = scale_x.astype(dtype) * x + scale_data.astype(dtype) * data
        x_next = constrain(x_next, out_sharding)
        return (x_next, x0), (x, x0) if return_trajectory else None

    inputs = (timesteps, state_scale, data_scale, correction)
    (x, _), history = jax.lax.scan(step, (x, jnp.zeros_like(x)), inputs)
    if return_trajectory:
        return x, Trajectory(timesteps, *history)
    return x


def dpm_solver_sample(
    model_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    schedule: DiffusionSchedule,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    num_steps: int = 20,
    spacing: str = "logsnr",
    order: int = 2,
    min_log_snr: float = -6.0,
    prediction_type: str = "eps",
    clip_x0: bool = False,
    x_T: jnp.ndarray | None = None,
    return_trajectory: bool = False,
    dtype: DTypeLike = jnp.float32,
    out_sharding: jax.sharding.Sharding | None = None,
):
    """DPM-Solver++(2M) sampling (Lu et al. 2022, Algorithm 2) as one ``lax.scan``.

    Deterministic given x_T: the key only draws x_T. ``num_steps`` model calls on a grid that
    ends at t = 0 (:func:`solver_timesteps`), then the x0-prediction at t = 0 is returned. The
    grid starts at t = T-1 for 'v' and 'x0' models and, for 'eps' models, at the first timestep
    above ``min_log_snr``, where x0 = (x_t - sigma eps) / alpha does not amplify the model's
    error by up to sigma / alpha = 2e4 (the cosine schedule's T-1); see
    :mod:`diffjax.samplers.timesteps`.

    Args:
      model_fn: ``model_fn(x_t [B, ...], t int32 [B]) -> prediction [B, ...]``.
      schedule: the discrete schedule (concrete: the grid is built in NumPy).
      key: PRNG key for x_T.
      shape: ``(B, ...)`` of the samples.
      num_steps: S, the number of model calls, 1 <= S <= T.
      spacing: ``'logsnr'`` (uniform in lambda, the default), ``'karras'``, or one of the
        t-based ``'leading' | 'trailing' | 'linspace'`` (for comparison: they end far from
        t = 0 or space the low-noise end too coarsely, see the module docstring).
      order: 2 for DPM-Solver++(2M), 1 for its first-order form (= DDIM, eta = 0).
      min_log_snr: no model call below this log-SNR (except at T-1 for 'v' and 'x0' models);
        see :func:`log_snr_timesteps`.
      prediction_type: ``'eps' | 'x0' | 'v'``.
      clip_x0: clip each x0-prediction to [-1, 1] (the "thresholding" of Lu et al. 2022).
      x_T: optional start ``[B, ...]``.
      return_trajectory: also return a :class:`Trajectory`.
      dtype: dtype of the state.
      out_sharding: optional sharding of ``[B, ...]``.

    Returns:
      Samples ``[B, ...]``, or ``(samples, trajectory)``.

    Raises:
      ValueError / TypeError: for a bad argument, before anything is compiled.
    """
    model, shape, dtype = check_common_args(
        model_fn, schedule, shape, prediction_type, x_T, dtype, out_sharding
    )
    check_key(key)
    if order not in SOLVER_ORDERS or isinstance(order, bool):
        raise ValueError(f"Unknown order {order!r}; expected one of {SOLVER_ORDERS}.")
    clip_x0 = check_flag(clip_x0, "clip_x0")
    return_trajectory = check_flag(return_trajectory, "return_trajectory")
    alpha = concrete_schedule_array(schedule.sqrt_alphas_cumprod, "dpm_solver_sample")
    sigma = concrete_schedule_array(schedule.sqrt_one_minus_alphas_cumprod, "dpm_solver_sample")
    # An eps-model's x0 is ill-conditioned at tiny alpha: do not start there (timesteps docs).
    start_at_t_max = prediction_type != "eps"
    timesteps = solver_timesteps(alpha, sigma, num_steps, spacing, min_log_snr, start_at_t_max)
    check_defined_x0(schedule, int(timesteps[0]), prediction_type)
    coefficients = dpm_solver_coefficients(alpha, sigma, timesteps, order)
    return _dpm_solver_loop(
        model,
        schedule,
        key,
        x_T,
        jnp.asarray(timesteps),
        *(jnp.asarray(c, jnp.float32) for c in coefficients),
        shape=shape,
        dtype=dtype,
        prediction_type=prediction_type,
        clip_x0=clip_x0,
        return_trajectory=return_trajectory,
        out_sharding=out_sharding,
    )
