"""Noise processes: closed forms against independent references, the SDE identities, inverses,
the static-pytree behaviour, and the errors for bad times and names."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax import processes

CONTINUOUS = {name: dj.get_process(name) for name in processes.CONTINUOUS_PROCESSES}
TIMES = np.linspace(0.02, 0.98, 25)


def reference_alpha_sigma(name, t):
    """alpha(t), sigma(t) from the papers' formulas, float64, written independently."""
    if name == "vp_linear":  # Song et al. 2021, eq. 29: mean coefficient exp(-int beta / 2)
        integral = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2
        alpha = np.exp(-0.5 * integral)
        return alpha, np.sqrt(1 - alpha**2)
    if name == "vp_cosine":  # Nichol & Dhariwal 2021, eq. 17, with abar = alpha^2
        f = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
        abar = f / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
        return np.sqrt(abar), np.sqrt(1 - abar)
    if name == "ve":  # Song et al. 2021, eq. 30
        return np.ones_like(t), 0.01 * (50.0 / 0.01) ** t
    if name == "edm":  # Karras et al. 2022: sigma(t) = t, here t * sigma_max
        return np.ones_like(t), 80.0 * t
    return 1 - t, t  # rectified flow


@pytest.mark.parametrize("name", CONTINUOUS)
def test_marginals_match_the_papers(name):
    alpha, sigma = CONTINUOUS[name].alpha_sigma(TIMES, np)
    expected_alpha, expected_sigma = reference_alpha_sigma(name, TIMES)
    np.testing.assert_allclose(alpha, expected_alpha, rtol=1e-12)
    np.testing.assert_allclose(sigma, expected_sigma, rtol=1e-12)
    # The float32 path used inside jit agrees to float32 rounding.
    alpha32, sigma32 = dj.alpha_sigma(CONTINUOUS[name], jnp.asarray(TIMES, jnp.float32), 1)
    np.testing.assert_allclose(alpha32, expected_alpha, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(sigma32, expected_sigma, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_derivatives_are_the_derivatives(name):
    # Central differences in float64 have error O(h^2 f''') ~ 1e-10 relative at h = 1e-5.
    process, step = CONTINUOUS[name], 1e-5
    d_alpha, d_sigma = process.derivatives(TIMES, np)
    (a_plus, s_plus), (a_minus, s_minus) = (
        process.alpha_sigma(TIMES + step, np),
        process.alpha_sigma(TIMES - step, np),
    )
    np.testing.assert_allclose(d_alpha, (a_plus - a_minus) / (2 * step), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(d_sigma, (s_plus - s_minus) / (2 * step), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_time_from_log_snr_inverts_log_snr(name):
    process = CONTINUOUS[name]
    alpha, sigma = process.alpha_sigma(TIMES, np)
    np.testing.assert_allclose(
        process.t_from_log_snr(2 * np.log(alpha / sigma), np), TIMES, rtol=1e-10
    )
    np.testing.assert_allclose(
        dj.log_snr(process, jnp.float32(0.5)), 2 * np.log(alpha / sigma)[12], rtol=1e-5
    )


@pytest.mark.parametrize("name", CONTINUOUS)
def test_sde_coefficients_generate_the_marginal(name):
    """For dx = f x dt + g dw: d alpha / dt = f alpha and d sigma^2 / dt = 2 f sigma^2 + g^2
    (Song et al. 2021, eq. 5 / Saerkkae & Solin eq. 5.51 for the mean and variance)."""
    process = CONTINUOUS[name]
    t = jnp.asarray(TIMES, jnp.float32)
    drift, diffusion_sq = dj.sde_coefficients(process, t)
    alpha, sigma = process.alpha_sigma(TIMES, np)
    d_alpha, d_sigma = process.derivatives(TIMES, np)
    np.testing.assert_allclose(drift * alpha, d_alpha, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        2 * drift * sigma**2 + diffusion_sq, 2 * sigma * d_sigma, rtol=1e-5, atol=1e-5
    )
    if name == "vp_linear":  # f = -beta / 2, g^2 = beta
        beta = 0.1 + TIMES * (20.0 - 0.1)
        np.testing.assert_allclose(drift, -beta / 2, rtol=1e-5)
        np.testing.assert_allclose(diffusion_sq, beta, rtol=1e-5)


def test_q_sample_on_a_continuous_process_is_the_reparameterised_marginal():
    process = dj.RectifiedFlow()
    x0, eps = jnp.ones((3, 2)), jnp.full((3, 2), 2.0)
    t = jnp.asarray([0.0, 0.25, 1.0])
    np.testing.assert_allclose(dj.q_sample(process, x0, t, eps), [[1, 1], [1.25, 1.25], [2, 2]])


def test_processes_are_static_pytrees():
    process = dj.get_process("edm", sigma_max=80.0)
    assert jax.tree.leaves(process) == [] and hash(process) == hash(dj.EDM())
    traces = []

    @jax.jit
    def sigma_at(p, t):
        traces.append(1)
        return p.alpha_sigma(t)[1]

    assert float(sigma_at(process, 0.5)) == 40.0
    assert float(sigma_at(dj.EDM(), 0.25)) == 20.0 and len(traces) == 1
    assert float(sigma_at(dj.EDM(sigma_max=10.0), 0.5)) == 5.0 and len(traces) == 2


def test_model_times():
    assert float(dj.RectifiedFlow().model_time(0.25)) == 250.0
    np.testing.assert_allclose(dj.EDM().model_time(0.5, np), 0.25 * math.log(40.0))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda: dj.get_process("vp"),
            ValueError,
            r"Unknown process 'vp'; expected one of \('discrete', 'vp_linear'",
        ),
        (lambda: dj.get_process("discrete"), ValueError, "build it with diffjax.get_schedule"),
        (
            lambda: dj.get_process("edm", sigma=1.0),
            ValueError,
            r"does not take \['sigma'\]; its options are \['sigma_max'\]",
        ),
        (
            lambda: dj.get_process("ve", sigma_min=2.0, sigma_max=1.0),
            ValueError,
            "0 < sigma_min < sigma_max",
        ),
        (lambda: dj.get_process("vp_linear", beta_min="a"), ValueError, "must be a finite number"),
        (
            lambda: processes.check_time(dj.RectifiedFlow(), jnp.asarray([0.5, 1.5])),
            ValueError,
            r"t must lie in \[0, 1\] for the continuous process 'rectified_flow'; got values in \[0.5, 1.5\]",
        ),
        (
            lambda: processes.check_time(dj.RectifiedFlow(), jnp.asarray([1, 2])),
            TypeError,
            "takes float t in \\[0, 1\\]",
        ),
        (
            lambda: dj.q_sample(
                dj.VE(), jnp.ones((2, 3)), jnp.asarray([0.1, -0.1]), jnp.ones((2, 3))
            ),
            ValueError,
            r"t must lie in \[0, 1\]",
        ),
        (
            lambda: dj.q_sample("vp", jnp.ones((2, 3)), jnp.asarray([0.1, 0.1]), jnp.ones((2, 3))),
            TypeError,
            "DiffusionSchedule .* or a continuous process",
        ),
        (
            lambda: dj.sde_coefficients(dj.get_schedule("linear", 100), 0.5),
            TypeError,
            "needs a continuous process",
        ),
    ],
)
def test_bad_input_raises_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_time_checks_apply_only_to_concrete_values():
    # Under jit the values are unknown: the shape is checked, the range is not.
    process = dj.RectifiedFlow()
    out = jax.jit(lambda t: dj.q_sample(process, jnp.ones((2, 3)), t, jnp.zeros((2, 3))))(
        jnp.asarray([0.2, 0.4])
    )
    np.testing.assert_allclose(out[:, 0], [0.8, 0.6], rtol=1e-6)
