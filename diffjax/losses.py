"""Denoising losses: timestep sampling, the regression loss for each prediction type, SNR weights.

The loss of Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", arXiv:2006.11239,
eq. 14) regresses the network output onto the target of its ``prediction_type``:

    L = E_{t, x_0, eps} [ w(t) * mean_over_pixels (target_t - model(x_t, t))^2 ],
    x_t = alpha_t x_0 + sigma_t eps,  t ~ U{0, ..., T-1}.

Every weighting is one weight on the x0-space error. With SNR_t = alpha_t^2 / sigma_t^2,
||eps_hat - eps||^2 = SNR_t ||x0_hat - x0||^2 and ||v_hat - v||^2 = (SNR_t + 1) ||x0_hat - x0||^2,
so the unweighted ('uniform') loss weighs the x0 error by SNR_t (eps), 1 (x0) or SNR_t + 1 (v).
Min-SNR (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy",
arXiv:2303.09556, eq. 6 and Sec. 3.4) weighs it by min(SNR_t, gamma) for every prediction type,
which in the target's own space is the weight returned by :func:`snr_loss_weight`.

Like the rest of the math core, the loss takes a plain ``model_fn(x_t, t) -> prediction`` closure:
params, dropout keys and class labels live in the closure, never here.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.diffusion import alpha_sigma, check_prediction_type, prediction_target, q_sample
from diffjax.schedules import DiffusionSchedule

__all__ = [
    "LOSS_WEIGHTINGS",
    "ModelFn",
    "check_min_snr_gamma",
    "check_weighting",
    "denoising_loss",
    "offset_noise_like",
    "sample_timesteps",
    "snr_loss_weight",
]

LOSS_WEIGHTINGS: tuple[str, ...] = ("uniform", "min_snr")

ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
"""``model_fn(x_t [B, ...], t int32 [B]) -> prediction [B, ...]``."""


def check_weighting(weighting: str) -> None:
    """Raises ``ValueError`` unless ``weighting`` is one of :data:`LOSS_WEIGHTINGS`."""
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"Unknown weighting {weighting!r}; expected one of {LOSS_WEIGHTINGS}.")


def check_min_snr_gamma(min_snr_gamma: float) -> None:
    """Raises ``ValueError`` unless the Min-SNR gamma is > 0."""
    if not min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be > 0 (5 in Hang et al. 2023), got {min_snr_gamma}.")


def sample_timesteps(key: jax.Array, batch_size: int, num_timesteps: int) -> jnp.ndarray:
    """Draws t ~ U{0, ..., T-1} for each example (Ho et al. 2020, Algorithm 1, line 3).

    Args:
      key: a JAX PRNG key.
      batch_size: B.
      num_timesteps: T; timesteps are 0-based indices into the schedule.

    Returns:
      int32 ``[B]`` in ``[0, T)``.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}.")
    return jax.random.randint(key, (batch_size,), 0, num_timesteps, dtype=jnp.int32)


def offset_noise_like(key: jax.Array, x0: jnp.ndarray, offset_noise: float) -> jnp.ndarray:
    """Gaussian noise with a per-channel offset (Guttenberg 2023, "Diffusion with Offset Noise").

    eps = n + offset_noise * m with n ~ N(0, I) of shape ``[B, H, W, C]`` and m ~ N(0, I) of
    shape ``[B, 1, 1, C]``, so that the model also learns to change an image's mean colour.
    With ``offset_noise = 0`` this is plain N(0, I) noise.

    Args:
      key: a JAX PRNG key.
      x0: ``[B, ..., C]`` data whose shape and dtype the noise takes.
      offset_noise: scale of the per-channel offset, >= 0.

    Returns:
      float ``[B, ..., C]`` like ``x0``.
    """
    noise_key, offset_key = jax.random.split(key)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    if offset_noise == 0.0:
        return noise
    offset_shape = (x0.shape[0],) + (1,) * (x0.ndim - 2) + (x0.shape[-1],)
    return noise + offset_noise * jax.random.normal(offset_key, offset_shape, x0.dtype)


def snr_loss_weight(
    snr: jnp.ndarray, prediction_type: str, weighting: str, min_snr_gamma: float = 5.0
) -> jnp.ndarray:
    """The per-example weight on the target-space squared error.

    'uniform' is 1 (L_simple, Ho et al. 2020 eq. 14). 'min_snr' puts the weight min(SNR, gamma)
    on the x0-space error (Hang et al. 2023); expressed on the target's own error that is

      eps: min(SNR, gamma) / SNR       = min(1, gamma / SNR)      -> 1 as SNR -> 0
      v:   min(SNR, gamma) / (SNR + 1)
      x0:  min(SNR, gamma)

    The eps form is evaluated as ``gamma / SNR`` only where SNR > gamma (the other branch of the
    ``where`` divides by 1), so a zero-terminal-SNR step (SNR = 0) gets its finite limit 1 and no
    Inf or NaN reaches the forward pass or its gradient; huge SNR (t = 0 of the cosine schedule)
    gives small finite weights.

    Args:
      snr: float ``[B]``, SNR_t = abar_t / (1 - abar_t), >= 0.
      prediction_type: ``'eps' | 'x0' | 'v'``.
      weighting: ``'uniform' | 'min_snr'``.
      min_snr_gamma: gamma > 0 (5 in the paper).

    Returns:
      float32 ``[B]``.
    """
    check_prediction_type(prediction_type)
    check_weighting(weighting)
    snr = jnp.asarray(snr, jnp.float32)
    if weighting == "uniform":
        return jnp.ones_like(snr)
    check_min_snr_gamma(min_snr_gamma)
    clipped_snr = jnp.minimum(snr, min_snr_gamma)
    if prediction_type == "x0":
        return clipped_snr
    if prediction_type == "v":
        return clipped_snr / (snr + 1.0)
    above_gamma = snr > min_snr_gamma
    safe_snr = jnp.where(above_gamma, snr, 1.0)
    return jnp.where(above_gamma, min_snr_gamma / safe_snr, 1.0)


def denoising_loss(
    model_fn: ModelFn,
    schedule: DiffusionSchedule,
    x0: jnp.ndarray,
    key: jax.Array,
    *,
    prediction_type: str = "eps",
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    offset_noise: float = 0.0,
    t: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """The denoising regression loss (Ho et al. 2020, Algorithm 1 / eq. 14) with SNR weights.

    Draws t ~ U{0, ..., T-1} (unless ``t`` is given) and eps (with optional offset noise),
    forms x_t = alpha_t x_0 + sigma_t eps (eq. 4), and averages over the batch the per-example

        loss_i = w(t_i) * mean_over_pixels (target_i - model_fn(x_t, t)_i)^2

    where the target is eps, x0 or v = alpha eps - sigma x0 (Salimans & Ho 2022) and w is
    :func:`snr_loss_weight`. The squared error is taken in float32 whatever the model's dtype.

    Args:
      model_fn: ``model_fn(x_t [B, ...], t int32 [B]) -> prediction [B, ...]``.
      schedule: the discrete schedule.
      x0: clean data ``[B, H, W, C]`` (any rank >= 2 with channels last), float.
      key: a JAX PRNG key, split into the timestep key and the noise key.
      prediction_type: what the model predicts, ``'eps' | 'x0' | 'v'``.
      weighting: ``'uniform' | 'min_snr'``.
      min_snr_gamma: gamma of the Min-SNR weighting.
      offset_noise: per-channel offset scale (Guttenberg 2023); 0 disables it.
      t: optional int32 ``[B]`` timesteps to use instead of sampling them (e.g. to evaluate the
        loss at fixed t).

    Returns:
      ``(loss, aux)``: ``loss`` is the float32 scalar mean of ``aux['loss']``; ``aux`` holds
      float32 ``[B]`` arrays ``'loss'`` (weighted per-example terms), ``'mse'`` (unweighted),
      ``'weight'``, ``'snr'``, the int32 ``[B]`` ``'t'`` and the ``[B, ...]`` ``'noise'`` used.
    """
    check_prediction_type(prediction_type)
    check_weighting(weighting)
    if weighting == "min_snr":
        check_min_snr_gamma(min_snr_gamma)
    if not offset_noise >= 0:
        raise ValueError(f"offset_noise must be >= 0, got {offset_noise}.")
    if x0.ndim < 2:
        raise ValueError(f"x0 must be [B, ..., C] with rank >= 2, got shape {x0.shape}.")
    batch_size = x0.shape[0]
    t_key, noise_key = jax.random.split(key)
    if t is None:
        t = sample_timesteps(t_key, batch_size, schedule.num_timesteps)
    noise = offset_noise_like(noise_key, x0, offset_noise)
    x_t = q_sample(schedule, x0, t, noise)
    alpha, sigma = alpha_sigma(schedule, t, x0.ndim, jnp.float32)
    target = prediction_target(
        x0.astype(jnp.float32), noise.astype(jnp.float32), alpha, sigma, prediction_type
    )
    snr = schedule.snr[t]
    weight = snr_loss_weight(snr, prediction_type, weighting, min_snr_gamma)
    prediction = model_fn(x_t, t)
    if prediction.shape != x0.shape:
        raise ValueError(
            f"model_fn returned shape {prediction.shape}; expected the data shape {x0.shape}."
        )
    squared_error = jnp.square(prediction.astype(jnp.float32) - target)
    mse = jnp.mean(squared_error, axis=tuple(range(1, x0.ndim)))
    per_example = weight * mse
    aux = dict(loss=per_example, mse=mse, weight=weight, snr=snr, t=t, noise=noise)
    return jnp.mean(per_example), aux
