"""The closed-form Gaussian diffusion process: forward marginals, posteriors, predictions.

Everything is written in terms of the marginal's scale and noise level,
x_t = alpha_t x_0 + sigma_t eps, read off any process by :func:`diffjax.processes.alpha_sigma`:
a discrete :class:`~diffjax.schedules.DiffusionSchedule` (alpha_t = sqrt(abar_t),
sigma_t = sqrt(1 - abar_t), int32 t in [0, T)) or a continuous process (float t in [0, 1],
:mod:`diffjax.processes`). :func:`q_sample` serves both; the posterior q(x_{t-1} | x_t, x_0)
and the DDPM reverse step are the discrete chain's (Ho et al. 2020, eqs. 6-7).

The eps/x0/v conversions here take ``alpha`` and ``sigma`` of a variance-preserving process
(alpha^2 + sigma^2 = 1), as in Salimans & Ho 2022; :mod:`diffjax.predictions` has every
prediction type, including the velocity and EDM's F, for any process.

Shapes: ``x`` is ``[B, ...]`` (NHWC images or any rank); ``t`` is ``[B]`` or a scalar;
coefficients are gathered at ``t`` and broadcast over the trailing axes. Outputs keep the dtype
of ``x`` (float32 or bfloat16); schedule constants stay float32 until that cast.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from diffjax import predictions
from diffjax.predictions import PREDICTION_TYPES, check_prediction_type
from diffjax.processes import Marginal, alpha_sigma, check_process, check_time, is_discrete
from diffjax.schedules import DiffusionSchedule

__all__ = [
    "PREDICTION_TYPES",
    "VARIANCE_TYPES",
    "PosteriorMeanVariance",
    "alpha_sigma",
    "check_prediction_type",
    "eps_from_v",
    "eps_from_x0",
    "extract",
    "learned_range_log_variance",
    "p_mean_variance",
    "predict_x0_and_eps",
    "prediction_target",
    "q_mean_variance",
    "q_posterior_mean_variance",
    "q_sample",
    "split_learned_variance",
    "v_from_x0_eps",
    "x0_from_eps",
    "x0_from_v",
]

VARIANCE_TYPES: tuple[str, ...] = ("small", "large", "learned_range")
"""The reverse step's variance: fixed beta~_t (``'small'``) or beta_t (``'large'``), or the
network's interpolation between their logs (``'learned_range'``,
:func:`learned_range_log_variance`)."""


class PosteriorMeanVariance(NamedTuple):
    """Mean ``[B, ...]``, variance and log-variance (``[B, 1, ...]``, broadcastable) of a Gaussian,
    plus the x0 estimate it was built from (``[B, ...]``; equal to x0 for the true posterior).

    The posterior q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I) (Ho et al. 2020, eqs. 6-7) or the
    reverse step built from it (:func:`p_mean_variance`)."""

    mean: jnp.ndarray
    variance: jnp.ndarray
    log_variance: jnp.ndarray
    pred_x0: jnp.ndarray


def _check_discrete(schedule: Any, name: str) -> DiffusionSchedule:
    if not is_discrete(schedule):
        raise TypeError(
            f"{name} is the discrete DDPM chain's and needs a DiffusionSchedule, got "
            f"{type(schedule).__name__}; for continuous processes use q_sample and the samplers."
        )
    return schedule


def extract(values: jnp.ndarray, t: jnp.ndarray, ndim: int) -> jnp.ndarray:
    """Gathers ``values[t]`` and reshapes it to broadcast against a rank-``ndim`` array.

    Args:
      values: ``[T]`` per-timestep constants.
      t: int ``[B]`` or scalar.
      ndim: rank of the array the result multiplies (e.g. 4 for NHWC).

    Returns:
      ``[B, 1, ..., 1]`` (rank ``ndim``) or, for scalar ``t``, a scalar.
    """
    gathered = values[t]
    if gathered.ndim == 0:
        return gathered
    return gathered.reshape(gathered.shape + (1,) * (ndim - 1))


def split_learned_variance(
    model_output: jnp.ndarray, x_shape: tuple[int, ...]
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Splits a learned-variance network's output ``[B, ..., 2 C]`` into its prediction and its
    variance values, each ``[B, ..., C]`` (the first and second halves of the channel axis, as
    Improved DDPM, Nichol & Dhariwal 2021, Sec. 3.1, and DiT lay them out).

    Args:
      model_output: ``[B, ..., 2 C]``.
      x_shape: the state's shape ``(B, ..., C)``.

    Raises:
      ValueError: the output is not ``x_shape`` with twice the channels.
    """
    expected = tuple(x_shape[:-1]) + (2 * x_shape[-1],)
    if tuple(model_output.shape) != expected:
        raise ValueError(
            f"a learned-variance model_fn returns the prediction and the variance values on "
            f"the channel axis, shape {expected} for x_t of shape {tuple(x_shape)}; got "
            f"{tuple(model_output.shape)}."
        )
    prediction, values = jnp.split(model_output, 2, axis=-1)
    return prediction, values


def learned_range_log_variance(
    values: jnp.ndarray, min_log: jnp.ndarray, max_log: jnp.ndarray
) -> jnp.ndarray:
    """The learned log-variance of the reverse step (Nichol & Dhariwal 2021, "Improved
    Denoising Diffusion Probabilistic Models", eq. 15):

        log Sigma_t = v log beta_t + (1 - v) log beta~_t,   v = (values + 1) / 2,

    The network's ``values`` lie near [-1, 1] but are not clipped (as in Improved DDPM).

    Args:
      values: the network's variance values ``[B, ...]``.
      min_log: log beta~_t, clipped at t = 0 to log beta~_1 so it stays finite (the schedule's
        ``posterior_log_variance_clipped``), broadcastable to ``values``.
      max_log: log beta_t, broadcastable to ``values``.

    Returns:
      ``[B, ...]`` log-variances in the dtype of ``values`` (computed in float32).
    """
    fraction = (values.astype(jnp.float32) + 1.0) / 2.0
    return (fraction * max_log + (1.0 - fraction) * min_log).astype(values.dtype)


def q_sample(process: Any, x0: jnp.ndarray, t, noise: jnp.ndarray) -> jnp.ndarray:
    """Samples the forward marginal q(x_t | x_0) (Ho et al. 2020, eq. 4; Kingma et al. 2021).

    x_t = alpha_t x_0 + sigma_t eps  (alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) for a
    discrete schedule)

    Args:
      process: a :class:`DiffusionSchedule` or a continuous process (:mod:`diffjax.processes`).
      x0: clean data ``[B, ...]``.
      t: ``[B]`` (or scalar): int32 0-based for a schedule, float in [0, 1] for a process.
      noise: eps ~ N(0, I), same shape as ``x0``.

    Returns:
      x_t, ``[B, ...]`` in the dtype of ``x0``.
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {noise.shape} must equal x0 shape {x0.shape}.")
    check_process(process)
    t = check_time(process, t, x0.shape[0])
    alpha, sigma = alpha_sigma(process, t, x0.ndim, x0.dtype)
    return alpha * x0 + sigma * noise.astype(x0.dtype)


def q_mean_variance(
    schedule: DiffusionSchedule, x0: jnp.ndarray, t
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Mean, variance and log-variance of q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)
    (Ho et al. 2020, eq. 4).

    Args:
      schedule: the discrete schedule.
      x0: ``[B, ...]``.
      t: int32 ``[B]`` (or scalar).

    Returns:
      ``(mean [B, ...], variance [B, 1, ...], log_variance [B, 1, ...])``; the variance is
      > 0 for every t because beta_0 > 0, so the log-variance is finite.
    """
    schedule = _check_discrete(schedule, "q_mean_variance")
    t = check_time(schedule, t, x0.shape[0])
    alpha = extract(schedule.sqrt_alphas_cumprod, t, x0.ndim).astype(x0.dtype)
    variance = extract(1.0 - schedule.alphas_cumprod, t, x0.ndim).astype(x0.dtype)
    return alpha * x0, variance, jnp.log(variance)


def q_posterior_mean_variance(
    schedule: DiffusionSchedule, x0: jnp.ndarray, x_t: jnp.ndarray, t
) -> PosteriorMeanVariance:
    """The forward-process posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eqs. 6-7).

    mu~_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t) x_0 + (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t) x_t,
    beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t).

    Args:
      schedule: the discrete schedule.
      x0: ``[B, ...]``.
      x_t: ``[B, ...]``.
      t: int32 ``[B]`` (or scalar). At t = 0 the variance is 0 and the log-variance is clipped.

    Returns:
      :class:`PosteriorMeanVariance` with ``pred_x0 = x0``.
    """
    if x0.shape != x_t.shape:
        raise ValueError(f"x0 shape {x0.shape} must equal x_t shape {x_t.shape}.")
    schedule = _check_discrete(schedule, "q_posterior_mean_variance")
    t = check_time(schedule, t, x0.shape[0])
    dtype = x_t.dtype
    coef1 = extract(schedule.posterior_mean_coef1, t, x0.ndim).astype(dtype)
    coef2 = extract(schedule.posterior_mean_coef2, t, x0.ndim).astype(dtype)
    variance = extract(schedule.posterior_variance, t, x0.ndim).astype(dtype)
    log_variance = extract(schedule.posterior_log_variance_clipped, t, x0.ndim).astype(dtype)
    mean = coef1 * x0.astype(dtype) + coef2 * x_t
    return PosteriorMeanVariance(mean, variance, log_variance, x0)


def x0_from_eps(x_t: jnp.ndarray, eps: jnp.ndarray, alpha, sigma) -> jnp.ndarray:
    """x_0 = (x_t - sigma_t eps) / alpha_t (Ho et al. 2020, eq. 15). Undefined where alpha = 0."""
    return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t: jnp.ndarray, x0: jnp.ndarray, alpha, sigma) -> jnp.ndarray:
    """eps = (x_t - alpha_t x_0) / sigma_t (the inverse of Ho et al. 2020, eq. 4)."""
    return (x_t - alpha * x0) / sigma


def v_from_x0_eps(x0: jnp.ndarray, eps: jnp.ndarray, alpha, sigma) -> jnp.ndarray:
    """The velocity target v = alpha_t eps - sigma_t x_0 (Salimans & Ho 2022, Sec. 4)."""
    return alpha * eps - sigma * x0


def x0_from_v(x_t: jnp.ndarray, v: jnp.ndarray, alpha, sigma) -> jnp.ndarray:
    """x_0 = alpha_t x_t - sigma_t v (Salimans & Ho 2022; uses alpha^2 + sigma^2 = 1)."""
    return alpha * x_t - sigma * v


def eps_from_v(x_t: jnp.ndarray, v: jnp.ndarray, alpha, sigma) -> jnp.ndarray:
    """eps = sigma_t x_t + alpha_t v (Salimans & Ho 2022; uses alpha^2 + sigma^2 = 1)."""
    return sigma * x_t + alpha * v


def predict_x0_and_eps(
    prediction: jnp.ndarray, x_t: jnp.ndarray, alpha, sigma, prediction_type: str
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Converts a model output into the pair (x0, eps), for a variance-preserving process.

    x0 = (x_t - sigma eps) / alpha for eps (Ho et al. 2020, eq. 15), x0 = alpha x_t - sigma v
    for v (Salimans & Ho 2022, Sec. 4), and EDM's D = c_skip x + c_out F for 'edm' (Karras et
    al. 2022, eq. 7); see :func:`diffjax.predictions.to_x0_eps`.

    Args:
      prediction: model output ``[B, ...]``: an eps-, x0-, v- or 'edm' prediction.
      x_t: the noisy input ``[B, ...]``.
      alpha: the marginal's data coefficient at t (alpha^2 + sigma^2 = 1), broadcastable
        to ``x_t`` (:func:`alpha_sigma`). For other processes, or for 'flow', use
        :func:`diffjax.predictions.to_x0_eps` with :func:`diffjax.processes.marginal`.
      sigma: the marginal's noise coefficient at t, like ``alpha``.
      prediction_type: ``'eps' | 'x0' | 'v' | 'edm'``.

    Returns:
      ``(x0, eps)``, each ``[B, ...]``.
    """
    return predictions.to_x0_eps(prediction_type, prediction, x_t, Marginal(alpha, sigma))


def prediction_target(
    x0: jnp.ndarray, eps: jnp.ndarray, alpha, sigma, prediction_type: str
) -> jnp.ndarray:
    """The regression target of ``prediction_type`` for a variance-preserving process:
    eps (Ho et al. 2020, eq. 14), x0, v = alpha eps - sigma x0 (Salimans & Ho 2022, Sec. 4), or
    EDM's effective target of F (Karras et al. 2022, eq. 8; see :mod:`diffjax.predictions`).

    Args:
      x0: ``[B, ...]``.
      eps: ``[B, ...]``.
      alpha: the data coefficient at t, broadcastable.
      sigma: the noise coefficient at t, broadcastable.
      prediction_type: ``'eps' | 'x0' | 'v' | 'edm'``.

    Returns:
      ``[B, ...]``.
    """
    return predictions.target(prediction_type, x0, eps, Marginal(alpha, sigma))


def p_mean_variance(
    schedule: DiffusionSchedule,
    model_output: jnp.ndarray,
    x_t: jnp.ndarray,
    t,
    prediction_type: str = "eps",
    variance: str = "small",
    clip_x0: bool = False,
) -> PosteriorMeanVariance:
    """The reverse step p(x_{t-1} | x_t) = N(mu~_t(x_t, x0_hat), Sigma_t).

    x0_hat comes from the model output (optionally clipped to [-1, 1]); the mean is the posterior
    mean of eq. 7 at x0_hat. Variance 'small' is beta~_t, 'large' is beta_t (with beta~_1 at
    t = 0 so the log stays finite), the two choices of Ho et al. 2020, Sec. 3.2; 'learned_range'
    is Improved DDPM's learned interpolation of their logs (:func:`learned_range_log_variance`,
    Nichol & Dhariwal 2021, eq. 15), read off the second half of the output's channels.

    Args:
      schedule: the discrete schedule.
      model_output: ``[B, ...]`` prediction of type ``prediction_type``; for
        ``'learned_range'``, ``[B, ..., 2 C]``: the prediction, then the variance values
        (:func:`split_learned_variance`).
      x_t: ``[B, ..., C]``.
      t: int32 ``[B]`` (or scalar).
      prediction_type: ``'eps' | 'x0' | 'v'``.
      variance: one of :data:`VARIANCE_TYPES`.
      clip_x0: clip x0_hat to [-1, 1] before forming the mean.

    Returns:
      :class:`PosteriorMeanVariance`; a learned variance is elementwise ``[B, ..., C]``.
    """
    predictions.check_prediction_supported(prediction_type, schedule)
    if variance not in VARIANCE_TYPES:
        raise ValueError(f"Unknown variance {variance!r}; expected one of {VARIANCE_TYPES}.")
    values = None
    if variance == "learned_range":
        model_output, values = split_learned_variance(model_output, x_t.shape)
    elif model_output.shape != x_t.shape:
        raise ValueError(
            f"model_output shape {model_output.shape} must equal x_t shape {x_t.shape}."
        )
    schedule = _check_discrete(schedule, "p_mean_variance")
    t = check_time(schedule, t, x_t.shape[0])
    alpha, sigma = alpha_sigma(schedule, t, x_t.ndim, x_t.dtype)
    pred_x0, _ = predict_x0_and_eps(
        model_output.astype(x_t.dtype), x_t, alpha, sigma, prediction_type
    )
    if clip_x0:
        pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
    posterior = q_posterior_mean_variance(schedule, pred_x0, x_t, t)
    if variance == "small":
        return posterior._replace(pred_x0=pred_x0)
    if variance == "learned_range":
        log_variance = learned_range_log_variance(
            values.astype(x_t.dtype),
            extract(schedule.posterior_log_variance_clipped, t, x_t.ndim),
            extract(jnp.log(schedule.betas), t, x_t.ndim),
        )
        return PosteriorMeanVariance(posterior.mean, jnp.exp(log_variance), log_variance, pred_x0)
    large = jnp.concatenate([schedule.posterior_variance[1:2], schedule.betas[1:]])
    if schedule.num_timesteps == 1:
        large = schedule.betas
    large_variance = extract(large, t, x_t.ndim).astype(x_t.dtype)
    return PosteriorMeanVariance(posterior.mean, large_variance, jnp.log(large_variance), pred_x0)
