"""Samplers of the reverse SDE: Euler-Maruyama and score_sde's predictor-corrector.

Song et al. 2021 ("Score-Based Generative Modeling through Stochastic Differential Equations",
arXiv:2011.13456) sample the reverse-time SDE of the forward process dx = f x dt + g dw,

    dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dw_bar,   score = -eps_hat / sigma   (eq. 6),

from t = 1 towards 0, with f and g^2 from :func:`~diffjax.processes.sde_coefficients` (VP:
f = -beta / 2, g^2 = beta; VE: f = 0, g^2 = d sigma^2 / dt):

* ``euler_maruyama``: x_next = x + (f x - g^2 score) dt + g sqrt(|dt|) z; N model calls.
* ``pc``: score_sde's predictor-corrector (Algorithms 2-3): at each grid point, ``corrector_steps``
  Langevin steps with signal-to-noise ratio ``snr`` (:func:`~diffjax.samplers.steps.
  langevin_step`), then a predictor step to the next point, ``'reverse_diffusion'`` (eq. 46,
  :func:`~diffjax.samplers.steps.reverse_diffusion_step`), ``'ancestral'`` (the posterior
  q(x_next | x, x0_hat), DDPM's step; score_sde's Appendix F), ``'euler_maruyama'`` or
  ``'none'`` (corrector only); N (1 + corrector_steps) model calls. score_sde's defaults: VE
  with reverse diffusion + 1 Langevin step at r = 0.16 (CIFAR-10), VP with r = 0.01.

The grid is uniform in t from ``t_max`` (default 1) to ``t_min`` (default 1e-3, score_sde's
sampling eps), then the last step returns the x0-prediction there (score_sde's "noise
removal"), as every grid of :mod:`diffjax.samplers.grids` ends. A discrete schedule is sampled
in its continuous-time view (:class:`~diffjax.processes.ScheduleTime`). Each sampler is one
``lax.scan`` through :func:`~diffjax.samplers.runner.run_plan`; the noise of step k is
``fold_in(key, k)`` and that of its j-th corrector step ``fold_in(key, N + k n + j)``, so with
per-sample keys a sample depends on its own key only.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from diffjax import predictions
from diffjax.processes import as_continuous, check_process
from diffjax.samplers.common import check_real, step_noise
from diffjax.samplers.grids import (
    ZERO_SNR_ALPHA,
    check_defined_start,
    make_grid,
    uniform_times,
)
from diffjax.samplers.runner import Plan, run_plan
from diffjax.samplers.steps import (
    ddim_noise_scale,
    ddim_step,
    langevin_step,
    reverse_diffusion_step,
    reverse_sde_step,
)

__all__ = [
    "CORRECTORS",
    "PREDICTORS",
    "euler_maruyama_plan",
    "euler_maruyama_sample",
    "pc_plan",
    "pc_sample",
]

PREDICTORS: tuple[str, ...] = ("reverse_diffusion", "ancestral", "euler_maruyama", "none")
CORRECTORS: tuple[str, ...] = ("langevin", "none")
DEFAULT_T_MIN = 1e-3


def _predict(predictor, x, x0, eps, step, noise):
    here, there = step.current.marginal, step.next.marginal
    c = step.coefficients
    if predictor == "reverse_diffusion":
        return reverse_diffusion_step(
            x, eps, here.alpha, here.sigma, there.alpha, there.sigma, noise
        )
    if predictor == "ancestral":
        scale = ddim_noise_scale(here.alpha, here.sigma, there.alpha, there.sigma, 1.0)
        return ddim_step(x0, eps, there.alpha, there.sigma, scale, noise)
    if predictor == "euler_maruyama":
        dt = step.next.time - step.current.time
        return reverse_sde_step(x, eps, here.sigma, c["drift"], c["diffusion_sq"], dt, noise)
    return x


def _sde_body(model, process, x, carry, step, noise_key, settings, options):
    static = settings.static
    corrector_steps = static["corrector_steps"]
    if static["corrector"] == "langevin":
        here = step.current.marginal
        for j in range(corrector_steps):
            _, _, eps = settings.denoise(model, step.current, x)
            index = static["num_points"] + step.noise_index * corrector_steps + j
            noise = step_noise(noise_key, index, settings.shape, settings.dtype,
                               settings.out_sharding)  # fmt: skip
            x = langevin_step(x, eps, here.sigma, options["snr"],
                              step.coefficients["alpha_ratio_sq"], noise)  # fmt: skip
    _, x0, eps = settings.denoise(model, step.current, x)

    def predict(_):
        return _predict(static["predictor"], x, x0, eps, step, settings.noise(noise_key, step))

    x_next = jax.lax.cond(step.next.marginal.sigma > 0, predict, lambda _: x0, None)
    return x_next, carry, x0


def _sde_plan(
    process: Any, *, predictor: str, corrector: str, corrector_steps: int, snr: float,
    num_steps: int, t_max: float, t_min: float, prediction_type: str,
) -> Plan:  # fmt: skip
    check_process(process)
    if predictor not in PREDICTORS:
        raise ValueError(f"Unknown predictor {predictor!r}; expected one of {PREDICTORS}.")
    if corrector not in CORRECTORS:
        raise ValueError(f"Unknown corrector {corrector!r}; expected one of {CORRECTORS}.")
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, int):
        raise TypeError(f"corrector_steps must be an int >= 0, got {corrector_steps!r}.")
    if corrector_steps < 0 or (corrector == "langevin" and corrector_steps < 1):
        raise ValueError(
            f"corrector_steps must be >= 1 with the Langevin corrector (0 with 'none'), got "
            f"{corrector_steps}."
        )
    snr = check_real(snr, "snr", 0.0, 10.0, " (score_sde: 0.16 for VE, 0.01 for VP)")
    predictions.check_prediction_supported(prediction_type, process)
    continuous = as_continuous(process)
    t_max = check_real(t_max, "t_max", 1e-6, 1.0)
    t_min = check_real(t_min, "t_min", 1e-9, t_max)
    if not t_min < t_max:
        raise ValueError(f"need t_min < t_max, got t_min={t_min}, t_max={t_max}.")
    times = uniform_times(num_steps, t_max=t_max, t_min=t_min)
    grid = make_grid(continuous, times)
    check_defined_start(grid, prediction_type, continuous)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha, sigma = continuous.alpha_sigma(times, np)
        d_alpha, d_sigma = continuous.derivatives(times, np)
        drift = d_alpha / alpha
        diffusion_sq = 2.0 * sigma * d_sigma - 2.0 * drift * sigma**2
    # alpha below ZERO_SNR_ALPHA (cos(pi / 2) = 6e-17 for the cosine process at t = 1) is zero SNR.
    if (
        not (np.all(np.isfinite(drift)) and np.all(np.isfinite(diffusion_sq)))
        or np.min(alpha) < ZERO_SNR_ALPHA
    ):
        raise ValueError(
            f"the SDE of {continuous.name!r} has an infinite drift f = alpha' / alpha at t = "
            f"{float(times[0]):.4g} (alpha = {float(np.min(alpha)):.3g}); start below it, e.g. "
            f"t_max=0.999."
        )
    alpha_next = np.asarray(grid.alpha[1:], np.float64)
    return Plan(
        body=_sde_body,
        grid=grid,
        coefficients=dict(
            drift=drift, diffusion_sq=diffusion_sq, alpha_ratio_sq=(alpha / alpha_next) ** 2
        ),
        prediction_type=prediction_type,
        variance_preserving=continuous.variance_preserving,
        start_scale=float(grid.sigma[0]),
        static=tuple(
            sorted(
                dict(
                    predictor=predictor,
                    corrector=corrector,
                    corrector_steps=corrector_steps if corrector == "langevin" else 0,
                    num_points=int(times.shape[0]),
                ).items()
            )
        ),  # fmt: skip
        options=dict(snr=snr),
    )


def euler_maruyama_plan(
    process: Any, *, num_steps: int = 1000, t_max: float = 1.0, t_min: float = DEFAULT_T_MIN,
    prediction_type: str,
) -> Plan:  # fmt: skip
    """Checks Euler-Maruyama's options and builds its grid (see :func:`euler_maruyama_sample`):
    the reverse SDE of Song et al. 2021, score_sde, eq. 6, on a uniform grid in t."""
    return _sde_plan(
        process, predictor="euler_maruyama", corrector="none", corrector_steps=0, snr=0.0,
        num_steps=num_steps, t_max=t_max, t_min=t_min, prediction_type=prediction_type,
    )  # fmt: skip


def pc_plan(
    process: Any, *, num_steps: int = 1000, predictor: str = "reverse_diffusion",
    corrector: str = "langevin", corrector_steps: int = 1, snr: float = 0.16,
    t_max: float = 1.0, t_min: float = DEFAULT_T_MIN, prediction_type: str,
) -> Plan:  # fmt: skip
    """Checks the predictor-corrector's options and builds its grid (see :func:`pc_sample`):
    Song et al. 2021, score_sde, Sec. 4.2 and Algorithms 2-3."""
    return _sde_plan(
        process, predictor=predictor, corrector=corrector, corrector_steps=corrector_steps,
        snr=snr, num_steps=num_steps, t_max=t_max, t_min=t_min, prediction_type=prediction_type,
    )  # fmt: skip


_COMMON_DOC = """
      model_fn: ``model_fn(x_in [B, ...], t_in [B]) -> prediction [B, ...]``.
      process: a schedule or continuous process (concrete).
      key: PRNG key, or ``[B]`` per-sample keys.
      shape: ``(B, ...)`` of the samples.
      num_steps: N grid points from t_max to t_min (score_sde uses 1000).
      t_max: the first time (below 1 where alpha(1) = 0: the drift f = alpha' / alpha is
        infinite there).
      t_min: the last model call, then the x0-prediction is returned (default 1e-3).
      prediction_type: what the model predicts.
      clip_x0: clip each x0-prediction to [-1, 1].
      x_T: optional start ``[B, ...]`` (default sigma(t_max) N(0, I)).
      return_trajectory: also return a :class:`~diffjax.samplers.Trajectory`.
      dtype: dtype of the state.
      out_sharding: optional sharding of ``[B, ...]``.
      guide: ``guide(x_t, t, alpha, sigma, x0_hat, eps_hat) -> (x0_hat, eps_hat)`` after each
        network call (:mod:`diffjax.samplers.guidance`), before ``clip_x0``; None for none.

    Returns:
      Samples ``[B, ...]``, or ``(samples, trajectory)``."""


def _run(plan: Plan, process, model_fn, key, shape, clip_x0, x_T, return_trajectory, dtype,
         out_sharding, guide):  # fmt: skip
    return run_plan(
        plan, model_fn, as_continuous(process), key, shape, clip_x0=clip_x0, x_T=x_T,
        return_trajectory=return_trajectory, dtype=dtype, out_sharding=out_sharding,
        guide=guide,
    )  # fmt: skip


def euler_maruyama_sample(
    model_fn: Callable, process: Any, key: jax.Array, shape: tuple[int, ...], *,
    num_steps: int = 1000, t_max: float = 1.0, t_min: float = DEFAULT_T_MIN,
    prediction_type: str, clip_x0: bool = False, x_T: jnp.ndarray | None = None,
    return_trajectory: bool = False, dtype: DTypeLike = jnp.float32,
    out_sharding: jax.sharding.Sharding | None = None, guide: Callable | None = None,
):  # fmt: skip
    """Euler-Maruyama on the reverse SDE (Song et al. 2021, score_sde, eq. 6); N model calls
    (the arguments are those of :func:`pc_sample` less its predictor and corrector options)."""
    plan = euler_maruyama_plan(
        process, num_steps=num_steps, t_max=t_max, t_min=t_min, prediction_type=prediction_type
    )
    return _run(plan, process, model_fn, key, shape, clip_x0, x_T, return_trajectory, dtype,
                out_sharding, guide)  # fmt: skip


euler_maruyama_sample.__doc__ = (
    """Euler-Maruyama on the reverse SDE (Song et al. 2021, score_sde, eq. 6;
    :mod:`diffjax.samplers.sde`); N model calls.

    Args:"""
    + _COMMON_DOC
)


def pc_sample(
    model_fn: Callable, process: Any, key: jax.Array, shape: tuple[int, ...], *,
    num_steps: int = 1000, predictor: str = "reverse_diffusion", corrector: str = "langevin",
    corrector_steps: int = 1, snr: float = 0.16, t_max: float = 1.0,
    t_min: float = DEFAULT_T_MIN, prediction_type: str, clip_x0: bool = False,
    x_T: jnp.ndarray | None = None, return_trajectory: bool = False,
    dtype: DTypeLike = jnp.float32, out_sharding: jax.sharding.Sharding | None = None,
    guide: Callable | None = None,
):  # fmt: skip
    """score_sde's predictor-corrector sampler (Song et al. 2021, score_sde, Sec. 4.2 and
    Algorithms 2-3); N (1 + corrector_steps) model calls (:mod:`diffjax.samplers.sde`)."""
    plan = pc_plan(
        process, num_steps=num_steps, predictor=predictor, corrector=corrector,
        corrector_steps=corrector_steps, snr=snr, t_max=t_max, t_min=t_min,
        prediction_type=prediction_type,
    )  # fmt: skip
    return _run(plan, process, model_fn, key, shape, clip_x0, x_T, return_trajectory, dtype,
                out_sharding, guide)  # fmt: skip


pc_sample.__doc__ = (
    """score_sde's predictor-corrector sampler (Song et al. 2021, score_sde, Sec. 4.2 and
    Algorithms 2-3; :mod:`diffjax.samplers.sde`); N (1 + corrector_steps) model calls.

    Args:
      predictor: ``'reverse_diffusion' | 'ancestral' | 'euler_maruyama' | 'none'``.
      corrector: ``'langevin' | 'none'``.
      corrector_steps: Langevin steps per grid point (>= 1 with 'langevin').
      snr: the Langevin signal-to-noise ratio r (score_sde: 0.16 for VE, 0.01 for VP)."""
    + _COMMON_DOC
)
