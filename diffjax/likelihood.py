"""Likelihoods in bits per dimension: the variational bound of a discrete diffusion model and
the exact likelihood of the probability-flow ODE of any process.

The discrete bound
------------------

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

The probability-flow ODE
------------------------
The ODE dx/dt = v(x, t) of :mod:`diffjax.samplers.ode` is a continuous normalising flow, so by
the instantaneous change of variables (Chen et al. 2018, "Neural Ordinary Differential
Equations", Theorem 1; Song et al. 2021, score_sde, eq. 39)

    log p_{t_min}(x) = log p_prior(x(t_max)) + integral_{t_min}^{t_max} div v(x(t), t) dt,

solved together with x(t) from x(t_min) = x in one ``diffrax.diffeqsolve``. The prior is
N(0, sigma(t_max)^2 I), the distribution every sampler starts from. The divergence is exact (D
Jacobian products per evaluation; for small D) or Hutchinson's estimate eps^T (dv/dx) eps (one
Jacobian product) with one probe per example held fixed over the solve (Grathwohl et al. 2019,
FFJORD, eq. 7), Rademacher or Gaussian, drawn from ``fold_in`` keys: unbiased for the integral,
with the variance 2 sum_{i != j} A_ij^2 (Rademacher) or 2 ||A||_F^2 (Gaussian) of the
integrated Jacobian A. :func:`ode_likelihood` is the density of p_{t_min}, the model's marginal
at the solve's first time (t_min: 1e-5 as score_sde; index 0 for a schedule's continuous view).

The products are forward mode by default, (dv/dx) eps from ``jax.jvp``: no stored activations,
and on XLA's CPU backend a convolution's input gradient inside the solver's while loop is
compiled with a kernel layout that misses the fast convolution path (jax-ml/jax#12868), which
makes reverse mode several times slower there. ``autodiff='reverse'`` (eps^T dv/dx from
``jax.vjp``) is for networks that only have a ``custom_vjp`` (forward mode cannot
differentiate them). Both give the same divergence to float32 rounding.

Dequantization and the 8-bit offset. A density evaluated at the 256 grid values of 8-bit data
can be as large as the model likes, so bits/dim computed that way (score_sde's
``likelihood.py``, which omits it by default) are not a likelihood of the data and come out
negative for a sharp model. With ``dequantize=True`` each value k / 127.5 - 1 is moved by u w,
u ~ U[-1/2, 1/2), inside its bin of width w = 2 / 255 (centred on the training values), and

    -log2 P(k) <= E_u[-log2 p(x + u w)] - D log2 w,

the uniform-dequantization bound (Theis et al. 2016; Ho et al. 2019, Flow++, eq. 2): bits/dim
= nll / (D ln 2) + log2(255 / 2), the 8-bit offset being log2(127.5) = 6.994 bits (score_sde's
7 belongs to its bins of width 2 / 256). With ``dequantize=False`` the data are taken as
continuous and bits/dim = nll / (D ln 2), no offset.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion import VARIANCE_TYPES, p_mean_variance, q_posterior_mean_variance, q_sample
from diffjax.predictions import check_prediction_supported
from diffjax.processes import as_jit_argument, is_discrete

__all__ = [
    "BitsPerDim",
    "AUTODIFF_MODES",
    "DIVERGENCE_METHODS",
    "EIGHT_BIT_OFFSET",
    "OdeLikelihood",
    "bits_per_dim",
    "discretized_gaussian_log_likelihood",
    "normal_kl",
    "ode_likelihood",
    "vlb_terms",
    "vlb_terms_of_output",
]

_LOG2 = math.log(2.0)
_BIN_HALF_WIDTH = 1.0 / 255.0
EIGHT_BIT_OFFSET = math.log2(127.5)
"""-log2 of the bin width 2 / 255 of 8-bit data in [-1, 1]: added to the dequantized bits/dim."""
DIVERGENCE_METHODS: tuple[str, ...] = ("exact", "rademacher", "gaussian")
AUTODIFF_MODES: tuple[str, ...] = ("forward", "reverse")


def normal_kl(mean_1: Any, log_var_1: Any, mean_2: Any, log_var_2: Any) -> jnp.ndarray:
    """KL(N(mean_1, e^log_var_1) || N(mean_2, e^log_var_2)) elementwise, in nats:
    (log_var_2 - log_var_1 + e^(log_var_1 - log_var_2) + (mean_1 - mean_2)^2 e^-log_var_2 - 1) / 2,
    the closed form of the bound's Gaussian KL terms (Ho et al. 2020, eq. 5).
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
      mean: the decoder's mean, broadcastable to ``x``.
      log_scale: the decoder's log standard deviation, broadcastable to ``x``.
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


def vlb_terms_of_output(
    schedule: Any,
    model_output: jnp.ndarray,
    x0: jnp.ndarray,
    x_t: jnp.ndarray,
    t: jnp.ndarray,
    *,
    prediction_type: str,
    variance: str = "small",
) -> jnp.ndarray:
    """The bound's term at index t per pixel, in nats, from the network's output at x_t:
    L_{t} for t >= 1 (a KL, Ho et al. 2020, eq. 5) and L_0 = -log p(x_0 | x_1) at t = 0
    (eq. 13).

    Args:
      schedule: the discrete schedule.
      model_output: the network's output at ``(x_t, t)`` (``[B, ..., 2 C]`` for
        ``variance='learned_range'``).
      x0: 8-bit data in [-1, 1], ``[B, ..., C]``.
      x_t: ``[B, ..., C]``, a draw of q(x_t | x_0).
      t: int32 ``[B]``, 0-based.
      prediction_type: what the model predicts.
      variance: the reverse step's variance (:data:`~diffjax.diffusion.VARIANCE_TYPES`).

    Returns:
      float32 ``[B, ..., C]``.
    """
    x0 = x0.astype(jnp.float32)
    reverse = p_mean_variance(schedule, model_output, x_t, t, prediction_type, variance)
    true = q_posterior_mean_variance(schedule, x0, x_t, t)
    kl = normal_kl(true.mean, true.log_variance, reverse.mean, reverse.log_variance)
    decoder = -discretized_gaussian_log_likelihood(x0, reverse.mean, 0.5 * reverse.log_variance)
    return jnp.where(jnp.reshape(t, (-1,) + (1,) * (x0.ndim - 1)) == 0, decoder, kl)


def vlb_terms(
    model_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    schedule: Any,
    x0: jnp.ndarray,
    t: jnp.ndarray,
    noise: jnp.ndarray,
    *,
    prediction_type: str,
    variance: str = "small",
) -> jnp.ndarray:
    """The bound's term at index t of each example, in nats summed over the pixels:
    L_{t} for t >= 1 (a KL, Ho et al. 2020, eq. 5) and L_0 = -log p(x_0 | x_1) at t = 0
    (eq. 13).

    Args:
      model_fn: ``model_fn(x_t [B, ...], t int32 [B]) -> prediction`` (``[B, ..., 2 C]`` for
        ``variance='learned_range'``).
      schedule: the discrete schedule.
      x0: 8-bit data in [-1, 1], ``[B, ...]``.
      t: int32 ``[B]``, 0-based.
      noise: ``[B, ...]`` N(0, I) draws for x_t = q_sample(x0, t, noise).
      prediction_type: what the model predicts.
      variance: the reverse step's variance (:data:`~diffjax.diffusion.VARIANCE_TYPES`).

    Returns:
      float32 ``[B]``.
    """
    x0 = x0.astype(jnp.float32)
    x_t = q_sample(schedule, x0, t, noise)
    per_pixel = vlb_terms_of_output(
        schedule, model_fn(x_t, t), x0, x_t, t, prediction_type=prediction_type,
        variance=variance,
    )  # fmt: skip
    return jnp.sum(per_pixel, axis=tuple(range(1, x0.ndim)))


def _prior_term(schedule: Any, x0: jnp.ndarray) -> jnp.ndarray:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per example, in nats."""
    last = schedule.num_timesteps - 1
    alpha = schedule.sqrt_alphas_cumprod[last]
    log_var = jnp.log(1.0 - schedule.alphas_cumprod[last])
    kl = normal_kl(alpha * x0, log_var, 0.0, 0.0)
    return jnp.sum(kl, axis=tuple(range(1, x0.ndim)))


class BitsPerDim(NamedTuple):
    """Per-example bound (Ho et al. 2020, eq. 5) in bits per dimension.

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
    prediction_type: str,
    variance: str = "small",
    num_timesteps: int | None = None,
) -> BitsPerDim:
    """The variational bound of Ho et al. 2020, eq. 5 in bits per dimension, per example.

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


class OdeLikelihood(NamedTuple):
    """Per-example likelihood through the probability-flow ODE (Song et al. 2021, score_sde,
    Sec. 4.3; the instantaneous change of variables of Chen et al. 2018, Theorem 1).

    Attributes:
      bpd: float32 ``[B]``: nll / (D ln 2), plus :data:`EIGHT_BIT_OFFSET` when dequantized.
      nll: float32 ``[B]``, -log p_{t_min}(x) in nats of the (dequantized) input.
      prior_log_prob: float32 ``[B]``, log N(x(t_max); 0, sigma(t_max)^2 I) in nats.
      latent: ``[B, ...]``, x(t_max).
      stats: the solve's :class:`~diffjax.samplers.ode.OdeStats`.
    """

    bpd: jnp.ndarray
    nll: jnp.ndarray
    prior_log_prob: jnp.ndarray
    latent: jnp.ndarray
    stats: Any


def _per_sample_keys(key: jax.Array) -> bool:
    return jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 1


def _draw(key: jax.Array, kind: str, shape: tuple[int, ...], dtype: Any) -> jnp.ndarray:
    """Uniform [-1/2, 1/2), Rademacher or Gaussian draws of ``shape`` ([B, ...]); a ``[B]`` key
    array draws example i from key i alone."""

    def one(k, example_shape):
        if kind == "uniform":
            return jax.random.uniform(k, example_shape, dtype, -0.5, 0.5)
        if kind == "rademacher":
            return jax.random.rademacher(k, example_shape, dtype)
        return jax.random.normal(k, example_shape, dtype)

    if _per_sample_keys(key):
        return jax.vmap(lambda k: one(k, shape[1:]))(key)
    return one(key, shape)


def _divergence(velocity_fn, x: jnp.ndarray, method: str, probe: jnp.ndarray | None, autodiff: str):
    """(v(x) [B, ...], div v(x) [B]): eps^T J eps, or exact from D products along the basis.

    The examples are independent, so one product with a ``[B, ...]`` direction gives every
    example's own ``eps_b^T J_b eps_b``. ``autodiff``: 'forward' (J eps, ``jax.linearize``) or
    'reverse' (J^T eps, ``jax.vjp``); the same numbers either way."""
    axes = tuple(range(1, x.ndim))
    if autodiff == "forward":
        velocity, product = jax.linearize(velocity_fn, x)
    else:
        velocity, pullback = jax.vjp(velocity_fn, x)

        def product(direction):
            return pullback(direction)[0]

    if method != "exact":
        return velocity, jnp.sum(probe * product(probe), axis=axes)
    dim = math.prod(x.shape[1:])
    basis = jnp.eye(dim, dtype=x.dtype).reshape((dim, 1) + x.shape[1:])

    def column(direction):
        return jnp.sum(direction * product(jnp.broadcast_to(direction, x.shape)), axis=axes)

    return velocity, jnp.sum(jax.lax.map(column, basis), axis=0)


@functools.partial(
    jax.jit,
    static_argnames=(
        "prediction_type", "divergence", "autodiff", "dequantize", "solver", "num_steps",
        "max_steps", "t_max", "t_min",
    ),
)  # fmt: skip
def _ode_likelihood(
    model, process, x, key, rtol, atol, *, prediction_type, divergence, autodiff, dequantize,
    solver, num_steps, max_steps, t_max, t_min,
):  # fmt: skip
    from diffjax.samplers.ode import ode_velocity, solve

    x = x.astype(jnp.float32)
    dequantize_key, probe_key = _split(key)
    if dequantize:
        x = x + 2.0 * _BIN_HALF_WIDTH * _draw(dequantize_key, "uniform", x.shape, x.dtype)
    probe = None if divergence == "exact" else _draw(probe_key, divergence, x.shape, x.dtype)

    def vector_field(t, state):
        x_t, _ = state

        def velocity_fn(y):
            return ode_velocity(model, prediction_type, process, t, y)[0]

        velocity, div = _divergence(velocity_fn, x_t, divergence, probe, autodiff)
        return velocity, div

    (latent, integral), stats = solve(
        vector_field, (x, jnp.zeros(x.shape[:1], jnp.float32)), t_min, t_max, solver=solver,
        rtol=rtol, atol=atol, num_steps=num_steps, max_steps=max_steps,
    )  # fmt: skip
    dim = math.prod(x.shape[1:])
    _, sigma_max = process.alpha_sigma(jnp.float32(t_max))
    axes = tuple(range(1, x.ndim))
    prior = -0.5 * jnp.sum(jnp.square(latent / sigma_max), axis=axes) - dim * (
        jnp.log(sigma_max) + 0.5 * math.log(2.0 * math.pi)
    )
    # The solve runs forward, t_min -> t_max, so the integral of div v is accumulated directly.
    nll = -(prior + integral)
    bpd = nll / (dim * _LOG2) + (EIGHT_BIT_OFFSET if dequantize else 0.0)
    return OdeLikelihood(bpd, nll, prior, latent, stats)


def _split(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    if _per_sample_keys(key):
        halves = jax.vmap(jax.random.split)(key)
        return halves[:, 0], halves[:, 1]
    return tuple(jax.random.split(key))


def _check_eight_bit(x: Any) -> None:
    """Raises ``ValueError`` unless a concrete ``x`` lies on the 8-bit grid k / 127.5 - 1,
    k = 0..255 (a traced ``x``, inside an outer ``jax.jit``, cannot be checked)."""
    if isinstance(x, jax.core.Tracer):
        return
    levels = (np.asarray(x, np.float64) + 1.0) * 127.5
    # float32 stores k / 127.5 - 1 to ~1e-5 of a level; anything else is off the grid.
    off_grid = (np.abs(levels - np.round(levels)) > 1e-3) | (levels < -1e-3) | (levels > 255.001)
    if np.any(off_grid):
        index = tuple(int(i) for i in np.argwhere(off_grid)[0])
        raise ValueError(
            f"dequantize=True is for 8-bit images in [-1, 1] (k / 127.5 - 1, k = 0..255), but "
            f"x{list(index)} = {float(np.asarray(x)[index]):.6g} is not on that grid; pass "
            f"dequantize=False for continuous data."
        )


def ode_likelihood(
    model_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    process: Any,
    x: jnp.ndarray,
    key: jax.Array,
    *,
    prediction_type: str,
    divergence: str = "rademacher",
    autodiff: str = "forward",
    dequantize: bool = True,
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: int = 10,
    max_steps: int = 4096,
    t_min: float | None = None,
    t_max: float | None = None,
) -> OdeLikelihood:
    """Negative log-likelihood and bits/dim through the probability-flow ODE (module docstring).

    log p(x) by the instantaneous change of variables (Chen et al. 2018, Theorem 1; Song et al.
    2021, score_sde, Sec. 4.3) with Hutchinson's divergence estimate (Grathwohl et al. 2019,
    FFJORD, eq. 7) and uniform dequantization (Ho et al. 2019, Flow++, eq. 2).

    Args:
      model_fn: ``model_fn(x_in [B, ...], t_in [B]) -> prediction [B, ...]``.
      process: a schedule (integrated in its :class:`~diffjax.processes.ScheduleTime` view) or a
        continuous process; concrete.
      x: ``[B, ...]`` data: 8-bit images in [-1, 1] (k / 127.5 - 1) with ``dequantize``, any
        real data without.
      key: PRNG key, or ``[B]`` per-example keys (then example i depends on key i alone): split
        into the dequantization noise and the Hutchinson probes.
      prediction_type: what the model predicts.
      divergence: ``'rademacher' | 'gaussian'`` (Hutchinson's estimate, one Jacobian product
        per evaluation) or ``'exact'`` (D of them per evaluation).
      autodiff: ``'forward'`` (Jacobian-vector products) or ``'reverse'`` (vector-Jacobian
        products, for a network with a ``custom_vjp``); see the module docstring.
      dequantize: uniform dequantization and the 8-bit offset (True: x must lie on the 8-bit
        grid, checked when x is concrete), or continuous data (False).
      solver: as :func:`~diffjax.samplers.ode_sample`.
      rtol: as :func:`~diffjax.samplers.ode_sample`.
      atol: as :func:`~diffjax.samplers.ode_sample`.
      num_steps: as :func:`~diffjax.samplers.ode_sample`.
      max_steps: as :func:`~diffjax.samplers.ode_sample`.
      t_min: the solve's first time (default 1e-5; 1 / T for a schedule).
      t_max: its last time (default 1; (T - 1) / T at zero terminal SNR).

    Returns:
      :class:`OdeLikelihood`.

    Raises:
      ValueError / TypeError: a bad option or key, or (``dequantize``) an x off the 8-bit
        grid, before anything is traced; TypeError: a
        model_fn with a ``custom_vjp`` under ``autodiff='forward'``; OdeSolveError: the solve
        used up ``max_steps`` (called outside ``jax.jit``).
    """
    from diffjax.samplers.common import as_model_pytree, check_flag, check_key
    from diffjax.samplers.ode import check_ode_options, finish_solve

    if divergence not in DIVERGENCE_METHODS:
        raise ValueError(
            f"Unknown divergence {divergence!r}; expected one of {DIVERGENCE_METHODS}."
        )
    if autodiff not in AUTODIFF_MODES:
        raise ValueError(f"Unknown autodiff {autodiff!r}; expected one of {AUTODIFF_MODES}.")
    dequantize = check_flag(dequantize, "dequantize")
    if not hasattr(x, "shape") or len(x.shape) < 2:
        raise ValueError(f"x must be an array [B, ...] of rank >= 2, got {getattr(x, 'shape', x)}.")
    if t_min is None and not is_discrete(process):
        t_min = 1e-5
    continuous, t_max, t_min = check_ode_options(
        process, solver=solver, rtol=rtol, atol=atol, t_max=t_max, t_min=t_min,
        num_steps=num_steps, max_steps=max_steps, prediction_type=prediction_type,
    )  # fmt: skip
    check_key(key, x.shape[0])
    if dequantize:
        _check_eight_bit(x)
    try:
        return finish_solve(
            lambda: _ode_likelihood(
                as_model_pytree(model_fn), as_jit_argument(continuous), jnp.asarray(x), key,
                jnp.float32(rtol), jnp.float32(atol), prediction_type=prediction_type,
                divergence=divergence, autodiff=autodiff, dequantize=dequantize, solver=solver,
                num_steps=int(num_steps), max_steps=int(max_steps), t_max=t_max, t_min=t_min,
            ),
            solver=solver, rtol=rtol, atol=atol, max_steps=max_steps, t_end=t_max,
        )  # fmt: skip
    except TypeError as error:
        if autodiff == "forward" and "custom_vjp" in str(error):
            raise TypeError(
                "ode_likelihood(autodiff='forward') cannot differentiate this model_fn: it uses a "
                "jax.custom_vjp, which has no forward mode; pass autodiff='reverse'."
            ) from error
        raise
