"""Likelihoods in bits per dimension: the variational bound of a discrete diffusion model.

The negative log-likelihood of 8-bit data under a discrete-time model is bounded by the
variational bound (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", eq. 5):

    -log p(x_0) <= L = L_T + sum_{t=2}^{T} L_{t-1} + L_0,
    L_T     = KL(q(x_T | x_0) || N(0, I)),
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),
    L_0     = -log p(x_0 | x_1)                    (the discretized Gaussian decoder, eq. 13),

reported in bits per dimension, L / (D ln 2), as DDPM (3.70 on CIFAR-10 with fixed
variances) and Improved DDPM report it. p(x_{t-1} | x_t) is the model's reverse step with a
fixed variance (:func:`diffjax.p_mean_variance`: 'small' = beta~_t or 'large' = beta_t); each
KL term uses one draw of x_t ~ q(x_t | x_0). The data must be the 8-bit images scaled to
[-1, 1] (bins of width 2/255): the decoder integrates the Gaussian over each pixel's bin, the
two outer bins extended to +-infinity. With 0-based indices, paper step t is index t - 1, so
L_0 is the term at index 0.

:func:`bits_per_dim` sums all T terms in one ``lax.scan`` (T model calls per image), or
estimates the sum without bias from K uniformly drawn timesteps per image, T times their mean
(the per-image standard error is returned too).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffjax.diffusion import VARIANCE_TYPES, p_mean_variance, q_posterior_mean_variance, q_sample
from diffjax.predictions import check_prediction_supported
from diffjax.processes import is_discrete

__all__ = [
    "BitsPerDim",
    "bits_per_dim",
    "discretized_gaussian_log_likelihood",
    "normal_kl",
    "vlb_terms",
]

_LOG2 = math.log(2.0)
_BIN_HALF_WIDTH = 1.0 / 255.0


def normal_kl(mean_1: Any, log_var_1: Any, mean_2: Any, log_var_2: Any) -> jnp.ndarray:
    """KL(N(mean_1, e^log_var_1) || N(mean_2, e^log_var_2)) elementwise, in nats:
    (log_var_2 - log_var_1 + e^(log_var_1 - log_var_2) + (mean_1 - mean_2)^2 e^-log_var_2 - 1) / 2.
    """
    return 0.5 * (
        log_var_2 - log_var_1 + jnp.exp(log_var_1 - log_var_2)
        + jnp.square(mean_1 - mean_2) * jnp.exp(-log_var_2) - 1.0
    )  # fmt: skip


def _standard_normal_cdf(x: jnp.ndarray) -> jnp.ndarray:
    return 0.5 * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(
    x: jnp.ndarray, mean: jnp.ndarray, log_scale: jnp.ndarray
) -> jnp.ndarray:
    """log P(x) of 8-bit data in [-1, 1] under N(mean, e^(2 log_scale)) integrated over each bin
    (Ho et al. 2020, eq. 13): the bin [x - 1/255, x + 1/255], with the bins of -1 and 1
    extended to -inf and +inf. Elementwise, in nats.

    Args:
      x: data on the 8-bit grid of [-1, 1] (k / 127.5 - 1, k in 0..255).
      mean, log_scale: the decoder's mean and log standard deviation, broadcastable to ``x``.
    """
    centred = x - mean
    inverse_scale = jnp.exp(-log_scale)
    cdf_plus = _standard_normal_cdf(inverse_scale * (centred + _BIN_HALF_WIDTH))
    cdf_minus = _standard_normal_cdf(inverse_scale * (centred - _BIN_HALF_WIDTH))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_minus = jnp.log(jnp.maximum(1.0 - cdf_minus, 1e-12))
    log_probability = jnp.log(jnp.maximum(cdf_plus - cdf_minus, 1e-12))
    return jnp.where(
        x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_minus, log_probability)
    )


def vlb_terms(
    model_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    schedule: Any,
    x0: jnp.ndarray,
    t: jnp.ndarray,
    noise: jnp.ndarray,
    *,
    prediction_type: str = "eps",
    variance: str = "small",
) -> jnp.ndarray:
    """The bound's term at index t of each example, in nats summed over the pixels:
    L_{t} for t >= 1 (a KL, eq. 5) and L_0 = -log p(x_0 | x_1) at t = 0 (eq. 13).

    Args:
      model_fn: ``model_fn(x_t [B, ...], t int32 [B]) -> prediction``.
      schedule: the discrete schedule.
      x0: 8-bit data in [-1, 1], ``[B, ...]``.
      t: int32 ``[B]``, 0-based.
      noise: ``[B, ...]`` N(0, I) draws for x_t = q_sample(x0, t, noise).
      prediction_type: what the model predicts.
      variance: the reverse step's fixed variance, ``'small' | 'large'``.

    Returns:
      float32 ``[B]``.
    """
    x0 = x0.astype(jnp.float32)
    x_t = q_sample(schedule, x0, t, noise)
    reverse = p_mean_variance(schedule, model_fn(x_t, t), x_t, t, prediction_type, variance)
    true = q_posterior_mean_variance(schedule, x0, x_t, t)
    kl = normal_kl(true.mean, true.log_variance, reverse.mean, reverse.log_variance)
    decoder = -discretized_gaussian_log_likelihood(x0, reverse.mean, 0.5 * reverse.log_variance)
    per_pixel = jnp.where(jnp.reshape(t, (-1,) + (1,) * (x0.ndim - 1)) == 0, decoder, kl)
    return jnp.sum(per_pixel, axis=tuple(range(1, x0.ndim)))


def _prior_term(schedule: Any, x0: jnp.ndarray) -> jnp.ndarray:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per example, in nats."""
    last = schedule.num_timesteps - 1
    alpha = schedule.sqrt_alphas_cumprod[last]
    log_var = jnp.log(1.0 - schedule.alphas_cumprod[last])
    kl = normal_kl(alpha * x0, log_var, 0.0, 0.0)
    return jnp.sum(kl, axis=tuple(range(1, x0.ndim)))


class BitsPerDim(NamedTuple):
    """Per-example bound in bits per dimension.

    Attributes:
      bpd: float32 ``[B]``, (L_T + sum of the terms) / (D ln 2).
      standard_error: float32 ``[B]``, the Monte-Carlo standard error of an estimate from K
        timesteps (0 when all T terms are summed).
      prior_bpd: float32 ``[B]``, the L_T part.
    """

    bpd: jnp.ndarray
    standard_error: jnp.ndarray
    prior_bpd: jnp.ndarray


def bits_per_dim(
    model_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    schedule: Any,
    x0: jnp.ndarray,
    key: jax.Array,
    *,
    prediction_type: str = "eps",
    variance: str = "small",
    num_timesteps: int | None = None,
) -> BitsPerDim:
    """The variational bound of eq. 5 in bits per dimension, per example.

    Args:
      model_fn: ``model_fn(x_t [B, ...], t int32 [B]) -> prediction``.
      schedule: the discrete schedule the model was trained with.
      x0: 8-bit data in [-1, 1], ``[B, H, W, C]`` (``diffjax.images``'s scale).
      key: PRNG key of the x_t draws (and of the timesteps with ``num_timesteps``).
      prediction_type: what the model predicts.
      variance: ``'small' | 'large'``, the reverse steps' fixed variance.
      num_timesteps: None sums all T terms (T model calls per example, one ``lax.scan``);
        K draws K timesteps per example uniformly and returns T times their mean, an unbiased
        estimate whose standard error is returned.

    Returns:
      :class:`BitsPerDim`.
    """
    if not is_discrete(schedule):
        raise TypeError(
            "bits_per_dim is the discrete model's variational bound and needs a "
            "DiffusionSchedule; continuous processes get theirs from the probability-flow ODE."
        )
    check_prediction_supported(prediction_type, schedule)
    if variance not in VARIANCE_TYPES:
        raise ValueError(f"Unknown variance {variance!r}; expected one of {VARIANCE_TYPES}.")
    num_total = schedule.num_timesteps
    if num_timesteps is not None and (
        isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 2
    ):
        raise ValueError(
            f"num_timesteps must be None (all {num_total} terms) or an int >= 2, got "
            f"{num_timesteps!r}."
        )
    x0 = jnp.asarray(x0, jnp.float32)
    batch = x0.shape[0]
    scale = 1.0 / (math.prod(x0.shape[1:]) * _LOG2)
    prior = _prior_term(schedule, x0) * scale

    def term(t: jnp.ndarray, draw_key: jax.Array) -> jnp.ndarray:
        noise = jax.random.normal(draw_key, x0.shape, jnp.float32)
        nats = vlb_terms(
            model_fn, schedule, x0, t, noise, prediction_type=prediction_type, variance=variance
        )
        return nats * scale

    if num_timesteps is None:

        def add_term(total, index):
            t = jnp.full((batch,), index, jnp.int32)
            return total + term(t, jax.random.fold_in(key, index)), None

        total, _ = jax.lax.scan(add_term, jnp.zeros((batch,)), jnp.arange(num_total))
        return BitsPerDim(prior + total, jnp.zeros((batch,)), prior)
    t_key, noise_key = jax.random.split(key)
    draws = jax.random.randint(t_key, (num_timesteps, batch), 0, num_total, jnp.int32)

    def sampled_term(carry, inputs):
        index, t = inputs
        return carry, num_total * term(t, jax.random.fold_in(noise_key, index))

    _, values = jax.lax.scan(sampled_term, None, (jnp.arange(num_timesteps), draws))
    standard_error = jnp.std(values, axis=0, ddof=1) / math.sqrt(num_timesteps)
    return BitsPerDim(prior + jnp.mean(values, axis=0), standard_error, prior)
