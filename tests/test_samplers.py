"""Samplers checked with exact denoisers (tests/gaussian_oracle.py), no training needed.

Three kinds of reference, from strongest to weakest:
* Gaussian data: every sampler is an affine map of x_T plus independent noise, whose law
  :func:`gaussian_sampler_law` computes in float64 from the papers' update rules. Deterministic
  samplers must reproduce it sample by sample; stochastic ones in distribution, with a chi^2
  statistic whose null law is known (:func:`gaussian_moment_chi2`, 2D dof).
* The exact probability-flow ODE for Gaussian data (:func:`gaussian_flow_map`): the error of a
  deterministic sampler per sample, free of sampling noise.
* Gaussian mixtures: per-mode weights, widths and means against their chi^2 floors
  (:func:`mode_statistics`); the tests use the 0.999 quantile of each null law.
"""

import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from scipy import stats

import diffjax as dj
from diffjax import samplers
from diffjax.errors import OdeSolveError

sys.path.insert(0, str(Path(__file__).parent))
import gaussian_oracle as oracle  # noqa: E402

T = 1000
SCHEDULES = {name: dj.get_schedule(name, T) for name in ("linear", "cosine")}
ZTSNR = dj.get_schedule("linear", T, zero_terminal_snr=True)
DIM = 32
# Anisotropic: from sharp (0.05) to unit width, where few-step samplers differ most.
GAUSS = oracle.gaussian(np.linspace(-0.5, 0.5, DIM), np.geomspace(0.05, 1.0, DIM))
# Widths where the T-step chains' own discretisation bias (computed below) is under the floor.
GAUSS_WIDE = oracle.gaussian(np.linspace(-0.5, 0.5, DIM), np.geomspace(0.3, 1.0, DIM))
NARROW_RINGS = {dim: oracle.ring_mixture(8, 1.0, 0.05, dim) for dim in (2, DIM)}
QUANTILE = 0.999
# The samplers that run on a discrete schedule, with the model calls each traces per compile
# (Heun evaluates the model twice in its step); the flow samplers need a continuous process
# (tests/test_continuous_samplers.py).
DISCRETE_SAMPLERS = {"ddpm": 1, "ddim": 1, "dpm_solver": 1, "euler": 1, "heun": 2}


def chi2_limit(dof: int) -> float:
    return float(stats.chi2.ppf(QUANTILE, dof))


def solver_grid(schedule, num_steps, spacing="logsnr"):
    return samplers.solver_timesteps(
        np.asarray(schedule.sqrt_alphas_cumprod, np.float64),
        np.asarray(schedule.sqrt_one_minus_alphas_cumprod, np.float64),
        num_steps,
        spacing,
    )


# ----------------------------------------------------------------------------- timestep grids


def test_spaced_timesteps_follow_the_published_conventions():
    np.testing.assert_array_equal(
        samplers.spaced_timesteps(T, 10, "leading"), np.arange(9, -1, -1) * 100
    )
    np.testing.assert_array_equal(
        samplers.spaced_timesteps(T, 10, "trailing"), np.arange(999, 0, -100)
    )
    np.testing.assert_array_equal(
        samplers.spaced_timesteps(T, 10, "linspace"), np.round(np.linspace(999, 0, 10))
    )
    for spacing in samplers.SPACINGS:
        np.testing.assert_array_equal(samplers.spaced_timesteps(T, T, spacing), np.arange(T)[::-1])


@pytest.mark.parametrize("schedule", [SCHEDULES["linear"], SCHEDULES["cosine"], ZTSNR])
@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
def test_solver_grid_runs_from_t_max_to_zero_on_distinct_steps(schedule, spacing):
    lambdas = 0.5 * np.asarray(schedule.log_snr, np.float64)
    for num_steps in (2, 10, 20, 100, 999, T):
        grid = solver_grid(schedule, num_steps, spacing)
        assert grid.dtype == np.int32 and grid.shape == (num_steps,)
        assert grid[0] == T - 1 and grid[-1] == 0
        assert np.all(np.diff(grid) < 0)
    grid = solver_grid(schedule, 10, spacing)
    assert lambdas[grid[1]] > -3.0  # no model call below log-SNR -6 except at t = T-1
    if spacing == "logsnr":
        # Interior points sit at equal lambda spacing, up to the rounding to integer t.
        steps = np.diff(lambdas[grid[1:]])
        assert np.ptp(steps) < 0.15 * np.mean(steps), steps


def test_dpm_solver_coefficients_are_the_papers_exponential_integrator():
    schedule = SCHEDULES["linear"]
    alpha = np.asarray(schedule.sqrt_alphas_cumprod, np.float64)
    sigma = np.asarray(schedule.sqrt_one_minus_alphas_cumprod, np.float64)
    grid = solver_grid(schedule, 10)
    state_scale, data_scale, correction = samplers.dpm_solver_coefficients(alpha, sigma, grid)
    lam = np.log(alpha[grid] / sigma[grid])
    h = np.diff(lam)
    np.testing.assert_allclose(state_scale[:-1], sigma[grid[1:]] / sigma[grid[:-1]], rtol=1e-12)
    np.testing.assert_allclose(data_scale[:-1], -alpha[grid[1:]] * np.expm1(-h), rtol=1e-9)
    np.testing.assert_allclose(correction[1:-1], 1.0 / (2.0 * h[:-1] / h[1:]), rtol=1e-12)
    assert correction[0] == 0.0 and correction[-1] == 0.0
    assert (state_scale[-1], data_scale[-1]) == (0.0, 1.0)  # the last step returns x0_hat
    # Zero terminal SNR: lambda = -inf at T-1, yet every coefficient is finite.
    alpha_z = np.asarray(ZTSNR.sqrt_alphas_cumprod, np.float64)
    sigma_z = np.asarray(ZTSNR.sqrt_one_minus_alphas_cumprod, np.float64)
    coefficients = samplers.dpm_solver_coefficients(alpha_z, sigma_z, solver_grid(ZTSNR, 10))
    assert all(np.all(np.isfinite(c)) for c in coefficients) and coefficients[2][1] == 0.0


def test_respacing_keeps_the_marginals_of_the_kept_timesteps():
    schedule = SCHEDULES["cosine"]
    subset = samplers.spaced_timesteps(T, 50, "linspace")
    respaced = samplers.respace_schedule(schedule, subset)
    np.testing.assert_allclose(
        respaced.alphas_cumprod, np.asarray(schedule.alphas_cumprod)[np.sort(subset)], rtol=1e-6
    )
    full = samplers.respace_schedule(schedule, np.arange(T))
    # 1 - abar_t / abar_{t-1} from float32-stored abar: absolute error ~ 2 float32 ulps of 1.
    np.testing.assert_allclose(
        full.betas, schedule.betas, rtol=0, atol=2.5 * np.finfo(np.float32).eps
    )
    with pytest.raises(ValueError, match="distinct"):
        samplers.respace_schedule(schedule, [3, 3, 5])


# ------------------------------------------------------------ exact laws for Gaussian data


def gaussian_x_T(num, seed=0):
    return jax.random.normal(jax.random.key(seed), (num, DIM))


@pytest.mark.usefixtures("unoptimized")
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize(
    "kind, num_steps",
    [("ddim", 10), ("ddim", 100), ("ddim", T), ("dpm_solver", 10), ("dpm_solver", 20)],
)
def test_deterministic_samplers_are_the_exact_affine_map_sample_by_sample(
    schedule_name, kind, num_steps
):
    schedule = SCHEDULES[schedule_name]
    model_fn = oracle.exact_model_fn(GAUSS, schedule, "eps")
    x_T = gaussian_x_T(64)
    samples, trajectory = samplers.sample(
        kind,
        model_fn,
        schedule,
        jax.random.key(1),
        x_T.shape,
        num_steps=num_steps,
        x_T=x_T,
        prediction_type="eps",
        return_trajectory=True,
    )
    law = oracle.gaussian_sampler_law(GAUSS, schedule, trajectory.timesteps, kind)
    assert np.all(law.noise_std == 0.0)
    expected = law.offset + law.slope * np.asarray(x_T, np.float64)
    # float32 rounding: a few ulps of the largest value per step, accumulating like a random walk.
    tolerance = 8 * np.finfo(np.float32).eps * np.sqrt(num_steps) * np.abs(expected).max()
    np.testing.assert_allclose(samples, expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize(
    "name, kwargs, law_kwargs",
    [
        ("ddpm", dict(variance="small"), dict(variance="small")),
        ("ddpm", dict(variance="large"), dict(variance="large")),
        ("ddpm", dict(num_steps=50), dict()),
        ("ddim", dict(num_steps=20, eta=0.5), dict(eta=0.5)),
    ],
)
def test_stochastic_samplers_follow_their_exact_law(name, kwargs, law_kwargs):
    schedule = SCHEDULES["linear"]
    model_fn = oracle.exact_model_fn(GAUSS, schedule, "eps")
    samples, trajectory = samplers.sample(
        name,
        model_fn,
        schedule,
        jax.random.key(2),
        (2000, DIM),
        prediction_type="eps",
        return_trajectory=True,
        **kwargs,
    )
    law = oracle.gaussian_sampler_law(GAUSS, schedule, trajectory.timesteps, name, **law_kwargs)
    assert oracle.gaussian_moment_chi2(samples, law.offset, law.std) < chi2_limit(2 * DIM)


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_ddpm_and_ddim_over_all_T_reproduce_gaussian_data(schedule_name):
    schedule = SCHEDULES[schedule_name]
    model_fn = oracle.exact_model_fn(GAUSS_WIDE, schedule, "eps")
    target = oracle.effective_stds(GAUSS_WIDE, schedule)[0]
    num = 2000
    for name, kwargs in [
        ("ddpm", dict(variance="small")),
        ("ddpm", dict(variance="large")),
        ("ddim", dict(num_steps=T)),
    ]:
        # Premise: the chain's own bias (exact law) is below one standard error at this size.
        law_kwargs = {"variance": kwargs["variance"]} if name == "ddpm" else {}
        law = oracle.gaussian_sampler_law(
            GAUSS_WIDE, schedule, np.arange(T)[::-1], name, **law_kwargs
        )
        assert np.max(np.abs(law.std / target - 1.0)) < 1.0 / np.sqrt(2 * num)
        samples = samplers.sample(
            name, model_fn, schedule, jax.random.key(3), (num, DIM), prediction_type="eps", **kwargs
        )
        chi2 = oracle.gaussian_moment_chi2(samples, GAUSS_WIDE.means[0], target)
        assert chi2 < chi2_limit(2 * DIM), (name, kwargs, chi2)


@pytest.mark.usefixtures("unoptimized")
def test_ddim_error_falls_with_steps_towards_the_exact_flow():
    """Per-sample distance to the exact probability-flow ODE (Gaussian data, 32-D)."""
    schedule = SCHEDULES["linear"]
    model_fn = oracle.exact_model_fn(GAUSS, schedule, "eps")
    x_T = gaussian_x_T(64)
    errors = []
    for num_steps in (10, 20, 50, 100, T):
        samples, trajectory = samplers.ddim_sample(
            model_fn,
            schedule,
            jax.random.key(0),
            x_T.shape,
            num_steps=num_steps,
            x_T=x_T,
            prediction_type="eps",
            return_trajectory=True,
        )
        exact = oracle.gaussian_flow_map(GAUSS, schedule, x_T, int(trajectory.timesteps[0]))
        errors.append(np.sqrt(np.mean((np.asarray(samples) - exact) ** 2 / GAUSS.stds[0] ** 2)))
    assert np.all(np.diff(errors) < 0), errors
    assert errors[-1] < 0.1 * errors[0]


@pytest.mark.usefixtures("unoptimized")
def test_ddim_eta_one_over_all_T_is_ddpm_with_small_variance():
    """Same Markov chain, same noise (both key the noise by timestep): same samples."""
    schedule = SCHEDULES["linear"]
    model_fn = oracle.exact_model_fn(GAUSS, schedule, "eps")
    key = jax.random.key(4)
    ddpm = samplers.ddpm_sample(
        model_fn, schedule, key, (64, DIM), variance="small", prediction_type="eps"
    )
    ddim = samplers.ddim_sample(
        model_fn, schedule, key, (64, DIM), num_steps=T, eta=1.0, prediction_type="eps"
    )
    # Two float32 forms of one update (posterior mean vs eq. 12) differ by ~1e-7 per step.
    np.testing.assert_allclose(ddim, ddpm, atol=1e-4)
    respaced = samplers.ddpm_sample(
        model_fn, schedule, key, (64, DIM), num_steps=50, prediction_type="eps"
    )
    ddim_50 = samplers.ddim_sample(
        model_fn,
        schedule,
        key,
        (64, DIM),
        num_steps=50,
        eta=1.0,
        spacing="linspace",
        prediction_type="eps",
    )
    np.testing.assert_allclose(ddim_50, respaced, atol=1e-4)


@pytest.mark.usefixtures("unoptimized")
def test_ddim_with_diffusers_offset_ends_at_timestep_zeros_noise_level():
    """steps_offset shifts the grid; set_alpha_to_one=False makes the last step land on
    alpha_0 x0_hat + sigma_0 eps_hat (both read off the exact denoiser at the last point)."""
    schedule = SCHEDULES["linear"]
    model_fn = oracle.exact_model_fn(GAUSS, schedule, "eps")
    key = jax.random.key(5)
    plain, trajectory = samplers.ddim_sample(
        model_fn, schedule, key, (16, DIM), num_steps=4, steps_offset=1,
        prediction_type="eps", return_trajectory=True,
    )  # fmt: skip
    np.testing.assert_array_equal(trajectory.timesteps, [751, 501, 251, 1])
    shifted = samplers.ddim_sample(
        model_fn, schedule, key, (16, DIM), num_steps=4, steps_offset=1,
        set_alpha_to_one=False, prediction_type="eps",
    )  # fmt: skip
    alpha_1 = float(schedule.sqrt_alphas_cumprod[1])
    sigma_1 = float(schedule.sqrt_one_minus_alphas_cumprod[1])
    eps_hat = (trajectory.x_t[-1] - alpha_1 * plain) / sigma_1
    alpha_0 = float(schedule.sqrt_alphas_cumprod[0])
    sigma_0 = float(schedule.sqrt_one_minus_alphas_cumprod[0])
    # eps_hat is recovered through 1 / sigma_1 = 70: float32 rounding of x (~1e-7) grows to
    # ~1e-5 there and is scaled back by sigma_0 = 0.01.
    np.testing.assert_allclose(shifted, alpha_0 * plain + sigma_0 * eps_hat, atol=1e-5)
    with pytest.raises(ValueError, match="steps_offset=999 moves the grid"):
        samplers.ddim_sample(model_fn, schedule, key, (4, DIM), num_steps=4, steps_offset=999,
                             prediction_type="eps")  # fmt: skip


@pytest.mark.usefixtures("unoptimized")
def test_first_order_dpm_solver_is_ddim():
    schedule = SCHEDULES["cosine"]
    model_fn = oracle.exact_model_fn(GAUSS, schedule, "eps")
    x_T = gaussian_x_T(64)
    kwargs = dict(num_steps=20, x_T=x_T, prediction_type="eps")
    ddim = samplers.ddim_sample(model_fn, schedule, jax.random.key(0), x_T.shape, **kwargs)
    first_order = samplers.dpm_solver_sample(
        model_fn, schedule, jax.random.key(0), x_T.shape, order=1, spacing="leading", **kwargs
    )
    np.testing.assert_allclose(first_order, ddim, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("unoptimized")
def test_ddim_inversion_recovers_the_latent_of_the_exact_flow():
    schedule = SCHEDULES["linear"]
    model_fn = oracle.exact_model_fn(GAUSS_WIDE, schedule, "eps")
    x_T = gaussian_x_T(64, seed=5)
    errors = []
    for num_steps in (20, 100, T):
        x0 = samplers.ddim_sample(
            model_fn,
            schedule,
            jax.random.key(0),
            x_T.shape,
            num_steps=num_steps,
            x_T=x_T,
            spacing="linspace",
            prediction_type="eps",
        )
        recovered = samplers.ddim_invert(
            model_fn, schedule, x0, num_steps=num_steps, spacing="linspace", prediction_type="eps"
        )
        errors.append(float(jnp.sqrt(jnp.mean((recovered - x_T) ** 2))))
    assert np.all(np.diff(errors) < 0) and errors[-1] < 0.02, errors


# ----------------------------------------------------------------------- Gaussian mixtures


@pytest.mark.parametrize("dim, num, std", [(2, 1000, 0.25), (DIM, 250, 0.5)])
def test_ddpm_and_ddim_over_all_T_reproduce_a_mixture(dim, num, std):
    """4 well-separated modes. The T-step chains are not exact: on a lone Gaussian mode of width
    s their exact law shrinks it (DDPM by 5.6% at s = 0.05, 0.8% at s = 0.5; see benchmarks/RESULTS.md),
    so the widths and sample sizes here are those where that bias is under one standard error."""
    mixture = oracle.ring_mixture(4, 2.0, std, dim)
    schedule = SCHEDULES["linear"]
    model_fn = oracle.exact_model_fn(mixture, schedule, "eps")
    target = oracle.effective_stds(mixture, schedule)
    for name, kwargs in [("ddpm", {}), ("ddim", dict(num_steps=T))]:
        law = oracle.gaussian_sampler_law(
            oracle.gaussian(np.zeros(1), [std]), schedule, np.arange(T)[::-1], name
        )
        assert abs(law.std[0] / target[0, 0] - 1.0) < 1.0 / np.sqrt(2 * num * dim)
        samples = samplers.sample(
            name, model_fn, schedule, jax.random.key(6), (num, dim), prediction_type="eps", **kwargs
        )
        result = oracle.mode_statistics(mixture, target, samples)
        assert result.weights_chi2 < chi2_limit(3), (name, result)
        assert result.width_chi2 < chi2_limit(4), (name, result)
        assert result.means_chi2 < chi2_limit(4 * dim), (name, result)


@pytest.mark.usefixtures("unoptimized")
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize("dim", [2, DIM])
def test_fast_solver_keeps_the_modes_where_ddim_collapses_them(schedule_name, dim):
    """10 and 20 steps on modes of width 0.05: DPM-Solver++ on the log-SNR grid keeps each mode
    within 6% of its width; DDIM at the same cost is measurably worse on every statistic."""
    mixture = NARROW_RINGS[dim]
    schedule = SCHEDULES[schedule_name]
    model_fn = oracle.exact_model_fn(mixture, schedule, "eps")
    target = oracle.effective_stds(mixture, schedule)
    for num_steps in (10, 20):
        kwargs = dict(num_steps=num_steps, prediction_type="eps")
        ddim = oracle.mode_statistics(
            mixture,
            target,
            samplers.ddim_sample(model_fn, schedule, jax.random.key(7), (1000, dim), **kwargs),
        )
        fast = oracle.mode_statistics(
            mixture,
            target,
            samplers.dpm_solver_sample(
                model_fn, schedule, jax.random.key(7), (1000, dim), **kwargs
            ),
        )
        assert abs(fast.width_ratio - 1.0) < 0.06, (num_steps, fast)
        assert abs(fast.width_ratio - 1.0) < abs(ddim.width_ratio - 1.0), (num_steps, fast, ddim)
        assert fast.normalized(8, dim) < ddim.normalized(8, dim), (num_steps, fast, ddim)


@pytest.mark.usefixtures("unoptimized")
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_fast_solver_is_closer_to_the_exact_flow_than_ddim(schedule_name):
    """Per-sample error against the exact ODE from each sampler's own first timestep."""
    schedule = SCHEDULES[schedule_name]
    model_fn = oracle.exact_model_fn(GAUSS, schedule, "eps")
    x_T = gaussian_x_T(64)

    def flow_error(name, **kwargs):
        samples, trajectory = samplers.sample(
            name,
            model_fn,
            schedule,
            jax.random.key(0),
            x_T.shape,
            x_T=x_T,
            prediction_type="eps",
            return_trajectory=True,
            **kwargs,
        )
        exact = oracle.gaussian_flow_map(GAUSS, schedule, x_T, int(trajectory.timesteps[0]))
        return np.sqrt(np.mean((np.asarray(samples) - exact) ** 2 / GAUSS.stds[0] ** 2))

    for num_steps in (10, 20):
        fast = flow_error("dpm_solver", num_steps=num_steps)
        for spacing in samplers.SPACINGS:
            ddim = flow_error("ddim", num_steps=num_steps, spacing=spacing)
            assert fast < ddim, (num_steps, spacing, fast, ddim)


@pytest.mark.usefixtures("unoptimized")
def test_fast_solver_does_not_amplify_eps_model_error_at_the_cosine_schedule_start():
    """x0 = (x - sigma eps) / alpha multiplies an eps-model's error by sigma / alpha (2e4 at the
    cosine schedule's T-1), and a 10-step solver's first step passes 1000x of it on. The eps grid
    therefore starts above log-SNR -6: a 1e-3 model error must stay invisible at this N."""
    schedule = SCHEDULES["cosine"]
    exact = oracle.exact_model_fn(GAUSS, schedule, "eps")
    mixing = jnp.asarray(np.random.default_rng(0).standard_normal((DIM, DIM)) / np.sqrt(DIM))
    perturbed = jax.tree_util.Partial(
        lambda w, x_t, t: exact(x_t, t) + 1e-3 * jnp.tanh(x_t @ w), mixing.astype(jnp.float32)
    )
    samples, trajectory = samplers.dpm_solver_sample(
        perturbed,
        schedule,
        jax.random.key(12),
        (1000, DIM),
        num_steps=10,
        prediction_type="eps",
        return_trajectory=True,
    )
    first = int(trajectory.timesteps[0])
    assert first < T - 1 and schedule.log_snr[first] >= -6.0
    law = oracle.gaussian_sampler_law(GAUSS, schedule, trajectory.timesteps, "dpm_solver")
    assert oracle.gaussian_moment_chi2(samples, law.offset, law.std) < chi2_limit(2 * DIM)


# ---------------------------------------------------------------------- zero terminal SNR


@pytest.mark.usefixtures("unoptimized")
def test_zero_terminal_snr_trailing_v_prediction_ends_exactly_at_x0():
    model_fn = oracle.exact_model_fn(GAUSS, ZTSNR, "v")
    for name in ("ddim", "dpm_solver"):
        kwargs = dict(spacing="trailing") if name == "ddim" else {}
        samples, trajectory = samplers.sample(
            name,
            model_fn,
            ZTSNR,
            jax.random.key(8),
            (64, DIM),
            num_steps=10,
            prediction_type="v",
            return_trajectory=True,
            **kwargs,
        )
        assert int(trajectory.timesteps[0]) == T - 1  # starts at SNR = 0 ...
        # ... where the only information is the data mean: x0_hat = E[x0] for every x_T.
        np.testing.assert_allclose(
            trajectory.pred_x0[0], np.broadcast_to(GAUSS.means[0], (64, DIM)), atol=1e-5
        )
        # The last step adds no noise and no eps term: the sample is the last x0-prediction.
        np.testing.assert_array_equal(samples, trajectory.pred_x0[-1])
        assert np.all(np.isfinite(samples))
    with pytest.raises(ValueError, match="zero SNR"):
        samplers.ddim_sample(
            oracle.exact_model_fn(GAUSS, ZTSNR, "eps"),
            ZTSNR,
            jax.random.key(0),
            (4, DIM),
            spacing="trailing",
            prediction_type="eps",
        )


def test_zero_terminal_snr_ddpm_with_v_prediction_follows_the_exact_law():
    model_fn = oracle.exact_model_fn(GAUSS_WIDE, ZTSNR, "v")
    samples = samplers.ddpm_sample(
        model_fn, ZTSNR, jax.random.key(9), (2000, DIM), prediction_type="v"
    )
    target = oracle.effective_stds(GAUSS_WIDE, ZTSNR)[0]
    assert oracle.gaussian_moment_chi2(samples, GAUSS_WIDE.means[0], target) < chi2_limit(2 * DIM)


# ------------------------------------------------------------------------------- guidance


@pytest.mark.usefixtures("unoptimized")
def test_classifier_free_guidance_interpolates_unconditional_and_conditional():
    mixture = NARROW_RINGS[2]
    schedule = SCHEDULES["linear"]
    conditional = oracle.exact_conditional_model_fn(mixture, schedule, "eps")
    labels = jnp.arange(16) % 9  # label 8 = num_classes: unconditional rows
    batch_sizes = []

    def counting_conditional(x_t, t, y):
        batch_sizes.append(x_t.shape[0])
        return conditional(x_t, t, y)

    key, shape = jax.random.key(10), (16, 2)
    kwargs = dict(num_steps=20, prediction_type="eps")
    for scale, reference in [
        (0.0, oracle.exact_model_fn(mixture, schedule, "eps")),
        (1.0, jax.tree_util.Partial(lambda x, t: conditional(x, t, labels))),
    ]:
        guided = samplers.classifier_free_guidance(counting_conditional, labels, scale, 8)
        samples = samplers.ddim_sample(guided, schedule, key, shape, **kwargs)
        expected = samplers.ddim_sample(reference, schedule, key, shape, **kwargs)
        np.testing.assert_allclose(samples, expected, atol=1e-5)
    assert batch_sizes == [32]  # one batched call per step, traced once for both scales
    # Conditional samples (w = 1) land on their own mode.
    samples = np.asarray(samples)
    nearest = ((samples[:, None] - mixture.means[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(nearest[labels < 8], np.asarray(labels)[labels < 8])


@pytest.mark.usefixtures("unoptimized")
def test_guidance_rejects_bad_labels_and_scales():
    conditional = oracle.exact_conditional_model_fn(NARROW_RINGS[2], SCHEDULES["linear"])
    with pytest.raises(ValueError, match=r"\[0, 8\]"):
        samplers.classifier_free_guidance(conditional, jnp.array([0, 9]), 2.0, 8)
    with pytest.raises(ValueError, match="finite"):
        samplers.classifier_free_guidance(conditional, jnp.array([0, 1]), float("nan"), 8)
    with pytest.raises(ValueError, match="shape"):
        samplers.classifier_free_guidance(conditional, jnp.zeros((2, 2), jnp.int32), 2.0, 8)
    guided = samplers.classifier_free_guidance(conditional, jnp.array([0, 1]), 2.0, 8)
    with pytest.raises(ValueError, match=r"cond of shape \(2,\), but the sampler batch has 3"):
        samplers.ddim_sample(
            guided,
            SCHEDULES["linear"],
            jax.random.key(0),
            (3, 2),
            num_steps=2,
            prediction_type="eps",
        )


# -------------------------------------------------------------------- compiles and sharding


class CountingModel:
    """A toy eps-model that counts how often it is traced (= how often the loop compiles)."""

    def __init__(self):
        self.traces = 0

    def __call__(self, scale, x_t, t):
        self.traces += 1
        return scale * x_t * (1.0 + t[:, None].astype(x_t.dtype) / T)


@pytest.mark.usefixtures("unoptimized")
@pytest.mark.parametrize("name", DISCRETE_SAMPLERS)
def test_new_keys_and_params_reuse_the_compile_new_step_counts_do_not(name):
    model = CountingModel()
    per_compile = DISCRETE_SAMPLERS[name]
    schedule = SCHEDULES["cosine"]

    def run(seed, num_steps, scale=0.1):
        model_fn = jax.tree_util.Partial(model, jnp.float32(scale))
        return samplers.sample(
            name,
            model_fn,
            schedule,
            jax.random.key(seed),
            (4, 3),
            num_steps=num_steps,
            prediction_type="eps",
        )

    first = run(0, 10)
    assert model.traces == per_compile
    second = run(1, 10, scale=0.2)
    assert model.traces == per_compile and not np.allclose(first, second)
    run(2, 20)
    assert model.traces == 2 * per_compile
    run(3, 10)
    run(4, 20)
    assert model.traces == 2 * per_compile


@pytest.mark.usefixtures("unoptimized")
def test_samples_do_not_depend_on_the_device_count_or_sharding():
    mesh = Mesh(np.asarray(jax.devices()), ("data",), axis_types=(AxisType.Auto,))
    assert mesh.size == 8
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    schedule = SCHEDULES["linear"]
    model_fn = oracle.exact_model_fn(GAUSS, schedule, "eps")
    single = jax.devices()[0]
    key = jax.random.key(11)
    for name, kwargs in [
        ("ddim", dict(num_steps=10, eta=0.5, prediction_type="eps")),
        ("ddpm", dict(num_steps=10, prediction_type="eps")),
    ]:
        with jax.default_device(single):
            reference = samplers.sample(name, model_fn, schedule, key, (16, DIM), **kwargs)
        assert reference.sharding.device_set == {single}
        sharded = samplers.sample(
            name, model_fn, schedule, key, (16, DIM), out_sharding=sharding, **kwargs
        )
        assert sharded.sharding.is_equivalent_to(sharding, 2)
        np.testing.assert_allclose(sharded, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.usefixtures("unoptimized")
def test_samplers_compose_with_an_outer_jit():
    """Inside a user's jit (params traced, schedule closed over) the results are the same."""
    model = CountingModel()
    schedule = SCHEDULES["linear"]
    for name in DISCRETE_SAMPLERS:

        @jax.jit
        def run(scale, key, name=name):
            model_fn = jax.tree_util.Partial(model, scale)
            return samplers.sample(
                name, model_fn, schedule, key, (4, 3), num_steps=10, prediction_type="eps"
            )

        scale, key = jnp.float32(0.1), jax.random.key(13)
        expected = samplers.sample(
            name,
            jax.tree_util.Partial(model, scale),
            schedule,
            key,
            (4, 3),
            num_steps=10,
            prediction_type="eps",
        )
        np.testing.assert_allclose(run(scale, key), expected, rtol=1e-6)


# ------------------------------------------------------------------------ API and validation


@pytest.mark.usefixtures("unoptimized")
def test_trajectory_and_given_start():
    schedule = SCHEDULES["linear"]
    model_fn = oracle.exact_model_fn(GAUSS, schedule, "x0")
    x_T = gaussian_x_T(4)
    for name in DISCRETE_SAMPLERS:
        samples, trajectory = samplers.sample(
            name,
            model_fn,
            schedule,
            jax.random.key(0),
            x_T.shape,
            num_steps=5,
            x_T=x_T,
            prediction_type="x0",
            return_trajectory=True,
        )
        assert trajectory.x_t.shape == trajectory.pred_x0.shape == (5, 4, DIM)
        np.testing.assert_array_equal(trajectory.x_t[0], x_T)
        np.testing.assert_allclose(samples, trajectory.pred_x0[-1], atol=1e-6)


def counting_identity():
    calls = []

    def model_fn(x_t, t):
        calls.append(1)
        return x_t

    return model_fn, calls


@pytest.mark.parametrize(
    "name, kwargs, error, message",
    [
        ("ddim", dict(num_steps=0), ValueError, r"num_steps must be in \[1, T=1000\].*got 0"),
        ("ddim", dict(num_steps=1001), ValueError, r"\[1, T=1000\].*got 1001"),
        ("ddpm", dict(num_steps=2.5), TypeError, "num_steps"),
        ("ddim", dict(eta=1.5), ValueError, r"eta must be in \[0, 1\].*1.5"),
        ("ddim", dict(eta=-0.1), ValueError, "eta"),
        (
            "ddim",
            dict(spacing="uniform"),
            ValueError,
            "'uniform'.*'leading', 'trailing', 'linspace'",
        ),
        ("dpm_solver", dict(spacing="cosine"), ValueError, "'cosine'.*'logsnr', 'karras'"),
        ("dpm_solver", dict(order=3), ValueError, r"order 3.*\(1, 2\)"),
        ("ddpm", dict(variance="learned"), ValueError, "'learned'.*'small', 'large'"),
        ("ddim", dict(prediction_type="score"), ValueError, "'score'.*'eps', 'x0', 'v'"),
        ("ddim", dict(x_T=jnp.zeros((4, 3))), ValueError, r"x_T has shape \(4, 3\).*\(4, 2\)"),
        ("ddim", dict(x_T=jnp.zeros((4, 2), jnp.int32)), TypeError, "floating"),
        ("ddim", dict(clip_x0="yes"), TypeError, "clip_x0"),
        ("ddim", dict(guidance=3.0), TypeError, r"\['guidance'\].*options"),
        ("dpm_solver", dict(min_log_snr=30.0), ValueError, "min_log_snr"),
    ],
)
def test_bad_arguments_raise_before_anything_is_traced(name, kwargs, error, message):
    model_fn, calls = counting_identity()
    kwargs = {"prediction_type": "eps", **kwargs}
    with pytest.raises(error, match=message):
        samplers.sample(name, model_fn, SCHEDULES["linear"], jax.random.key(0), (4, 2), **kwargs)
    assert not calls


@pytest.mark.usefixtures("unoptimized")
def test_bad_sampler_name_shape_key_and_model_raise():
    model_fn, calls = counting_identity()
    schedule = SCHEDULES["linear"]
    with pytest.raises(ValueError, match="'lms'.*'ddpm', 'ddim', 'dpm_solver', 'euler', 'heun'"):
        samplers.sample("lms", model_fn, schedule, jax.random.key(0), (4, 2))
    with pytest.raises(ValueError, match="shape"):
        samplers.ddim_sample(model_fn, schedule, jax.random.key(0), (4, 0), prediction_type="eps")
    with pytest.raises(TypeError, match="PRNG key"):
        samplers.ddim_sample(model_fn, schedule, 0, (4, 2), prediction_type="eps")
    with pytest.raises(TypeError, match="callable"):
        samplers.ddim_sample("unet", schedule, jax.random.key(0), (4, 2), prediction_type="eps")
    with pytest.raises(TypeError, match="DiffusionSchedule"):
        samplers.ddim_sample(model_fn, np.ones(T), jax.random.key(0), (4, 2), prediction_type="eps")
    mesh = Mesh(np.asarray(jax.devices()), ("data",), axis_types=(AxisType.Auto,))
    with pytest.raises(ValueError, match="cannot shard"):
        samplers.ddim_sample(
            model_fn,
            schedule,
            jax.random.key(0),
            (4, 2),
            prediction_type="eps",
            out_sharding=NamedSharding(mesh, PartitionSpec("data")),
        )
    with pytest.raises(TypeError, match="x0 must be a floating-point array"):
        samplers.ddim_invert(
            model_fn, schedule, jnp.zeros((4, 2), jnp.int32), prediction_type="eps"
        )
    assert not calls
    with pytest.raises(ValueError, match=r"model_fn returned shape \(4, 1\)"):
        samplers.ddim_sample(
            lambda x, t: x[:, :1],
            schedule,
            jax.random.key(0),
            (4, 2),
            num_steps=2,
            prediction_type="eps",
        )


def _nan_below_500(x, t):
    """A model that returns NaN for t < 500 and a finite eps prediction above."""
    return jnp.where(t[:, None] < 500, jnp.nan, 0.1 * x)


def test_a_sampler_names_the_step_whose_result_first_went_nonfinite():
    schedule = dj.get_schedule("cosine", num_timesteps=1000)
    key, shape = jax.random.key(0), (2, 4)
    # DDIM-10 visits t = 900, 800, ..., 0: step 6 is the first from t < 500 (400 -> 300).
    with pytest.warns(RuntimeWarning, match=r"first became NaN/Inf at step 6 of 10 "
                                            r"\(t = 400 -> 300\)"):  # fmt: skip
        dj.sample("ddim", _nan_below_500, schedule, key, shape, prediction_type="eps", num_steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        finite = dj.sample(
            "ddim", lambda x, t: 0.1 * x, schedule, key, shape, prediction_type="eps", num_steps=10
        )
        # Under an outer jit nothing is known when the sampler returns: no warning, no sync.
        traced = jax.jit(
            lambda k: dj.sample(
                "ddim", _nan_below_500, schedule, k, shape, prediction_type="eps", num_steps=10
            )  # fmt: skip
        )(key)
    assert np.all(np.isfinite(finite)) and not np.any(np.isfinite(traced))


def test_continuous_num_steps_and_an_exhausted_ode_solve_are_named():
    flow = dj.RectifiedFlow()
    with pytest.raises(ValueError, match=r"^num_steps must be >= 1, got 0\.$"):
        dj.sample("flow_euler", lambda x, t: x, flow, jax.random.key(0), (2, 4),
                  prediction_type="flow", num_steps=0)  # fmt: skip
    schedule = dj.get_schedule("cosine", num_timesteps=1000)
    with pytest.raises(OdeSolveError, match=r"used all max_steps=3 steps before"):
        dj.sample("ode", lambda x, t: 3 * jnp.sin(50 * x), schedule, jax.random.key(0), (2, 4),
                  prediction_type="eps", max_steps=3)  # fmt: skip


@pytest.mark.parametrize("num_steps", [5, 50])
def test_ddpm_with_a_learned_variance_samples_gaussian_data_at_any_step_count(num_steps):
    """Improved DDPM's learned range (eq. 15) with the exact values of Gaussian data: the
    reverse kernel of Gaussian data is Gaussian, so the chain with its true mean and variance
    samples each marginal exactly, at 5 steps as at 50; the fixed variances, from the same
    network's eps, do not."""
    schedule = SCHEDULES["linear"]
    timesteps = samplers.spaced_timesteps(T, num_steps, "linspace")
    model_fn = oracle.learned_variance_model_fn(GAUSS, schedule, timesteps)
    target = oracle.effective_stds(GAUSS, schedule)[0]
    shape, key = (4000, DIM), jax.random.key(3)
    learned = samplers.sample(
        "ddpm", model_fn, schedule, key, shape, prediction_type="eps",
        variance="learned_range", num_steps=num_steps,
    )  # fmt: skip
    assert oracle.gaussian_moment_chi2(learned, GAUSS.means[0], target) < chi2_limit(2 * DIM)
    fixed = samplers.sample(
        "ddpm", dj.models.prediction_channels(model_fn), schedule, key, shape,
        prediction_type="eps", variance="small", num_steps=num_steps,
    )  # fmt: skip
    assert oracle.gaussian_moment_chi2(fixed, GAUSS.means[0], target) > 10 * chi2_limit(2 * DIM)


def test_ddpm_learned_range_refuses_a_model_without_variance_values():
    model_fn = oracle.exact_model_fn(GAUSS, SCHEDULES["linear"], "eps")
    with pytest.raises(ValueError, match=r"learned-variance model_fn .* \(2, 64\)"):
        samplers.sample(
            "ddpm", model_fn, SCHEDULES["linear"], jax.random.key(0), (2, DIM),
            prediction_type="eps", variance="learned_range", num_steps=3,
        )  # fmt: skip
