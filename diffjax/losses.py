"""Denoising losses for any noise process: time samplers, SNR weightings, the regression loss.

The loss of Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", arXiv:2006.11239,
eq. 14), generalised to any process x_t = alpha_t x_0 + sigma_t eps (:mod:`diffjax.processes`)
and any prediction type (:mod:`diffjax.predictions`), regresses the network output onto its
target:

    L = E_{t, x_0, eps} [ w(t) * mean_over_pixels (target_t - model(x_t, t))^2 ].

**Times.** t ~ U{0, ..., T-1} for a discrete schedule; for a continuous process one of the
:data:`TIME_SAMPLERS`: uniform on [t_min, 1], SD3's logit-normal and mode densities (Esser et
al. 2024, "Scaling Rectified Flow Transformers", arXiv:2403.03206, eqs. 19-20), EDM's
log-normal noise level (Karras et al. 2022, Sec. 5: ln sigma ~ N(P_mean, P_std^2), mapped to
t through the process's log-SNR) and a constant t (one-step distillation). Each continuous
sampler can apply SD3's shift (:func:`time_shift`).

**Weights.** Every weighting is a weight on the x_0-space error. At fixed x_t, a prediction's
squared error is (det / sigma)^2 times that of its x_0 (``det`` from
:func:`diffjax.predictions.determinant`; SNR_t = alpha_t^2 / sigma_t^2, so (det / sigma)^2 is
SNR for eps, 1 for x0 and SNR + 1 for v on a variance-preserving process). 'uniform' is the
plain regression on the target (DDPM's L_simple). The others set the x_0-space weight:

=================  ===================================  ======================================
weighting          x_0-space weight                     reference
=================  ===================================  ======================================
``min_snr``        min(SNR, gamma)                      Hang et al. 2023, arXiv:2303.09556, eq. 6
``edm``            (s^2 + s_d^2) / (s s_d)^2,            Karras et al. 2022, eq. 8 / Table 1
                   s = sigma / alpha, s_d = 0.5
``rectified_flow`` (1 + sqrt(SNR))^2                    SD3's w_t^RF (Esser et al. 2024, Sec. 3.1)
``truncated_snr``  max(SNR, 1)                          Salimans & Ho 2022, arXiv:2202.00512, eq. 9
=================  ===================================  ======================================

and the loss puts weight (x_0-space weight) * (sigma / det)^2 on the target's error: 'edm' on
the 'edm' prediction is exactly 1, 'rectified_flow' on the 'flow' prediction of rectified flow
too. Weights are computed from alpha and sigma at the drawn times, never looked up.

**The hybrid loss** (Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic
Models", Sec. 3.1): a network with a learned variance (its output ``[B, ..., 2 C]``, the
prediction then Improved DDPM's variance values; DiT's ``learn_sigma``) trains the variance
through the variational bound's term at the drawn t, L_hybrid = L_simple + lambda L_vlb, with
L_vlb = T E_t[L_t] estimated by T times the drawn term and a stop-gradient on the mean, so
L_vlb trains the variance alone. Per example the loss adds ``vlb_weight * T * L_t``, L_t in
bits per dimension (:func:`diffjax.likelihood.vlb_terms_of_output`); lambda = 0.001 with
T = 1000 is DiT's training loss and with T = 4000 Improved DDPM's ``RESCALED_MSE`` hybrid.

Like the rest of the math core, the loss takes a plain ``model_fn(x_in, t_in) -> prediction``
closure (params, dropout keys and class labels live in the closure), called as
:func:`diffjax.predictions.network_inputs` says.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffjax import predictions
from diffjax.diffusion import q_sample, split_learned_variance
from diffjax.likelihood import vlb_terms_of_output
from diffjax.predictions import EDM_SIGMA_DATA, check_prediction_supported
from diffjax.processes import Marginal, check_process, check_time, is_discrete, marginal

__all__ = [
    "LOSS_WEIGHTINGS",
    "ModelFn",
    "TIME_SAMPLERS",
    "TimeSampler",
    "check_min_snr_gamma",
    "check_vlb_weight",
    "check_weighting",
    "constant_times",
    "denoising_loss",
    "edm_lognormal_times",
    "get_time_sampler",
    "logit_normal_times",
    "loss_weight",
    "mode_times",
    "offset_noise_like",
    "sample_timesteps",
    "snr_loss_weight",
    "time_shift",
    "uniform_times",
]

LOSS_WEIGHTINGS: tuple[str, ...] = ("uniform", "min_snr", "edm", "rectified_flow", "truncated_snr")

ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
"""``model_fn(x_in [B, ...], t_in [B]) -> prediction [B, ...]``."""

TimeSampler = Callable[[jax.Array, int], jnp.ndarray]
"""``time_sampler(key, batch_size) -> t [B]`` (float32 in [0, 1] for continuous processes)."""


def check_weighting(weighting: str) -> None:
    """Raises ``ValueError`` unless ``weighting`` is one of :data:`LOSS_WEIGHTINGS`."""
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"Unknown weighting {weighting!r}; expected one of {LOSS_WEIGHTINGS}.")


def check_min_snr_gamma(min_snr_gamma: float) -> None:
    """Raises ``ValueError`` unless the Min-SNR gamma is > 0."""
    if not min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be > 0 (5 in Hang et al. 2023), got {min_snr_gamma}.")


# ----------------------------------------------------------------------------------- times


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


def time_shift(t: Any, shift: float) -> Any:
    """SD3's resolution-dependent shift of the time, t' = s t / (1 + (s - 1) t)
    (Esser et al. 2024, Sec. 5.3.2); s = 1 is the identity, s > 1 moves times towards noise.

    Args:
      t: float array (or NumPy array) in [0, 1].
      shift: s > 0.

    Returns:
      t' in [0, 1], same shape and type.
    """
    if not shift > 0:
        raise ValueError(f"shift must be > 0 (1: no shift), got {shift}.")
    return shift * t / (1.0 + (shift - 1.0) * t)


def _check_real(name: str, value: Any, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")
    return float(value)


def uniform_times(t_min: float = 1e-5, t_max: float = 1.0, shift: float = 1.0) -> TimeSampler:
    """t ~ U[t_min, t_max], then :func:`time_shift` (continuous-time DDPM; Song et al. 2021
    use t_min = 1e-5, which keeps every process away from its t = 0 singularity)."""
    t_min, t_max = _check_real("t_min", t_min), _check_real("t_max", t_max)
    shift = _check_real("shift", shift, positive=True)
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"uniform times need 0 <= t_min < t_max <= 1, got {t_min} and {t_max}.")

    def sample(key: jax.Array, batch_size: int) -> jnp.ndarray:
        return time_shift(jax.random.uniform(key, (batch_size,), jnp.float32, t_min, t_max), shift)

    return sample


def logit_normal_times(mean: float = 0.0, std: float = 1.0, shift: float = 1.0) -> TimeSampler:
    """t = sigmoid(n), n ~ N(mean, std^2): SD3's logit-normal density (Esser et al. 2024,
    eq. 19; 'lognorm(0.00, 1.00)' is their best), then :func:`time_shift`."""
    mean, std = _check_real("mean", mean), _check_real("std", std, positive=True)
    shift = _check_real("shift", shift, positive=True)

    def sample(key: jax.Array, batch_size: int) -> jnp.ndarray:
        normal = mean + std * jax.random.normal(key, (batch_size,), jnp.float32)
        return time_shift(jax.nn.sigmoid(normal), shift)

    return sample


def mode_times(scale: float = 1.29, shift: float = 1.0) -> TimeSampler:
    """SD3's mode sampling with heavy tails (Esser et al. 2024, eq. 20):
    t = 1 - u - scale (cos^2(pi u / 2) - 1 + u), u ~ U[0, 1]; then :func:`time_shift`.

    ``scale`` must lie in [-1, 2 / (pi - 2)] for t to stay in [0, 1] (1.29 is the paper's).
    """
    scale = _check_real("scale", scale)
    shift = _check_real("shift", shift, positive=True)
    if not -1.0 <= scale <= 2.0 / (math.pi - 2.0):
        raise ValueError(
            f"mode sampling needs scale in [-1, {2.0 / (math.pi - 2.0):.4f}] for t to stay in "
            f"[0, 1], got {scale}."
        )

    def sample(key: jax.Array, batch_size: int) -> jnp.ndarray:
        u = jax.random.uniform(key, (batch_size,), jnp.float32)
        t = 1.0 - u - scale * (jnp.cos(0.5 * math.pi * u) ** 2 - 1.0 + u)
        return time_shift(jnp.clip(t, 0.0, 1.0), shift)

    return sample


def edm_lognormal_times(process: Any, p_mean: float = -1.2, p_std: float = 1.2) -> TimeSampler:
    """EDM's training noise levels (Karras et al. 2022, Sec. 5 and Table 1):
    ln s ~ N(P_mean, P_std^2) with s = sigma / alpha, mapped to t by the process's log-SNR
    (-2 ln s) and clipped to [0, 1] (for EDM's sigma_max = 80 the clip at t = 1 moves a tail of
    mass 1.7e-6).

    Args:
      process: a continuous process.
      p_mean: EDM's P_mean (the mean of ln sigma).
      p_std: EDM's P_std (the standard deviation of ln sigma).
    """
    if is_discrete(process):
        raise ValueError(
            "EDM's log-normal noise levels need a continuous process (e.g. 'edm'); a discrete "
            "schedule draws its integer timesteps uniformly."
        )
    p_mean, p_std = _check_real("p_mean", p_mean), _check_real("p_std", p_std, positive=True)

    def sample(key: jax.Array, batch_size: int) -> jnp.ndarray:
        log_ratio = p_mean + p_std * jax.random.normal(key, (batch_size,), jnp.float32)
        return jnp.clip(process.t_from_log_snr(-2.0 * log_ratio), 0.0, 1.0)

    return sample


def constant_times(t: float = 1.0) -> TimeSampler:
    """Every example at the one time ``t``: the one-step distillation of a rectified flow
    (Liu et al. 2022, "Flow Straight and Fast", arXiv:2209.03003, Sec. 2.3, "k-rectified flow
    + distillation": fit the velocity only where the one Euler step starts, here t = 1, the
    noise end of diffjax's x_t = (1 - t) x_0 + t eps)."""
    t = _check_real("t", t)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"constant times need 0 <= t <= 1, got {t}.")

    def sample(key: jax.Array, batch_size: int) -> jnp.ndarray:
        del key
        return jnp.full((batch_size,), t, jnp.float32)

    return sample


TIME_SAMPLERS: dict[str, Callable[..., TimeSampler]] = {
    "uniform": uniform_times,
    "constant": constant_times,
    "logit_normal": logit_normal_times,
    "mode": mode_times,
    "edm_lognormal": edm_lognormal_times,
}


def get_time_sampler(name: str, process: Any, **options: Any) -> TimeSampler | None:
    """The training-time sampler called ``name`` for ``process``, options checked by name.

    The samplers of the module docstring: uniform, SD3's logit-normal and mode densities (Esser
    et al. 2024, eqs. 19-20), EDM's log-normal noise level (Karras et al. 2022, Sec. 5) and a
    constant time. For a discrete schedule only 'uniform' exists (t ~ U{0, ..., T-1}, Ho et al.
    2020, Algorithm 1) and None is returned, which :func:`denoising_loss` takes as that default.

    Args:
      name: one of :data:`TIME_SAMPLERS`.
      process: the noise process.
      **options: the sampler's keyword arguments (e.g. ``mean``, ``std``, ``shift``).

    Returns:
      ``time_sampler(key, batch_size) -> t``, or None for the discrete default.
    """
    if name not in TIME_SAMPLERS:
        raise ValueError(f"Unknown time sampler {name!r}; expected one of {tuple(TIME_SAMPLERS)}.")
    if is_discrete(process):
        if name != "uniform" or options:
            raise ValueError(
                f"a discrete schedule draws t ~ U{{0, ..., T-1}}: time sampler 'uniform' with no "
                f"options, got {name!r} with {options}."
            )
        return None
    factory = TIME_SAMPLERS[name]
    allowed = [p for p in inspect.signature(factory).parameters if p != "process"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"Time sampler {name!r} does not take {unknown}; its options are {allowed}."
        )
    if name == "edm_lognormal":
        return factory(process, **options)
    return factory(**options)


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


# --------------------------------------------------------------------------------- weights


def snr_loss_weight(
    snr: jnp.ndarray, prediction_type: str, weighting: str, min_snr_gamma: float = 5.0
) -> jnp.ndarray:
    """The Min-SNR / uniform weight on an eps, x0 or v target of a variance-preserving process.

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
      snr: float ``[B]``, SNR_t = alpha_t^2 / sigma_t^2, >= 0.
      prediction_type: ``'eps' | 'x0' | 'v'``.
      weighting: ``'uniform' | 'min_snr'``.
      min_snr_gamma: gamma > 0 (5 in the paper).

    Returns:
      float32 ``[B]``.
    """
    if prediction_type not in ("eps", "x0", "v"):
        raise ValueError(
            f"snr_loss_weight covers eps, x0 and v; got {prediction_type!r} (use loss_weight)."
        )
    if weighting not in ("uniform", "min_snr"):
        raise ValueError(f"snr_loss_weight covers 'uniform' and 'min_snr', got {weighting!r}.")
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


def _x0_weight_times_sigma_squared(
    weighting: str, m: Marginal, min_snr_gamma: float
) -> jnp.ndarray:
    """The x0-space weight times sigma^2, a form that stays finite at sigma = 0."""
    if weighting == "min_snr":
        return jnp.minimum(m.alpha**2, min_snr_gamma * m.sigma**2)
    if weighting == "edm":
        return (m.sigma**2 + (EDM_SIGMA_DATA * m.alpha) ** 2) / EDM_SIGMA_DATA**2
    if weighting == "truncated_snr":
        return jnp.maximum(m.alpha**2, m.sigma**2)
    return (m.alpha + m.sigma) ** 2


def loss_weight(
    prediction_type: str, weighting: str, m: Marginal, min_snr_gamma: float = 5.0
) -> jnp.ndarray:
    """The weight on the target-space squared error of one example (see the module docstring).

    The x0-space weights of the module table: Min-SNR (Hang et al. 2023, eq. 6), EDM's
    lambda(sigma) (Karras et al. 2022, eq. 8 and Table 1), SD3's w_t^RF (Esser et al. 2024,
    Sec. 3.1) and truncated SNR (Salimans & Ho 2022, eq. 9).

    eps/x0/v with 'uniform' or 'min_snr' on a variance-preserving process use
    :func:`snr_loss_weight` (with its exact limits at SNR = 0 and infinity); every other
    combination is (x0-space weight) (sigma / det)^2, and 0 where det = 0 (where the prediction
    does not determine x_0).

    Args:
      prediction_type: one of :data:`~diffjax.predictions.PREDICTION_TYPES`.
      weighting: one of :data:`LOSS_WEIGHTINGS`.
      m: the marginal at the drawn times, ``[B, 1, ..., 1]``.
      min_snr_gamma: gamma of 'min_snr'.

    Returns:
      float32 ``[B]``.
    """
    check_weighting(weighting)
    alpha = m.alpha.reshape(m.alpha.shape[:1]).astype(jnp.float32)
    sigma = m.sigma.reshape(m.sigma.shape[:1]).astype(jnp.float32)
    if weighting == "uniform":
        return jnp.ones_like(alpha)
    flat = Marginal(
        alpha, sigma,
        None if m.d_alpha is None else m.d_alpha.reshape(alpha.shape).astype(jnp.float32),
        None if m.d_sigma is None else m.d_sigma.reshape(alpha.shape).astype(jnp.float32),
        m.variance_preserving,
    )  # fmt: skip
    if weighting == "min_snr":
        check_min_snr_gamma(min_snr_gamma)
        if prediction_type in ("eps", "x0", "v") and m.variance_preserving:
            return snr_loss_weight(alpha**2 / sigma**2, prediction_type, weighting, min_snr_gamma)
    det = jnp.asarray(predictions.determinant(prediction_type, flat), jnp.float32)
    det_squared = jnp.broadcast_to(det**2, alpha.shape)
    defined = det_squared > 0
    numerator = _x0_weight_times_sigma_squared(weighting, flat, min_snr_gamma)
    return jnp.where(defined, numerator / jnp.where(defined, det_squared, 1.0), 0.0)


# ------------------------------------------------------------------------------------ loss


def denoising_loss(
    model_fn: ModelFn,
    process: Any,
    x0: jnp.ndarray,
    key: jax.Array,
    *,
    prediction_type: str = "eps",
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    offset_noise: float = 0.0,
    time_sampler: TimeSampler | None = None,
    t: jnp.ndarray | None = None,
    noise: jnp.ndarray | None = None,
    vlb_weight: float = 0.0,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """The denoising regression loss (Ho et al. 2020, Algorithm 1 / eq. 14) for any process.

    Draws t (``time_sampler``; the discrete default is U{0, ..., T-1}, the continuous default
    :func:`uniform_times`) unless ``t`` is given, and eps (with optional offset noise), forms
    x_t = alpha_t x_0 + sigma_t eps, calls the network on
    :func:`~diffjax.predictions.network_inputs`, and averages over the batch the per-example

        loss_i = w(t_i) * mean_over_pixels (target_i - prediction_i)^2

    with the target of ``prediction_type`` and the weight :func:`loss_weight`. The squared error
    is taken in float32 whatever the model's dtype.

    Args:
      model_fn: ``model_fn(x_in [B, ...], t_in [B]) -> prediction [B, ...]``.
      process: a :class:`~diffjax.schedules.DiffusionSchedule` or a continuous process.
      x0: clean data ``[B, H, W, C]`` (any rank >= 2 with channels last), float.
      key: a JAX PRNG key, split into the timestep key and the noise key.
      prediction_type: what the model predicts (:data:`~diffjax.predictions.PREDICTION_TYPES`).
      weighting: one of :data:`LOSS_WEIGHTINGS`.
      min_snr_gamma: gamma of the Min-SNR weighting.
      offset_noise: per-channel offset scale (Guttenberg 2023); 0 disables it.
      time_sampler: ``time_sampler(key, B) -> t`` for a continuous process
        (:data:`TIME_SAMPLERS`, :func:`get_time_sampler`).
      t: optional ``[B]`` times to use instead of sampling them (int32 for a schedule, float
        in [0, 1] for a continuous process).
      noise: optional ``[B, ...]`` eps paired with ``x0`` instead of a fresh draw (reflow
        trains on the coupling (noise, ODE sample) of the previous flow, Liu et al. 2022,
        Algorithm 1); offset noise is then not added.
      vlb_weight: lambda of the hybrid loss (module docstring; Improved DDPM: 0.001) for a
        ``model_fn`` with a learned variance, which returns ``[B, ..., 2 C]``; 0 (the
        default): the plain regression of a ``model_fn`` returning ``[B, ..., C]``. Needs a
        discrete schedule and data on the 8-bit grid of [-1, 1] (the bound's decoder term).

    Returns:
      ``(loss, aux)``: ``loss`` is the float32 scalar mean of ``aux['loss']``; ``aux`` holds
      float32 ``[B]`` arrays ``'loss'`` (weighted per-example terms), ``'mse'`` (unweighted),
      ``'weight'``, ``'snr'``, the ``[B]`` times ``'t'`` and the ``[B, ...]`` ``'noise'`` used;
      with ``vlb_weight > 0`` also ``'vlb'``, the drawn bound term L_t in bits per dimension.
    """
    check_process(process)
    check_prediction_supported(prediction_type, process)
    check_weighting(weighting)
    if weighting == "min_snr":
        check_min_snr_gamma(min_snr_gamma)
    if not offset_noise >= 0:
        raise ValueError(f"offset_noise must be >= 0, got {offset_noise}.")
    if x0.ndim < 2:
        raise ValueError(f"x0 must be [B, ..., C] with rank >= 2, got shape {x0.shape}.")
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise TypeError(
            f"x0 must be a float array [B, ..., C] (images scaled to [-1, 1]), got dtype "
            f"{x0.dtype}."
        )
    if time_sampler is not None and is_discrete(process):
        raise ValueError("time_sampler is for continuous processes; a schedule draws U{0..T-1}.")
    check_vlb_weight(vlb_weight, process)
    batch_size = x0.shape[0]
    t_key, noise_key = jax.random.split(key)
    if t is None:
        if is_discrete(process):
            t = sample_timesteps(t_key, batch_size, process.num_timesteps)
        else:
            t = (time_sampler or uniform_times())(t_key, batch_size)
    t = check_time(process, t, batch_size)
    if noise is None:
        noise = offset_noise_like(noise_key, x0, offset_noise)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise has shape {noise.shape}; expected the data shape {x0.shape}.")
    x_t = q_sample(process, x0, t, noise)
    m = marginal(process, t, x0.ndim, jnp.float32)
    x_in, t_in = predictions.network_inputs(prediction_type, process, m, x_t, t)
    target = predictions.target(
        prediction_type, x0.astype(jnp.float32), noise.astype(jnp.float32), m
    )
    weight = loss_weight(prediction_type, weighting, m, min_snr_gamma)
    output = model_fn(x_in, t_in)
    if vlb_weight > 0:
        prediction, variance_values = split_learned_variance(output, x0.shape)
    elif output.shape != x0.shape:
        raise ValueError(
            f"model_fn returned shape {output.shape}; expected the data shape {x0.shape} (a "
            f"learned-variance network's [B, ..., 2 C] is trained with vlb_weight > 0)."
        )
    else:
        prediction = output
    squared_error = jnp.square(prediction.astype(jnp.float32) - target)
    pixel_axes = tuple(range(1, x0.ndim))
    mse = jnp.mean(squared_error, axis=pixel_axes)
    per_example = weight * mse
    snr = jnp.square(m.alpha.reshape(batch_size)) / jnp.square(m.sigma.reshape(batch_size))
    aux = dict(loss=per_example, mse=mse, weight=weight, snr=snr, t=t, noise=noise)
    if vlb_weight > 0:
        frozen_mean = jnp.concatenate(
            [jax.lax.stop_gradient(prediction), variance_values], axis=-1
        ).astype(jnp.float32)
        nats = vlb_terms_of_output(
            process, frozen_mean, x0, x_t.astype(jnp.float32), t,
            prediction_type=prediction_type, variance="learned_range",
        )  # fmt: skip
        vlb = jnp.mean(nats, axis=pixel_axes) / math.log(2.0)
        per_example = per_example + vlb_weight * process.num_timesteps * vlb
        aux.update(loss=per_example, vlb=vlb)
    return jnp.mean(per_example), aux


def check_vlb_weight(vlb_weight: Any, process: Any) -> float:
    """Raises unless ``vlb_weight`` is a float >= 0 and, when > 0, the process a discrete
    schedule (the hybrid loss's bound term is the discrete chain's)."""
    value = _check_real("vlb_weight", vlb_weight)
    if value < 0:
        raise ValueError(f"vlb_weight must be >= 0, got {vlb_weight}.")
    if value > 0 and not is_discrete(process):
        raise ValueError(
            f"vlb_weight={vlb_weight} trains a learned variance through the discrete chain's "
            f"variational bound; the process {getattr(process, 'name', type(process).__name__)!r} "
            f"is continuous. Use a DiffusionSchedule or vlb_weight=0."
        )
    return value
