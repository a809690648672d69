"""DDPM ancestral sampling (Ho et al. 2020, arXiv:2006.11239, Algorithm 2), over all T steps or
a respaced subset of them (Nichol & Dhariwal 2021, arXiv:2102.09672, Sec. 4).

Each step draws x_{t-1} ~ p(x_{t-1} | x_t) = N(mu~_t(x_t, x0_hat), v_t I): the posterior mean
at the model's x0-prediction and the fixed-small (beta~_t) or fixed-large (beta_t) variance of
:func:`diffjax.p_mean_variance`; no noise is added at the last step, so the sample is the
posterior mean there, i.e. the last x0-prediction.

A subset t_S > ... > t_1 of the timesteps is a shorter Markov chain with
abar'_i = abar_{t_i}: :func:`respace_schedule` builds its betas,
beta'_i = 1 - abar'_i / abar'_{i-1},
and the chain's constants are read at its index i while the model is called with the original
t_i. DDPM is the discrete chain's sampler; on a continuous process, DDIM with eta = 1 is the
same ancestral step (:func:`diffjax.samplers.ddim_sample`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from diffjax import predictions
from diffjax.diffusion import VARIANCE_TYPES, learned_range_log_variance, split_learned_variance
from diffjax.processes import check_process, is_discrete
from diffjax.samplers.common import denoise
from diffjax.samplers.grids import Grid, check_defined_start
from diffjax.samplers.runner import Plan, run_plan
from diffjax.samplers.timesteps import check_num_steps, concrete_schedule_array, spaced_timesteps
from diffjax.schedules import DiffusionSchedule, make_schedule, schedule_constants

__all__ = ["GUIDANCE_FORMS", "ddpm_plan", "ddpm_sample", "respace_schedule"]

GUIDANCE_FORMS = ("score", "mean")
"""How a guide enters DDPM's step: through (x0_hat, eps_hat), or as a shift of the mean."""


def _respaced_betas(schedule: DiffusionSchedule, timesteps: np.ndarray) -> np.ndarray:
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
    return 1.0 - subset / np.concatenate([[1.0], subset[:-1]])


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
    return make_schedule(_respaced_betas(schedule, timesteps))


def _step_variance(coefficients, prediction, x, learned_variance):
    """The step's variance: the chain's fixed one, or Improved DDPM's learned interpolation
    between log beta~ and log beta of the chain, from the output's variance values."""
    if not learned_variance:
        return coefficients["variance"]
    _, values = split_learned_variance(prediction, x.shape)
    return jnp.exp(
        learned_range_log_variance(values, coefficients["min_log"], coefficients["max_log"])
    )


def _mean_guided_step(model, step, x, settings):
    """guided-diffusion's ``condition_mean``: the posterior mean of the unguided x0_hat, shifted
    by the variance times the guide's score change, -(eps_guided - eps_hat) / sigma."""
    point = step.current
    m = point.marginal
    learned_variance = settings.static["learned_variance"]
    prediction, _, guided_eps = denoise(
        model.model, settings.prediction_type, m, point.model_time, x, False, time=point.time,
        guide=model.guide, learned_variance=learned_variance,
    )  # fmt: skip
    mean_prediction = (
        split_learned_variance(prediction, x.shape)[0] if learned_variance else prediction
    )
    x0, eps = predictions.to_x0_eps(settings.prediction_type, mean_prediction, x, m)
    if settings.clip_x0:
        x0 = jnp.clip(x0, -1.0, 1.0)
    coefficients = step.coefficients
    variance = _step_variance(coefficients, prediction, x, learned_variance)
    score_change = (eps - guided_eps) / m.sigma
    mean = coefficients["coef_x0"] * x0 + coefficients["coef_x"] * x
    return mean + variance * score_change, x0, variance


def _ddpm_body(model, process, x, carry, step, noise_key, settings, options):
    coefficients = step.coefficients
    if settings.static["guidance_form"] == "mean" and model.guide is not None:
        mean, x0, variance = _mean_guided_step(model, step, x, settings)
    else:
        prediction, x0, _ = settings.denoise(model, step.current, x)
        mean = coefficients["coef_x0"] * x0 + coefficients["coef_x"] * x
        variance = _step_variance(coefficients, prediction, x, settings.static["learned_variance"])
    noise = settings.noise(noise_key, step)
    # Algorithm 2, line 4: z = 0 at the last step.
    noise_scale = jnp.where(step.next.marginal.sigma > 0, jnp.sqrt(variance), 0.0)
    return mean + noise_scale * noise, carry, x0


def ddpm_plan(
    process: Any,
    *,
    prediction_type: str,
    variance: str = "small",
    num_steps: int | None = None,
    spacing: str = "linspace",
    guidance_form: str = "score",
) -> Plan:
    """Checks DDPM's options and builds its chain (see :func:`ddpm_sample`): Ho et al. 2020,
    Algorithm 2, over all T steps or a respaced subset (Nichol & Dhariwal 2021, eq. 19)."""
    check_process(process)
    if not is_discrete(process):
        raise ValueError(
            f"ddpm is the discrete chain's ancestral sampler; for the continuous process "
            f"{process.name!r} use 'ddim' with eta=1 (the same ancestral step)."
        )
    predictions.check_prediction_supported(prediction_type, process)
    if variance not in VARIANCE_TYPES:
        raise ValueError(f"Unknown variance {variance!r}; expected one of {VARIANCE_TYPES}.")
    if guidance_form not in GUIDANCE_FORMS:
        raise ValueError(f"guidance_form must be one of {GUIDANCE_FORMS}, got {guidance_form!r}.")
    num_timesteps = process.num_timesteps
    num_steps = check_num_steps(num_timesteps if num_steps is None else num_steps, num_timesteps)
    timesteps = spaced_timesteps(num_timesteps, num_steps, spacing)
    # The chain's constants as float32, exactly the values a DiffusionSchedule of it holds.
    if num_steps == num_timesteps:
        chain = {
            name: concrete_schedule_array(getattr(process, name), "ddpm_sample")
            for name in DiffusionSchedule._fields
        }
    else:
        constants = schedule_constants(_respaced_betas(process, timesteps))
        chain = {name: np.float64(np.float32(value)) for name, value in constants.items()}
    chain_index = np.arange(num_steps - 1, -1, -1)
    if variance != "large":
        variances = chain["posterior_variance"]
    elif num_steps == 1:
        variances = chain["betas"]
    else:
        # beta_t, with beta~_1 at t = 0 so the log stays finite (Ho et al. 2020, Sec. 3.2).
        variances = np.concatenate([chain["posterior_variance"][1:2], chain["betas"][1:]])
    # The chain's own marginal (its alpha at index i is abar_{t_i} through float64 respacing);
    # the model is called with the original t_i, and the noise keyed by it.
    grid = Grid(
        time=np.concatenate([timesteps, [0]]).astype(np.int32),
        model_time=np.concatenate([timesteps, [0]]).astype(np.int32),
        alpha=np.concatenate([chain["sqrt_alphas_cumprod"][chain_index], [1.0]]).astype(np.float32),
        sigma=np.concatenate([chain["sqrt_one_minus_alphas_cumprod"][chain_index], [0.0]]).astype(
            np.float32
        ),
        d_alpha=None,
        d_sigma=None,
        noise_index=timesteps.astype(np.int32),
    )
    check_defined_start(grid, prediction_type, process)
    return Plan(
        body=_ddpm_body,
        grid=grid,
        coefficients=dict(
            coef_x0=chain["posterior_mean_coef1"][chain_index],
            coef_x=chain["posterior_mean_coef2"][chain_index],
            variance=variances[chain_index],
            # Improved DDPM's bounds of the learned log-variance, of the chain's own betas.
            min_log=chain["posterior_log_variance_clipped"][chain_index],
            max_log=np.log(chain["betas"])[chain_index],
        ),
        prediction_type=prediction_type,
        variance_preserving=True,
        static=(
            ("guidance_form", guidance_form),
            ("learned_variance", variance == "learned_range"),
        ),
    )


def ddpm_sample(
    model_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    schedule: DiffusionSchedule,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    prediction_type: str,
    variance: str = "small",
    clip_x0: bool = False,
    num_steps: int | None = None,
    spacing: str = "linspace",
    x_T: jnp.ndarray | None = None,
    return_trajectory: bool = False,
    dtype: DTypeLike = jnp.float32,
    out_sharding: jax.sharding.Sharding | None = None,
    guide: Callable | None = None,
    guidance_form: str = "score",
):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) as one ``lax.scan``.

    Args:
      model_fn: ``model_fn(x_t [B, ...], t int32 [B]) -> prediction [B, ...]`` of type
        ``prediction_type`` (a :class:`jax.tree_util.Partial` over the params avoids
        recompiling when they change).
      schedule: the discrete schedule the model was trained with (T steps).
      key: PRNG key (or ``[B]`` per-sample keys); split into the key of x_T and the key of the
        per-step noise.
      shape: ``(B, ...)`` of the samples.
      prediction_type: ``'eps' | 'x0' | 'v' | 'edm'``.
      variance: ``'small'`` (posterior beta~_t) or ``'large'`` (beta_t): Ho et al. Sec. 3.2;
        ``'learned_range'``: ``model_fn`` returns ``[B, ..., 2 C]``, the prediction and then
        variance values v, and the step's variance is Improved DDPM's
        exp(v' log beta_t + (1 - v') log beta~_t), v' = (v + 1) / 2, of the (respaced) chain
        (Nichol & Dhariwal 2021, eq. 15; :func:`diffjax.diffusion.learned_range_log_variance`).
        A guide changes the prediction's half only; classifier-free guidance of such a network
        guides the prediction channels and keeps the conditional variance
        (:func:`diffjax.models.make_model_fn`).
      clip_x0: clip the x0-prediction to [-1, 1] before forming the posterior mean.
      num_steps: None for all T steps, else a respaced chain of S <= T steps
        (:func:`respace_schedule`, needs a concrete schedule).
      spacing: how the S timesteps are picked (:func:`spaced_timesteps`); ``'linspace'``
        keeps both t = T-1 and t = 0.
      x_T: optional start ``[B, ...]``; drawn from N(0, I) with ``key`` when None.
      return_trajectory: also return a :class:`Trajectory`.
      dtype: dtype of the state.
      out_sharding: optional sharding of ``[B, ...]``; the samples do not depend on it.
      guide: ``guide(x_t, t, alpha, sigma, x0_hat, eps_hat) -> (x0_hat, eps_hat)`` after each
        network call (:mod:`diffjax.samplers.guidance`), before ``clip_x0``; None for none.
      guidance_form: how the guide enters the step (:data:`GUIDANCE_FORMS`). ``'score'``:
        through its (x0_hat, eps_hat), like every sampler (guided-diffusion's
        ``condition_score``). ``'mean'``: guided-diffusion's ``condition_mean`` (Dhariwal &
        Nichol 2021, Algorithm 1): the posterior mean of the unguided x0_hat (clipped with
        ``clip_x0``) plus the step's variance v_t times the guide's score change
        -(eps_guided - eps_hat) / sigma_t, i.e. mu + v_t s grad log p for gradient guidance.
        The score form moves the mean by s beta_t / sqrt(alpha_t) grad log p instead: the two
        differ by the factor beta_t / (sqrt(alpha_t) v_t) (1 / sqrt(alpha_t) <= 1.01 for
        ``variance='large'`` on DDPM's linear schedule; large at the first steps for
        ``'small'``, where beta~_t << beta_t) and in clipping the guided or unguided x0_hat.

    Returns:
      Samples ``[B, ...]``, or ``(samples, trajectory)``.

    Raises:
      ValueError / TypeError: for a bad argument, before anything is compiled.
    """
    plan = ddpm_plan(
        schedule, prediction_type=prediction_type, variance=variance, num_steps=num_steps,
        spacing=spacing, guidance_form=guidance_form,
    )  # fmt: skip
    return run_plan(
        plan, model_fn, schedule, key, shape, clip_x0=clip_x0, x_T=x_T,
        return_trajectory=return_trajectory, dtype=dtype, out_sharding=out_sharding,
        guide=guide,
    )  # fmt: skip
