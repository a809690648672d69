"""The one scan runner every sampler uses: jit, start state, ``lax.scan``, trajectory, sharding.

A sampler is a *plan* (:class:`Plan`: its grid and per-step coefficients, built in float64
NumPy before anything is traced, with its options checked) and a *body* (a module-level
function doing one step). :func:`run_plan` runs any plan as one jitted ``jax.lax.scan`` over
its grid: one compile per (body, model callable, shape, number of steps, static options); a
new key, x_T, grid values, dynamic option or set of params (bound in a
:class:`jax.tree_util.Partial`) reuses it.

A body is called as ``body(model, process, x, carry, step, noise_key, settings, options)`` and
returns ``(x_next, carry, x0_hat)``, where ``model`` is the :class:`Denoiser` (the network and
the sampler's ``guide``) that ``settings.denoise(model, point, x)`` evaluates, ``step`` holds
the current and next :class:`Point` of the grid, the step's coefficients and its noise index,
``settings`` the static :class:`BodySettings` and ``options`` the plan's traced scalars. The
process enters as a traced pytree, for bodies that need its marginal off the grid (EDM's
churn).
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.processes import Marginal, as_jit_argument
from diffjax.samplers.common import (
    Trajectory,
    as_model_pytree,
    check_common_args,
    check_flag,
    constrain,
    denoise,
    initial_state,
    step_noise,
)
from diffjax.samplers.grids import Grid, as_jax

__all__ = ["BodySettings", "Denoiser", "Plan", "Point", "Step", "run_plan"]


class Plan(NamedTuple):
    """A sampler's checked options and precomputed grid.

    Attributes:
      body: the module-level step function (static).
      grid: the :class:`~diffjax.samplers.grids.Grid` (NumPy).
      coefficients: per-step float arrays ``[S]`` the body reads (e.g. DPM-Solver's scales).
      prediction_type: what the model predicts.
      variance_preserving: whether the process has alpha^2 + sigma^2 = 1.
      start_scale: x_T = start_scale * N(0, I) when x_T is not given.
      static: hashable static options of the body, as sorted ``(name, value)`` pairs.
      options: traced scalar options (e.g. DDIM's eta), float32.
      initial_carry: ``carry(x) -> pytree`` of the body's extra state, or None.
    """

    body: Callable
    grid: Grid
    coefficients: dict[str, np.ndarray]
    prediction_type: str
    variance_preserving: bool
    start_scale: float = 1.0
    static: tuple[tuple[str, Any], ...] = ()
    options: dict[str, float] = {}
    initial_carry: Callable | None = None


class Denoiser(NamedTuple):
    """What a body evaluates at a point: the network and the guide applied to its outputs
    (both pytrees, traced; ``guide`` None for none)."""

    model: Any
    guide: Any = None


class Point(NamedTuple):
    """One grid point inside the scan: process time, network time and marginal (scalars)."""

    time: jnp.ndarray
    model_time: jnp.ndarray
    marginal: Marginal


class Step(NamedTuple):
    """What a body gets for step k: points k and k + 1, the coefficients and the noise index."""

    current: Point
    next: Point
    coefficients: dict[str, jnp.ndarray]
    noise_index: jnp.ndarray


class BodySettings(NamedTuple):
    """Static settings of a body: the model's prediction type and the state's layout."""

    prediction_type: str
    clip_x0: bool
    shape: tuple[int, ...]
    dtype: Any
    out_sharding: Any
    static: dict[str, Any]

    def denoise(self, denoiser: Denoiser, point: Point, x: jnp.ndarray):
        """:func:`~diffjax.samplers.common.denoise` at ``point``: (prediction, x0, eps), with the
        denoiser's guide applied."""
        return denoise(
            denoiser.model, self.prediction_type, point.marginal, point.model_time, x,
            self.clip_x0, time=point.time, guide=denoiser.guide,
            learned_variance=self.static.get("learned_variance", False),
        )  # fmt: skip

    def noise(self, noise_key: jax.Array, step: Step) -> jnp.ndarray:
        """The step's N(0, I) noise (:func:`~diffjax.samplers.common.step_noise`)."""
        return step_noise(noise_key, step.noise_index, self.shape, self.dtype, self.out_sharding)


def _points(grid: Grid, dtype: Any, variance_preserving: bool) -> Point:
    def cast(values):
        return None if values is None else values.astype(dtype)

    marginal = Marginal(
        cast(grid.alpha), cast(grid.sigma), cast(grid.d_alpha), cast(grid.d_sigma),
        variance_preserving,
    )  # fmt: skip
    return Point(grid.time, grid.model_time, marginal)


def _slice(point: Point, selection: slice) -> Point:
    return jax.tree.map(lambda values: values[selection], point)


@functools.partial(
    jax.jit,
    static_argnames=(
        "body", "initial_carry", "shape", "dtype", "prediction_type", "variance_preserving",
        "clip_x0", "static", "return_trajectory", "out_sharding",
    ),
)  # fmt: skip
def _run(
    denoiser, process, key, x_T, grid, coefficients, options, start_scale, *, body, initial_carry,
    shape, dtype, prediction_type, variance_preserving, clip_x0, static, return_trajectory,
    out_sharding,
):  # fmt: skip
    settings = BodySettings(prediction_type, clip_x0, shape, dtype, out_sharding, dict(static))
    x, noise_key = initial_state(key, x_T, shape, dtype, out_sharding, start_scale.astype(dtype))
    points = _points(grid, dtype, variance_preserving)
    steps = Step(
        _slice(points, slice(None, -1)),
        _slice(points, slice(1, None)),
        {name: values.astype(dtype) for name, values in coefficients.items()},
        grid.noise_index,
    )

    def scan_body(carry, indexed_step):
        x, extra, first_nonfinite = carry
        index, step = indexed_step
        x_next, extra, x0 = body(denoiser, process, x, extra, step, noise_key, settings, options)
        history = (x, x0) if return_trajectory else None
        # The first step whose result holds a NaN or Inf (-1: none), for run_plan's warning.
        newly = (first_nonfinite < 0) & ~jnp.all(jnp.isfinite(x_next))
        first_nonfinite = jnp.where(newly, index, first_nonfinite)
        return (constrain(x_next, out_sharding), extra, first_nonfinite), history

    extra = None if initial_carry is None else initial_carry(x)
    indices = jnp.arange(grid.time.shape[0] - 1, dtype=jnp.int32)
    (x, _, first_nonfinite), history = jax.lax.scan(
        scan_body, (x, extra, jnp.int32(-1)), (indices, steps)
    )
    trajectory = Trajectory(grid.time[:-1], *history) if return_trajectory else None
    return x, trajectory, first_nonfinite


def warn_if_nonfinite(first_nonfinite: jax.Array, times: Any) -> None:
    """Warns which step first gave a NaN or Inf (``first_nonfinite`` >= 0), if it is known
    here: under an outer ``jax.jit`` it is traced, and the caller checks its own samples."""
    if isinstance(first_nonfinite, jax.core.Tracer):
        return
    index = int(first_nonfinite)
    if index < 0:
        return
    times = np.asarray(times)
    # Point at the first frame outside diffjax: the user's call.
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = inspect.currentframe(), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(
        f"diffjax sampler: the samples first became NaN/Inf at step {index + 1} of "
        f"{len(times) - 1} (t = {times[index]:.6g} -> {times[index + 1]:.6g}); the model "
        f"returned NaN or Inf there, or the step overflowed.",
        RuntimeWarning,
        stacklevel=level,
    )


def run_plan(
    plan: Plan,
    model_fn: Callable,
    process: Any,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    clip_x0: bool = False,
    x_T: jnp.ndarray | None = None,
    return_trajectory: bool = False,
    dtype: Any = jnp.float32,
    out_sharding: jax.sharding.Sharding | None = None,
    guide: Callable | None = None,
):
    """Runs a sampler's plan as one jitted ``lax.scan`` (see the module docstring).

    Args:
      plan: from the sampler's ``*_plan`` function.
      model_fn: ``model_fn(x_in [B, ...], t_in [B]) -> prediction [B, ...]``.
      process: the process the plan was made for (checked again here).
      key: one PRNG key, or a ``[B]`` array of typed keys (one per sample).
      shape: ``(B, ...)`` of the samples.
      clip_x0: clip each x0-prediction to [-1, 1].
      x_T: optional start ``[B, ...]``.
      return_trajectory: also return a :class:`~diffjax.samplers.Trajectory`.
      dtype: dtype of the state.
      out_sharding: optional sharding of ``[B, ...]``; the samples do not depend on it.
      guide: ``guide(x_t, t, alpha, sigma, x0_hat, eps_hat) -> (x0_hat, eps_hat)`` applied
        after each network call (:mod:`diffjax.samplers.guidance`), before ``clip_x0``.

    Returns:
      Samples ``[B, ...]``, or ``(samples, trajectory)``. If a step's result holds a NaN or
      Inf, a ``RuntimeWarning`` names the first such step (which waits for the result; inside
      an outer ``jax.jit`` nothing is known yet and no warning is given).
    """
    model, shape, dtype = check_common_args(model_fn, process, shape, key, x_T, dtype, out_sharding)
    denoiser = Denoiser(model, None if guide is None else as_model_pytree(guide))
    clip_x0 = check_flag(clip_x0, "clip_x0")
    return_trajectory = check_flag(return_trajectory, "return_trajectory")
    samples, trajectory, first_nonfinite = _run(
        denoiser,
        as_jit_argument(process),
        key,
        x_T,
        as_jax(plan.grid),
        {name: jnp.asarray(values, jnp.float32) for name, values in plan.coefficients.items()},
        {name: jnp.float32(value) for name, value in plan.options.items()},
        jnp.float32(plan.start_scale),
        body=plan.body,
        initial_carry=plan.initial_carry,
        shape=shape,
        dtype=dtype,
        prediction_type=plan.prediction_type,
        variance_preserving=plan.variance_preserving,
        clip_x0=clip_x0,
        static=plan.static,
        return_trajectory=return_trajectory,
        out_sharding=out_sharding,
    )
    warn_if_nonfinite(first_nonfinite, plan.grid.time)
    return (samples, trajectory) if return_trajectory else samples
