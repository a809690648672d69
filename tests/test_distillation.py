"""Progressive distillation's math (diffjax/distillation.py) against exact Gaussian teachers.

With Gaussian data the exact x-prediction is affine in x_t, so the teacher's two DDIM steps and
the student's target are affine maps that float64 NumPy computes independently of the library
(from Song et al. 2021, eq. 12, and Salimans & Ho 2022, Algorithm 2). With a mixture the
teacher is the exact posterior mean, and a small MLP student, trained for one round on the
loss, must reproduce the teacher's 2N-step sampler in N steps.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffjax as dj
from diffjax import distillation, samplers

sys.path.insert(0, str(Path(__file__).parent))
import gaussian_oracle as oracle  # noqa: E402
from train_helpers import mlp, mlp_init  # noqa: E402

GAUSSIAN = oracle.gaussian([0.3, -0.5], [0.6, 1.2])
ZERO_SNR = dj.get_schedule("cosine", 1000, zero_terminal_snr=True)
COSINE = dj.get_schedule("cosine", 1000)


def _affine_ddim_target(grid, x_t, step):
    """The teacher's two DDIM steps and the target of Algorithm 2 in float64, from the grid's
    (float32) alpha and sigma, for the exact x-prediction of GAUSSIAN."""
    mean, std = GAUSSIAN.means[0], GAUSSIAN.stds[0]
    alpha, sigma = np.float64(grid.alpha), np.float64(grid.sigma)
    x = np.float64(x_t)
    start = 2 * np.asarray(step)
    for offset in (0, 1):
        a, s = alpha[start + offset][:, None], sigma[start + offset][:, None]
        gain = a * std**2 / (a**2 * std**2 + s**2)
        x0_hat = mean + gain * (x - a * mean)
        eps_hat = (x - a * x0_hat) / s
        a_next, s_next = alpha[start + offset + 1][:, None], sigma[start + offset + 1][:, None]
        x = a_next * x0_hat + s_next * eps_hat
    a_t, s_t = alpha[start][:, None], sigma[start][:, None]
    a_end, s_end = alpha[start + 2][:, None], sigma[start + 2][:, None]
    return (x - s_end / s_t * np.float64(x_t)) / (a_end - s_end / s_t * a_t), x


@pytest.mark.parametrize("prediction_type", ["v", "x0", "eps"])
@pytest.mark.parametrize("num_steps", [1, 4])
def test_two_step_target_is_the_float64_affine_ddim_target(prediction_type, num_steps):
    schedule = COSINE if prediction_type == "eps" else ZERO_SNR
    grid = distillation.distillation_grid(schedule, num_steps)
    steps = np.repeat(np.arange(num_steps), 64)
    x_t = np.random.default_rng(0).standard_normal((steps.size, 2)).astype(np.float32)
    teacher = oracle.exact_model_fn(GAUSSIAN, schedule, prediction_type)
    x_target, z_end = distillation.two_step_target(
        teacher, schedule, grid, jnp.asarray(x_t), jnp.asarray(steps),
        prediction_type=prediction_type,
    )  # fmt: skip
    want_target, want_end = _affine_ddim_target(grid, x_t, steps)
    # float32 evaluation of a few affine maps with O(1) coefficients: a few ulps of the result,
    # except that the eps teacher divides by alpha(T - 1) = 0.006 at the first step (its
    # rounding error is amplified by 1 / alpha there, ~150x).
    scale = 1.0 / float(grid.alpha[0]) if prediction_type == "eps" else 1.0
    atol = 8 * np.finfo(np.float32).eps * scale * np.abs(want_target).max()
    np.testing.assert_allclose(z_end, want_end, atol=atol, rtol=0)
    np.testing.assert_allclose(x_target, want_target, atol=atol, rtol=0)


@pytest.mark.parametrize("process", [ZERO_SNR, dj.get_process("vp_cosine"), dj.RectifiedFlow()])
def test_the_student_step_with_the_target_lands_where_the_teachers_two_steps_do(process):
    """Along the teacher's own 2N-step DDIM run, student step k from its point 2k lands on point
    2k + 2 (t' and t'' in that order), and one DDIM step with x_target lands there too."""
    num_steps, prediction = 4, ("v" if process is ZERO_SNR else "x0")
    mixture = oracle.ring_mixture(4, 2.0, 0.3)
    teacher = oracle.exact_model_fn(mixture, process, prediction)
    noise = jax.random.normal(jax.random.key(0), (256, 2))
    options = dict(spacing="trailing") if process is ZERO_SNR else {}
    if process is not ZERO_SNR:
        noise = noise * float(distillation.distillation_grid(process, num_steps).sigma[0])
    final, trajectory = samplers.ddim_sample(
        teacher, process, jax.random.key(1), noise.shape, num_steps=2 * num_steps,
        prediction_type=prediction, x_T=noise, return_trajectory=True, **options,
    )  # fmt: skip
    path = np.concatenate([np.asarray(trajectory.x_t), np.asarray(final)[None]])
    grid = distillation.distillation_grid(process, num_steps)
    np.testing.assert_array_equal(trajectory.timesteps, grid.time[:-1])
    for step in range(num_steps):
        steps = jnp.full((noise.shape[0],), step)
        x_target, z_end = distillation.two_step_target(
            teacher, process, grid, jnp.asarray(path[2 * step]), steps, prediction_type=prediction
        )
        np.testing.assert_allclose(z_end, path[2 * step + 2], atol=2e-5 * np.abs(path).max())
        x_t = path[2 * step]
        alpha, sigma = grid.alpha[2 * step], grid.sigma[2 * step]
        eps = (x_t - alpha * np.asarray(x_target)) / sigma
        landed = samplers.ddim_step(
            x_target, eps, grid.alpha[2 * step + 2], grid.sigma[2 * step + 2]
        )
        np.testing.assert_allclose(landed, path[2 * step + 2], atol=5e-5 * np.abs(path).max())


def test_grids_nest_and_the_student_samples_on_its_training_grid():
    for num_steps in (64, 32, 8, 1):
        grid = distillation.distillation_grid(ZERO_SNR, num_steps)
        student = distillation.student_grid_times(ZERO_SNR, num_steps)
        np.testing.assert_array_equal(grid.time[:-1:2], student)
        plan = samplers.ddim_plan(
            ZERO_SNR, num_steps=num_steps, spacing="trailing", prediction_type="v"
        )
        np.testing.assert_array_equal(plan.grid.time, grid.time[::2])
        continuous = distillation.distillation_grid(dj.RectifiedFlow(), num_steps)
        plan = samplers.ddim_plan(dj.RectifiedFlow(), num_steps=num_steps, prediction_type="flow")
        np.testing.assert_array_equal(plan.grid.time, continuous.time[::2])
    with pytest.raises(ValueError, match="T=1000"):
        distillation.distillation_grid(ZERO_SNR, 501)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(student_prediction="eps"), r"student prediction 'eps' cannot express x"),
        (dict(teacher_prediction="eps"), r"teacher's first step: .*zero SNR"),
        (dict(weighting="p2"), r"Unknown weighting 'p2'"),
        (dict(num_student_steps=0), r"num_steps"),
    ],
)
def test_settings_that_cannot_work_are_refused(kwargs, message):
    settings = dict(num_student_steps=2, student_prediction="v", teacher_prediction="v")
    settings.update(kwargs)
    with pytest.raises(ValueError, match=message):
        distillation.check_distillation(ZERO_SNR, settings.pop("num_student_steps"), **settings)


def test_the_loss_weight_is_truncated_snr_on_the_x_error():
    """With a student equal to the exact teacher, the v-student's loss per example is
    max(SNR, 1) ||x_hat - x_target||^2: checked against the x-space error computed here."""
    teacher = oracle.exact_model_fn(GAUSSIAN, ZERO_SNR, "v")
    student = oracle.exact_model_fn(GAUSSIAN, ZERO_SNR, "v")
    x0 = jnp.asarray(GAUSSIAN.sample(np.random.default_rng(2), 512)[0], jnp.float32)
    loss, aux = distillation.progressive_distillation_loss(
        student, teacher, ZERO_SNR, x0, jax.random.key(3), num_student_steps=4,
    )  # fmt: skip
    grid = distillation.distillation_grid(ZERO_SNR, 4)
    index = 2 * np.asarray(aux["step"])
    alpha, sigma = np.float64(grid.alpha[index]), np.float64(grid.sigma[index])
    noise = np.asarray(jax.random.normal(jax.random.split(jax.random.key(3))[1], x0.shape))
    z_t = alpha[:, None] * np.float64(x0) + sigma[:, None] * noise
    mean, std = GAUSSIAN.means[0], GAUSSIAN.stds[0]
    gain = alpha[:, None] * std**2 / (alpha[:, None] ** 2 * std**2 + sigma[:, None] ** 2)
    x_hat = mean + gain * (z_t - alpha[:, None] * mean)
    x_error = np.mean((x_hat - np.float64(aux["x_target"])) ** 2, axis=1)
    snr = alpha**2 / sigma**2
    np.testing.assert_allclose(aux["loss"], np.maximum(snr, 1.0) * x_error, rtol=1e-3, atol=1e-7)
    assert float(loss) == pytest.approx(float(np.mean(aux["loss"])), rel=1e-6)


# ----------------------------------------------------------------------- one round, learned

RING = oracle.ring_mixture(4, 2.0, 0.3)
STUDENT_STEPS = 2


def _ddim(model_fn, noise, num_steps):
    return samplers.ddim_sample(
        model_fn, ZERO_SNR, jax.random.key(0), noise.shape, num_steps=num_steps,
        spacing="trailing", prediction_type="v", x_T=noise,
    )  # fmt: skip


@pytest.fixture(scope="module")
def distilled_student():
    """An MLP v-student distilled for one round from the exact 4-step teacher of RING."""
    teacher = oracle.exact_model_fn(RING, ZERO_SNR, "v")
    params = mlp_init(jax.random.key(0))
    optimizer = optax.adam(optax.linear_schedule(3e-3, 0.0, 3000))
    opt_state = optimizer.init(params)
    data = jnp.asarray(RING.sample(np.random.default_rng(0), 200_000)[0], jnp.float32)

    @jax.jit
    def train_step(params, opt_state, key):
        batch = jax.random.choice(jax.random.fold_in(key, 1), data, (512,))

        def loss_fn(params):
            return distillation.progressive_distillation_loss(
                jax.tree_util.Partial(mlp, params), teacher, ZERO_SNR, batch, key,
                num_student_steps=STUDENT_STEPS,
            )[0]  # fmt: skip

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    for step in range(3000):
        params, opt_state = train_step(params, opt_state, jax.random.key(step))
    return jax.tree_util.Partial(mlp, params), teacher


def test_one_round_makes_n_student_steps_match_2n_teacher_steps(distilled_student):
    """The student's 2-step samples have the teacher's 4-step mean and per-axis spread within
    5 Monte-Carlo standard errors (independent noise for each, n = 4096); the exact model
    itself in 2 steps, the student before distillation, is far outside them."""
    student, teacher = distilled_student
    num = 4096
    noise_student = jax.random.normal(jax.random.key(10), (num, 2))
    noise_teacher = jax.random.normal(jax.random.key(11), (num, 2))
    taught = np.float64(_ddim(teacher, noise_teacher, 2 * STUDENT_STEPS))
    learned = np.float64(_ddim(student, noise_student, STUDENT_STEPS))
    undistilled = np.float64(_ddim(teacher, noise_student, STUDENT_STEPS))

    def z_scores(samples):
        """(mean difference, std difference) over their standard errors, per axis."""
        mean_se = np.sqrt((samples.var(0) + taught.var(0)) / num)

        # The std of n samples has standard error ~ std sqrt((kurtosis - 1) / (4 n)).
        def std_se(x):
            centred = x - x.mean(0)
            kurtosis = np.mean(centred**4, 0) / np.mean(centred**2, 0) ** 2
            return x.std(0) * np.sqrt((kurtosis - 1) / (4 * num))

        std_error = np.sqrt(std_se(samples) ** 2 + std_se(taught) ** 2)
        return (
            np.abs(samples.mean(0) - taught.mean(0)) / mean_se,
            np.abs(samples.std(0) - taught.std(0)) / std_error,
        )

    mean_z, std_z = z_scores(learned)
    assert np.all(mean_z < 5) and np.all(std_z < 5), (mean_z, std_z)
    _, undistilled_std_z = z_scores(undistilled)
    assert np.any(undistilled_std_z > 5), undistilled_std_z
    # Paired: the same noise through both maps lands close (the student learned the map, not
    # only its law): well inside the samples' own spread.
    paired = np.float64(_ddim(teacher, noise_student, 2 * STUDENT_STEPS))
    assert np.mean((learned - paired) ** 2) < 0.05 * np.mean(np.var(paired, 0))
