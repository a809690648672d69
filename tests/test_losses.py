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
        weight = {
            "eps": np.minimum(snr, gamma) / snr,
            "x0": np.minimum(snr, gamma),
            "v": np.minimum(snr, gamma) / (snr + 1.0),
        }[prediction_type]
    return weight * mse


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
            _linear_model, schedule, x, k, prediction_type=prediction_type, weighting=weighting,
            min_snr_gamma=GAMMA,
        )
    )(x0, jax.random.key(1))
    expected = _numpy_reference(
        x0, np.asarray(aux["t"]), aux["noise"], np.cumprod(1.0 - betas),
        prediction_type, weighting, GAMMA,
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
    SNR, 1, SNR + 1 (eps, x0, v), and 'min_snr' by min(SNR, gamma) for all three.
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
            model_for(prediction_type), schedule, x0, jax.random.key(4), t=t,
            prediction_type=prediction_type, weighting=weighting, min_snr_gamma=GAMMA,
        )
        per_type[prediction_type] = aux
    noise = np.float64(per_type["x0"]["noise"])
    abar = np.cumprod(1.0 - schedules.linear_betas(NUM_TIMESTEPS))[np.asarray(t)]
    x_t = np.sqrt(abar)[:, None, None, None] * np.float64(x0) + np.sqrt(1 - abar)[
        :, None, None, None
    ] * noise
    x0_error = np.mean((0.7 * np.tanh(x_t) - np.float64(x0)) ** 2, axis=(1, 2, 3))
    snr = abar / (1.0 - abar)
    if weighting == "uniform":
        x0_weights = {"eps": snr, "x0": np.ones_like(snr), "v": snr + 1.0}
    else:
        x0_weights = dict.fromkeys(PREDICTION_TYPES, np.minimum(snr, GAMMA))
    for prediction_type in PREDICTION_TYPES:
        np.testing.assert_allclose(
            per_type[prediction_type]["loss"], x0_weights[prediction_type] * x0_error,
            rtol=CONVERSION_RTOL, err_msg=prediction_type,
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
            model_fn, schedule, x0, jax.random.key(5), t=t,
            prediction_type=prediction_type, weighting=weighting, min_snr_gamma=GAMMA,
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
        (dict(prediction_type="score"), r"'eps', 'x0', 'v'"),
        (dict(weighting="p2"), r"'uniform', 'min_snr'"),
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
        denoising_loss(
            lambda x_t, t: x_t[..., :1], schedule, _image_batch(2), jax.random.key(0)
        )
