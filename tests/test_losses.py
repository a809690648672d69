"""Tests for diffjax.losses against float64 NumPy references and the x0-space identities."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import schedules
from diffjax.diffusion import alpha_sigma, eps_from_x0, v_from_x0_eps
from diffjax.losses import (
    LOSS_WEIGHTINGS,
    denoising_loss,
    offset_noise_like,
    sample_timesteps,
    snr_loss_weight,
)

PREDICTION_TYPES = ("eps", "x0", "v")
GAMMA = 5.0
NUM_TIMESTEPS = 1000
# float32 rounding (2^-24 ~ 6e-8 per operation) over the ~10 operations that form x_t, the
# prediction and the squared error: ~1e-6 relative (measured 2e-7).
REFERENCE_RTOL = 1e-5
# Converting an x0 estimate to eps/v divides by sigma_t, which amplifies float32 rounding by up
# to 1/sigma_0 = 1e2 on the linear schedule (sigma_0 = 1e-2): ~1e-5 (measured 1.5e-5). Any wrong
# coefficient shows up as an O(1) error.
CONVERSION_RTOL = 1e-4


def _image_batch(batch_size=16, seed=0):
    return jnp.asarray(
        np.random.default_rng(seed).uniform(-1, 1, (batch_size, 4, 4, 3)), jnp.float32
    )


def _linear_model(x_t, t):
    """A known model_fn with an explicit t dependence: 0.5 x_t + 1e-3 t."""
    return 0.5 * x_t + 1e-3 * t[:, None, None, None].astype(x_t.dtype)


def _numpy_reference(x0, t, noise, alphas_cumprod, prediction_type, weighting, gamma):
    """Per-example loss terms in float64, written from the paper formulas."""
    x0, noise = np.float64(x0), np.float64(noise)
    abar = alphas_cumprod[t][:, None, None, None]
    alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
    x_t = alpha * x0 + sigma * noise
    prediction = 0.5 * x_t + 1e-3 * t[:, None, None, None]
    target = {"eps": noise, "x0": x0, "v": alpha * noise - sigma * x0}[prediction_type]
    mse = np.mean((prediction - target) ** 2, axis=(1, 2, 3))
    snr = alphas_cumprod[t] / (1.0 - alphas_cumprod[t])
    if weighting == "uniform":
        weight = np.ones_like(snr)
    else:
        # The x0-space weight over the factor (SNR, 1, SNR + 1) that the target's error carries.
        target_factor = {"eps": snr, "x0": np.ones_like(snr), "v": snr + 1.0}[prediction_type]
        weight = _x0_space_weight(weighting, snr, gamma) / target_factor
    return weight * mse


def _x0_space_weight(weighting, snr, gamma):
    """The x0-space weights of diffjax.losses, in float64 from their papers' formulas."""
    if weighting == "min_snr":
        return np.minimum(snr, gamma)
    if weighting == "edm":
        sigma_squared, sigma_data = 1.0 / snr, 0.5  # EDM's sigma = sigma_t / alpha_t
        return (sigma_squared + sigma_data**2) / (sigma_squared * sigma_data**2)
    if weighting == "truncated_snr":
        return np.maximum(snr, 1.0)  # Salimans & Ho 2022, eq. 9
    return (1.0 + np.sqrt(snr)) ** 2  # SD3's w^RF in x0 space


def test_sample_timesteps_uniform_over_range():
    num_timesteps, batch_size = 10, 20000
    t = sample_timesteps(jax.random.key(0), batch_size, num_timesteps)
    chex.assert_shape(t, (batch_size,))
    assert t.dtype == jnp.int32
    counts = np.bincount(np.asarray(t), minlength=num_timesteps)
    assert counts.size == num_timesteps  # nothing at or above T
    # Each count is Binomial(n, 1/T): mean 2000, std ~42; 5 std is a 1e-6 false-alarm rate.
    expected = batch_size / num_timesteps
    std = np.sqrt(batch_size * (1 / num_timesteps) * (1 - 1 / num_timesteps))
    np.testing.assert_array_less(np.abs(counts - expected), 5 * std)


@pytest.mark.parametrize("weighting", LOSS_WEIGHTINGS)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_per_example_terms_match_float64_reference(prediction_type, weighting):
    betas = schedules.linear_betas(NUM_TIMESTEPS)
    schedule = schedules.make_schedule(betas)
    x0 = _image_batch()
    loss, aux = jax.jit(
        lambda x, k: denoising_loss(
            _linear_model,
            schedule,
            x,
            k,
            prediction_type=prediction_type,
            weighting=weighting,
            min_snr_gamma=GAMMA,
        )
    )(x0, jax.random.key(1))
    expected = _numpy_reference(
        x0,
        np.asarray(aux["t"]),
        aux["noise"],
        np.cumprod(1.0 - betas),
        prediction_type,
        weighting,
        GAMMA,
    )
    chex.assert_shape(aux["loss"], (x0.shape[0],))
    np.testing.assert_allclose(aux["loss"], expected, rtol=REFERENCE_RTOL)
    np.testing.assert_allclose(loss, expected.mean(), rtol=REFERENCE_RTOL)
    # The draw spans the schedule, so the reference is exercised on both sides of gamma.
    snr = np.asarray(aux["snr"])
    assert snr.min() < GAMMA < snr.max()


def test_jit_and_eager_agree():
    schedule = schedules.get_schedule("cosine", 100)
    x0 = _image_batch(4)
    kwargs = dict(prediction_type="v", weighting="min_snr", offset_noise=0.1)
    eager = denoising_loss(_linear_model, schedule, x0, jax.random.key(2), **kwargs)
    jitted = jax.jit(lambda x, k: denoising_loss(_linear_model, schedule, x, k, **kwargs))(
        x0, jax.random.key(2)
    )
    chex.assert_trees_all_close(eager, jitted, rtol=1e-6)


@pytest.mark.parametrize("weighting", LOSS_WEIGHTINGS)
def test_weightings_are_one_x0_space_weighting(weighting):
    """Equal x0 estimates in each parametrisation give losses tied by the SNR identities.

    With x0_hat fixed, ||eps_hat - eps||^2 = SNR ||x0_hat - x0||^2 and
    ||v_hat - v||^2 = (SNR + 1) ||x0_hat - x0||^2. So 'uniform' weighs the x0 error by
    SNR, 1, SNR + 1 (eps, x0, v), and every other weighting by its x0-space weight for all three.
    """
    schedule = schedules.get_schedule("linear", NUM_TIMESTEPS)
    x0 = _image_batch(64, seed=3)
    t = jnp.asarray(np.linspace(0, NUM_TIMESTEPS - 1, 64).astype(np.int32))

    def x0_estimate(x_t):
        return 0.7 * jnp.tanh(x_t)

    def model_for(prediction_type):
        def model_fn(x_t, t):
            alpha, sigma = alpha_sigma(schedule, t, x_t.ndim)
            x0_hat = x0_estimate(x_t)
            eps_hat = eps_from_x0(x_t, x0_hat, alpha, sigma)
            v_hat = v_from_x0_eps(x0_hat, eps_hat, alpha, sigma)
            return {"x0": x0_hat, "eps": eps_hat, "v": v_hat}[prediction_type]

        return model_fn

    per_type = {}
    for prediction_type in PREDICTION_TYPES:
        _, aux = denoising_loss(
            model_for(prediction_type),
            schedule,
            x0,
            jax.random.key(4),
            t=t,
            prediction_type=prediction_type,
            weighting=weighting,
            min_snr_gamma=GAMMA,
        )
        per_type[prediction_type] = aux
    noise = np.float64(per_type["x0"]["noise"])
    abar = np.cumprod(1.0 - schedules.linear_betas(NUM_TIMESTEPS))[np.asarray(t)]
    x_t = (
        np.sqrt(abar)[:, None, None, None] * np.float64(x0)
        + np.sqrt(1 - abar)[:, None, None, None] * noise
    )
    x0_error = np.mean((0.7 * np.tanh(x_t) - np.float64(x0)) ** 2, axis=(1, 2, 3))
    snr = abar / (1.0 - abar)
    if weighting == "uniform":
        x0_weights = {"eps": snr, "x0": np.ones_like(snr), "v": snr + 1.0}
    else:
        x0_weights = dict.fromkeys(PREDICTION_TYPES, _x0_space_weight(weighting, snr, GAMMA))
    for prediction_type in PREDICTION_TYPES:
        np.testing.assert_allclose(
            per_type[prediction_type]["loss"],
            x0_weights[prediction_type] * x0_error,
            rtol=CONVERSION_RTOL,
            err_msg=prediction_type,
        )


def _extreme_snr_schedule():
    """SNR ~ 1e10 at t = 0 (beta_0 = 1e-10) and exactly 0 at t = T - 1 (Lin et al. rescale)."""
    betas = schedules.rescale_zero_terminal_snr(np.linspace(1e-10, 0.02, 50))
    return schedules.make_schedule(betas)


@pytest.mark.parametrize(
    "schedule_name, timestep",
    [("zero_terminal", -1), ("zero_terminal", 0), ("cosine", 0)],
)
@pytest.mark.parametrize("weighting", LOSS_WEIGHTINGS)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_finite_loss_and_grads_at_extreme_snr(prediction_type, weighting, schedule_name, timestep):
    if schedule_name == "cosine":
        schedule = schedules.get_schedule("cosine", NUM_TIMESTEPS)
    else:
        schedule = _extreme_snr_schedule()
    t = jnp.full((4,), timestep % schedule.num_timesteps, jnp.int32)
    snr = float(schedule.snr[t[0]])
    assert snr == 0.0 if timestep == -1 else snr > 1e4
    x0 = _image_batch(4)

    def loss_of(params):
        def model_fn(x_t, t):
            return params["scale"] * x_t + params["bias"]

        return denoising_loss(
            model_fn,
            schedule,
            x0,
            jax.random.key(5),
            t=t,
            prediction_type=prediction_type,
            weighting=weighting,
            min_snr_gamma=GAMMA,
        )[0]

    params = {"scale": jnp.float32(0.3), "bias": jnp.float32(0.1)}
    loss, grads = jax.value_and_grad(loss_of)(params)
    assert np.isfinite(loss)
    chex.assert_tree_all_finite(grads)


def test_min_snr_weights_take_their_limits():
    snr = jnp.asarray([0.0, 1.0, GAMMA, 1e10], jnp.float32)
    chex.assert_trees_all_close(
        snr_loss_weight(snr, "eps", "min_snr", GAMMA), jnp.asarray([1.0, 1.0, 1.0, GAMMA / 1e10])
    )
    chex.assert_trees_all_close(
        snr_loss_weight(snr, "v", "min_snr", GAMMA),
        jnp.asarray([0.0, 0.5, GAMMA / (GAMMA + 1), GAMMA / (1e10 + 1)]),
    )
    chex.assert_trees_all_close(
        snr_loss_weight(snr, "x0", "min_snr", GAMMA), jnp.asarray([0.0, 1.0, GAMMA, GAMMA])
    )
    grad = jax.grad(lambda s: snr_loss_weight(s, "eps", "min_snr", GAMMA).sum())(snr)
    chex.assert_tree_all_finite(grad)


def test_offset_noise_adds_a_per_channel_constant():
    x0 = jnp.zeros((2000, 4, 4, 3), jnp.float32)
    key = jax.random.key(6)
    plain = offset_noise_like(key, x0, 0.0)
    offset = offset_noise_like(key, x0, 0.5)
    difference = np.asarray(offset - plain)
    # The offset is one draw per (example, channel), constant over H and W ...
    np.testing.assert_allclose(
        difference, np.broadcast_to(difference[:, :1, :1, :], difference.shape), atol=1e-6
    )
    # ... distributed as 0.5 * N(0, 1): sample variance of 6000 draws is 0.25 +- 0.25*sqrt(2/6000).
    offsets = difference[:, 0, 0, :] / 0.5
    assert abs(offsets.var() - 1.0) < 5 * np.sqrt(2 / offsets.size)
    assert abs(offsets.mean()) < 5 / np.sqrt(offsets.size)


def test_offset_noise_is_the_regression_target():
    schedule = schedules.get_schedule("linear", 100)
    x0 = _image_batch(4)
    _, aux = denoising_loss(
        lambda x_t, t: jnp.zeros_like(x_t), schedule, x0, jax.random.key(7), offset_noise=0.3
    )
    # A zero prediction makes the eps-loss the mean square of the noise actually used.
    np.testing.assert_allclose(
        aux["mse"], np.mean(np.square(aux["noise"]), axis=(1, 2, 3)), rtol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prediction_type="score"), r"'eps', 'x0', 'v', 'flow', 'edm'"),
        (dict(prediction_type="flow"), r"'flow' .* needs a continuous process"),
        (dict(weighting="p2"), r"'uniform', 'min_snr', 'edm', 'rectified_flow'"),
        (dict(weighting="min_snr", min_snr_gamma=0.0), r"min_snr_gamma must be > 0"),
        (dict(offset_noise=-0.1), r"offset_noise must be >= 0"),
    ],
)
def test_bad_options_raise_value_error(kwargs, message):
    schedule = schedules.get_schedule("cosine", 10)
    with pytest.raises(ValueError, match=message):
        denoising_loss(_linear_model, schedule, _image_batch(2), jax.random.key(0), **kwargs)


def test_wrong_prediction_shape_raises():
    schedule = schedules.get_schedule("cosine", 10)
    with pytest.raises(ValueError, match=r"model_fn returned shape \(2, 4, 4, 1\)"):
        denoising_loss(lambda x_t, t: x_t[..., :1], schedule, _image_batch(2), jax.random.key(0))


# --------------------------------------------------------------- continuous-time losses

from scipy import optimize, special, stats  # noqa: E402

import diffjax as dj  # noqa: E402
from diffjax import losses  # noqa: E402

KS_SAMPLES = 20000
# Every distribution test is one Kolmogorov-Smirnov test of 20000 draws with a fixed key; a
# correct sampler fails it with probability 1e-3 (and then always, for that key).
KS_LEVEL = 1e-3


def _ks_pvalue(sampler, cdf):
    draws = np.asarray(sampler(jax.random.key(3), KS_SAMPLES), np.float64)
    return stats.kstest(draws, cdf).pvalue


def _unshift(t, shift):
    """The inverse of SD3's shift t' = s t / (1 + (s - 1) t)."""
    return t / (shift - (shift - 1.0) * t)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_uniform_and_logit_normal_times_follow_their_laws(shift):
    uniform = losses.uniform_times(t_min=0.1, t_max=0.9, shift=shift)
    assert _ks_pvalue(uniform, lambda t: np.clip((_unshift(t, shift) - 0.1) / 0.8, 0, 1)) > KS_LEVEL
    logit = losses.logit_normal_times(mean=0.5, std=0.8, shift=shift)
    cdf = lambda t: stats.norm.cdf((special.logit(_unshift(t, shift)) - 0.5) / 0.8)  # noqa: E731
    assert _ks_pvalue(logit, cdf) > KS_LEVEL


def test_mode_times_follow_their_law():
    scale = 1.29
    f = lambda u: 1 - u - scale * (np.cos(np.pi * u / 2) ** 2 - 1 + u)  # noqa: E731

    def cdf(t):  # f is decreasing from f(0) = 1 to f(1) = 0: P(f(u) <= t) = 1 - f^-1(t).
        return np.array(
            [1.0 - optimize.brentq(lambda u: f(u) - x, 0.0, 1.0) for x in np.atleast_1d(t)]
        )

    assert _ks_pvalue(losses.mode_times(scale), cdf) > KS_LEVEL


def test_edm_lognormal_times_follow_their_law():
    process = dj.EDM()
    sampler = losses.edm_lognormal_times(process, p_mean=-1.2, p_std=1.2)
    # t = sigma / 80 with ln sigma ~ N(-1.2, 1.2^2), clipped at 1 (mass 1.7e-6 there).
    assert _ks_pvalue(sampler, lambda t: stats.norm.cdf((np.log(80.0 * t) + 1.2) / 1.2)) > KS_LEVEL
    # On rectified flow the same noise levels s = sigma / alpha are t / (1 - t).
    flow = losses.edm_lognormal_times(dj.RectifiedFlow())
    assert _ks_pvalue(flow, lambda t: stats.norm.cdf((np.log(t / (1 - t)) + 1.2) / 1.2)) > KS_LEVEL


def test_time_shift_maps_the_interval_onto_itself_monotonically():
    t = np.linspace(0, 1, 11)
    shifted = losses.time_shift(t, 3.0)
    assert shifted[0] == 0.0 and shifted[-1] == 1.0 and np.all(np.diff(shifted) > 0)
    np.testing.assert_allclose(losses.time_shift(t, 1.0), t)
    np.testing.assert_allclose(_unshift(shifted, 3.0), t, atol=1e-15)
    with pytest.raises(ValueError, match="shift must be > 0"):
        losses.time_shift(t, 0.0)


def _gaussian_velocity_model(mean, std):
    """The exact velocity E[eps - x0 | x_t] of rectified flow for N(mean, std^2) data."""

    def model_fn(x_in, t_in):
        t = (t_in / 1000.0)[:, None, None, None]
        alpha, sigma = 1.0 - t, t
        variance = alpha**2 * std**2 + sigma**2
        residual = x_in - alpha * mean
        x0_hat = mean + alpha * std**2 / variance * residual
        eps_hat = sigma / variance * residual
        return eps_hat - x0_hat

    return model_fn


def test_flow_matching_loss_at_the_exact_velocity_is_its_analytic_minimum():
    """E ||v* - (eps - x0)||^2 = E Var(eps - x0 | x_t) = s^2 (alpha + sigma)^2 / (alpha^2 s^2 + sigma^2)
    per pixel for N(m, s^2) data (the Gaussian conditional variance); at fixed t the Monte-Carlo
    mean over B draws has standard error std(per-example) / sqrt(B)."""
    mean, std, batch = 0.3, 0.5, 8192
    process = dj.RectifiedFlow()
    x0 = mean + std * jax.random.normal(jax.random.key(0), (batch, 2, 2, 1))
    t = jnp.asarray(np.tile([0.1, 0.4, 0.7, 0.95], batch // 4), jnp.float32)
    _, aux = denoising_loss(
        _gaussian_velocity_model(mean, std), process, x0, jax.random.key(1), t=t,
        prediction_type="flow",
    )  # fmt: skip
    alpha, sigma = 1.0 - np.asarray(t, np.float64), np.asarray(t, np.float64)
    minimum = std**2 * (alpha + sigma) ** 2 / (alpha**2 * std**2 + sigma**2)
    per_example = np.asarray(aux["mse"], np.float64)
    standard_error = per_example.std() / np.sqrt(batch)
    assert abs(per_example.mean() - minimum.mean()) < 5 * standard_error


def test_edm_weighting_on_the_edm_prediction_is_one_and_matches_the_paper():
    """lambda(sigma) ||D - x0||^2 = ||F - F_target||^2 (Karras et al. 2022, eq. 8): weight 1 on F."""
    process = dj.EDM()
    t = jnp.asarray([0.001, 0.01, 0.2, 0.9])
    m = dj.marginal(process, t, 4)
    np.testing.assert_allclose(losses.loss_weight("edm", "edm", m), 1.0, rtol=1e-6)
    # On an x0 model the same weighting is lambda(sigma) = (sigma^2 + s_d^2) / (sigma s_d)^2.
    sigma = 80.0 * np.asarray(t, np.float64)
    np.testing.assert_allclose(
        losses.loss_weight("x0", "edm", m), (sigma**2 + 0.25) / (0.25 * sigma**2), rtol=1e-5
    )
    # And rectified flow's velocity loss is SD3's w^RF, uniform on 'flow'.
    rf = dj.marginal(dj.RectifiedFlow(), t, 4)
    np.testing.assert_allclose(losses.loss_weight("flow", "rectified_flow", rf), 1.0, rtol=1e-6)


def test_continuous_losses_train_with_every_time_sampler():
    x0 = _image_batch(8)
    for name, process, options in [
        ("uniform", dj.VPLinear(), {}),
        ("logit_normal", dj.RectifiedFlow(), {"shift": 2.0}),
        ("mode", dj.RectifiedFlow(), {}),
        ("edm_lognormal", dj.EDM(), {}),
        ("constant", dj.RectifiedFlow(), {"t": 1.0}),
    ]:
        sampler = losses.get_time_sampler(name, process, **options)
        loss, aux = denoising_loss(
            lambda x, t: 0.1 * x, process, x0, jax.random.key(0), prediction_type="v",
            time_sampler=sampler,
        )  # fmt: skip
        assert np.isfinite(loss) and aux["t"].dtype == jnp.float32
        assert np.all((np.asarray(aux["t"]) >= 0) & (np.asarray(aux["t"]) <= 1))


def test_time_sampler_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"Unknown time sampler 'beta'"):
        losses.get_time_sampler("beta", dj.RectifiedFlow())
    with pytest.raises(
        ValueError, match=r"does not take \['sd'\]; its options are \['mean', 'std', 'shift'\]"
    ):
        losses.get_time_sampler("logit_normal", dj.RectifiedFlow(), sd=1.0)
    with pytest.raises(ValueError, match="a discrete schedule draws"):
        losses.get_time_sampler("mode", schedules.get_schedule("cosine", 10))
    with pytest.raises(ValueError, match="scale in"):
        losses.mode_times(scale=3.0)
    with pytest.raises(ValueError, match=r"0 <= t <= 1, got 1.5"):
        losses.get_time_sampler("constant", dj.RectifiedFlow(), t=1.5)


def test_constant_times_put_every_example_at_t():
    times = losses.constant_times(0.25)(jax.random.key(0), 5)
    assert times.dtype == jnp.float32
    np.testing.assert_array_equal(times, np.full(5, 0.25, np.float32))


def _learned_variance_model(params, x_t, t):
    """eps_hat = a x_t and variance values b (a toy learned-variance network)."""
    return jnp.concatenate([params["a"] * x_t, jnp.broadcast_to(params["b"], x_t.shape)], -1)


def _x_t(schedule, x0, t, noise):
    alpha, sigma = alpha_sigma(schedule, t, x0.ndim)
    return alpha * x0 + sigma * noise


def test_hybrid_loss_is_l_simple_plus_lambda_t_times_the_bound_term():
    """Improved DDPM Sec. 3.1: per example w mse + lambda T L_t (bits/dim), L_t the bound's term
    with the learned variance, and a stop-gradient on the mean, so L_vlb trains the variance
    alone."""
    from diffjax.likelihood import vlb_terms

    schedule = schedules.get_schedule("linear", NUM_TIMESTEPS)
    levels = jax.random.randint(jax.random.key(0), (4, 4, 4, 3), 0, 256)
    x0 = levels.astype(jnp.float32) / 127.5 - 1.0
    t = jnp.array([0, 3, 400, 999])
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    params = {"a": jnp.float32(0.3), "b": jnp.float32(0.2)}

    def loss(params, vlb_weight):
        model_fn = jax.tree_util.Partial(_learned_variance_model, params)
        return denoising_loss(
            model_fn, schedule, x0, jax.random.key(2), t=t, noise=noise, vlb_weight=vlb_weight
        )

    value, aux = loss(params, 1e-3)
    model_fn = jax.tree_util.Partial(_learned_variance_model, params)
    nats = vlb_terms(model_fn, schedule, x0, t, noise, prediction_type="eps",
                     variance="learned_range")  # fmt: skip
    bits = nats / (x0[0].size * np.log(2.0))
    np.testing.assert_allclose(aux["vlb"], bits, rtol=1e-5)
    np.testing.assert_allclose(aux["loss"], aux["mse"] + 1e-3 * NUM_TIMESTEPS * bits, rtol=1e-5)
    np.testing.assert_allclose(value, np.mean(aux["loss"]), rtol=1e-6)
    hybrid = jax.grad(lambda p: loss(p, 1e-3)[0])(params)
    simple_a = jax.grad(
        lambda a: jnp.mean(jnp.mean((a * _x_t(schedule, x0, t, noise) - noise) ** 2, (1, 2, 3)))
    )(params["a"])
    np.testing.assert_allclose(hybrid["a"], simple_a, rtol=1e-5)
    assert abs(float(hybrid["b"])) > 0


def test_hybrid_loss_refuses_a_continuous_process_and_a_missing_variance():
    from diffjax.processes import get_process

    x0 = jnp.zeros((2, 4, 4, 3))
    model_fn = jax.tree_util.Partial(_learned_variance_model, {"a": 1.0, "b": 0.0})
    with pytest.raises(ValueError, match="vlb_weight=0.001 .* continuous"):
        denoising_loss(
            model_fn, get_process("rectified_flow"), x0, jax.random.key(0), vlb_weight=1e-3
        )
    schedule = schedules.get_schedule("linear", NUM_TIMESTEPS)
    with pytest.raises(ValueError, match=r"returned shape \(2, 4, 4, 6\).* vlb_weight > 0"):
        denoising_loss(model_fn, schedule, x0, jax.random.key(0))
    with pytest.raises(ValueError, match=r"learned-variance model_fn .* \(2, 4, 4, 6\)"):
        denoising_loss(lambda x, t: x, schedule, x0, jax.random.key(0), vlb_weight=1e-3)
