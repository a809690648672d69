"""The reverse-SDE samplers (Euler-Maruyama, predictor-corrector) and the adaptive
probability-flow ODE (diffrax), checked with exact denoisers (tests/gaussian_oracle.py).

* Gaussian data N(m, diag(s^2)): with the exact score, a sampler's output law tends to the law
  of E[x0 | x_{t_min}] (the final x0-prediction shrinks each axis to the effective std
  alpha s^2 / sqrt(alpha^2 s^2 + sigma^2) at t_min) as the steps grow. The moment statistic
  :func:`gaussian_moment_chi2` of N samples of that law is chi^2 with 2D dof: at many steps it
  must lie below the 0.999 quantile, at few steps (the discretisation bias) far above it.
* The adaptive ODE solve against the exact flow map of Gaussian data (per sample) and against a
  fixed-step Heun solve at high NFE; its NFE against a counted number of model calls.
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

DIM = 4
MEANS, STDS = np.linspace(-0.5, 0.5, DIM), np.geomspace(0.2, 1.0, DIM)
GAUSS = oracle.gaussian(MEANS, STDS)
LIMIT = stats.chi2.ppf(0.999, 2 * DIM)

pytestmark = pytest.mark.usefixtures("unoptimized")


def target_stds(process, t_min):
    alpha, sigma = process.alpha_sigma(np.float64(t_min), np)
    return alpha * STDS**2 / np.sqrt(alpha**2 * STDS**2 + sigma**2)


SDE_CASES = [
    ("vp_linear", "euler_maruyama", {}),
    ("ve", "euler_maruyama", {}),
    ("vp_linear", "pc", dict(predictor="reverse_diffusion", snr=0.01)),
    ("ve", "pc", dict(predictor="reverse_diffusion", snr=0.16)),
    ("vp_linear", "pc", dict(predictor="ancestral", snr=0.01)),
    ("vp_linear", "pc", dict(predictor="euler_maruyama", snr=0.01, corrector_steps=2)),
]


@pytest.mark.parametrize("process_name, name, options", SDE_CASES)
def test_sde_samplers_converge_to_the_data_as_steps_grow(process_name, name, options):
    process = dj.get_process(process_name)
    model_fn = oracle.exact_model_fn(GAUSS, process, "eps")
    num = 4000
    statistics = {}
    for num_steps in (4, 400):
        x = samplers.sample(
            name, model_fn, process, dj.sample_keys(1, 0, num), (num, DIM),
            num_steps=num_steps, prediction_type="eps", **options,
        )  # fmt: skip
        statistics[num_steps] = oracle.gaussian_moment_chi2(x, MEANS, target_stds(process, 1e-3))
    assert statistics[400] < LIMIT, statistics
    assert statistics[4] > 10 * LIMIT, statistics


def test_sde_samplers_sample_a_mixture():
    """8 modes of width 0.1 on a ring: weights, widths and means within their chi^2 quantiles."""
    process = dj.get_process("vp_linear")
    mixture = oracle.ring_mixture(8, 1.0, 0.1, 2)
    model_fn = oracle.exact_model_fn(mixture, process, "eps")
    x = samplers.pc_sample(
        model_fn, process, dj.sample_keys(2, 0, 1000), (1000, 2), num_steps=2000, snr=0.01,
        predictor="ancestral", prediction_type="eps",
    )  # fmt: skip
    alpha, sigma = process.alpha_sigma(np.float64(1e-3), np)
    stds = alpha * mixture.stds**2 / np.sqrt(alpha**2 * mixture.stds**2 + sigma**2)
    result = oracle.mode_statistics(mixture, stds, x)
    assert result.weights_chi2 < stats.chi2.ppf(0.999, 7), result
    assert result.width_chi2 < stats.chi2.ppf(0.999, 8), result
    assert result.means_chi2 < stats.chi2.ppf(0.999, 16), result


def test_sde_samples_depend_on_their_own_key_only():
    process = dj.get_process("ve")
    model_fn = oracle.exact_model_fn(GAUSS, process, "eps")
    keys = dj.sample_keys(3, 0, 16)
    whole = samplers.pc_sample(
        model_fn, process, keys, (16, DIM), num_steps=20, prediction_type="eps"
    )
    half = samplers.pc_sample(
        model_fn, process, keys[8:], (8, DIM), num_steps=20, prediction_type="eps"
    )
    np.testing.assert_allclose(whole[8:], half, rtol=0, atol=1e-5)
    mesh = Mesh(np.asarray(jax.devices()), ("data",), axis_types=(AxisType.Auto,))
    sharded = samplers.pc_sample(
        model_fn, process, keys, (16, DIM), num_steps=20, prediction_type="eps",
        out_sharding=NamedSharding(mesh, PartitionSpec("data")),
    )  # fmt: skip
    np.testing.assert_allclose(sharded, whole, rtol=0, atol=1e-5)


def test_pc_and_euler_maruyama_take_a_schedule_in_its_continuous_view():
    schedule = dj.get_schedule("linear", 1000)
    view = dj.schedule_time(schedule)
    model_fn = oracle.exact_model_fn(GAUSS, view, "eps")
    x = samplers.euler_maruyama_sample(
        model_fn, schedule, dj.sample_keys(4, 0, 4000), (4000, DIM), num_steps=400,
        t_min=view.first_time(), prediction_type="eps",
    )  # fmt: skip
    assert oracle.gaussian_moment_chi2(x, MEANS, target_stds(view, view.first_time())) < LIMIT


@pytest.mark.parametrize("solver", list(samplers.ODE_SOLVERS))
def test_the_adaptive_ode_reports_the_model_calls_it_made(solver):
    process = dj.RectifiedFlow()
    counter = oracle.CallCounter(oracle.exact_model_fn(GAUSS, process, "flow"))
    x, ode_stats = samplers.ode_sample(
        counter, process, jax.random.key(0), (4, DIM), solver=solver, rtol=1e-4, atol=1e-4,
        prediction_type="flow", return_stats=True,
    )  # fmt: skip
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert int(ode_stats.num_function_evals) == counter.calls
    assert int(ode_stats.num_steps) == int(ode_stats.num_accepted_steps) + int(
        ode_stats.num_rejected_steps
    )


@pytest.mark.parametrize("process_name", ["vp_linear", "vp_cosine", "ve", "edm", "rectified_flow"])
def test_the_adaptive_ode_follows_the_exact_flow(process_name):
    """Per sample, against the exact ODE map of Gaussian data, z = (x - alpha m) / sqrt(alpha^2
    s^2 + sigma^2) kept fixed from t = 1 to t_min, then E[x0 | x_{t_min}]; the error is the
    solver's: it must fall in proportion to the tolerance (a hundredth of it, to within a factor
    of 3 for the non-asymptotic regime) and at 1e-5 stay below a tenth of an 8-bit gray level
    (2 / 255 / 10) on the [-1, 1] scale, the precision the samples are stored at."""
    process = dj.get_process(process_name)
    prediction_type = "eps" if process_name in ("vp_linear", "ve", "edm") else "v"
    model_fn = oracle.exact_model_fn(GAUSS, process, prediction_type)
    x_T_unit = jax.random.normal(jax.random.key(1), (64, DIM))
    alpha_1, sigma_1 = process.alpha_sigma(np.float64(1.0), np)
    x_T = (sigma_1 * x_T_unit).astype(jnp.float32)
    z = (np.asarray(x_T, np.float64) - alpha_1 * MEANS) / np.sqrt(alpha_1**2 * STDS**2 + sigma_1**2)
    alpha, sigma = process.alpha_sigma(np.float64(1e-3), np)
    exact = MEANS + alpha * STDS**2 * z / np.sqrt(alpha**2 * STDS**2 + sigma**2)
    errors = {}
    for tolerance in (1e-3, 1e-5):
        x = samplers.ode_sample(
            model_fn, process, jax.random.key(0), (64, DIM), x_T=x_T, rtol=tolerance,
            atol=tolerance,
            prediction_type=prediction_type,
        )  # fmt: skip
        errors[tolerance] = np.abs(np.asarray(x, np.float64) - exact).max()
    assert errors[1e-5] < 2 / 255 / 10, errors
    assert errors[1e-5] < errors[1e-3] / 30, errors


def test_the_adaptive_ode_agrees_with_fixed_step_heun_at_high_nfe():
    process = dj.RectifiedFlow()
    mixture = oracle.ring_mixture(8, 1.0, 0.1, 2)
    model_fn = oracle.exact_model_fn(mixture, process, "flow")
    keys = dj.sample_keys(7, 0, 256)
    adaptive, ode_stats = samplers.ode_sample(
        model_fn, process, keys, (256, 2), prediction_type="flow", rtol=1e-6, atol=1e-6,
        t_min=1e-3, return_stats=True,
    )  # fmt: skip
    heun = samplers.flow_heun_sample(
        model_fn, process, keys, (256, 2), num_steps=1000, prediction_type="flow", t_min=1e-3
    )
    # Heun's global error at 1000 steps is O(h^2) ~ 1e-6 times the flow's curvature; both end
    # with the same x0-prediction at t_min (Heun's last step, t_min -> 0, is exact for 'flow':
    # the velocity's x0 term).
    assert int(ode_stats.num_function_evals) < 1999
    np.testing.assert_allclose(adaptive, heun, rtol=0, atol=1e-3)


def test_the_adaptive_ode_runs_sharded():
    process = dj.RectifiedFlow()
    model_fn = oracle.exact_model_fn(GAUSS, process, "flow")
    mesh = Mesh(np.asarray(jax.devices()), ("data",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    keys = dj.sample_keys(8, 0, 16)
    plain = samplers.ode_sample(model_fn, process, keys, (16, DIM), prediction_type="flow")
    sharded = samplers.ode_sample(
        model_fn, process, keys, (16, DIM), prediction_type="flow", out_sharding=sharding
    )
    assert sharded.sharding.is_equivalent_to(sharding, 2)
    np.testing.assert_allclose(sharded, plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "name, process, kwargs, error, message",
    [
        ("pc", dj.VE(), dict(predictor="heun"), ValueError, "predictor 'heun'"),
        ("pc", dj.VE(), dict(corrector="ald"), ValueError, "corrector 'ald'"),
        ("pc", dj.VE(), dict(corrector_steps=0), ValueError, "corrector_steps"),
        ("pc", dj.VE(), dict(snr=-1.0), ValueError, "snr"),
        ("euler_maruyama", dj.VPCosine(), dict(prediction_type="v"), ValueError, "infinite drift"),
        ("euler_maruyama", dj.VPCosine(), {}, ValueError, "zero SNR"),
        ("euler_maruyama", dj.VE(), dict(t_min=2.0), ValueError, "t_min"),
        ("ode", dj.VE(), dict(solver="rk4"), ValueError, "solver 'rk4'"),
        ("ode", dj.VE(), dict(rtol=0.0), ValueError, "rtol"),
        ("ode", dj.RectifiedFlow(), {}, ValueError, "zero SNR"),
        ("ode", dj.VPCosine(), {}, ValueError, "zero SNR"),
        ("ode", dj.VE(), dict(max_steps=0), ValueError, "max_steps"),
    ],
)
def test_bad_options_raise_before_anything_is_traced(name, process, kwargs, error, message):
    def model_fn(x, t):
        raise AssertionError("traced")

    kwargs = {"prediction_type": "eps", **kwargs}
    with pytest.raises(error, match=message):
        samplers.sample(name, model_fn, process, jax.random.key(0), (2, DIM), **kwargs)
    with pytest.raises(error, match=message):
        samplers.check_sampler_options(name, process, kwargs)
