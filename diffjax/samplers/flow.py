"""Samplers of the velocity field dx/dt = v(x, t): Euler, midpoint and Heun in the process's time.

Rectified flow and flow matching (Liu et al. 2022, arXiv:2209.03003; Lipman et al. 2022,
arXiv:2210.02747) sample by integrating the learned velocity from t = 1 (noise) to t = 0
(data). The velocity of any model is v = (d alpha / dt) x0_hat + (d sigma / dt) eps_hat
(:mod:`diffjax.predictions`; a 'flow' model predicts it directly), so these samplers serve every
continuous process. The grid is uniform in t, optionally through SD3's shift
t' = s t / (1 + (s - 1) t) (Esser et al. 2024, Sec. 5.3.2), from t = 1 to the data at t = 0:

* ``flow_euler``: x_{k+1} = x_k + (t_{k+1} - t_k) v(x_k, t_k); N model calls. On rectified flow it
  is exactly DDIM (eta = 0) on the same grid.
* ``flow_midpoint``: the velocity at the Euler half step (t_k + t_{k+1}) / 2; 2N calls.
* ``flow_heun``: the average of the velocities at both ends; the last step, which lands on
  t = 0 where eps- and x0-derived velocities are undefined (0 / 0), is Euler: 2N - 1 calls.
  Its grid therefore ends at ``t_min = 1e-3`` by default, so that the first-order last step is
  short (EDM's Heun ends at sigma_min for the same reason); the others default to t_min = 0.

The sample is the state at t = 0 (the data for rectified flow; for VE it still holds the
process's sigma(0)).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from diffjax import predictions
from diffjax.processes import Marginal, check_process, is_discrete
from diffjax.samplers.common import check_real
from diffjax.samplers.grids import check_defined_start, make_grid, uniform_times
from diffjax.samplers.runner import Plan, Point, run_plan
from diffjax.samplers.steps import flow_euler_step, flow_heun_step

__all__ = [
    "FLOW_METHODS",
    "flow_euler_sample",
    "flow_heun_sample",
    "flow_midpoint_sample",
    "flow_plan",
]

FLOW_METHODS: tuple[str, ...] = ("euler", "midpoint", "heun")
DEFAULT_T_MIN: dict[str, float] = {"euler": 0.0, "midpoint": 0.0, "heun": 1e-3}
"""Each method's default last grid time (see the module docstring)."""


def _velocity(model, settings, point: Point, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    prediction, x0, eps = settings.denoise(model, point, x)
    if settings.prediction_type == "flow" and not settings.clip_x0 and model.guide is None:
        return prediction, x0
    return point.marginal.d_alpha * x0 + point.marginal.d_sigma * eps, x0


def _flow_body(model, process, x, carry, step, noise_key, settings, options):
    method = settings.static["method"]
    t, t_next = step.current.time, step.next.time
    velocity, x0 = _velocity(model, settings, step.current, x)
    x_euler = flow_euler_step(x, velocity, t, t_next)
    if method == "euler":
        return x_euler, carry, x0
    if method == "midpoint":
        c = step.coefficients
        mid = Point(
            c["mid_time"], c["mid_model_time"],
            Marginal(c["mid_alpha"], c["mid_sigma"], c["mid_d_alpha"], c["mid_d_sigma"],
                     step.current.marginal.variance_preserving),
        )  # fmt: skip
        x_mid = flow_euler_step(x, velocity, t, mid.time)
        velocity_mid, _ = _velocity(model, settings, mid, x_mid)
        return flow_euler_step(x, velocity_mid, t, t_next), carry, x0

    def heun(_):
        velocity_next, _ = _velocity(model, settings, step.next, x_euler)
        return flow_heun_step(x, velocity, velocity_next, t, t_next)

    return jax.lax.cond(step.next.marginal.sigma > 0, heun, lambda _: x_euler, None), carry, x0


def flow_plan(
    process: Any,
    method: str,
    *,
    num_steps: int = 50,
    shift: float = 1.0,
    t_max: float = 1.0,
    t_min: float | None = None,
    prediction_type: str,
) -> Plan:
    """Checks a flow sampler's options and builds its grid (see :func:`flow_euler_sample`): a
    grid uniform in t, optionally through SD3's shift (Esser et al. 2024, Sec. 5.3.2), for the
    velocity field of rectified flow (Liu et al. 2022, arXiv:2209.03003)."""
    check_process(process)
    if is_discrete(process):
        raise ValueError(
            "the flow samplers integrate dx/dt = v in continuous time; a discrete schedule has "
            "no velocity. Use a continuous process, or 'ddim' / 'heun' on the schedule."
        )
    if method not in FLOW_METHODS:
        raise ValueError(f"Unknown flow method {method!r}; expected one of {FLOW_METHODS}.")
    predictions.check_prediction_supported(prediction_type, process)
    shift = check_real(shift, "shift", 1e-6, 1e6, " (1: no shift)")
    t_max = check_real(t_max, "t_max", 1e-6, 1.0)
    t_min = DEFAULT_T_MIN[method] if t_min is None else check_real(t_min, "t_min", 0.0, t_max)
    times = uniform_times(num_steps, t_max=t_max, t_min=t_min, shift=shift)
    grid = make_grid(process, times)
    check_defined_start(grid, prediction_type, process)
    coefficients = {}
    if method == "midpoint":
        ends = np.concatenate([times, [0.0]])
        mid = make_grid(process, 0.5 * (ends[:-1] + ends[1:]))
        coefficients = dict(
            mid_time=mid.time[:-1], mid_model_time=mid.model_time[:-1], mid_alpha=mid.alpha[:-1],
            mid_sigma=mid.sigma[:-1], mid_d_alpha=mid.d_alpha[:-1], mid_d_sigma=mid.d_sigma[:-1],
        )  # fmt: skip
    return Plan(
        body=_flow_body,
        grid=grid,
        coefficients=coefficients,
        prediction_type=prediction_type,
        variance_preserving=process.variance_preserving,
        start_scale=float(grid.sigma[0]),
        static=(("method", method),),
    )


def _sampler(method: str, default_steps: int) -> Callable:
    def sample(
        model_fn: Callable, process: Any, key: jax.Array, shape: tuple[int, ...], *,
        num_steps: int = default_steps, shift: float = 1.0, t_max: float = 1.0,
        t_min: float | None = None, prediction_type: str, clip_x0: bool = False,
        x_T: jnp.ndarray | None = None,
        return_trajectory: bool = False, dtype: DTypeLike = jnp.float32,
        out_sharding: jax.sharding.Sharding | None = None, guide: Callable | None = None,
    ):  # fmt: skip
        plan = flow_plan(
            process, method, num_steps=num_steps, shift=shift, t_max=t_max, t_min=t_min,
            prediction_type=prediction_type,
        )  # fmt: skip
        return run_plan(
            plan, model_fn, process, key, shape, clip_x0=clip_x0, x_T=x_T,
            return_trajectory=return_trajectory, dtype=dtype, out_sharding=out_sharding,
            guide=guide,
        )  # fmt: skip

    sample.__name__ = sample.__qualname__ = f"flow_{method}_sample"
    calls = {"euler": "N", "midpoint": "2N", "heun": "2N - 1"}[method]
    sample.__doc__ = f"""The {method} sampler of the velocity field (:mod:`diffjax.samplers.flow`).

    It integrates dx/dt = v from t = 1 to 0 as rectified flow samples (Liu et al. 2022,
    arXiv:2209.03003), on a uniform grid optionally shifted as SD3's (Esser et al. 2024,
    Sec. 5.3.2).

    Args:
      model_fn: ``model_fn(x_in [B, ...], t_in [B]) -> prediction [B, ...]``.
      process: a continuous process (concrete: the grid is built in NumPy).
      key: PRNG key (or ``[B]`` per-sample keys) for x_T.
      shape: ``(B, ...)`` of the samples.
      num_steps: N, the number of steps ({calls} model calls).
      shift: SD3's time shift of the uniform grid (1: none; > 1 spends more steps near noise).
      t_max: the first time of the grid (below 1 for 'eps' models where alpha(1) = 0).
      t_min: the last time of the grid, > 0 to end with a short step t_min -> 0 (default
        {DEFAULT_T_MIN[method]}; see :func:`~diffjax.samplers.grids.uniform_times`).
      prediction_type: what the model predicts ('flow' for a velocity network).
      clip_x0: clip each x0-prediction to [-1, 1] (the velocity is then re-derived from it).
      x_T: optional start ``[B, ...]`` (default sigma(t_max) N(0, I)).
      return_trajectory: also return a :class:`Trajectory`.
      dtype: dtype of the state.
      out_sharding: optional sharding of ``[B, ...]``.
      guide: ``guide(x_t, t, alpha, sigma, x0_hat, eps_hat) -> (x0_hat, eps_hat)`` after each
        network call (:mod:`diffjax.samplers.guidance`), before ``clip_x0``; None for none.

    Returns:
      Samples ``[B, ...]`` (the state at t = 0), or ``(samples, trajectory)``.
    """
    return sample


flow_euler_sample = _sampler("euler", 50)
"""Euler's method on dx/dt = v from t = 1 to 0, rectified flow's sampler (Liu et al. 2022,
arXiv:2209.03003); N model calls. Its arguments are listed by ``help(flow_euler_sample)``."""
flow_midpoint_sample = _sampler("midpoint", 25)
"""The explicit midpoint method on dx/dt = v (rectified flow's velocity, Liu et al. 2022,
arXiv:2209.03003); 2N model calls. Arguments as :func:`flow_euler_sample`."""
flow_heun_sample = _sampler("heun", 25)
"""Heun's method on dx/dt = v (as EDM's, Karras et al. 2022, Algorithm 1, in the process's time;
the last step Euler); 2N - 1 model calls. Arguments as :func:`flow_euler_sample`."""
