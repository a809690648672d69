"""Discrete-time noise schedules and their derived constants.

Notation (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", arXiv:2006.11239):

=============================  ==========================================
code                           paper
=============================  ==========================================
``betas[t]``                   beta_t, variance of q(x_t | x_{t-1})
``alphas[t]``                  alpha_t = 1 - beta_t
``alphas_cumprod[t]``          abar_t = prod_{s<=t} alpha_s
``alphas_cumprod_prev[t]``     abar_{t-1} (1 at t = 0)
``snr[t]``                     abar_t / (1 - abar_t)  (Kingma et al. 2021)
=============================  ==========================================

Timesteps are 0-based: index ``t`` in ``[0, T)`` is the paper's step ``t + 1``. Every constant
is computed once in NumPy float64 and stored as float32 (DESIGN rule 6). A
:class:`DiffusionSchedule` is a ``NamedTuple`` of arrays, hence a pytree: pass it into ``jit``,
close over it, or shard it like any other array container.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

__all__ = [
    "DiffusionSchedule",
    "SCHEDULE_NAMES",
    "cosine_betas",
    "get_schedule",
    "linear_betas",
    "make_schedule",
    "rescale_zero_terminal_snr",
    "scaled_linear_betas",
    "schedule_constants",
    "sigmoid_betas",
]


class DiffusionSchedule(NamedTuple):
    """Per-timestep constants of a discrete diffusion process, each a float32 array ``[T]``.

    The chain q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) (Ho et al. 2020, eq. 2)
    with its marginal (eq. 4) and posterior (eqs. 6-7) constants (:func:`schedule_constants`).
    Built by :func:`make_schedule` or :func:`get_schedule`; do not construct by hand.
    """

    betas: jnp.ndarray
    alphas: jnp.ndarray
    alphas_cumprod: jnp.ndarray
    alphas_cumprod_prev: jnp.ndarray
    sqrt_alphas_cumprod: jnp.ndarray
    sqrt_one_minus_alphas_cumprod: jnp.ndarray
    posterior_variance: jnp.ndarray
    posterior_log_variance_clipped: jnp.ndarray
    posterior_mean_coef1: jnp.ndarray
    posterior_mean_coef2: jnp.ndarray
    snr: jnp.ndarray
    log_snr: jnp.ndarray

    @property
    def num_timesteps(self) -> int:
        """T, the number of discrete steps (static: read from the array shape)."""
        return self.betas.shape[0]


def _check_num_timesteps(num_timesteps: int) -> None:
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)):
        raise TypeError(f"num_timesteps must be an int >= 1, got {num_timesteps!r}.")
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}.")


def linear_betas(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """DDPM's linear schedule, rescaled so any T spans the same total noise as T = 1000.

    beta_t = linspace(s * beta_start, s * beta_end, T) with s = 1000 / T
    (Ho et al. 2020, Sec. 4; the T-scaling of Nichol & Dhariwal 2021, Appendix).

    Args:
      num_timesteps: T.
      beta_start: beta_1 at T = 1000.
      beta_end: beta_T at T = 1000.

    Returns:
      float64 ``[T]``.
    """
    _check_num_timesteps(num_timesteps)
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def scaled_linear_betas(
    num_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012
) -> np.ndarray:
    """Stable Diffusion's schedule: linear in sqrt(beta) (Rombach et al. 2022).

    beta_t = linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2

    Returns:
      float64 ``[T]``.
    """
    _check_num_timesteps(num_timesteps)
    return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2


def _betas_from_alphas_cumprod(alphas_cumprod: np.ndarray, max_beta: float) -> np.ndarray:
    """beta_t = 1 - abar_t / abar_{t-1}, with abar_{-1} = 1, clipped to ``max_beta``."""
    alphas_cumprod_prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
    return np.minimum(1.0 - alphas_cumprod / alphas_cumprod_prev, max_beta)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """The cosine schedule of Nichol & Dhariwal 2021 ("Improved DDPM", eq. 17).

    abar(t) = f(t) / f(0),  f(t) = cos(((t / T + s) / (1 + s)) * pi / 2) ** 2,
    beta_t = min(1 - abar(t) / abar(t - 1), max_beta)   (paper step t = 1..T).

    Returns:
      float64 ``[T]``.
    """
    _check_num_timesteps(num_timesteps)
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + s) / (1.0 + s) * math.pi / 2.0) ** 2
    alphas_cumprod = f[1:] / f[0]
    return _betas_from_alphas_cumprod(alphas_cumprod, max_beta)


def sigmoid_betas(
    num_timesteps: int,
    start: float = -3.0,
    end: float = 3.0,
    tau: float = 1.0,
    max_beta: float = 0.999,
) -> np.ndarray:
    """The sigmoid schedule of Jabri et al. 2022 ("Scalable Adaptive Computation", Alg. 1).

    abar(t) = (sigmoid(end / tau) - sigmoid((t / T * (end - start) + start) / tau))
              / (sigmoid(end / tau) - sigmoid(start / tau)),
    beta_t = min(1 - abar(t) / abar(t - 1), max_beta).

    Returns:
      float64 ``[T]``.
    """
    _check_num_timesteps(num_timesteps)
    if not end > start:
        raise ValueError(f"sigmoid schedule needs end > start, got start={start}, end={end}.")

    def sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    v_start, v_end = sigmoid(start / tau), sigmoid(end / tau)
    f = (v_end - sigmoid((steps * (end - start) + start) / tau)) / (v_end - v_start)
    alphas_cumprod = f[1:] / f[0]
    return _betas_from_alphas_cumprod(alphas_cumprod, max_beta)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale any schedule to zero terminal SNR (Lin et al. 2024, Algorithm 1).

    "Common Diffusion Noise Schedules and Sample Steps are Flawed" (arXiv:2305.08891):
    sqrt(abar) is shifted so its last value is 0 and scaled so its first value is unchanged,
    sqrt(abar'_t) = (sqrt(abar_t) - sqrt(abar_T)) * sqrt(abar_1) / (sqrt(abar_1) - sqrt(abar_T)).
    The last beta becomes exactly 1 (abar_T = 0, SNR 0): use v-prediction and 'trailing'
    timestep spacing with it.

    Args:
      betas: ``[T]`` with T >= 2.

    Returns:
      float64 ``[T]``.
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.shape[0] < 2:
        raise ValueError(
            "zero-terminal-SNR rescaling needs a 1-D schedule of >= 2 steps, got shape "
            f"{betas.shape}."
        )
    sqrt_alphas_cumprod = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_alphas_cumprod[0], sqrt_alphas_cumprod[-1]
    sqrt_alphas_cumprod = (sqrt_alphas_cumprod - last) * first / (first - last)
    alphas_cumprod = sqrt_alphas_cumprod**2
    alphas = np.concatenate([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1.0 - alphas


_BETA_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "linear": linear_betas,
    "scaled_linear": scaled_linear_betas,
    "cosine": cosine_betas,
    "sigmoid": sigmoid_betas,
}
SCHEDULE_NAMES: tuple[str, ...] = tuple(_BETA_FUNCTIONS)


def schedule_constants(betas) -> dict[str, np.ndarray]:
    """Every constant of the discrete process from a beta array, in float64 NumPy.

    Posterior q(x_{t-1} | x_t, x_0) = N(coef1_t x_0 + coef2_t x_t, beta~_t I) with
    beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t),
    coef1_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t),
    coef2_t = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)        (Ho et al. 2020, eqs. 6-7).
    The log-variance is clipped at t = 0, where beta~_0 = 0, by using beta~_1 there (as DDPM's
    reference code does).

    Args:
      betas: array-like ``[T]``, each in (0, 1); only the last may equal 1 (zero terminal SNR).

    Returns:
      ``{field of DiffusionSchedule: float64 [T]}``.
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.shape[0] < 1:
        raise ValueError(f"betas must be a 1-D array with T >= 1 entries, got shape {betas.shape}.")
    if not np.all(np.isfinite(betas)):
        raise ValueError("betas must be finite; got NaN or Inf.")
    bad = (betas <= 0.0) | (betas > 1.0)
    bad[:-1] |= betas[:-1] >= 1.0
    if np.any(bad):
        index = int(np.argmax(bad))
        raise ValueError(
            f"betas must lie in (0, 1) (only the last may be exactly 1, for zero terminal SNR); "
            f"got betas[{index}] = {float(betas[index])!r}."
        )
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
    one_minus = 1.0 - alphas_cumprod
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / one_minus
    clip_source = posterior_variance[1] if betas.shape[0] > 1 else betas[0]
    posterior_log_variance_clipped = np.log(np.concatenate([[clip_source], posterior_variance[1:]]))
    with np.errstate(divide="ignore"):
        snr = alphas_cumprod / one_minus
        log_snr = np.log(alphas_cumprod) - np.log(one_minus)
    return dict(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(one_minus),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=posterior_log_variance_clipped,
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / one_minus,
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / one_minus,
        snr=snr,
        log_snr=log_snr,
    )


def make_schedule(betas) -> DiffusionSchedule:
    """Derives every constant of the discrete process from a beta array
    (:func:`schedule_constants`: Ho et al. 2020, eqs. 4 and 6-7) and stores it as float32.

    Args:
      betas: array-like ``[T]``, each in (0, 1); only the last may equal 1 (zero terminal SNR).

    Returns:
      A :class:`DiffusionSchedule` of float32 ``[T]`` arrays.
    """
    constants = schedule_constants(betas)
    return DiffusionSchedule(**{k: jnp.asarray(v, dtype=jnp.float32) for k, v in constants.items()})


def get_schedule(
    name: str, num_timesteps: int = 1000, zero_terminal_snr: bool = False, **kwargs
) -> DiffusionSchedule:
    """Builds a named schedule: ``'linear' | 'scaled_linear' | 'cosine' | 'sigmoid'``.

    Args:
      name: schedule name.
      num_timesteps: T.
      zero_terminal_snr: apply :func:`rescale_zero_terminal_snr` (Lin et al. 2024).
      **kwargs: forwarded to the beta function (e.g. ``beta_start``, ``s``, ``tau``).

    Returns:
      A :class:`DiffusionSchedule` with T steps.

    Example:
      >>> schedule = get_schedule("cosine", num_timesteps=1000)
      >>> schedule.alphas_cumprod.shape
      (1000,)
    """
    if name not in _BETA_FUNCTIONS:
        raise ValueError(f"Unknown schedule {name!r}; expected one of {SCHEDULE_NAMES}.")
    betas = _BETA_FUNCTIONS[name](num_timesteps, **kwargs)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return make_schedule(betas)
