"""The denoiser-level guide hook of every sampler (diffjax/samplers/guidance.py): what a guide is
told, that its outputs drive the step, clipping as a guide, composition, and classifier-free
guidance beside it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj

pytestmark = pytest.mark.usefixtures("unoptimized")

TARGET = jnp.linspace(-0.6, 0.6, 6).reshape(1, 6)
SHAPE = (4, 6)
SCHEDULE = dj.get_schedule("cosine", 1000)
FLOW = dj.RectifiedFlow()
EDM = dj.EDM()


def _reference_alpha_sigma(process, t):
    if isinstance(process, dj.DiffusionSchedule):
        return process.sqrt_alphas_cumprod[t], process.sqrt_one_minus_alphas_cumprod[t]
    return process.alpha_sigma(t)


def _checking_guide(process):
    """A guide that returns x0_hat = TARGET only if it was told the marginal of the time it was
    told: alpha and sigma against the process at t enter as (alpha - alpha(t)), which is zero
    up to float32 rounding (a wrong time is off by >= 1e-3 and shows at 10x that). eps_hat is re-derived, so x_t = alpha x0_hat + sigma eps_hat."""

    def guide(x_t, t, alpha, sigma, x0_hat, eps_hat):
        ref_alpha, ref_sigma = _reference_alpha_sigma(process, t)
        mismatch = (jnp.reshape(alpha, (-1,)) - ref_alpha) + (jnp.reshape(sigma, (-1,)) - ref_sigma)
        x0 = jnp.broadcast_to(TARGET, x_t.shape) + 10.0 * mismatch[:, None]
        return x0, (x_t - alpha * x0) / sigma

    return jax.tree_util.Partial(guide)


CASES = [
    ("ddim", SCHEDULE, dict(num_steps=10, prediction_type="eps")),
    ("ddpm", SCHEDULE, dict(num_steps=10, prediction_type="eps")),
    ("dpm_solver", SCHEDULE, dict(num_steps=10, prediction_type="eps")),
    ("heun", EDM, dict(num_steps=10, prediction_type="eps")),
    ("flow_euler", FLOW, dict(num_steps=5, prediction_type="flow")),
    ("flow_heun", FLOW, dict(num_steps=5, prediction_type="flow")),
    ("euler_maruyama", FLOW, dict(num_steps=20, t_max=0.999, prediction_type="eps")),
    # The SDE and ODE samplers run a schedule in its continuous-time view: the guide is told
    # that view's float time.
    ("pc", SCHEDULE, dict(num_steps=10, snr=0.01, prediction_type="eps")),
    ("ode", FLOW, dict(rtol=1e-3, atol=1e-3, prediction_type="flow")),
]


@pytest.mark.parametrize("name, process, options", CASES, ids=[case[0] for case in CASES])
def test_every_sampler_steps_with_what_the_guide_returns(name, process, options):
    """A network that predicts nonsense, a guide that knows the answer: the sample is the
    guide's x0 (every sampler ends with the last x0-prediction or lands on it), and the guide
    was told matching (t, alpha, sigma) at every call (else the 10x mismatch term shows)."""

    def nonsense(x_in, t_in):
        return jnp.sin(3.0 * x_in) + 5.0

    told = dj.schedule_time(process) if name == "pc" else process
    x = dj.sample(name, nonsense, process, jax.random.key(0), SHAPE, guide=_checking_guide(told),
                  **options)  # fmt: skip
    # Steps onto TARGET from states that already point at it: float32 rounding of a few
    # operations per step, times the state's scale (<= 10 for EDM's sigma_max 80 / 8).
    np.testing.assert_allclose(x, jnp.broadcast_to(TARGET, SHAPE), atol=1e-4)


def test_clip_x0_is_the_clip_guide_applied_last():
    def model(x_in, t_in):
        return 1.7 * jnp.tanh(x_in)

    options = dict(num_steps=8, prediction_type="x0")
    clipped = dj.sample("ddim", model, SCHEDULE, jax.random.key(1), SHAPE, clip_x0=True, **options)
    guided = dj.sample("ddim", model, SCHEDULE, jax.random.key(1), SHAPE,
                       guide=dj.clip_x0_guide(), **options)  # fmt: skip
    np.testing.assert_array_equal(clipped, guided)
    assert float(jnp.max(jnp.abs(clipped))) <= 1.0


def test_guides_compose_in_order():
    def shift(amount, x_t, t, alpha, sigma, x0_hat, eps_hat):
        x0 = x0_hat + amount
        return x0, (x_t - alpha * x0) / sigma

    def scale(factor, x_t, t, alpha, sigma, x0_hat, eps_hat):
        x0 = factor * x0_hat
        return x0, (x_t - alpha * x0) / sigma

    composed = dj.compose_guides(
        jax.tree_util.Partial(shift, 0.5), None, jax.tree_util.Partial(scale, 2.0)
    )
    x_t = jnp.ones((2, 3))
    x0, eps = composed(x_t, jnp.zeros(2, jnp.int32), 0.8, 0.6, jnp.zeros((2, 3)), jnp.zeros((2, 3)))
    np.testing.assert_allclose(x0, 1.0)  # (0 + 0.5) * 2, not 0 * 2 + 0.5
    np.testing.assert_allclose(0.8 * x0 + 0.6 * eps, x_t, rtol=1e-6)
    assert dj.compose_guides(None) is None


def test_classifier_free_guidance_and_a_guide_compose():
    """CFG wraps the network; the guide acts on the guided denoiser's output after it."""
    labels = jnp.array([0, 1, 2, 3])

    def conditional(x_in, t_in, cond):
        return 0.5 * x_in + 0.1 * cond[:, None].astype(x_in.dtype)

    guided = dj.classifier_free_guidance(conditional, labels, 3.0, num_classes=4)
    key = jax.random.key(2)
    both = dj.sample("ddim", guided, SCHEDULE, key, SHAPE, num_steps=6, prediction_type="x0",
                     guide=dj.clip_x0_guide(-0.2, 0.2))  # fmt: skip
    manual = dj.sample(
        "ddim", lambda x, t: 0.5 * x + 0.1 * (4 + 3.0 * (labels[:, None] - 4)), SCHEDULE, key,
        SHAPE, num_steps=6, prediction_type="x0", guide=dj.clip_x0_guide(-0.2, 0.2),
    )  # fmt: skip
    np.testing.assert_allclose(both, manual, atol=1e-6)
    assert float(jnp.max(jnp.abs(both))) <= 0.2 + 1e-6


# --------------------------------------------------------------------- gradient guidance
# Gaussian-mixture data whose classes are its components: the exact unconditional denoiser,
# the exact per-class denoiser and the exact log p(y | x_t) are all closed-form
# (tests/gaussian_oracle.py). Bayes' rule makes the guided score at scale 1 the class score:
# grad log q(x_t) + grad log p(y | x_t) = grad log q(x_t | y), so with the same keys a guided
# sampler must return what it returns for the exact class-conditional denoiser.

import gaussian_oracle as oracle  # noqa: E402

MIXTURE = oracle.ring_mixture(3, 1.5, 0.5)
LABEL = 1
GUIDED_CASES = [
    ("ddim", SCHEDULE, dict(num_steps=20, prediction_type="eps")),
    ("ddpm", SCHEDULE, dict(num_steps=20, prediction_type="eps")),
    ("dpm_solver", SCHEDULE, dict(num_steps=10, prediction_type="eps")),
    ("heun", EDM, dict(num_steps=10, prediction_type="eps")),
    # At alpha = 0 (the flow's t = 1) the guide leaves the step alone (see below): start below.
    ("flow_euler", FLOW, dict(num_steps=10, t_max=0.999, prediction_type="flow")),
    ("euler_maruyama", FLOW, dict(num_steps=20, t_max=0.999, prediction_type="eps")),
    ("pc", dj.schedule_time(SCHEDULE), dict(num_steps=10, snr=0.01, prediction_type="eps")),
    ("ode", FLOW, dict(rtol=1e-5, atol=1e-5, t_max=0.999, prediction_type="flow")),
]


def _guided_and_conditional(name, process, options, batch=64, scale=1.0, mixture=MIXTURE):
    keys = dj.sample_keys(0, 0, batch)
    labels = jnp.full((batch,), LABEL)
    kind = options["prediction_type"]
    guide = dj.gradient_guidance(oracle.exact_class_log_prob(mixture, process, labels), scale)
    unconditional = oracle.exact_model_fn(mixture, process, kind)
    conditional = oracle.exact_model_fn(oracle.component(mixture, LABEL), process, kind)
    guided = dj.sample(name, unconditional, process, keys, (batch, 2), guide=guide, **options)
    return guided, dj.sample(name, conditional, process, keys, (batch, 2), **options)


@pytest.mark.parametrize("name, process, options", GUIDED_CASES, ids=[c[0] for c in GUIDED_CASES])
def test_the_exact_classifier_at_scale_one_gives_the_class_conditional_sampler(
    name, process, options
):
    """Per sample, with the same keys (stochastic samplers included): guided unconditional
    denoiser == class-conditional denoiser. Equal in exact arithmetic; the tolerance is float32
    rounding: <= 20 steps of O(10) roundings of values of magnitude <= 4 is 20 * 10 * 4 *
    1.2e-7 ~ 1e-4. The adaptive ODE solver chooses its steps from its error estimates, so
    two solves of the same ODE agree to its tolerance: a global error of a few hundred local
    errors of atol + rtol |x| <= 5e-5 each, bounded by 1e-2."""
    guided, conditional = _guided_and_conditional(name, process, options)
    tolerance = 1e-2 if name == "ode" else 1e-4
    np.testing.assert_allclose(guided, conditional, atol=tolerance)


def test_guided_samples_follow_the_class_law():
    """Over many samples (DDIM, 50 steps): the guided samples' mean is the class mean m_y to
    within 4 standard errors (the class law's std is 0.5 per axis; the denoised end point
    keeps the mean), and nearly all of them lie nearer mode y than the other modes."""
    batch = 2000
    guided, _ = _guided_and_conditional(
        "ddim", SCHEDULE, dict(num_steps=50, prediction_type="eps"), batch=batch
    )
    guided = np.asarray(guided, np.float64)
    standard_error = 0.5 / np.sqrt(batch)
    np.testing.assert_allclose(guided.mean(0), MIXTURE.means[LABEL], atol=4 * standard_error)
    nearest = np.argmin(((guided[:, None] - MIXTURE.means[None]) ** 2).sum(-1), axis=1)
    exact_share = 0.98  # P(nearest mode = y | x ~ N(m_y, 0.25 I)) for modes 2.6 apart: > 0.99
    assert np.mean(nearest == LABEL) > exact_share


# Modes 0.87 apart with std 0.5: the classes overlap, so p(y | x) stays well below 1.
OVERLAPPING = oracle.ring_mixture(3, 0.5, 0.5)


def _mean_class_probability(scale):
    guided, _ = _guided_and_conditional(
        "ddim", SCHEDULE, dict(num_steps=30, prediction_type="eps"), batch=1000, scale=scale,
        mixture=OVERLAPPING,
    )  # fmt: skip
    zero = jnp.zeros((guided.shape[0],), jnp.int32)
    labels = jnp.full((guided.shape[0],), LABEL)
    log_prob = oracle.exact_class_log_prob(OVERLAPPING, SCHEDULE, labels)(guided, zero)
    return np.asarray(jnp.exp(log_prob))


def test_larger_scales_sharpen_towards_the_class():
    """p(y | x_0) of the samples of overlapping classes, averaged: unguided (scale 0) it is
    E_x[p(y | x)] = w_y, guided it grows with the scale (p(x | y) at 1, p(x) p(y | x)^4 at 4).
    Each mean has a standard error <= 0.5 / sqrt(1000) = 0.016 (a probability's std <= 0.5)."""
    unguided, one, four = (_mean_class_probability(scale) for scale in (0.0, 1.0, 4.0))
    standard_error = 0.5 / np.sqrt(1000)
    assert abs(unguided.mean() - OVERLAPPING.weights[LABEL]) < 4 * standard_error
    assert one.mean() > unguided.mean() + 10 * standard_error
    assert four.mean() > one.mean() + 4 * standard_error


def _finite_difference(fn, x, step=1e-5):
    """Central differences of fn: [B, D] -> [B] (float64), row by row."""
    gradient = np.zeros_like(x)
    for axis in range(x.shape[1]):
        offset = np.zeros_like(x)
        offset[:, axis] = step
        gradient[:, axis] = (np.asarray(fn(x + offset)) - np.asarray(fn(x - offset))) / (2 * step)
    return gradient


@pytest.mark.parametrize("wrt", ["x_t", "x0"])
def test_the_guidance_step_is_the_gradient_by_finite_differences(wrt):
    """In float64: the guide moves eps_hat by -scale sigma grad log p, where grad is the central
    difference of log p(y | x_t) (wrt='x_t') or of log p(y | x0_hat(x_t)) through the exact
    denoiser (wrt='x0'). Step 1e-5: truncation O(1e-10 f''') and rounding O(1e-16 / 1e-5),
    both far below the 1e-7 tolerance."""
    with jax.enable_x64(True):
        process = dj.RectifiedFlow()
        batch, scale = 5, 2.5
        x_t = np.random.default_rng(0).normal(size=(batch, 2))
        t = jnp.full((batch,), 0.6, jnp.float64)
        labels = jnp.full((batch,), LABEL)
        log_prob = oracle.exact_class_log_prob(MIXTURE, process, labels)
        denoiser_fn = oracle.exact_model_fn(MIXTURE, process, "x0")
        alpha, sigma = (np.float64(v) for v in process.alpha_sigma(0.6, np))

        def denoiser(x):
            x0 = denoiser_fn(x, 1000.0 * t)
            return x0, (x - alpha * x0) / sigma

        x0_hat, eps_hat = denoiser(jnp.asarray(x_t))
        if wrt == "x_t":
            guide = dj.gradient_guidance(log_prob, scale)
            _, guided_eps = guide(x_t, t, alpha, sigma, x0_hat, eps_hat)
            reference = _finite_difference(lambda x: log_prob(jnp.asarray(x), t), x_t)
        else:
            guide = dj.gradient_guidance(log_prob, scale, wrt="x0")
            _, guided_eps = guide(x_t, t, alpha, sigma, x0_hat, eps_hat, denoiser=denoiser)
            reference = _finite_difference(lambda x: log_prob(denoiser(jnp.asarray(x))[0], t), x_t)
        np.testing.assert_allclose(
            (np.asarray(eps_hat) - np.asarray(guided_eps)) / (scale * sigma), reference, atol=1e-7
        )


def test_gradient_guidance_composes_with_classifier_free_guidance_as_the_sum():
    """The guide on a CFG-guided network: eps = eps_u + w (eps_c - eps_u) - s sigma grad log p
    (the two score terms summed), at one denoiser call of the samplers."""
    batch, w, s = 6, 3.0, 2.0
    x = jnp.asarray(np.random.default_rng(1).normal(size=(batch, 2)), jnp.float32)
    t = 400
    labels = jnp.full((batch,), LABEL)
    conditional = oracle.exact_conditional_model_fn(MIXTURE, SCHEDULE)
    guided_model = dj.classifier_free_guidance(conditional, labels, w, num_classes=3)
    log_prob = oracle.exact_class_log_prob(MIXTURE, SCHEDULE, labels)
    guide = dj.gradient_guidance(log_prob, s)
    m = dj.marginal(SCHEDULE, jnp.int32(t), 2)
    _, _, eps = dj.samplers.denoise(
        guided_model, "eps", m, jnp.int32(t), x, time=jnp.int32(t), guide=guide
    )
    times = jnp.full((batch,), t)
    eps_c = conditional(x, times, labels)
    eps_u = conditional(x, times, jnp.full((batch,), 3))
    gradient = jax.grad(lambda x: jnp.sum(log_prob(x, times)))(x)
    expected = eps_u + w * (eps_c - eps_u) - s * m.sigma * gradient
    np.testing.assert_allclose(eps, expected, atol=1e-5)


def test_t_range_and_pure_noise_leave_the_prediction_alone():
    """Outside t_range, and where alpha = 0 (x_t holds no information about y; the step there
    is 0/0 in x0 space), the guide returns its inputs unchanged; inside, it moves them along
    the line through x_t."""
    batch = 4
    x = jnp.ones((batch, 2))
    log_prob = oracle.exact_class_log_prob(MIXTURE, FLOW, jnp.full((batch,), LABEL))
    guide = dj.gradient_guidance(log_prob, 1.0, t_range=(0.2, 0.5))
    t = jnp.asarray([0.1, 0.3, 0.5, 0.9], jnp.float32)
    alpha, sigma = FLOW.alpha_sigma(t)
    alpha, sigma = alpha[:, None], sigma[:, None]
    x0, eps = jnp.zeros_like(x), jnp.ones_like(x)
    new_x0, new_eps = guide(x, t, alpha, sigma, x0, eps)
    moved = np.any(np.asarray(new_eps != eps), axis=1)
    np.testing.assert_array_equal(moved, [False, True, True, False])
    everywhere = dj.gradient_guidance(log_prob, 1.0)
    at_noise = everywhere(
        x, jnp.ones((batch,)), jnp.zeros((batch, 1)), jnp.ones((batch, 1)), x0, eps
    )
    np.testing.assert_array_equal(at_noise[0], x0)
    np.testing.assert_array_equal(at_noise[1], eps)
    # It moves along x_t = alpha x0_hat + sigma eps_hat: alpha d(x0_hat) + sigma d(eps_hat) = 0.
    np.testing.assert_allclose(alpha * (new_x0 - x0) + sigma * (new_eps - eps), 0.0, atol=1e-6)


def _exact_logits(means, variances0, log_weights, sqrt_ac, sqrt_1mac, x_in, t_in):
    alpha, sigma = sqrt_ac[t_in][:, None, None], sqrt_1mac[t_in][:, None, None]
    variances_t = alpha**2 * variances0 + sigma**2
    residual = x_in[:, None, :] - alpha * means
    return log_weights - 0.5 * jnp.sum(residual**2 / variances_t + jnp.log(variances_t), -1)


def test_classifier_log_prob_is_log_softmax_of_the_logits_at_the_network_inputs():
    """A 'network' returning the exact mixture logits at (x_in, t_in): classifier_log_prob
    equals the exact log p(y | x_t); and the guide built from it gives the conditional
    sampler's samples (DDIM), as the exact log-probability does."""
    batch = 16
    means, variances0, log_weights = oracle._mixture_arrays(MIXTURE)
    logits_fn = jax.tree_util.Partial(
        _exact_logits, means, variances0, log_weights, SCHEDULE.sqrt_alphas_cumprod,
        SCHEDULE.sqrt_one_minus_alphas_cumprod,
    )  # fmt: skip
    labels = jnp.arange(batch) % 3
    x = jnp.asarray(np.random.default_rng(2).normal(size=(batch, 2)), jnp.float32)
    t = jnp.arange(batch) * 60
    log_prob = dj.classifier_log_prob(logits_fn, SCHEDULE, labels)
    exact = oracle.exact_class_log_prob(MIXTURE, SCHEDULE, labels)
    np.testing.assert_allclose(log_prob(x, t), exact(x, t), atol=1e-5)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: dj.gradient_guidance("not a function", 1.0), "log_prob_fn must be callable"),
        (lambda: dj.gradient_guidance(jnp.sum, float("nan")), "must be finite"),
        (lambda: dj.gradient_guidance(jnp.sum, 1.0, t_range=(0.5, 0.1)), "t_low <= t_high"),
        (lambda: dj.gradient_guidance(jnp.sum, 1.0, t_range=0.5), "t_range must be None or"),
        (lambda: dj.gradient_guidance(jnp.sum, 1.0, wrt="eps"), "wrt must be one of"),
        (lambda: dj.classifier_log_prob(jnp.sum, SCHEDULE, jnp.zeros((2, 2))), "labels must be"),
    ],
)
def test_bad_guidance_arguments_are_clear_errors(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call()


def _linear_log_prob(direction, x, t):
    return jnp.sum(x * direction, axis=-1)


@pytest.mark.parametrize("variance", ["large", "small"])
def test_ddpm_mean_form_shifts_the_mean_by_the_variance_times_the_score_change(variance):
    """log p = c . x has the constant gradient c. One respaced DDPM step from t = 999 (the
    sample is that step's mean, no noise at the last step): guidance_form='mean' gives the
    unguided sample plus v s c, with v the step's variance (beta'_0 = 1 - abar_999 for
    'large'; beta~ = 0 at the chain's first index for 'small', so no shift at all); the score
    form gives x0_hat + s sigma^2 / alpha c instead."""
    schedule, batch, scale = dj.get_schedule("linear", 1000), 3, 0.5
    direction = jnp.asarray([1.0, -2.0])
    guide = dj.gradient_guidance(jax.tree_util.Partial(_linear_log_prob, direction), scale)
    model = oracle.exact_model_fn(MIXTURE, schedule, "eps")
    keys = dj.sample_keys(0, 0, batch)
    options = dict(num_steps=1, variance=variance, prediction_type="eps")
    plain = dj.sample("ddpm", model, schedule, keys, (batch, 2), **options)
    mean_form = dj.sample(
        "ddpm", model, schedule, keys, (batch, 2), guide=guide, guidance_form="mean", **options
    )
    score_form = dj.sample("ddpm", model, schedule, keys, (batch, 2), guide=guide, **options)
    abar = float(schedule.alphas_cumprod[999])
    variance_value = 1.0 - abar if variance == "large" else 0.0
    expected = np.broadcast_to(variance_value * scale * direction, plain.shape)
    np.testing.assert_allclose(mean_form - plain, expected, atol=1e-5)
    shift = scale * (1.0 - abar) / np.sqrt(abar) * direction
    np.testing.assert_allclose(score_form - plain, np.broadcast_to(shift, plain.shape), rtol=1e-4)


def test_ddpm_rejects_an_unknown_guidance_form():
    with pytest.raises(ValueError, match="guidance_form must be one of"):
        dj.ddpm_sample(jnp.zeros_like, SCHEDULE, jax.random.key(0), (2, 2),
                       prediction_type="eps", guidance_form="both")  # fmt: skip


def test_guidance_of_a_learned_variance_guides_the_prediction_channels_only():
    """u + w (c - u) on the first C channels, the conditional variance values on the rest, from
    one batched call (DiT's sampling, without its guidance of 3 of 4 channels)."""
    calls = []

    def conditional(x_t, t, labels):
        calls.append(x_t.shape)
        shift = labels.astype(x_t.dtype)[:, None, None, None]
        return jnp.concatenate([x_t + shift, 2.0 * x_t - shift], axis=-1)

    x_t = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    labels = jnp.array([1, 2])
    guided = dj.classifier_free_guidance(
        conditional, labels, 3.0, num_classes=5, learned_variance=True
    )(x_t, jnp.array([10, 20]))
    shift = labels.astype(jnp.float32)[:, None, None, None]
    np.testing.assert_allclose(guided[..., :3], x_t + 5.0 + 3.0 * (shift - 5.0), rtol=1e-6)
    np.testing.assert_allclose(guided[..., 3:], 2.0 * x_t - shift, rtol=1e-6)
    assert calls == [(4, 4, 4, 3)]
