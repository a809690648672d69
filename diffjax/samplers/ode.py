"""The probability-flow ODE solved adaptively with diffrax: samples with a stated accuracy.

Every process has the deterministic sampler (Song et al. 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations", arXiv:2011.13456, eq. 13)

    dx/dt = f(t) x - g(t)^2 / 2 * score(x, t) = alpha'(t) x0_hat(x, t) + sigma'(t) eps_hat(x, t),

the second form following from score = -eps_hat / sigma and :func:`~diffjax.processes.
sde_coefficients`; it is finite wherever the model's x0 and eps are (also at alpha = 0, where
f is not), and for a 'flow' model it is the network's output. :func:`ode_sample` integrates it
from t_max to t_min with an embedded Runge-Kutta pair (diffrax's Tsit5, Dopri5 or Dopri8, or
Heun-Euler, Bosh3) under a PID step-size controller with tolerances rtol and atol, all in one
``diffrax.diffeqsolve`` (a ``lax.while_loop``) inside one ``jax.jit``, then returns the
x0-prediction at t_min (the step onto the data every grid of :mod:`diffjax.samplers.grids`
ends with). A discrete schedule is integrated in its continuous-time view
(:class:`~diffjax.processes.ScheduleTime`).

The batch is one ODE: the step size is shared, and the error norm is the largest per-sample RMS
error, so every sample meets the tolerance; a sample then depends on its batch-mates only
through step sizes, at the tolerance's level (the fixed-step samplers have no such coupling).

The number of function evaluations is reported exactly: an embedded pair with the
first-same-as-last property (Tsit5, Dopri5, Bosh3) spends one evaluation at the start and
``stages - 1`` per attempted step, Dopri8 and Heun ``stages`` per step
(:data:`EVALS_PER_STEP`; the test counts the calls). One evaluation is one call of the model on
the whole batch (two batches' worth under classifier-free guidance, which enters through the
model function as in every sampler).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from diffjax import predictions
from diffjax.processes import Marginal, as_continuous, as_jit_argument, check_process, marginal
from diffjax.samplers.common import (
    as_model_pytree,
    check_common_args,
    check_flag,
    check_real,
    constrain,
    denoise,
    initial_state,
)
from diffjax.samplers.grids import check_defined_at

__all__ = [
    "EVALS_PER_STEP",
    "ODE_SOLVERS",
    "OdeStats",
    "check_ode_options",
    "ode_plan",
    "ode_sample",
    "ode_velocity",
    "per_sample_max_norm",
]

ODE_SOLVERS: dict[str, str] = {
    "tsit5": "Tsit5",
    "dopri5": "Dopri5",
    "dopri8": "Dopri8",
    "bosh3": "Bosh3",
    "heun": "Heun",
}
"""The solvers by name: diffrax's classes (diffrax is imported when a solve is traced)."""
EVALS_PER_STEP: dict[str, tuple[int, int]] = {
    "tsit5": (1, 6),
    "dopri5": (1, 6),
    "dopri8": (1, 13),
    "bosh3": (1, 3),
    "heun": (0, 2),
}
"""(evaluations at the start, evaluations per attempted step) of each solver in diffrax."""


class OdeStats(NamedTuple):
    """What an adaptive solve cost (int32 scalars).

    Attributes:
      num_function_evals: model calls on the batch (:data:`EVALS_PER_STEP`).
      num_steps: attempted steps; ``num_accepted_steps + num_rejected_steps``.
      num_accepted_steps, num_rejected_steps: the controller's decisions.
    """

    num_function_evals: jnp.ndarray
    num_steps: jnp.ndarray
    num_accepted_steps: jnp.ndarray
    num_rejected_steps: jnp.ndarray


def ode_velocity(
    model: Callable, prediction_type: str, process: Any, t: jnp.ndarray, x: jnp.ndarray,
    clip_x0: bool = False, guide: Callable | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:  # fmt: skip
    """The probability-flow velocity alpha' x0_hat + sigma' eps_hat at a scalar time t: the
    ODE of Song et al. 2021, score_sde, eq. 13, with score = -eps_hat / sigma.

    Args:
      model: ``model(x_in [B, ...], t_in [B]) -> prediction``.
      prediction_type: what the model predicts ('flow': its output is the velocity).
      process: a continuous process (or :class:`~diffjax.processes.ScheduleTime`).
      t: scalar float time in (0, 1].
      x: ``[B, ...]``.
      clip_x0: clip x0_hat to [-1, 1] first.
      guide: applied to (x0_hat, eps_hat) first (:mod:`diffjax.samplers.guidance`).

    Returns:
      ``(velocity [B, ...], x0_hat [B, ...])``.
    """
    m = marginal(process, t, 0, x.dtype)
    t = jnp.asarray(t, jnp.float32)
    prediction, x0, eps = denoise(
        model, prediction_type, m, process.model_time(t), x, clip_x0, time=t, guide=guide
    )
    if prediction_type == "flow" and not clip_x0 and guide is None:
        return prediction, x0
    return m.d_alpha * x0 + m.d_sigma * eps, x0


def per_sample_max_norm(error: Any) -> jnp.ndarray:
    """The controller's norm: the largest over samples of the per-sample RMS of a pytree whose
    leaves are ``[B, ...]`` (diffrax's default, the RMS over everything, would let one sample's
    error hide behind the others')."""
    leaves = jax.tree.leaves(error)
    squares = sum(jnp.sum(jnp.square(leaf.reshape(leaf.shape[0], -1)), axis=1) for leaf in leaves)
    count = sum(leaf[0].size for leaf in leaves)
    return jnp.sqrt(jnp.max(squares) / count)


def default_t_min(process: Any) -> float:
    """Where the solve stops before the final x0-prediction: 1e-3 (score_sde's eps for sampling),
    or the time of index 0 for a schedule's continuous view."""
    process = as_continuous(process)
    return getattr(process, "first_time", lambda: 1e-3)()


def default_t_max(process: Any) -> float:
    """1, or the last finite-SNR time of a zero-terminal-SNR schedule's continuous view."""
    process = as_continuous(process)
    return getattr(process, "last_finite_time", lambda: 1.0)()


def _check_count(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")


def check_ode_options(
    process: Any, *, solver: str, rtol: float, atol: float, t_max: float | None,
    t_min: float | None, num_steps: int, max_steps: int, prediction_type: str,
) -> tuple[Any, float, float]:  # fmt: skip
    """Checks the ODE sampler's options in Python; returns (continuous process, t_max, t_min).

    Raises:
      ValueError / TypeError: naming the bad value and what is allowed.
    """
    check_process(process)
    if solver not in ODE_SOLVERS:
        raise ValueError(f"Unknown ODE solver {solver!r}; expected one of {tuple(ODE_SOLVERS)}.")
    check_real(rtol, "rtol", 1e-12, 1.0)
    check_real(atol, "atol", 1e-12, 1.0)
    _check_count(num_steps, "num_steps")
    _check_count(max_steps, "max_steps")
    predictions.check_prediction_supported(prediction_type, process)
    continuous = as_continuous(process)
    top = default_t_max(continuous)
    t_max = top if t_max is None else check_real(t_max, "t_max", 1e-6, top)
    t_min = default_t_min(continuous) if t_min is None else check_real(t_min, "t_min", 0.0, 1.0)
    if not 0.0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}.")
    start = np.float64(t_max)
    check_defined_at(
        Marginal(
            *continuous.alpha_sigma(start, np), *continuous.derivatives(start, np),
            continuous.variance_preserving,
        ),
        prediction_type, continuous, f"t={t_max:.4g}",
    )  # fmt: skip
    return continuous, float(t_max), float(t_min)


def ode_plan(
    process: Any, *, solver: str = "tsit5", rtol: float = 1e-5, atol: float = 1e-5,
    num_steps: int = 10, max_steps: int = 4096, t_max: float | None = None,
    t_min: float | None = None, prediction_type: str,
) -> tuple[Any, float, float]:  # fmt: skip
    """:func:`check_ode_options` with :func:`ode_sample`'s defaults (the sampler registry's
    option check)."""
    return check_ode_options(
        process, solver=solver, rtol=rtol, atol=atol, t_max=t_max, t_min=t_min,
        num_steps=num_steps, max_steps=max_steps, prediction_type=prediction_type,
    )  # fmt: skip


def finish_solve(
    call: Callable[[], Any], *, solver: str, rtol: float, atol: float, max_steps: int,
    t_end: float,
) -> Any:  # fmt: skip
    """``call()`` (a jitted function that runs :func:`solve`), waited for, with diffrax's
    runtime error for an exhausted ``max_steps`` turned into one clear :class:`OdeSolveError`.

    Under an outer ``jax.jit`` the result is traced and nothing can be waited for: diffrax's
    own error then surfaces when the caller's program runs.
    """
    import logging

    from diffjax.errors import OdeSolveError

    # diffrax raises through a host callback, which JAX logs with a traceback before the
    # error reaches here; the error is reported below instead.
    callback_logger = logging.getLogger("jax._src.callback")
    previous_level = callback_logger.level
    callback_logger.setLevel(logging.CRITICAL)
    try:
        result = call()
        if not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(result)):
            jax.block_until_ready(result)
        return result
    except jax.errors.JaxRuntimeError as error:
        if "maximum number of solver steps" not in str(error):
            raise
        raise OdeSolveError(
            f"the adaptive ODE solve ({solver}, rtol={rtol:g}, atol={atol:g}) used all "
            f"max_steps={max_steps} steps before reaching t={t_end:g}: raise max_steps or "
            f"loosen rtol/atol (a model that returns NaN or Inf also uses them all up)."
        ) from None
    finally:
        callback_logger.setLevel(previous_level)


def solve(
    vector_field: Callable, y0: Any, t0: float, t1: float, *, solver: str, rtol: float,
    atol: float, num_steps: int, max_steps: int,
) -> tuple[Any, OdeStats]:  # fmt: skip
    """One ``diffrax.diffeqsolve`` of ``dy/dt = vector_field(t, y)`` from t0 to t1 (either
    direction; traced), first step (t1 - t0) / num_steps, :func:`per_sample_max_norm` error.

    Returns:
      ``(y at t1, OdeStats)``.
    """
    import diffrax

    term = diffrax.ODETerm(lambda t, y, args: vector_field(t, y))
    controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=per_sample_max_norm)
    solution = diffrax.diffeqsolve(
        term, getattr(diffrax, ODE_SOLVERS[solver])(), t0, t1, dt0=(t1 - t0) / num_steps, y0=y0,
        stepsize_controller=controller, max_steps=max_steps, saveat=diffrax.SaveAt(t1=True),
    )  # fmt: skip
    start, per_step = EVALS_PER_STEP[solver]
    steps = jnp.asarray(solution.stats["num_steps"], jnp.int32)
    stats = OdeStats(
        start + per_step * steps,
        steps,
        jnp.asarray(solution.stats["num_accepted_steps"], jnp.int32),
        jnp.asarray(solution.stats["num_rejected_steps"], jnp.int32),
    )
    return jax.tree.map(lambda leaf: leaf[-1], solution.ys), stats


@functools.partial(
    jax.jit,
    static_argnames=(
        "shape", "dtype", "prediction_type", "clip_x0", "solver", "num_steps", "max_steps",
        "out_sharding", "t_max", "t_min",
    ),
)  # fmt: skip
def _run(
    model, guide, process, key, x_T, rtol, atol, *, shape, dtype, prediction_type, clip_x0,
    solver, num_steps, max_steps, out_sharding, t_max, t_min,
):  # fmt: skip
    _, start_sigma = process.alpha_sigma(jnp.float32(t_max))
    x, _ = initial_state(key, x_T, shape, dtype, out_sharding, start_sigma.astype(dtype))

    def vector_field(t, x):
        velocity, _ = ode_velocity(model, prediction_type, process, t, x, clip_x0, guide)
        return constrain(velocity, out_sharding)

    x_end, stats = solve(
        vector_field, x, t_max, t_min, solver=solver, rtol=rtol, atol=atol,
        num_steps=num_steps, max_steps=max_steps,
    )  # fmt: skip
    m = marginal(process, jnp.float32(t_min), 0, dtype)
    _, x0, _ = denoise(
        model, prediction_type, m, process.model_time(jnp.float32(t_min)), x_end, clip_x0,
        time=jnp.float32(t_min), guide=guide,
    )  # fmt: skip
    return constrain(x0, out_sharding), stats._replace(
        num_function_evals=stats.num_function_evals + 1
    )


def ode_sample(
    model_fn: Callable,
    process: Any,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: int = 10,
    max_steps: int = 4096,
    t_max: float | None = None,
    t_min: float | None = None,
    prediction_type: str,
    clip_x0: bool = False,
    x_T: jnp.ndarray | None = None,
    return_stats: bool = False,
    dtype: DTypeLike = jnp.float32,
    out_sharding: jax.sharding.Sharding | None = None,
    guide: Callable | None = None,
):
    """Samples by solving the probability-flow ODE adaptively (see the module docstring): Song
    et al. 2021, score_sde, eq. 13, with an embedded Runge-Kutta pair (diffrax).

    Args:
      model_fn: ``model_fn(x_in [B, ...], t_in [B]) -> prediction [B, ...]``.
      process: a schedule or continuous process (concrete).
      key: PRNG key (or ``[B]`` per-sample keys) of x_T.
      shape: ``(B, ...)`` of the samples.
      solver: ``'tsit5' | 'dopri5' | 'dopri8' | 'bosh3' | 'heun'`` (diffrax's solvers).
      rtol: the controller's tolerances (score_sde samples at 1e-5).
      atol: the controller's tolerances (score_sde samples at 1e-5).
      num_steps: sets the first step, (t_max - t_min) / num_steps; the solver adapts it.
      max_steps: the most steps the solve may take (diffrax raises past it).
      t_max: the start time (default 1; (T - 1) / T for a zero-terminal-SNR schedule).
      t_min: the end time of the solve, after which the x0-prediction is returned (default
        1e-3; 1 / T, index 0, for a schedule).
      prediction_type: what the model predicts.
      clip_x0: clip each x0-prediction to [-1, 1] (the velocity is re-derived from it).
      x_T: optional start ``[B, ...]`` (default sigma(t_max) N(0, I)).
      return_stats: also return the :class:`OdeStats` of the solve.
      dtype: dtype of the state.
      out_sharding: optional sharding of ``[B, ...]``.
      guide: ``guide(x_t, t, alpha, sigma, x0_hat, eps_hat) -> (x0_hat, eps_hat)`` at every
        evaluation (:mod:`diffjax.samplers.guidance`), before ``clip_x0``; None for none.

    Returns:
      Samples ``[B, ...]``, or ``(samples, OdeStats)``; the final x0-prediction is counted in
      ``num_function_evals``.

    Raises:
      ValueError / TypeError: a bad option, before anything is traced; OdeSolveError: the
        solve used up ``max_steps`` (called outside ``jax.jit``; inside, diffrax's own error).
    """
    model, shape, dtype = check_common_args(model_fn, process, shape, key, x_T, dtype, out_sharding)
    continuous, t_max, t_min = check_ode_options(
        process, solver=solver, rtol=rtol, atol=atol, t_max=t_max, t_min=t_min,
        num_steps=num_steps, max_steps=max_steps, prediction_type=prediction_type,
    )  # fmt: skip
    clip_x0 = check_flag(clip_x0, "clip_x0")
    return_stats = check_flag(return_stats, "return_stats")
    samples, stats = finish_solve(
        lambda: _run(
            as_model_pytree(model), None if guide is None else as_model_pytree(guide),
            as_jit_argument(continuous), key, x_T, jnp.float32(rtol), jnp.float32(atol),
            shape=shape, dtype=dtype, prediction_type=prediction_type, clip_x0=clip_x0,
            solver=solver, num_steps=int(num_steps), max_steps=int(max_steps),
            out_sharding=out_sharding, t_max=t_max, t_min=t_min,
        ),
        solver=solver, rtol=rtol, atol=atol, max_steps=max_steps, t_end=t_min,
    )  # fmt: skip
    return (samples, stats) if return_stats else samples
