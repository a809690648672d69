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
