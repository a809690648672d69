"""The continuous-time samplers (EDM's Euler/Heun with churn, the flow samplers, and DDIM and
DPM-Solver++ on continuous processes), checked with exact denoisers (tests/gaussian_oracle.py).

References: for Gaussian data N(m, diag(s^2)) the probability-flow ODE of every process keeps
z = (x - alpha m) / sqrt(alpha^2 s^2 + sigma^2) fixed, so the exact end of a deterministic run
from x_T is closed-form per sample; the error against it must fall with the method's order.
Mixtures are checked with the per-mode chi^2 statistics of tests/test_samplers.py.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from scipy import stats

import diffjax as dj
from diffjax import samplers

sys.path.insert(0, str(Path(__file__).parent))
import gaussian_oracle as oracle  # noqa: E402

DIM = 8
MEANS, STDS = np.linspace(-0.5, 0.5, DIM), np.geomspace(0.1, 1.0, DIM)
GAUSS = oracle.gaussian(MEANS, STDS)
QUANTILE = 0.999


pytestmark = pytest.mark.usefixtures("unoptimized")


def exact_end(process, plan, x_T, flow, last_step_from_t_min=False):
    """The exact result of a deterministic sampler from x_T on this plan's grid, float64.

    The sigma/alpha samplers end with the denoiser at their last grid point l:
    E[x0 | x_l] = m + alpha_l s^2 z / sqrt(alpha_l^2 s^2 + sigma_l^2); the flow samplers end at
    the state at t = 0, alpha(0) m + sqrt(alpha(0)^2 s^2 + sigma(0)^2) z, except those whose
    grid ends at a fixed t_min > 0 (``last_step_from_t_min``): their last step is one Euler
    step from t_l = t_min with the exact velocity v = alpha'_l x0_hat + sigma'_l eps_hat, a step
    of fixed length that no number of steps refines, so the reference includes it.
    """
    grid = plan.grid
    alpha_0, sigma_0 = np.float64(grid.alpha[0]), np.float64(grid.sigma[0])
    z = (np.asarray(x_T, np.float64) - alpha_0 * MEANS) / np.sqrt(alpha_0**2 * STDS**2 + sigma_0**2)
    alpha, sigma = np.float64(grid.alpha[-2]), np.float64(grid.sigma[-2])
    x0_hat = MEANS + alpha * STDS**2 * z / np.sqrt(alpha**2 * STDS**2 + sigma**2)
    if flow and last_step_from_t_min:
        t_last = np.float64(grid.time[-2])
        d_alpha, d_sigma = process.derivatives(t_last, np)
        x_last = alpha * MEANS + np.sqrt(alpha**2 * STDS**2 + sigma**2) * z
        eps_hat = (x_last - alpha * x0_hat) / sigma
        return x_last - t_last * (d_alpha * x0_hat + d_sigma * eps_hat)
    if flow:
        alpha, sigma = process.alpha_sigma(np.float64(0.0), np)
        return alpha * MEANS + np.sqrt(alpha**2 * STDS**2 + sigma**2) * z
    return x0_hat


def run_error(process, name, prediction_type, num_steps):
    plan = samplers.SAMPLERS[name].plan(
        process, num_steps=num_steps, prediction_type=prediction_type
    )
    x_T = plan.start_scale * jax.random.normal(jax.random.key(0), (64, DIM))
    model_fn = oracle.exact_model_fn(GAUSS, process, prediction_type)
    out = samplers.sample(
        name, model_fn, process, jax.random.key(0), x_T.shape, num_steps=num_steps,
        prediction_type=prediction_type, x_T=x_T,
    )  # fmt: skip
    flow = name.startswith("flow")
    fixed_t_min = flow and samplers.flow.DEFAULT_T_MIN[name.removeprefix("flow_")] > 0
    reference = exact_end(process, plan, x_T, flow, last_step_from_t_min=fixed_t_min)
    return float(np.max(np.abs(np.asarray(out, np.float64) - reference)))


ORDER_CASES = [
    # process, sampler, prediction, step counts, order
    ("edm", "euler", "edm", (16, 32, 64), 1),
    ("edm", "heun", "edm", (16, 32, 64), 2),
    ("vp_linear", "heun", "eps", (16, 32, 64), 2),
    ("rectified_flow", "euler", "flow", (16, 32, 64), 1),
    ("rectified_flow", "heun", "flow", (16, 32, 64), 2),
    ("rectified_flow", "flow_euler", "flow", (16, 32, 64), 1),
    ("rectified_flow", "flow_heun", "flow", (16, 32, 64), 2),
    ("rectified_flow", "flow_midpoint", "flow", (8, 16, 32), 2),
    ("vp_cosine", "flow_midpoint", "v", (8, 16, 32), 2),
    ("vp_linear", "dpm_solver", "eps", (16, 32, 64), 2),
    ("ve", "dpm_solver", "eps", (16, 32, 64), 2),
    ("vp_linear", "ddim", "eps", (16, 32, 64), 1),
]


@pytest.mark.parametrize("process_name, name, prediction_type, steps, order", ORDER_CASES)
def test_error_against_the_exact_flow_falls_with_the_method_order(
    process_name, name, prediction_type, steps, order
):
    """The observed order log2(e(N) / e(2N)) over two doublings. A method of order p has
    e(N) = C N^-p (1 + O(1/N)), so at these N each estimate lies in [p - 0.5, p + 0.5] for a
    first-order method and in [p - 0.5, p + 1.5] for a second-order one (whose slack admits
    the midpoint rule's superconvergence on these linear velocity fields, measured at 2.5-3.3);
    the two windows do not overlap. The float32 floor (~1e-6) is below every error here."""
    process = dj.get_process(process_name)
    errors = [run_error(process, name, prediction_type, n) for n in steps]
    orders = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
    upper = order + (0.5 if order == 1 else 1.5)
    assert np.all(orders > order - 0.5) and np.all(orders < upper), (errors, orders)


def test_euler_and_heun_on_the_karras_grid_do_not_depend_on_the_process():
    """In y = x / alpha, s = sigma / alpha every process has the same ODE (Karras et al. 2022,
    eq. 4), so on the same sigma grid the samplers agree up to float32 rounding."""
    results = []
    for name in ("edm", "vp_linear", "rectified_flow"):
        process = dj.get_process(name)
        results.append([run_error(process, sampler, "eps", 12) for sampler in ("euler", "heun")])
    np.testing.assert_allclose(results[1], results[0], rtol=1e-3)
    np.testing.assert_allclose(results[2], results[0], rtol=1e-3)


@pytest.mark.parametrize("num_steps", [1, 2, 5])
def test_uniform_grid_ends_at_t_min_or_one_step_above_the_data(num_steps):
    trailing = samplers.uniform_times(num_steps, t_max=0.9)
    np.testing.assert_allclose(trailing, 0.9 * np.arange(num_steps, 0, -1) / num_steps)
    short_end = samplers.uniform_times(num_steps, t_max=0.9, t_min=0.01)
    np.testing.assert_allclose(short_end, np.linspace(0.9, 0.01, num_steps))
    assert short_end[-1] == (0.01 if num_steps > 1 else 0.9)
    heun = samplers.SAMPLERS["flow_heun"].plan(
        dj.RectifiedFlow(), num_steps=num_steps, prediction_type="flow"
    )
    assert heun.grid.time[-1] == 0.0
    np.testing.assert_allclose(heun.grid.time[:-1], np.linspace(1.0, 1e-3, num_steps), rtol=1e-6)


def test_ddim_on_rectified_flow_is_the_flow_euler_sampler():
    process = dj.RectifiedFlow()
    model_fn = oracle.exact_model_fn(GAUSS, process, "flow")
    x_T = jax.random.normal(jax.random.key(2), (16, DIM))
    ddim = samplers.ddim_sample(model_fn, process, jax.random.key(0), x_T.shape, num_steps=10,
                                prediction_type="flow", x_T=x_T)  # fmt: skip
    euler = samplers.flow_euler_sample(
        model_fn, process, jax.random.key(0), x_T.shape, num_steps=10, prediction_type="flow",
        x_T=x_T,
    )  # fmt: skip
    np.testing.assert_allclose(ddim, euler, atol=2e-5)
    ddim_short = samplers.ddim_sample(
        model_fn, process, jax.random.key(0), x_T.shape, num_steps=10, t_min=1e-3,
        prediction_type="flow", x_T=x_T,
    )  # fmt: skip
    euler_short = samplers.flow_euler_sample(
        model_fn, process, jax.random.key(0), x_T.shape, num_steps=10, t_min=1e-3,
        prediction_type="flow", x_T=x_T,
    )  # fmt: skip
    np.testing.assert_allclose(ddim_short, euler_short, atol=2e-5)


@pytest.mark.parametrize(
    "name, expected",
    [("euler", lambda n: n), ("heun", lambda n: 2 * n - 1), ("flow_euler", lambda n: n),
     ("flow_midpoint", lambda n: 2 * n), ("flow_heun", lambda n: 2 * n - 1)],
)  # fmt: skip
def test_number_of_function_evaluations(name, expected):
    process = dj.RectifiedFlow()
    for num_steps in (5, 9):
        counter = oracle.CallCounter(oracle.exact_model_fn(GAUSS, process, "flow"))
        out = samplers.sample(
            name, counter, process, jax.random.key(0), (4, DIM), num_steps=num_steps,
            prediction_type="flow",
        )  # fmt: skip
        jax.block_until_ready(out)
        jax.effects_barrier()
        assert counter.calls == expected(num_steps), (name, num_steps)


def _effective_stds(mixture, plan):
    alpha, sigma = float(plan.grid.alpha[-2]), float(plan.grid.sigma[-2])
    return alpha * mixture.stds**2 / np.sqrt(alpha**2 * mixture.stds**2 + sigma**2)


@pytest.mark.parametrize(
    "process_name, name, prediction_type, num_steps, options",
    [
        ("edm", "heun", "edm", 32, {}),
        ("edm", "heun", "edm", 64, dict(s_churn=20.0, s_tmin=0.05, s_tmax=50.0)),
        ("rectified_flow", "flow_heun", "flow", 64, {}),
        ("rectified_flow", "flow_midpoint", "flow", 32, {}),
        ("vp_cosine", "dpm_solver", "v", 20, {}),
    ],
)
def test_samplers_reproduce_a_mixture(process_name, name, prediction_type, num_steps, options):
    """8 modes of width 0.1 on a ring in 2-D: weights, widths and means of 1000 samples within
    their null chi^2 laws' 0.999 quantiles."""
    process = dj.get_process(process_name)
    mixture = oracle.ring_mixture(8, 1.0, 0.1, 2)
    model_fn = oracle.exact_model_fn(mixture, process, prediction_type)
    kwargs = dict(num_steps=num_steps, prediction_type=prediction_type, **options)
    plan = samplers.SAMPLERS[name].plan(process, **kwargs)
    samples = samplers.sample(name, model_fn, process, jax.random.key(5), (1000, 2), **kwargs)
    result = oracle.mode_statistics(mixture, _effective_stds(mixture, plan), samples)
    assert result.weights_chi2 < stats.chi2.ppf(QUANTILE, 7), result
    assert result.width_chi2 < stats.chi2.ppf(QUANTILE, 8), result
    assert result.means_chi2 < stats.chi2.ppf(QUANTILE, 16), result


def test_per_sample_keys_make_samples_independent_of_the_batch_and_devices():
    process = dj.EDM()
    model_fn = oracle.exact_model_fn(GAUSS, process, "edm")
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3), i))(jnp.arange(16))
    kwargs = dict(num_steps=8, prediction_type="edm", s_churn=10.0, return_trajectory=True)
    whole, path = samplers.heun_sample(model_fn, process, keys, (16, DIM), **kwargs)
    halves = [
        samplers.heun_sample(model_fn, process, keys[i : i + 8], (8, DIM), **kwargs) for i in (0, 8)
    ]
    # The keys fix every random draw: the starts are bit-identical in any batch...
    np.testing.assert_array_equal(path.x_t[0], np.concatenate([h[1].x_t[0] for h in halves]))
    # ...and so is the churn noise; what may differ is the float32 rounding of the model's
    # arithmetic, which XLA compiles per batch shape: a few ulps per call, carried through 15
    # calls of a contraction, stays far below 1e-5.
    np.testing.assert_allclose(whole, np.concatenate([h[0] for h in halves]), rtol=0, atol=1e-5)
    mesh = Mesh(np.asarray(jax.devices()), ("data",), axis_types=(AxisType.Auto,))
    sharded, _ = samplers.heun_sample(
        model_fn,
        process,
        keys,
        (16, DIM),
        out_sharding=NamedSharding(mesh, PartitionSpec("data")),
        **kwargs,
    )
    np.testing.assert_allclose(sharded, whole, rtol=0, atol=1e-5)


def test_guidance_works_with_continuous_samplers():
    process = dj.RectifiedFlow()

    def conditional(x, t, labels):
        return 0.5 * x + labels[:, None].astype(x.dtype) - 1.0

    labels = jnp.asarray([0, 1, 2, 3])
    guided = samplers.classifier_free_guidance(conditional, labels, 2.5, num_classes=3)

    def mixed(x, t):  # pred_uncond + w (pred_cond - pred_uncond), written out
        uncond = conditional(x, t, jnp.full_like(labels, 3))
        return uncond + 2.5 * (conditional(x, t, labels) - uncond)

    runs = {
        "heun": dict(num_steps=4), "flow_midpoint": dict(num_steps=4),
        "pc": dict(num_steps=4, t_max=0.999), "euler_maruyama": dict(num_steps=4, t_max=0.999),
        "ode": dict(rtol=1e-3, atol=1e-3),
    }  # fmt: skip
    for name, options in runs.items():
        a = samplers.sample(
            name, guided, process, jax.random.key(0), (4, DIM), prediction_type="flow", **options
        )
        b = samplers.sample(
            name, mixed, process, jax.random.key(0), (4, DIM), prediction_type="flow", **options
        )
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


class CountingModel:
    def __init__(self):
        self.traces = 0

    def __call__(self, scale, x_t, t):
        self.traces += 1
        return scale * x_t


@pytest.mark.parametrize(
    "name, per_compile", [("heun", 2), ("flow_midpoint", 2), ("dpm_solver", 1)]
)
def test_one_compile_per_shape_and_step_count(name, per_compile):
    model = CountingModel()
    process = dj.RectifiedFlow()

    def run(seed, num_steps, scale=0.1):
        model_fn = jax.tree_util.Partial(model, jnp.float32(scale))
        return samplers.sample(name, model_fn, process, jax.random.key(seed), (4, 3),
                               num_steps=num_steps, prediction_type="flow")  # fmt: skip

    run(0, 6)
    run(1, 6, scale=0.2)
    assert model.traces == per_compile
    run(2, 7)
    assert model.traces == 2 * per_compile


@pytest.mark.parametrize(
    "name, process, kwargs, error, message",
    [
        (
            "heun",
            dj.get_schedule("linear", 1000),
            dict(s_churn=1.0),
            ValueError,
            "s_churn=1.0 evaluates the model between",
        ),
        (
            "flow_euler",
            dj.get_schedule("linear", 1000),
            {},
            ValueError,
            "a discrete schedule has no velocity",
        ),
        (
            "flow_euler",
            dj.RectifiedFlow(),
            dict(prediction_type="eps"),
            ValueError,
            r"zero SNR at t=1 .*'eps' prediction cannot recover x0",
        ),
        ("flow_euler", dj.RectifiedFlow(), dict(shift=0.0), ValueError, "shift must be in"),
        ("flow_heun", dj.RectifiedFlow(), dict(t_min=1.0), ValueError, "need 0 <= t_min < t_max"),
        ("flow_heun", dj.RectifiedFlow(), dict(t_min=-0.1), ValueError, "t_min must be in"),
        (
            "ddim",
            dj.get_schedule("linear", 1000),
            dict(t_min=0.01),
            ValueError,
            "t_min is for continuous processes",
        ),
        ("heun", dj.EDM(), dict(sigma_min=90.0, sigma_max=100.0), ValueError, "does not overlap"),
        ("heun", dj.EDM(), dict(s_noise=-1.0), ValueError, "s_noise must be in"),
        ("heun", dj.EDM(), dict(eta=1.0), TypeError, r"does not take \['eta'\]"),
        (
            "ddim",
            dj.EDM(),
            dict(spacing="leading"),
            ValueError,
            "for a continuous process; expected one of \\('uniform',\\)",
        ),
        (
            "ddpm",
            dj.EDM(),
            {},
            ValueError,
            "for the continuous process 'edm' use 'ddim' with eta=1",
        ),
    ],
)
def test_bad_arguments_raise_before_anything_is_traced(name, process, kwargs, error, message):
    calls = []

    def model_fn(x, t):
        calls.append(1)
        return x

    kwargs = {"prediction_type": "flow" if name.startswith("flow_") else "eps", **kwargs}
    with pytest.raises(error, match=message):
        samplers.sample(name, model_fn, process, jax.random.key(0), (4, 2), **kwargs)
    assert not calls
