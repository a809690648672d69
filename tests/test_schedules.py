"""Schedules: closed forms from the papers, recomputed independently in float64 NumPy."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax import schedules

ALL_NAMES = ("linear", "scaled_linear", "cosine", "sigmoid")


def test_linear_matches_ddpm_endpoints_scaled_for_t():
    np.testing.assert_allclose(schedules.linear_betas(1000)[[0, -1]], [1e-4, 0.02])
    # Fewer steps: each beta grows by 1000/T so the total noise stays comparable.
    np.testing.assert_allclose(schedules.linear_betas(250)[[0, -1]], [4e-4, 0.08])


def test_scaled_linear_is_linear_in_sqrt_beta():
    betas = schedules.scaled_linear_betas(1000)
    np.testing.assert_allclose(np.diff(np.sqrt(betas)), np.diff(np.sqrt(betas))[0], rtol=1e-9)
    np.testing.assert_allclose(betas[[0, -1]], [0.00085, 0.012])


def test_cosine_matches_paper_alpha_bar():
    num_timesteps, s = 1000, 0.008
    schedule = dj.get_schedule("cosine", num_timesteps)
    t = np.arange(1, num_timesteps + 1)

    def f(step):
        return math.cos((step / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

    expected = np.array([f(step) / f(0) for step in t])
    betas = np.asarray(schedules.cosine_betas(num_timesteps))
    unclipped = betas < 0.999
    # Clipping (at the very end) changes abar only from the first clipped step on.
    first_clipped = int(np.argmin(unclipped)) if not unclipped.all() else num_timesteps
    assert first_clipped > 990
    np.testing.assert_allclose(
        schedule.alphas_cumprod[:first_clipped], expected[:first_clipped], rtol=2e-5, atol=1e-7
    )
    assert betas.max() == pytest.approx(0.999)


def test_sigmoid_is_a_valid_decreasing_schedule():
    schedule = dj.get_schedule("sigmoid", 1000)
    abar = np.asarray(schedule.alphas_cumprod)
    assert np.all(np.diff(abar) < 0)
    assert 0.99 < abar[0] <= 1.0 and abar[-1] < 1e-3


@pytest.mark.parametrize("name", ALL_NAMES)
def test_zero_terminal_snr_rescale(name):
    original = dj.get_schedule(name, 1000)
    rescaled = dj.get_schedule(name, 1000, zero_terminal_snr=True)
    assert float(rescaled.alphas_cumprod[-1]) == 0.0
    assert float(rescaled.snr[-1]) == 0.0
    assert float(rescaled.betas[-1]) == 1.0
    betas64 = schedules.rescale_zero_terminal_snr(schedules._BETA_FUNCTIONS[name](1000))
    abar64 = np.cumprod(1 - betas64)
    snr64 = abar64 / (1 - abar64)
    assert np.all(np.diff(snr64) < 0), "SNR must stay strictly decreasing"
    np.testing.assert_allclose(rescaled.snr[0], original.snr[0], rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(rescaled.posterior_variance)))
    assert np.all(np.isfinite(np.asarray(rescaled.posterior_log_variance_clipped)))


def test_derived_constants_match_float64_reference():
    betas = np.linspace(1e-4, 0.02, 1000)
    schedule = dj.make_schedule(betas)
    alphas = 1 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    posterior_variance = betas * (1 - abar_prev) / (1 - abar)
    expected = {
        "alphas": alphas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": np.sqrt(abar),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - abar),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(
            np.append(posterior_variance[1], posterior_variance[1:])
        ),
        "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1 - abar),
        "posterior_mean_coef2": (1 - abar_prev) * np.sqrt(alphas) / (1 - abar),
        "snr": abar / (1 - abar),
        "log_snr": np.log(abar / (1 - abar)),
    }
    for name, value in expected.items():
        stored = getattr(schedule, name)
        assert stored.dtype == jnp.float32, name
        np.testing.assert_allclose(
            stored, value.astype(np.float32), rtol=1e-6, atol=1e-7, err_msg=name
        )


def test_schedule_is_a_pytree_usable_under_jit_and_sharding():
    schedule = dj.get_schedule("linear", 100)
    assert len(jax.tree_util.tree_leaves(schedule)) == len(dj.DiffusionSchedule._fields)

    @jax.jit
    def total(s):
        return s.alphas_cumprod.sum()

    chex.assert_trees_all_close(total(schedule), schedule.alphas_cumprod.sum(), rtol=1e-6)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    replicated = jax.device_put(
        schedule, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    )
    assert replicated.num_timesteps == 100
    chex.assert_trees_all_close(replicated, schedule)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: dj.get_schedule("quadratic", 10), "Unknown schedule 'quadratic'"),
        (lambda: dj.get_schedule("linear", 0), "num_timesteps must be >= 1, got 0"),
        (lambda: dj.get_schedule("cosine", 2.5), "num_timesteps must be an int"),
        (lambda: dj.make_schedule([0.1, 1.2]), r"betas\[1\] = 1.2"),
        (lambda: dj.make_schedule([0.1, 1.0, 0.2]), r"betas\[1\] = 1.0"),
        (lambda: dj.make_schedule([0.0, 0.1]), r"betas\[0\] = 0.0"),
        (lambda: dj.make_schedule([0.1, float("nan")]), "finite"),
        (lambda: dj.make_schedule(np.ones((2, 2)) * 0.1), "1-D"),
        (lambda: schedules.rescale_zero_terminal_snr([0.1]), ">= 2 steps"),
    ],
)
def test_bad_input_raises_clear_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_unknown_schedule_error_lists_allowed_names():
    with pytest.raises(ValueError) as error:
        dj.get_schedule("nope")
    for name in ALL_NAMES:
        assert name in str(error.value)
