"""Bits/dim of the discrete variational bound against its closed form for 8-bit Gaussian data.

Data: each pixel an 8-bit quantized Gaussian (the pmf of N(m, s^2) over the bins of [-1, 1]).
Model: the exact posterior-mean denoiser of the continuous N(m, s^2), so x0_hat is linear in
x_t. For that pair every term of DDPM's bound has an expectation we compute independently in
float64: the KL terms from the second moment of x0 - x0_hat, L_T in closed form, and L_0 by
Gauss-Hermite quadrature of the discretized decoder. diffjax's Monte-Carlo estimate (one x_t per
term and example) must match it within 5 standard errors, and the bound must lie above the
data's entropy, the lowest NLL any model can reach.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import diffjax as dj
from diffjax.errors import OdeSolveError
from diffjax.likelihood import bits_per_dim, discretized_gaussian_log_likelihood, normal_kl

MEANS = np.asarray([-0.3, 0.0, 0.2, 0.5])
STDS = np.asarray([0.3, 0.5, 0.2, 0.4])
GRID = np.arange(256) / 127.5 - 1.0


def pixel_pmfs():
    """[4, 256] probabilities of each 8-bit value: N(m, s^2) integrated over its bin."""
    edges = np.concatenate([[-np.inf], (GRID[:-1] + GRID[1:]) / 2, [np.inf]])
    cdf = special.ndtr((edges[None, :] - MEANS[:, None]) / STDS[:, None])
    return np.diff(cdf, axis=1)


def analytic_bpd(schedule):
    """E[bound] / (D ln 2) for the denoiser of N(m, s^2) on the quantized data, float64."""
    pmf = pixel_pmfs()
    abar = np.asarray(schedule.alphas_cumprod, np.float64)
    betas = np.asarray(schedule.betas, np.float64)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    posterior_var = betas * (1 - abar_prev) / (1 - abar)
    coef1 = betas * np.sqrt(abar_prev) / (1 - abar)
    centred_sq = (pmf * (GRID[None] - MEANS[:, None]) ** 2).sum(1)  # E[(x0 - m)^2] per pixel
    second = (pmf * GRID[None] ** 2).sum(1)  # E[x0^2]
    alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
    gain = alpha[:, None] * STDS**2 / (abar[:, None] * STDS**2 + sigma[:, None] ** 2)  # [T, 4]
    error_sq = (1 - gain * alpha[:, None]) ** 2 * centred_sq + gain**2 * sigma[:, None] ** 2
    kl_terms = (coef1[1:, None] ** 2 * error_sq[1:] / (2 * posterior_var[1:, None])).sum(0)
    prior = 0.5 * (-np.log(sigma[-1] ** 2) + sigma[-1] ** 2 + abar[-1] * second - 1)
    # L_0: the decoder N(x0_hat(x_1), beta~_1) (the log-variance clipped at index 0) over bins.
    nodes, weights = np.polynomial.hermite_e.hermegauss(120)
    weights = weights / weights.sum()
    x1 = alpha[0] * GRID[None, :, None] + sigma[0] * nodes[None, None, :]  # [1, 256, Q]
    mean = MEANS[:, None, None] + gain[0][:, None, None] * (x1 - alpha[0] * MEANS[:, None, None])
    scale = np.sqrt(posterior_var[1])
    upper = np.where(GRID[None, :, None] > 0.999, np.inf, GRID[None, :, None] + 1 / 255)
    lower = np.where(GRID[None, :, None] < -0.999, -np.inf, GRID[None, :, None] - 1 / 255)
    probability = special.ndtr((upper - mean) / scale) - special.ndtr((lower - mean) / scale)
    decoder = -(pmf[:, :, None] * weights[None, None] * np.log(np.maximum(probability, 1e-12))).sum(
        (1, 2)
    )
    entropy = -(pmf * np.log(np.maximum(pmf, 1e-300))).sum(1)
    per_pixel = prior + kl_terms + decoder
    return per_pixel.mean() / math.log(2), entropy.mean() / math.log(2)


def exact_model(schedule):
    means, stds = jnp.asarray(MEANS, jnp.float32), jnp.asarray(STDS, jnp.float32)

    def model_fn(x_t, t):
        flat = x_t.reshape(x_t.shape[0], -1)
        alpha = schedule.sqrt_alphas_cumprod[t][:, None]
        sigma = schedule.sqrt_one_minus_alphas_cumprod[t][:, None]
        x0_hat = means + alpha * stds**2 / (alpha**2 * stds**2 + sigma**2) * (flat - alpha * means)
        return ((flat - alpha * x0_hat) / sigma).reshape(x_t.shape)  # eps

    return model_fn


def sample_data(num, seed=0):
    rng = np.random.default_rng(seed)
    pmf = pixel_pmfs()
    values = np.stack([rng.choice(GRID, size=num, p=p) for p in pmf], axis=1)
    return jnp.asarray(values.reshape(num, 2, 2, 1), jnp.float32)


@pytest.fixture(scope="module")
def schedule():
    return dj.get_schedule("linear", 100)


def test_bits_per_dim_matches_the_analytic_bound_and_bounds_the_entropy(schedule):
    x0 = sample_data(4096)
    result = jax.jit(
        lambda x, k: bits_per_dim(exact_model(schedule), schedule, x, k, prediction_type="eps")
    )(x0, jax.random.key(0))
    bpd = np.asarray(result.bpd, np.float64)
    expected, entropy = analytic_bpd(schedule)
    standard_error = bpd.std(ddof=1) / np.sqrt(bpd.size)
    assert abs(bpd.mean() - expected) < 5 * standard_error, (bpd.mean(), expected, standard_error)
    assert np.all(np.asarray(result.standard_error) == 0.0)
    # A bound on -log p: above the entropy of the data, the lowest NLL any model can reach.
    assert entropy < expected, (entropy, expected)


def test_the_bound_tightens_as_the_chain_gets_longer():
    """The gap to the entropy (7.20 bits/dim here) is the fixed-variance chain's: beta~_t is far
    wider than the true posterior of 8-bit data near t = 0, which is why Improved DDPM learns the
    variances (Nichol & Dhariwal 2021, Sec. 3.1). It falls with T: 1.76, 0.90 and 0.71 bits/dim
    at T = 100, 1000 and 4000 (analytic); an exact discrete-data denoiser measures 0.79 at 1000."""
    bounds = [analytic_bpd(dj.get_schedule("linear", T)) for T in (100, 1000, 4000)]
    gaps = [bound - entropy for bound, entropy in bounds]
    assert gaps[0] > gaps[1] > gaps[2] > 0


def test_the_sampled_estimate_is_unbiased(schedule):
    x0 = sample_data(2048, seed=1)
    result = bits_per_dim(
        exact_model(schedule),
        schedule,
        x0,
        jax.random.key(1),
        num_timesteps=8,
        prediction_type="eps",
    )
    expected, _ = analytic_bpd(schedule)
    bpd = np.asarray(result.bpd, np.float64)
    # Across examples the estimates are independent: their spread includes the timestep draw.
    standard_error = bpd.std(ddof=1) / np.sqrt(bpd.size)
    assert abs(bpd.mean() - expected) < 5 * standard_error
    assert np.all(np.asarray(result.standard_error) > 0)


def test_discretized_decoder_sums_to_one_over_the_bins():
    total = jnp.sum(
        jnp.exp(discretized_gaussian_log_likelihood(jnp.asarray(GRID), 0.1, jnp.log(0.3)))
    )
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)


def test_normal_kl_against_its_closed_form():
    kl = normal_kl(1.0, np.log(2.0), 0.5, np.log(0.5))
    np.testing.assert_allclose(
        kl, 0.5 * (np.log(0.5 / 2.0) + 2.0 / 0.5 + 0.25 / 0.5 - 1), rtol=1e-6
    )


def test_bad_input_names_the_problem(schedule):
    with pytest.raises(TypeError, match="needs a DiffusionSchedule"):
        bits_per_dim(
            lambda x, t: x,
            dj.RectifiedFlow(),
            jnp.zeros((1, 2, 2, 1)),
            jax.random.key(0),
            prediction_type="eps",
        )
    with pytest.raises(ValueError, match=r"num_timesteps must be None \(all 100 terms\)"):
        bits_per_dim(
            lambda x, t: x,
            schedule,
            jnp.zeros((1, 2, 2, 1)),
            jax.random.key(0),
            num_timesteps=1,
            prediction_type="eps",
        )
    with pytest.raises(ValueError, match="Unknown variance 'learned'"):
        bits_per_dim(
            lambda x, t: x,
            schedule,
            jnp.zeros((1, 2, 2, 1)),
            jax.random.key(0),
            variance="learned",
            prediction_type="eps",
        )


# --- The probability-flow ODE likelihood -------------------------------------------------------
#
# Tolerances. bits/dim are reported to two decimals, so the ODE solve (rtol = atol = 1e-5) must
# give the mean to a tenth of that digit: BPD_TOLERANCE = 1e-3 bits/dim (for smooth Gaussian
# data every single example meets it too). Hutchinson's
# estimate is unbiased: the mean of its per-example errors must lie within 4 standard errors
# of 0 (plus the solve's tolerance; a false failure once in 16,000 seeds).

import gaussian_oracle as oracle  # noqa: E402

from diffjax.likelihood import EIGHT_BIT_OFFSET, _divergence, ode_likelihood  # noqa: E402
from diffjax.samplers.ode import ode_velocity  # noqa: E402

BPD_TOLERANCE = 1e-3
ODE_PROCESSES = ("vp_linear", "vp_cosine", "ve", "edm", "rectified_flow")
FULL_GAUSSIAN = oracle.random_full_gaussian(4)


def _gaussian_exact_bpd(process, x, result, t_min=1e-5):
    """What the ODE computes, exactly: -log2 p_{t_min}(x) / D plus the prior's part. The ODE's
    log p is log prior(z) + the integral, the exact one log q_1(z) + the same integral, so the
    ODE's nll is the exact one plus log q_1(z) - log prior(z) at the returned latent z (below
    1e-2 nats here: q_1 is N(0, sigma_1^2) to within alpha_1 = 0 ... 7e-3)."""
    alpha, sigma = process.alpha_sigma(np.float64(t_min), np)
    alpha_1, sigma_1 = process.alpha_sigma(np.float64(1.0), np)
    latent = np.asarray(result.latent, np.float64)
    prior_gap = FULL_GAUSSIAN.log_prob(latent, alpha_1, sigma_1) - np.asarray(
        result.prior_log_prob, np.float64
    )
    nll = -FULL_GAUSSIAN.log_prob(x, alpha, sigma) + prior_gap
    return nll / (x.shape[1] * math.log(2))


@pytest.mark.parametrize("name", ODE_PROCESSES)
def test_ode_likelihood_of_gaussian_data_with_the_exact_trace_is_exact(name):
    process = dj.get_process(name)
    x = FULL_GAUSSIAN.sample(np.random.default_rng(0), 256).astype(np.float32)
    model = oracle.full_gaussian_model_fn(FULL_GAUSSIAN, process, "x0")
    result = ode_likelihood(
        model, process, jnp.asarray(x), jax.random.key(1), prediction_type="x0",
        divergence="exact", dequantize=False,
    )  # fmt: skip
    error = np.asarray(result.bpd, np.float64) - _gaussian_exact_bpd(process, x, result)
    assert np.abs(error).max() < BPD_TOLERANCE
    assert int(result.stats.num_function_evals) == 1 + 6 * int(result.stats.num_steps)


@pytest.mark.parametrize("name", ODE_PROCESSES)
@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_ode_likelihood_with_hutchinson_probes_is_unbiased(name, probe):
    process = dj.get_process(name)
    num = 512
    x = FULL_GAUSSIAN.sample(np.random.default_rng(2), num).astype(np.float32)
    model = oracle.full_gaussian_model_fn(FULL_GAUSSIAN, process, "x0")
    result = ode_likelihood(
        model, process, jnp.asarray(x), dj.sample_keys(5, 0, num), prediction_type="x0",
        divergence=probe, dequantize=False,
    )  # fmt: skip
    error = np.asarray(result.bpd, np.float64) - _gaussian_exact_bpd(process, x, result)
    standard_error = error.std(ddof=1) / math.sqrt(num)
    assert standard_error > 1e-3  # correlated coordinates: the estimator does have a variance
    assert abs(error.mean()) < 4 * standard_error + BPD_TOLERANCE


def test_hutchinson_examples_depend_on_their_own_key_only():
    process = dj.get_process("vp_linear")
    x = jnp.asarray(FULL_GAUSSIAN.sample(np.random.default_rng(3), 8).astype(np.float32))
    model = oracle.full_gaussian_model_fn(FULL_GAUSSIAN, process, "x0")
    keys = dj.sample_keys(9, 0, 8)
    whole = ode_likelihood(model, process, x, keys, prediction_type="x0", dequantize=False)
    half = ode_likelihood(model, process, x[4:], keys[4:], prediction_type="x0", dequantize=False)
    # The shared step size couples the examples at the solve's tolerance only.
    np.testing.assert_allclose(whole.bpd[4:], half.bpd, atol=BPD_TOLERANCE)


INTERVALS = oracle.IntervalMixture(
    weights=np.asarray([0.75, 0.25]),
    lows=np.asarray([-1.0 - 1 / 255, 0.0]),
    highs=np.asarray([0.0, 1.0 + 1 / 255]),
    dim=2,
)
"""Dequantized, a discrete law on the 8-bit grid: levels 0..127 with total mass 3/4, 128..255
with 1/4, uniform within each half (entropy 7 + H(3/4, 1/4) = 7.811 bits per axis)."""


@pytest.mark.parametrize("name", ["rectified_flow", "vp_linear"])
def test_dequantized_bits_per_dim_of_a_discrete_law_is_its_entropy(name):
    process = dj.get_process(name)
    num = 512
    x = INTERVALS.sample_levels(np.random.default_rng(4), num)
    result = ode_likelihood(
        oracle.interval_model_fn(INTERVALS, process), process, jnp.asarray(x),
        dj.sample_keys(6, 0, num), prediction_type="x0", divergence="exact",
    )  # fmt: skip
    # The dequantized density is constant on each bin, so the bound is tight: example i's
    # exact value is -log2 P(its levels) / D, P(k) = P_component / (bins of the component).
    # The law's sharp edges make the flow stiff near t_min (hundreds of steps), and single
    # examples then miss by up to about 1e-3; the reported quantity, the mean, must be exact.
    bins = (INTERVALS.highs - INTERVALS.lows) * 127.5
    upper_half = np.asarray(x) > 0
    exact = -np.mean(np.log2(np.where(upper_half, 0.25 / bins[1], 0.75 / bins[0])), axis=1)
    assert abs(np.mean(np.asarray(result.bpd, np.float64) - exact)) < BPD_TOLERANCE
    error = np.asarray(result.bpd, np.float64).mean() - INTERVALS.entropy_bits()
    assert abs(error) < 4 * exact.std(ddof=1) / math.sqrt(num) + BPD_TOLERANCE


def test_the_eight_bit_offset_is_the_bin_width():
    assert EIGHT_BIT_OFFSET == pytest.approx(-math.log2(2 / 255))


def test_a_schedule_is_integrated_in_its_continuous_view():
    schedule = dj.get_schedule("cosine", 1000)
    view = dj.processes.schedule_time(schedule)
    x = FULL_GAUSSIAN.sample(np.random.default_rng(7), 64).astype(np.float32)
    model = oracle.full_gaussian_model_fn(FULL_GAUSSIAN, view, "x0")
    through_schedule = ode_likelihood(
        model, schedule, jnp.asarray(x), jax.random.key(0), prediction_type="x0",
        divergence="exact", dequantize=False,
    )  # fmt: skip
    error = np.asarray(through_schedule.bpd) - _gaussian_exact_bpd(
        view, x, through_schedule, t_min=view.first_time()
    )
    # The interpolated log-SNR has a kink at each of the T indices, which the adaptive solver
    # steps over; the mean is exact, single examples to about 2e-3.
    assert abs(error.mean()) < BPD_TOLERANCE


@pytest.mark.slow
def test_forward_and_reverse_mode_agree_through_the_unet():
    # The UNet's group norm has a hand-written JVP; reverse mode transposes it. With the same
    # probes both modes compute the same divergence: at a fixed state to float32 rounding (a
    # D-term dot product of float32 products, within D eps sum |terms|), and through the solve
    # to the solve's tolerance. Each solve lies within BPD_TOLERANCE of the exact integral, but
    # rounding picks different steps, so the two lie within twice that of each other.
    # (The UNet's last convolution starts at zero: the parameters are perturbed so that the
    # network's Jacobian is not zero, its output is squashed into [-1, 1], and the solve starts
    # at t_min = 0.1: an untrained model's density at sigma(1e-5) is astronomically small.)
    process = dj.get_process("vp_linear")
    model = dj.UNet(
        base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
        num_groups=4,
    )  # fmt: skip
    x = jnp.asarray(np.random.default_rng(8).integers(0, 256, (2, 8, 8, 1)) / 127.5 - 1.0)
    params = model.init(jax.random.key(0), x, jnp.zeros(2))["params"]
    leaves, treedef = jax.tree.flatten(params)
    noise = [
        0.1 * jax.random.normal(k, p.shape)
        for k, p in zip(dj.sample_keys(11, 0, len(leaves)), leaves)
    ]
    params = jax.tree.unflatten(treedef, [p + n for p, n in zip(leaves, noise)])

    def model_fn(x_t, t):
        return jnp.tanh(model.apply({"params": params}, x_t, t))

    probe = jax.random.rademacher(jax.random.key(12), x.shape, jnp.float32)

    def velocity_fn(y):
        return ode_velocity(model_fn, "x0", process, jnp.float32(0.5), y)[0]

    forward_velocity, forward = _divergence(velocity_fn, x, "rademacher", probe, "forward")
    reverse_velocity, reverse = _divergence(velocity_fn, x, "rademacher", probe, "reverse")
    np.testing.assert_array_equal(forward_velocity, reverse_velocity)
    _, tangent = jax.jvp(velocity_fn, (x,), (probe,))
    magnitude = np.sum(np.abs(np.asarray(probe * tangent)), axis=(1, 2, 3))
    bound = x[0].size * np.finfo(np.float32).eps * magnitude
    assert np.all(np.abs(np.asarray(forward) - np.asarray(reverse)) <= bound)

    keys = dj.sample_keys(10, 0, 2)
    results = {
        mode: ode_likelihood(
            model_fn, process, x, keys, prediction_type="x0", autodiff=mode, t_min=0.1
        )  # fmt: skip
        for mode in ("forward", "reverse")
    }
    assert np.all(np.isfinite(results["forward"].bpd))
    assert results["forward"].bpd[0] != results["forward"].bpd[1]
    np.testing.assert_allclose(
        results["forward"].bpd, results["reverse"].bpd, rtol=0, atol=2 * BPD_TOLERANCE
    )


def test_a_custom_vjp_model_needs_reverse_mode():
    process = dj.get_process("vp_linear")
    x = jnp.asarray(FULL_GAUSSIAN.sample(np.random.default_rng(9), 4).astype(np.float32))
    exact = oracle.full_gaussian_model_fn(FULL_GAUSSIAN, process, "x0")

    @jax.custom_vjp
    def model(x_t, t):
        return exact(x_t, t)

    model.defvjp(
        lambda x_t, t: (exact(x_t, t), (x_t, t)), lambda res, g: jax.vjp(exact, *res)[1](g)
    )
    with pytest.raises(TypeError, match="autodiff='reverse'"):
        ode_likelihood(model, process, x, jax.random.key(0), prediction_type="x0", dequantize=False)
    reverse = ode_likelihood(
        model, process, x, jax.random.key(0), prediction_type="x0", autodiff="reverse",
        divergence="exact", dequantize=False,
    )  # fmt: skip
    forward = ode_likelihood(
        exact, process, x, jax.random.key(0), prediction_type="x0", divergence="exact",
        dequantize=False,
    )  # fmt: skip
    np.testing.assert_allclose(reverse.bpd, forward.bpd, atol=BPD_TOLERANCE)


def test_ode_likelihood_rejects_bad_options_before_tracing():
    process = dj.get_process("vp_linear")
    x = jnp.zeros((2, 4))
    model = oracle.full_gaussian_model_fn(FULL_GAUSSIAN, process, "x0")
    with pytest.raises(ValueError, match="divergence 'hutch'"):
        ode_likelihood(
            model, process, x, jax.random.key(0), prediction_type="eps", divergence="hutch"
        )
    with pytest.raises(ValueError, match="solver 'rk4'"):
        ode_likelihood(model, process, x, jax.random.key(0), prediction_type="eps", solver="rk4")
    with pytest.raises(ValueError, match="autodiff 'backward'"):
        ode_likelihood(
            model, process, x, jax.random.key(0), prediction_type="eps", autodiff="backward"
        )
    with pytest.raises(ValueError, match="rtol"):
        ode_likelihood(model, process, x, jax.random.key(0), prediction_type="eps", rtol=0.0)
    with pytest.raises(ValueError, match="zero SNR"):
        ode_likelihood(
            model, dj.get_process("rectified_flow"), x, jax.random.key(0), prediction_type="eps"
        )


def test_dequantize_refuses_data_off_the_eight_bit_grid():
    process = dj.get_process("vp_linear")
    model = oracle.full_gaussian_model_fn(FULL_GAUSSIAN, process, "x0")
    continuous = jnp.asarray(FULL_GAUSSIAN.sample(np.random.default_rng(3), 4).astype(np.float32))
    with pytest.raises(ValueError, match=r"dequantize=True is for 8-bit images.*x\[0, 0\] = .*"
                                         r"pass dequantize=False"):  # fmt: skip
        ode_likelihood(model, process, continuous, jax.random.key(0), prediction_type="x0")
    # Images k / 127.5 - 1 in float32 are on the grid (the check allows their rounding).
    levels = np.random.default_rng(4).integers(0, 256, continuous.shape)
    images = jnp.asarray((levels / 127.5 - 1.0).astype(np.float32))
    result = ode_likelihood(
        model, process, images, jax.random.key(0), prediction_type="x0", divergence="exact",
        rtol=1e-3, atol=1e-3,
    )  # fmt: skip
    assert np.all(np.isfinite(result.bpd))


def test_a_bad_key_and_an_exhausted_solve_are_named():
    process = dj.get_process("vp_linear")
    model = oracle.full_gaussian_model_fn(FULL_GAUSSIAN, process, "x0")
    x = jnp.asarray(FULL_GAUSSIAN.sample(np.random.default_rng(5), 2).astype(np.float32))
    with pytest.raises(TypeError, match="key must be a single JAX PRNG key"):
        ode_likelihood(model, process, x, 0, prediction_type="x0", dequantize=False)
    with pytest.raises(OdeSolveError, match="used all max_steps=2 steps"):
        ode_likelihood(
            model, process, x, jax.random.key(0), prediction_type="x0", dequantize=False,
            max_steps=2,
        )  # fmt: skip


def test_the_likelihoods_are_top_level_names():
    assert dj.ode_likelihood is ode_likelihood and dj.bits_per_dim is dj.likelihood.bits_per_dim
