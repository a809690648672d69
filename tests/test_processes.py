"""Noise processes: closed forms against independent references, the SDE identities, inverses,
the static-pytree behaviour, and the errors for bad times and names."""

import dataclasses
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax import processes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

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


# ------------------------------------------------------------- a process of the user's own


@dataclasses.dataclass(frozen=True)
class TrigFlow:
    """A user's process class, none of the built-ins, and no JAX pytree: alpha = cos(a t),
    sigma = sin(a t) (variance preserving; a < pi / 2 keeps alpha(1) > 0)."""

    scale: float = 1.5
    name = "trig_flow"
    variance_preserving = True

    def alpha_sigma(self, t, xp=jnp):
        return xp.cos(self.scale * t), xp.sin(self.scale * t)

    def derivatives(self, t, xp=jnp):
        return -self.scale * xp.sin(self.scale * t), self.scale * xp.cos(self.scale * t)

    def t_from_log_snr(self, log_snr, xp=jnp):
        # log(alpha^2 / sigma^2) = -2 log tan(a t)
        return xp.arctan(xp.exp(-0.5 * log_snr)) / self.scale

    def model_time(self, t, xp=jnp):
        return 1000.0 * t


@dataclasses.dataclass(frozen=True)
class UserRectifiedFlow:
    """A user's copy of the rectified flow's formulas, to compare with the built-in bit for bit."""

    name = "user_rectified_flow"
    variance_preserving = False

    def alpha_sigma(self, t, xp=jnp):
        return 1.0 - t, t

    def derivatives(self, t, xp=jnp):
        return -xp.ones_like(t), xp.ones_like(t)

    def t_from_log_snr(self, log_snr, xp=jnp):
        return 1.0 / (1.0 + xp.exp(0.5 * log_snr))

    def model_time(self, t, xp=jnp):
        return 1000.0 * t


USER_DIM = 4
USER_MEANS, USER_STDS = np.linspace(-0.5, 0.5, USER_DIM), np.geomspace(0.2, 1.0, USER_DIM)


def _user_x0_end(process, t_last, x_T, t_first):
    """E[x0 | x_{t_last}] after the exact probability flow from x_T at t_first (Gaussian data:
    z = (x - alpha m) / sqrt(alpha^2 s^2 + sigma^2) is constant along the flow)."""
    alpha_0, sigma_0 = process.alpha_sigma(np.float64(t_first), np)
    z = (np.asarray(x_T, np.float64) - alpha_0 * USER_MEANS) / np.sqrt(
        alpha_0**2 * USER_STDS**2 + sigma_0**2
    )
    alpha, sigma = process.alpha_sigma(np.float64(t_last), np)
    return USER_MEANS + alpha * USER_STDS**2 * z / np.sqrt(alpha**2 * USER_STDS**2 + sigma**2)


def _user_error(name, num_steps, **options):
    """Largest error of sampler ``name`` on TrigFlow against the exact flow map, one grid."""
    import gaussian_oracle as oracle

    from diffjax import samplers

    process = TrigFlow()
    model_fn = oracle.exact_model_fn(oracle.gaussian(USER_MEANS, USER_STDS), process, "x0")
    plan = samplers.SAMPLERS[name].plan(
        process, num_steps=num_steps, prediction_type="x0", **options
    )
    grid = plan.grid
    x_T = float(grid.sigma[0]) * jax.random.normal(jax.random.key(0), (64, USER_DIM))
    out = dj.sample(name, model_fn, process, jax.random.key(0), x_T.shape, x_T=x_T,
                    num_steps=num_steps, prediction_type="x0", **options)  # fmt: skip
    reference = _user_x0_end(process, float(grid.time[-2]), x_T, float(grid.time[0]))
    return float(np.max(np.abs(np.asarray(out, np.float64) - reference)))


@pytest.mark.parametrize(
    "name, options, order",
    [("ddim", dict(t_min=1e-3), 1), ("euler", {}, 1), ("heun", {}, 2)],
)
def test_a_user_process_class_samples_with_the_deterministic_samplers(name, options, order):
    """For a process diffjax does not know, the error against the exact flow map of Gaussian
    data falls with the method's order: the window of
    test_samplers_continuous.test_error_against_the_exact_flow_falls_with_the_method_order."""
    processes.check_process(TrigFlow())
    errors = [_user_error(name, n, **options) for n in (16, 32, 64)]
    orders = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
    upper = order + (0.5 if order == 1 else 1.5)
    assert np.all(orders > order - 0.5) and np.all(orders < upper), (errors, orders)


def test_a_user_process_class_samples_with_the_adaptive_ode():
    """The adaptive solve's error against the exact flow map falls with its tolerance (a
    hundredfold smaller tolerance, at least a tenfold smaller error; the fifth-order pair's
    error scales about as tol^(5/6))."""
    import gaussian_oracle as oracle

    process = TrigFlow()
    model_fn = oracle.exact_model_fn(oracle.gaussian(USER_MEANS, USER_STDS), process, "x0")
    x_T = jax.random.normal(jax.random.key(0), (64, USER_DIM))
    reference = _user_x0_end(process, 1e-3, x_T, 1.0)
    errors = []
    for tolerance in (1e-3, 1e-5):
        out = dj.ode_sample(model_fn, process, jax.random.key(0), x_T.shape, x_T=x_T,
                            prediction_type="x0", rtol=tolerance, atol=tolerance, t_min=1e-3)  # fmt: skip
        errors.append(float(np.max(np.abs(np.asarray(out, np.float64) - reference))))
    assert errors[1] < errors[0] / 10, errors


@pytest.mark.parametrize("name, options", [("euler_maruyama", {}), ("pc", dict(snr=0.01))])
def test_a_user_process_class_samples_with_the_sde_samplers(name, options):
    import gaussian_oracle as oracle
    from scipy import stats

    process = TrigFlow()
    model_fn = oracle.exact_model_fn(oracle.gaussian(USER_MEANS, USER_STDS), process, "eps")
    num = 4000
    x = dj.sample(name, model_fn, process, dj.sample_keys(1, 0, num), (num, USER_DIM),
                  num_steps=400, prediction_type="eps", **options)  # fmt: skip
    alpha, sigma = process.alpha_sigma(np.float64(1e-3), np)
    stds = alpha * USER_STDS**2 / np.sqrt(alpha**2 * USER_STDS**2 + sigma**2)
    # N samples of the law of E[x0 | x_{t_min}]: the moment statistic is chi^2 with 2D dof.
    assert oracle.gaussian_moment_chi2(x, USER_MEANS, stds) < stats.chi2.ppf(0.999, 2 * USER_DIM)


def test_a_user_process_class_gives_the_built_in_losses_and_samples_bit_for_bit():
    user, built_in = UserRectifiedFlow(), dj.RectifiedFlow()
    x0 = jax.random.uniform(jax.random.key(0), (8, 4, 4, 1), minval=-1, maxval=1)
    params = {"w": jnp.float32(0.7)}

    def loss(params, process):
        return dj.denoising_loss(lambda x, t: params["w"] * x, process, x0, jax.random.key(1),
                                 prediction_type="flow")[0]  # fmt: skip

    assert loss(params, user) == loss(params, built_in)
    grads = [jax.grad(loss)(params, process)["w"] for process in (user, built_in)]
    assert grads[0] == grads[1]
    model_fn = jax.tree_util.Partial(lambda x, t: -0.5 * x)
    for name in ("flow_euler", "ddim"):
        a, b = (
            dj.sample(name, model_fn, process, jax.random.key(2), (4, 3), num_steps=5,
                      prediction_type="flow")
            for process in (user, built_in)
        )  # fmt: skip
        np.testing.assert_array_equal(a, b)


def test_an_object_without_the_protocol_is_refused_by_name():
    class Half:
        name = "half"

        def alpha_sigma(self, t, xp=jnp):
            return 1 - t, t

    with pytest.raises(TypeError, match=r"lacks \['variance_preserving', 'derivatives'"):
        dj.sample("ddim", lambda x, t: x, Half(), jax.random.key(0), (2, 2), prediction_type="eps")

    class Unhashable(UserRectifiedFlow):
        __hash__ = None

    with pytest.raises(TypeError, match="must be hashable"):
        dj.sample(
            "ddim", lambda x, t: x, Unhashable(), jax.random.key(0), (2, 2), prediction_type="eps"
        )
