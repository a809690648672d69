"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of
Diffusion Models", arXiv:2202.00512, Algorithm 2): a student that takes one DDIM step where its
teacher takes two.

**Grids.** A student of N steps samples with DDIM on the N-point grid its training used: for a
discrete schedule the 'trailing' timesteps round(T - k T / N) - 1 (k = 0 .. N - 1, the first at
t = T - 1), for a continuous process t_k = 1 - k / N; then the data (alpha = 1, sigma = 0).
The teacher takes DDIM steps on the 2N-point grid of the same rule (:func:`distillation_grid`),
whose even points are the student's, so student step k, from point k to point k + 1 of its grid,
is teacher steps 2k and 2k + 1: t -> t' -> t'' with t' the midpoint. Rounds halve N, and each
grid nests in the previous one (for a schedule while 2N <= T; :func:`distillation_grid`
refuses a grid that does not nest).

**Target.** From z_t = alpha_t x + sigma_t eps the teacher's two DDIM steps (Song et al. 2021,
eq. 12 with eta = 0) give z'' at t''. The student's own DDIM step from z_t lands on z'' exactly
when its x-prediction is (Algorithm 2)

    x_target = (z'' - (sigma'' / sigma_t) z_t) / (alpha'' - (sigma'' / sigma_t) alpha_t),

and the student regresses on it with the weight max(SNR_t, 1) on the x-space error (the
paper's "truncated SNR" weighting, eq. 9; any of :data:`diffjax.losses.LOSS_WEIGHTINGS`). The
student's prediction may be of any type that defines x at t = 1 ('x0', 'v', 'flow', 'edm'):
an eps-student cannot express x where alpha_t -> 0, which the last rounds need (Sec. 4). An
eps-teacher without zero terminal SNR works, but its x-prediction near t = 1 is
(z - sigma eps) / alpha with alpha(T - 1) ~ 0.006 for the cosine schedule: errors are
amplified 150-fold in exactly the steps the short students take, so a v-prediction teacher on
a zero-terminal-SNR schedule is the recommended start; at zero SNR an eps-teacher is undefined
and refused.

Like every math module, the functions take plain ``model_fn(x_in, t_in) -> prediction``
closures (:func:`diffjax.predictions.network_inputs` says how they are called); the teacher's
condition and guidance live in its closure.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import predictions
from diffjax.losses import check_weighting, loss_weight
from diffjax.processes import Marginal, check_process, is_discrete
from diffjax.samplers.grids import Grid, as_jax, check_defined_start, make_grid, uniform_times
from diffjax.samplers.steps import ddim_step
from diffjax.samplers.timesteps import check_num_steps, spaced_timesteps

__all__ = [
    "STUDENT_PREDICTIONS",
    "check_distillation",
    "distillation_grid",
    "progressive_distillation_loss",
    "student_grid_times",
    "two_step_target",
]

ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]

STUDENT_PREDICTIONS: tuple[str, ...] = ("x0", "v", "flow", "edm")
"""Prediction types a student may have: each determines x at every t, also at zero SNR."""


def student_grid_times(process: Any, num_steps: int) -> np.ndarray:
    """The N times a student of ``num_steps`` steps is trained and sampled at, in visiting
    order: the 'trailing' timesteps of a schedule (int32 ``[N]``), or 1 - k / N of a continuous
    process (float64 ``[N]``). DDIM samples on exactly these (``spacing='trailing'`` for a
    schedule, its default uniform grid otherwise): the student's grid of Salimans & Ho 2022,
    Algorithm 2, with Lin et al. 2024's 'trailing' spacing (Sec. 3.3)."""
    if is_discrete(process):
        return spaced_timesteps(process.num_timesteps, num_steps, "trailing")
    return uniform_times(num_steps)


def distillation_grid(process: Any, num_student_steps: int) -> Grid:
    """The teacher's 2N-point DDIM grid of a student of N steps, in visiting order plus the
    data point (:class:`~diffjax.samplers.grids.Grid`, 2N + 1 entries): entry 2k is the
    student's point k, entry 2k + 1 the midpoint its step skips (the teacher's two DDIM steps
    t -> t' -> t'' of Salimans & Ho 2022, Algorithm 2).

    Args:
      process: a concrete schedule or continuous process.
      num_student_steps: N >= 1 (2N <= T for a schedule).

    Raises:
      ValueError: N out of range, or (a schedule) a 2N-point grid whose even points are not the
        N-point grid.
    """
    check_process(process)
    num_student_steps = check_num_steps(num_student_steps, None)
    student = student_grid_times(process, num_student_steps)
    if is_discrete(process):
        if 2 * num_student_steps > process.num_timesteps:
            raise ValueError(
                f"a student of {num_student_steps} steps needs a teacher grid of "
                f"{2 * num_student_steps} distinct timesteps; the schedule has "
                f"T={process.num_timesteps}."
            )
        teacher = spaced_timesteps(process.num_timesteps, 2 * num_student_steps, "trailing")
        if not np.array_equal(teacher[::2], student):
            raise ValueError(
                f"the trailing grids of {2 * num_student_steps} and {num_student_steps} steps "
                f"out of T={process.num_timesteps} do not nest ({teacher[::2]} vs {student})."
            )
    else:
        teacher = uniform_times(2 * num_student_steps)
        teacher[::2] = student  # the very floats the student samples at
    return make_grid(process, teacher)


def check_distillation(
    process: Any,
    num_student_steps: int,
    *,
    student_prediction: str,
    teacher_prediction: str,
    weighting: str = "truncated_snr",
) -> Grid:
    """Checks a distillation setting before anything is traced; returns its
    :func:`distillation_grid`.

    Raises:
      ValueError: a student type outside :data:`STUDENT_PREDICTIONS`, a type the process
        cannot define, a teacher type undefined at t = 1 (eps at zero SNR), an unknown
        weighting, or a grid that does not nest.
    """
    predictions.check_prediction_supported(teacher_prediction, process)
    predictions.check_prediction_supported(student_prediction, process)
    if student_prediction not in STUDENT_PREDICTIONS:
        raise ValueError(
            f"student prediction {student_prediction!r} cannot express x where alpha_t -> 0, "
            f"which a few-step student must (Salimans & Ho 2022, Sec. 4); use one of "
            f"{STUDENT_PREDICTIONS}."
        )
    check_weighting(weighting)
    grid = distillation_grid(process, num_student_steps)
    try:
        check_defined_start(grid, teacher_prediction, process)
    except ValueError as error:
        raise ValueError(f"the teacher's first step: {error}") from error
    return grid


def _marginal(grid: Grid, index: jnp.ndarray, ndim: int, variance_preserving: bool) -> Marginal:
    """The grid's marginal at per-example entries ``index`` [B], shaped [B, 1, ..., 1]."""

    def at(values):
        if values is None:
            return None
        return values[index].reshape((-1,) + (1,) * (ndim - 1))

    return Marginal(
        at(grid.alpha), at(grid.sigma), at(grid.d_alpha), at(grid.d_sigma), variance_preserving
    )


def _predict(
    model_fn: ModelFn, prediction_type: str, grid: Grid, index: jnp.ndarray, x: jnp.ndarray,
    variance_preserving: bool,
) -> tuple[jnp.ndarray, Marginal]:  # fmt: skip
    m = _marginal(grid, index, x.ndim, variance_preserving)
    scale = predictions.input_scale(prediction_type, m)
    prediction = model_fn(x if scale is None else x * scale, grid.model_time[index])
    if getattr(prediction, "shape", None) != x.shape:
        raise ValueError(
            f"model_fn returned shape {getattr(prediction, 'shape', type(prediction))}; "
            f"expected the shape of x_t, {x.shape}."
        )
    return prediction.astype(jnp.float32), m


def _variance_preserving(process: Any) -> bool:
    return is_discrete(process) or bool(process.variance_preserving)


def two_step_target(
    teacher_fn: ModelFn,
    process: Any,
    grid: Grid,
    x_t: jnp.ndarray,
    step: jnp.ndarray,
    *,
    prediction_type: str,
    clip_x0: bool = False,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The teacher's two DDIM steps from the student's point and the x-target they imply
    (Salimans & Ho 2022, Algorithm 2, lines 6-9).

    Args:
      teacher_fn: ``teacher_fn(x_in [B, ...], t_in [B]) -> prediction``.
      process: the process (for the marginal's conventions).
      grid: :func:`distillation_grid` of the student's N (NumPy or JAX arrays).
      x_t: ``[B, ...]`` z_t at the student's points.
      step: int ``[B]`` in [0, N): the student's step, from grid entry 2 step (t) over
        2 step + 1 (t') to 2 step + 2 (t'').
      prediction_type: what the teacher predicts.
      clip_x0: clip the teacher's x-predictions to [-1, 1] (as its sampler does with
        ``clip_x0``).

    Returns:
      ``(x_target, z'')``, float32 ``[B, ...]``: the x-prediction whose DDIM step from z_t
      lands on z'', and z'' itself.
    """
    grid = as_jax(grid)
    variance_preserving = _variance_preserving(process)
    x = x_t.astype(jnp.float32)
    start = 2 * step
    for offset in (0, 1):
        prediction, m = _predict(
            teacher_fn, prediction_type, grid, start + offset, x, variance_preserving
        )
        x0_hat, eps_hat = predictions.to_x0_eps(prediction_type, prediction, x, m)
        if clip_x0:
            x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
            eps_hat = (x - m.alpha * x0_hat) / m.sigma
        following = _marginal(grid, start + offset + 1, x.ndim, variance_preserving)
        x = ddim_step(x0_hat, eps_hat, following.alpha, following.sigma)
    m_t = _marginal(grid, start, x.ndim, variance_preserving)
    m_end = _marginal(grid, start + 2, x.ndim, variance_preserving)
    ratio = m_end.sigma / m_t.sigma
    x_target = (x - ratio * x_t.astype(jnp.float32)) / (m_end.alpha - ratio * m_t.alpha)
    return x_target, x


def progressive_distillation_loss(
    student_fn: ModelFn,
    teacher_fn: ModelFn,
    process: Any,
    x0: jnp.ndarray,
    key: jax.Array,
    *,
    num_student_steps: int,
    student_prediction: str = "v",
    teacher_prediction: str = "v",
    weighting: str = "truncated_snr",
    clip_x0: bool = False,
    step: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """One batch of progressive distillation (Salimans & Ho 2022, Algorithm 2).

    Draws the student's step k ~ U{0, .., N - 1} (its time t = the grid's point k) and eps,
    forms z_t = alpha_t x + sigma_t eps, computes the teacher's :func:`two_step_target` (no
    gradient flows into it) and regresses the student's prediction on the target of its type,
    per example

        loss_i = w(t_i) mean_over_pixels (prediction_i - target_i)^2,

    where the target is x_target re-expressed in the student's prediction type at (z_t, t) and
    w is :func:`diffjax.losses.loss_weight`: 'truncated_snr' puts max(SNR_t, 1) on the x-space
    error (eq. 9).

    Args:
      student_fn: ``model_fn(x_in [B, ...], t_in [B]) -> prediction``.
      teacher_fn: ``model_fn(x_in [B, ...], t_in [B]) -> prediction``.
      process: a concrete schedule or continuous process (the teacher's).
      x0: data ``[B, ...]`` float.
      key: split into the step key and the noise key.
      num_student_steps: N, the student's steps (the teacher takes 2N).
      student_prediction: one of :data:`STUDENT_PREDICTIONS`.
      teacher_prediction: what the teacher predicts.
      weighting: one of :data:`diffjax.losses.LOSS_WEIGHTINGS`.
      clip_x0: clip the teacher's x-predictions.
      step: optional int ``[B]`` student steps instead of drawing them.

    Returns:
      ``(loss, aux)``: the float32 batch mean and float32 ``[B]`` ``'loss'``, ``'mse'``
      (unweighted, on the student's target), ``'weight'``, int ``'step'``, and ``[B, ...]``
      ``'x_target'``.

    Raises:
      ValueError: see :func:`check_distillation`, before anything is traced.
    """
    grid = as_jax(
        check_distillation(
            process,
            num_student_steps,
            student_prediction=student_prediction,
            teacher_prediction=teacher_prediction,
            weighting=weighting,
        )  # fmt: skip
    )
    variance_preserving = _variance_preserving(process)
    step_key, noise_key = jax.random.split(key)
    batch = x0.shape[0]
    if step is None:
        step = jax.random.randint(step_key, (batch,), 0, num_student_steps)
    x0 = x0.astype(jnp.float32)
    noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
    m = _marginal(grid, 2 * step, x0.ndim, variance_preserving)
    z_t = m.alpha * x0 + m.sigma * noise
    x_target, _ = two_step_target(
        teacher_fn, process, grid, z_t, step, prediction_type=teacher_prediction,
        clip_x0=clip_x0,
    )  # fmt: skip
    x_target = jax.lax.stop_gradient(x_target)
    eps_target = (z_t - m.alpha * x_target) / m.sigma
    target = predictions.target(student_prediction, x_target, eps_target, m)
    prediction, _ = _predict(
        student_fn, student_prediction, grid, 2 * step, z_t, variance_preserving
    )
    mse = jnp.mean(jnp.square(prediction - target), axis=tuple(range(1, x0.ndim)))
    weight = loss_weight(student_prediction, weighting, m)
    per_example = weight * mse
    aux = dict(loss=per_example, mse=mse, weight=weight, step=step, x_target=x_target)
    return jnp.mean(per_example), aux
