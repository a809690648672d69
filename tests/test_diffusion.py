"""The forward process, posterior and prediction conversions, checked against independent math."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj

T = 1000
# The prediction types that the (alpha, sigma) conversions of a variance-preserving process
# cover; 'flow' needs time derivatives (tests/test_predictions.py).
VP_PREDICTIONS = ("eps", "x0", "v", "edm")


@pytest.fixture(scope="module")
def schedule():
    return dj.get_schedule("linear", T)


def test_closed_form_marginal_matches_iterated_forward_chain(schedule):
    """Iterating q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t) reproduces q(x_t | x_0)."""
    rng = np.random.default_rng(0)
    num_samples = 20_000
    x0 = np.array([-1.0, 0.3, 1.0])
    betas = np.linspace(1e-4, 0.02, T)  # the same schedule, in float64, independent of diffjax
    checkpoints = (0, 9, 99, 499, 999)
    x = np.broadcast_to(x0, (num_samples, 3)).copy()
    observed = {}
    for step in range(T):
        x = np.sqrt(1 - betas[step]) * x + np.sqrt(betas[step]) * rng.standard_normal(x.shape)
        if step in checkpoints:
            observed[step] = (x.mean(0), x.var(0, ddof=1))
    t = jnp.asarray(checkpoints)
    x0_batch = jnp.broadcast_to(jnp.asarray(x0, jnp.float32), (len(checkpoints), 3))
    mean, variance, log_variance = dj.q_mean_variance(schedule, x0_batch, t)
    np.testing.assert_allclose(np.exp(log_variance), variance, rtol=1e-5)
    for row, step in enumerate(checkpoints):
        sample_mean, sample_var = observed[step]
        true_var = float(variance[row, 0])
        # 5 standard errors: the mean's SE is sqrt(var/N); the variance's is var*sqrt(2/(N-1)).
        np.testing.assert_allclose(sample_mean, mean[row], atol=5 * np.sqrt(true_var / num_samples))
        np.testing.assert_allclose(
            sample_var, true_var, atol=5 * true_var * np.sqrt(2 / (num_samples - 1))
        )


def test_q_sample_is_the_reparameterised_marginal(schedule):
    key_x, key_eps = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(key_x, (4, 8, 8, 3))
    noise = jax.random.normal(key_eps, x0.shape)
    t = jnp.array([0, 10, 500, 999])
    abar = np.asarray(schedule.alphas_cumprod, np.float64)[np.asarray(t)][:, None, None, None]
    expected = np.sqrt(abar) * np.asarray(x0) + np.sqrt(1 - abar) * np.asarray(noise)
    np.testing.assert_allclose(dj.q_sample(schedule, x0, t, noise), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_posterior_is_bayes_product_of_forward_kernels(name):
    """q(x_{t-1}|x_t,x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0), multiplied out as Gaussians in float64."""
    schedule = dj.get_schedule(name, T)
    betas = np.asarray(schedule.betas, np.float64)
    abar = np.cumprod(1 - betas)
    t = np.array([1, 2, 50, 400, 998, 999])
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((len(t), 5))
    x_t = rng.standard_normal((len(t), 5))
    abar_prev = abar[t - 1][:, None]
    beta_t = betas[t][:, None]
    alpha_t = 1 - beta_t
    # Precision of a product is the sum of precisions; its mean the precision-weighted means.
    precision = alpha_t / beta_t + 1 / (1 - abar_prev)
    expected_var = 1 / precision
    expected_mean = expected_var * (
        np.sqrt(alpha_t) * x_t / beta_t + np.sqrt(abar_prev) * x0 / (1 - abar_prev)
    )
    result = dj.q_posterior_mean_variance(
        schedule, jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32), jnp.asarray(t)
    )
    np.testing.assert_allclose(result.mean, expected_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.variance, expected_var, rtol=1e-4)
    np.testing.assert_allclose(result.log_variance, np.log(expected_var), rtol=1e-4, atol=1e-5)


def test_posterior_at_first_step_is_x0_with_clipped_log_variance(schedule):
    x0 = jnp.full((2, 3), 0.5)
    x_t = jnp.full((2, 3), -2.0)
    result = dj.q_posterior_mean_variance(schedule, x0, x_t, jnp.array([0, 0]))
    np.testing.assert_allclose(result.mean, x0, atol=1e-6)
    assert float(result.variance[0, 0]) == 0.0
    np.testing.assert_allclose(
        result.log_variance[0, 0], np.log(schedule.posterior_variance[1]), rtol=1e-6
    )


@pytest.mark.parametrize("prediction_type", VP_PREDICTIONS)
@pytest.mark.parametrize("shape", [(4, 6), (4, 8, 8, 3), (4, 5, 7)])
def test_prediction_conversions_round_trip(schedule, prediction_type, shape):
    key_x, key_eps = jax.random.split(jax.random.key(2))
    x0 = jax.random.normal(key_x, shape)
    eps = jax.random.normal(key_eps, shape)
    t = jnp.array([0, 3, 600, 999])
    x_t = dj.q_sample(schedule, x0, t, eps)
    alpha, sigma = dj.alpha_sigma(schedule, t, len(shape))
    target = dj.prediction_target(x0, eps, alpha, sigma, prediction_type)
    x0_hat, eps_hat = dj.predict_x0_and_eps(target, x_t, alpha, sigma, prediction_type)
    # Recovering eps from x0 at t = 0 divides by sigma_0 = 0.01, amplifying float32 rounding.
    np.testing.assert_allclose(x0_hat, x0, atol=2e-3 if prediction_type == "eps" else 2e-5)
    np.testing.assert_allclose(eps_hat, eps, atol=2e-3 if prediction_type == "x0" else 2e-5)


def test_x0_from_eps_recovers_x0_from_q_sample(schedule):
    x0 = jnp.linspace(-1, 1, 12).reshape(3, 4)
    eps = jnp.cos(jnp.arange(12.0)).reshape(3, 4)
    t = jnp.array([5, 250, 900])
    alpha, sigma = dj.alpha_sigma(schedule, t, 2)
    recovered = dj.x0_from_eps(dj.q_sample(schedule, x0, t, eps), eps, alpha, sigma)
    np.testing.assert_allclose(recovered, x0, atol=1e-4)


def test_v_target_matches_its_definition(schedule):
    x0, eps = jnp.ones((2, 3)), jnp.full((2, 3), 2.0)
    t = jnp.array([100, 800])
    abar = np.asarray(schedule.alphas_cumprod, np.float64)[[100, 800]][:, None]
    expected = np.sqrt(abar) * 2.0 - np.sqrt(1 - abar) * 1.0
    alpha, sigma = dj.alpha_sigma(schedule, t, 2)
    np.testing.assert_allclose(
        dj.v_from_x0_eps(x0, eps, alpha, sigma), np.broadcast_to(expected, (2, 3)), rtol=1e-5
    )
    x_t = dj.q_sample(schedule, x0, t, eps)
    v = dj.v_from_x0_eps(x0, eps, alpha, sigma)
    np.testing.assert_allclose(dj.x0_from_v(x_t, v, alpha, sigma), x0, atol=1e-5)
    np.testing.assert_allclose(dj.eps_from_v(x_t, v, alpha, sigma), eps, atol=1e-5)
    np.testing.assert_allclose(dj.eps_from_x0(x_t, x0, alpha, sigma), eps, atol=1e-4)


@pytest.mark.parametrize("prediction_type", VP_PREDICTIONS)
def test_p_mean_variance_with_exact_prediction_is_the_true_posterior(schedule, prediction_type):
    key_x, key_eps = jax.random.split(jax.random.key(3))
    x0 = jax.random.uniform(key_x, (3, 4, 4, 1), minval=-1, maxval=1)
    eps = jax.random.normal(key_eps, x0.shape)
    t = jnp.array([1, 300, 999])
    x_t = dj.q_sample(schedule, x0, t, eps)
    alpha, sigma = dj.alpha_sigma(schedule, t, 4)
    output = dj.prediction_target(x0, eps, alpha, sigma, prediction_type)
    small = dj.p_mean_variance(schedule, output, x_t, t, prediction_type, "small", clip_x0=True)
    true = dj.q_posterior_mean_variance(schedule, x0, x_t, t)
    np.testing.assert_allclose(small.mean, true.mean, atol=2e-4)
    np.testing.assert_allclose(small.variance, true.variance, rtol=1e-6)
    np.testing.assert_allclose(small.pred_x0, x0, atol=2e-4)
    large = dj.p_mean_variance(schedule, output, x_t, t, prediction_type, "large")
    np.testing.assert_allclose(large.variance[:, 0, 0, 0], schedule.betas[np.asarray(t)], rtol=1e-6)
    np.testing.assert_allclose(large.mean, true.mean, atol=2e-4)


def test_fixed_large_variance_at_t0_uses_posterior_variance_of_step_one(schedule):
    x = jnp.zeros((1, 2))
    large = dj.p_mean_variance(schedule, x, x, jnp.array([0]), "eps", "large")
    np.testing.assert_allclose(large.variance[0, 0], schedule.posterior_variance[1], rtol=1e-6)


def test_learned_range_interpolates_the_log_variance_between_the_fixed_ones(schedule):
    """Improved DDPM eq. 15: values -1 and 1 give beta~_t (clipped at t = 0) and beta_t; 0 gives
    their geometric mean; the mean is the one of the prediction half."""
    t = jnp.array([0, 10, 500, 999])
    x_t = jax.random.normal(jax.random.key(0), (4, 2, 2, 3))
    eps = jax.random.normal(jax.random.key(1), x_t.shape)
    small = dj.p_mean_variance(schedule, eps, x_t, t, "eps", "small")
    betas = np.asarray(schedule.betas, np.float64)[np.asarray(t)]
    clipped = np.exp(np.asarray(schedule.posterior_log_variance_clipped, np.float64))[np.asarray(t)]
    for value, expected in [(-1.0, clipped), (1.0, betas), (0.0, np.sqrt(clipped * betas))]:
        output = jnp.concatenate([eps, jnp.full_like(eps, value)], axis=-1)
        learned = dj.p_mean_variance(schedule, output, x_t, t, "eps", "learned_range")
        assert learned.variance.shape == x_t.shape
        # float32 exp/log of variances down to 1e-4: a few ulps relative.
        np.testing.assert_allclose(learned.variance[:, 0, 0, 0], expected, rtol=1e-5)
        np.testing.assert_allclose(learned.log_variance, jnp.log(learned.variance), rtol=1e-6)
        np.testing.assert_array_equal(learned.mean, small.mean)


def test_learned_range_needs_twice_the_channels(schedule):
    x_t = jnp.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"shape \(2, 4, 4, 6\) for x_t of shape"):
        dj.p_mean_variance(schedule, x_t, x_t, jnp.array([1, 2]), "eps", "learned_range")


def test_clip_x0_clips_the_prediction(schedule):
    x_t = jnp.full((1, 2), 5.0)
    result = dj.p_mean_variance(schedule, x_t * 3, x_t, jnp.array([10]), "x0", clip_x0=True)
    np.testing.assert_array_equal(result.pred_x0, jnp.ones((1, 2)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_functions_work_under_jit_vmap_and_grad(schedule, dtype):
    x0 = jnp.linspace(-1, 1, 2 * 4 * 4 * 1, dtype=dtype).reshape(2, 4, 4, 1)
    eps = jnp.flip(x0, axis=1)
    t = jnp.array([7, 700])

    def loss(x):
        x_t = dj.q_sample(schedule, x, t, eps)
        posterior = dj.p_mean_variance(schedule, eps, x_t, t, "v", clip_x0=False)
        return jnp.sum(posterior.mean.astype(jnp.float32) ** 2)

    jitted = jax.jit(loss)(x0)
    if dtype == jnp.float32:
        # XLA's fusions may reassociate float32 arithmetic: a few ulps (6e-8 each) per op.
        np.testing.assert_allclose(jitted, loss(x0), rtol=1e-5)
    else:
        # In bfloat16 eager rounds every op and a fusion may not, so the two differ by more
        # than the ulp-level tolerance above; the value is checked in float32 only.
        assert bool(jnp.isfinite(jitted))
    grads = jax.jit(jax.grad(loss))(x0)
    assert grads.dtype == dtype and grads.shape == x0.shape
    assert bool(jnp.all(jnp.isfinite(grads.astype(jnp.float32))))
    # vmap over an extra leading axis of examples, one timestep per example.
    per_example = jax.vmap(
        lambda x, step, e: dj.q_sample(schedule, x[None], step[None], e[None])[0]
    )(x0, t, eps)
    assert per_example.dtype == dtype
    # The same elementwise ops on the same values: equal to the bit.
    np.testing.assert_array_equal(
        per_example.astype(jnp.float32), dj.q_sample(schedule, x0, t, eps).astype(jnp.float32)
    )


def test_second_call_with_new_values_does_not_recompile(schedule):
    step = jax.jit(
        lambda s, x, t, e: dj.q_posterior_mean_variance(s, x, dj.q_sample(s, x, t, e), t).mean
    )
    shape = (3, 4, 4, 2)
    step(schedule, jnp.zeros(shape), jnp.array([1, 2, 3]), jnp.ones(shape))
    step(dj.get_schedule("cosine", T), jnp.ones(shape), jnp.array([9, 8, 7]), jnp.zeros(shape))
    assert step._cache_size() == 1


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda s: dj.q_sample(s, jnp.zeros((2, 3)), jnp.array([0, T]), jnp.zeros((2, 3))),
            r"\[0, 1000\)",
        ),
        (
            lambda s: dj.q_sample(s, jnp.zeros((2, 3)), jnp.array([-1, 0]), jnp.zeros((2, 3))),
            r"\[-1, 0\]",
        ),
        (
            lambda s: dj.q_sample(s, jnp.zeros((2, 3)), jnp.array([0, 1, 2]), jnp.zeros((2, 3))),
            r"shape \[B\] = \[2\]",
        ),
        (
            lambda s: dj.q_sample(s, jnp.zeros((2, 3)), jnp.array([0.5, 1.0]), jnp.zeros((2, 3))),
            "integer",
        ),
        (
            lambda s: dj.q_sample(s, jnp.zeros((2, 3)), jnp.array([0, 1]), jnp.zeros((2, 4))),
            "noise shape",
        ),
        (
            lambda s: dj.q_posterior_mean_variance(
                s, jnp.zeros((2, 3)), jnp.zeros((2, 4)), jnp.array([0, 1])
            ),
            "x_t shape",
        ),
        (
            lambda s: dj.p_mean_variance(
                s, jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.array([0, 1]), "score"
            ),
            "'score'.*'eps', 'x0', 'v'",
        ),
        (
            lambda s: dj.p_mean_variance(
                s, jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.array([0, 1]), "eps", "huge"
            ),
            "'huge'.*'small', 'large'",
        ),
        (lambda s: dj.prediction_target(jnp.zeros(2), jnp.zeros(2), 1.0, 0.0, "noise"), "'noise'"),
    ],
)
def test_bad_input_raises_clear_errors(schedule, call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call(schedule)
