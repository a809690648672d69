"""Single sampler steps, pure functions of the state, the denoiser's outputs and the marginal.

Every sampler's ``lax.scan`` body calls one of these; distillation, guidance experiments and
custom samplers can call them directly. Notation: a step goes from a point with marginal
(alpha, sigma) to one with (alpha_next, sigma_next); x0_hat and eps_hat are the denoiser's
estimates at the current point (:func:`diffjax.samplers.common.denoise`), so
x = alpha x0_hat + sigma eps_hat. Scalars broadcast against ``[B, ...]`` states.

In the coordinates y = x / alpha, s = sigma / alpha the probability-flow ODE of every process
is dy/ds = eps_hat (Song et al. 2021, DDIM eq. 14; Karras et al. 2022, eq. 4 with s(t) = 1/alpha):
:func:`euler_step` is its Euler step (= DDIM with eta = 0) and :func:`heun_step` EDM's
second-order correction. The flow steps integrate dx/dt = v in the process's own time. The SDE
steps (Song et al. 2021, score_sde) use the score -eps_hat / sigma of the reverse SDE
dx = [f x - g^2 score] dt + g dw (eq. 6), f and g^2 from :func:`~diffjax.processes.
sde_coefficients`.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

__all__ = [
    "ddim_noise_scale",
    "ddim_step",
    "dpm_solver_2m_step",
    "euler_step",
    "flow_euler_step",
    "flow_heun_step",
    "heun_step",
    "langevin_step",
    "reverse_diffusion_step",
    "reverse_sde_step",
]


def ddim_noise_scale(
    alpha: Any, sigma: Any, alpha_next: Any, sigma_next: Any, eta: Any, xp: Any = jnp
) -> Any:
    """DDIM's sigma_ts for any process (Song et al. 2021, eq. 16, with abar = alpha^2):

        sigma_ts = eta * sigma_next * sqrt(1 - (alpha sigma_next / (alpha_next sigma))^2),

    eta times the standard deviation of q(x_next | x_t, x_0); eta = 1 is DDPM's ancestral step
    with the posterior ("fixed-small") variance. Works on NumPy (``xp=np``) or JAX arrays.
    """
    ratio = (alpha * sigma_next) / (alpha_next * sigma)
    return eta * sigma_next * xp.sqrt(xp.maximum(1.0 - ratio * ratio, 0.0))


def ddim_step(
    x0_hat: jnp.ndarray,
    eps_hat: jnp.ndarray,
    alpha_next: Any,
    sigma_next: Any,
    noise_scale: Any = 0.0,
    noise: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """One DDIM step (Song et al. 2021, eq. 12):

        x_next = alpha_next x0_hat + sqrt(sigma_next^2 - c^2) eps_hat + c z,

    with c = ``noise_scale`` (:func:`ddim_noise_scale`) and z = ``noise`` (ignored for c = 0).
    Onto the data (alpha_next = 1, sigma_next = 0) it returns x0_hat.
    """
    # Rounding can make sigma_next^2 - c^2 a hair negative when eta = 1.
    direction = jnp.sqrt(jnp.maximum(jnp.square(sigma_next) - jnp.square(noise_scale), 0.0))
    x_next = alpha_next * x0_hat + jnp.asarray(direction, x0_hat.dtype) * eps_hat
    if noise is not None:
        x_next = x_next + jnp.asarray(noise_scale, x0_hat.dtype) * noise
    return x_next


def euler_step(
    x: jnp.ndarray, x0_hat: jnp.ndarray, alpha: Any, sigma: Any, alpha_next: Any, sigma_next: Any
) -> jnp.ndarray:
    """The Euler step of dy/ds = eps_hat (Karras et al. 2022, Algorithm 1, lines 4-5, for any
    process): x_next = alpha_next x0_hat + sigma_next eps_hat with eps_hat = (x - alpha x0_hat)
    / sigma, i.e. :func:`ddim_step` with eta = 0."""
    return ddim_step(x0_hat, (x - alpha * x0_hat) / sigma, alpha_next, sigma_next)


def heun_step(
    x: jnp.ndarray,
    eps_hat: jnp.ndarray,
    eps_hat_next: jnp.ndarray,
    alpha: Any,
    sigma: Any,
    alpha_next: Any,
    sigma_next: Any,
) -> jnp.ndarray:
    """EDM's second-order (Heun) step (Karras et al. 2022, Algorithm 1, lines 6-8):

        y_next = y + (s_next - s) (eps_hat + eps_hat_next) / 2,  y = x / alpha, s = sigma / alpha,

    where ``eps_hat_next`` is the denoiser's eps at the Euler prediction
    (:func:`euler_step`) evaluated at the next point. Returns x_next = alpha_next y_next.
    """
    slope = 0.5 * (eps_hat + eps_hat_next)
    return (alpha_next / alpha) * x + (sigma_next - alpha_next * sigma / alpha) * slope


def dpm_solver_2m_step(
    x: jnp.ndarray,
    x0_hat: jnp.ndarray,
    previous_x0_hat: jnp.ndarray,
    state_scale: Any,
    data_scale: Any,
    correction: Any,
) -> jnp.ndarray:
    """One DPM-Solver++(2M) step (Lu et al. 2022, Algorithm 2):

        x_next = (sigma_next / sigma) x + alpha_next (1 - e^{-h}) D,
        D = (1 + 1 / (2 r)) x0_hat - 1 / (2 r) previous_x0_hat,

    with the coefficients of :func:`~diffjax.samplers.dpm_solver_coefficients` (computed in
    float64 from alpha and sigma of the grid): ``state_scale`` = sigma_next / sigma,
    ``data_scale`` = alpha_next (1 - e^{-h}) and ``correction`` = 1 / (2 r) (0: first order).
    """
    data = (1.0 + correction) * x0_hat - correction * previous_x0_hat
    return state_scale * x + data_scale * data


def flow_euler_step(x: jnp.ndarray, velocity: jnp.ndarray, t: Any, t_next: Any) -> jnp.ndarray:
    """x_next = x + (t_next - t) v: the Euler step of dx/dt = v (rectified flow's sampler,
    Liu et al. 2022, eq. 1)."""
    return x + jnp.asarray(t_next - t, x.dtype) * velocity


def flow_heun_step(
    x: jnp.ndarray, velocity: jnp.ndarray, velocity_next: jnp.ndarray, t: Any, t_next: Any
) -> jnp.ndarray:
    """Heun's step of dx/dt = v: x_next = x + (t_next - t) (v + v_next) / 2, with v_next the
    velocity at the Euler prediction (:func:`flow_euler_step`) at t_next (EDM's second-order
    correction, Karras et al. 2022, Algorithm 1, lines 6-8, in the process's time)."""
    return x + jnp.asarray(t_next - t, x.dtype) * 0.5 * (velocity + velocity_next)


def reverse_sde_step(
    x: jnp.ndarray, eps_hat: jnp.ndarray, sigma: Any, drift: Any, diffusion_sq: Any, dt: Any,
    noise: jnp.ndarray,
) -> jnp.ndarray:  # fmt: skip
    """One Euler-Maruyama step of the reverse SDE (Song et al. 2021, score_sde, eq. 6),
    dt = t_next - t < 0:

    x_next = x + (f x + g^2 eps_hat / sigma) dt + g sqrt(-dt) z.
    """
    mean = x + (drift * x + diffusion_sq * eps_hat / sigma) * dt
    return mean + jnp.sqrt(diffusion_sq * -dt) * noise


def reverse_diffusion_step(
    x: jnp.ndarray, eps_hat: jnp.ndarray, alpha: Any, sigma: Any, alpha_next: Any,
    sigma_next: Any, noise: jnp.ndarray,
) -> jnp.ndarray:  # fmt: skip
    """score_sde's reverse-diffusion predictor (Song et al. 2021, eq. 46) for any process.

    The forward step from the next point to this one is x = a x_next + sqrt(v) z with
    a = alpha / alpha_next and v = sigma^2 - a^2 sigma_next^2; reversing its discretisation,

        x_next = (2 - a) x + v score + sqrt(v) z,    score = -eps_hat / sigma,

    which is score_sde's step for VE (a = 1, v = sigma_i^2 - sigma_{i-1}^2) and for VP
    (a = sqrt(1 - beta_i), v = beta_i) with the exact marginals in place of its
    discretised betas.
    """
    ratio = alpha / alpha_next
    variance = jnp.maximum(sigma**2 - (ratio * sigma_next) ** 2, 0.0)
    return (2.0 - ratio) * x - variance * eps_hat / sigma + jnp.sqrt(variance) * noise


def langevin_step(
    x: jnp.ndarray, eps_hat: jnp.ndarray, sigma: Any, snr: Any, alpha_ratio_sq: Any,
    noise: jnp.ndarray,
) -> jnp.ndarray:  # fmt: skip
    """One Langevin corrector step (Song et al. 2021, score_sde, Algorithms 4 and 5) with
    score -eps_hat / sigma:

        step = 2 a (r sigma)^2,   x <- x + step score + sqrt(2 step) z,

    r the signal-to-noise ratio ``snr`` and a = (alpha / alpha_next)^2 (1 - beta_i for VP, 1
    for VE). score_sde's step is 2 a (r ||z|| / ||score||)^2 with both norms averaged over the
    batch; with ||z||^2 ~ D and ||score||^2 = ||eps_hat||^2 / sigma^2 ~ D / sigma^2 it is this
    one. A step computed per sample from its own norms would be biased (the chain x + h(x)
    score + sqrt(2 h(x)) z leaves p / h invariant, not p, and a step growing with ||z|| scales
    the noise it is drawn with), and one from batch means makes a sample depend on its batch;
    2 a (r sigma)^2 is neither.
    """
    step = 2.0 * alpha_ratio_sq * jnp.square(snr * sigma)
    return x - step * eps_hat / sigma + jnp.sqrt(2.0 * step) * noise
