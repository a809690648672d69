"""Prediction types as linear maps of (x0, eps): definitions, round trips on every process,
EDM's preconditioning against the paper's c_skip / c_out / c_in, and the errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax import predictions

PROCESSES = {
    "discrete": dj.get_schedule("cosine", 1000),
    **{
        name: dj.get_process(name)
        for name in ("vp_linear", "vp_cosine", "ve", "edm", "rectified_flow")
    },
}


def _times(process):
    if isinstance(process, dj.DiffusionSchedule):
        return jnp.asarray([0, 10, 500, 990])
    return jnp.asarray([0.01, 0.2, 0.6, 0.97])


def _types(process):
    return [
        p
        for p in predictions.PREDICTION_TYPES
        if not (p == "flow" and isinstance(process, dj.DiffusionSchedule))
    ]


@pytest.mark.parametrize("name", PROCESSES)
def test_every_prediction_round_trips_on_every_process(name):
    process = PROCESSES[name]
    key_x, key_eps = jax.random.split(jax.random.key(0))
    x0, eps = jax.random.normal(key_x, (4, 6)), jax.random.normal(key_eps, (4, 6))
    t = _times(process)
    x_t = dj.q_sample(process, x0, t, eps)
    m = dj.marginal(process, t, 2)
    for prediction_type in _types(process):
        target = predictions.target(prediction_type, x0, eps, m)
        a, b = predictions.coefficients(prediction_type, m)
        np.testing.assert_allclose(
            target, a * x0 + b * eps, rtol=1e-5, atol=1e-5, err_msg=prediction_type
        )
        x0_hat, eps_hat = predictions.to_x0_eps(prediction_type, target, x_t, m)
        # Inverting divides by det; with sigma / alpha down to 0.01 (and up to 80 for EDM) the
        # float32 rounding of x_t is amplified by up to 1 / min(alpha, sigma) ~ 1e2.
        np.testing.assert_allclose(x0_hat, x0, atol=5e-4, err_msg=prediction_type)
        np.testing.assert_allclose(eps_hat, eps, atol=5e-4, err_msg=prediction_type)


def test_the_velocity_of_rectified_flow_is_eps_minus_x0():
    process = dj.RectifiedFlow()
    x0, eps = jnp.ones((2, 3)), jnp.full((2, 3), 3.0)
    m = dj.marginal(process, jnp.asarray([0.3, 0.7]), 2)
    np.testing.assert_allclose(predictions.target("flow", x0, eps, m), eps - x0)
    # And it is d x_t / dt along the path.
    x_t = lambda t: dj.q_sample(process, x0, t, eps)  # noqa: E731
    _, tangent = jax.jvp(x_t, (jnp.asarray([0.3, 0.7]),), (jnp.ones(2),))
    np.testing.assert_allclose(tangent, eps - x0)


def test_generalised_v_is_alpha_eps_minus_sigma_x0_and_inverts_on_ve():
    process = dj.VE()
    x0, eps = jnp.ones((1, 2)), jnp.full((1, 2), -2.0)
    t = jnp.asarray([0.5])
    m = dj.marginal(process, t, 2)
    v = predictions.target("v", x0, eps, m)
    np.testing.assert_allclose(v, m.alpha * eps - m.sigma * x0, rtol=1e-6)
    x0_hat, eps_hat = predictions.to_x0_eps("v", v, dj.q_sample(process, x0, t, eps), m)
    np.testing.assert_allclose(x0_hat, x0, rtol=1e-5)
    np.testing.assert_allclose(eps_hat, eps, rtol=1e-5)


def test_edm_prediction_is_karras_preconditioning():
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (Karras et al. 2022, eq. 7, Table 1)."""
    process = dj.EDM()
    sigma_data = 0.5
    t = jnp.asarray([0.001, 0.01, 0.1, 0.5])
    sigma = np.asarray(t) * 80.0
    m = dj.marginal(process, t, 2)
    x0, eps = (
        jax.random.normal(jax.random.key(1), (4, 5)),
        jax.random.normal(jax.random.key(2), (4, 5)),
    )
    x = np.asarray(dj.q_sample(process, x0, t, eps), np.float64)
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / np.sqrt(sigma**2 + sigma_data**2)
    c_in = 1 / np.sqrt(sigma**2 + sigma_data**2)
    # The F target of EDM's loss, eq. 8: (x0 - c_skip x) / c_out.
    expected_f = (np.asarray(x0, np.float64) - c_skip[:, None] * x) / c_out[:, None]
    target = predictions.target("edm", x0, eps, m)
    np.testing.assert_allclose(target, expected_f, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(predictions.input_scale("edm", m)[:, 0], c_in, rtol=1e-6)
    x0_hat, _ = predictions.to_x0_eps("edm", target, jnp.asarray(x, jnp.float32), m)
    np.testing.assert_allclose(
        x0_hat, c_skip[:, None] * x + c_out[:, None] * expected_f, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(dj.EDM().model_time(np.asarray(t), np), np.log(sigma) / 4)


def test_convert_prediction_between_types():
    process = dj.VPLinear()
    t = jnp.asarray([0.3])
    x0, eps = jnp.full((1, 2), 0.5), jnp.full((1, 2), 1.5)
    m = dj.marginal(process, t, 2)
    x_t = dj.q_sample(process, x0, t, eps)
    v = predictions.target("v", x0, eps, m)
    np.testing.assert_allclose(
        dj.convert_prediction(v, x_t, m, "v", "flow"),
        predictions.target("flow", x0, eps, m),
        rtol=1e-5,
    )


def test_unsupported_and_unknown_types_raise():
    with pytest.raises(ValueError, match="'flow' .*needs a continuous process"):
        predictions.check_prediction_supported("flow", PROCESSES["discrete"])
    with pytest.raises(
        ValueError,
        match=r"Unknown prediction_type 'score'; expected one of \('eps', 'x0', 'v', 'flow', 'edm'\)",
    ):
        predictions.check_prediction_supported("score", PROCESSES["edm"])
