"""Samplers by name, for command lines and configs: ``sample('ddim', model_fn, process, ...)``.

Each entry pairs the sampler with its *plan* function, which checks the sampler's own options
and builds its grid without compiling anything. :func:`check_sampler_options` runs that check
alone, so a config can be validated up front by the very code that will sample
(DESIGN rule 2); :func:`sampler_options` lists the options a sampler takes.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from diffjax.samplers.ddim import ddim_plan, ddim_sample
from diffjax.samplers.ddpm import ddpm_plan, ddpm_sample
from diffjax.samplers.dpm_solver import dpm_solver_plan, dpm_solver_sample
from diffjax.samplers.edm import euler_plan, euler_sample, heun_plan, heun_sample
from diffjax.samplers.flow import (
    flow_euler_sample,
    flow_heun_sample,
    flow_midpoint_sample,
    flow_plan,
)
from diffjax.samplers.ode import ode_plan, ode_sample
from diffjax.samplers.sde import euler_maruyama_plan, euler_maruyama_sample, pc_plan, pc_sample

__all__ = [
    "SAMPLERS",
    "SAMPLER_NAMES",
    "SamplerEntry",
    "check_sampler_options",
    "sample",
    "sampler_options",
]

COMMON_OPTIONS: tuple[str, ...] = (
    "clip_x0", "x_T", "return_trajectory", "return_stats", "dtype", "out_sharding",
)  # fmt: skip
"""Keyword arguments every sampler takes, handled by the scan runner rather than the plan."""


class SamplerEntry(NamedTuple):
    """A registered sampler: ``sample(model_fn, process, key, shape, **options)`` and
    ``plan(process, **options)``, which checks the options and builds the grid."""

    sample: Callable
    plan: Callable


SAMPLERS: dict[str, SamplerEntry] = {
    "ddpm": SamplerEntry(ddpm_sample, ddpm_plan),
    "ddim": SamplerEntry(ddim_sample, ddim_plan),
    "dpm_solver": SamplerEntry(dpm_solver_sample, dpm_solver_plan),
    "euler": SamplerEntry(euler_sample, euler_plan),
    "heun": SamplerEntry(heun_sample, heun_plan),
    "flow_euler": SamplerEntry(flow_euler_sample, functools.partial(flow_plan, method="euler")),
    "flow_midpoint": SamplerEntry(
        flow_midpoint_sample, functools.partial(flow_plan, method="midpoint")
    ),
    "flow_heun": SamplerEntry(flow_heun_sample, functools.partial(flow_plan, method="heun")),
    "euler_maruyama": SamplerEntry(euler_maruyama_sample, euler_maruyama_plan),
    "pc": SamplerEntry(pc_sample, pc_plan),
    "ode": SamplerEntry(ode_sample, ode_plan),
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)


def _entry(name: str) -> SamplerEntry:
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; expected one of {SAMPLER_NAMES}.")
    return SAMPLERS[name]


def _keyword_names(function: Callable) -> tuple[str, ...]:
    parameters = inspect.signature(function).parameters.values()
    return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def sampler_options(name: str) -> dict[str, Any]:
    """The options of sampler ``name`` with their defaults (``prediction_type`` included,
    the runner's common options excluded)."""
    parameters = inspect.signature(_entry(name).sample).parameters
    return {
        key: parameters[key].default
        for key in _keyword_names(_entry(name).sample)
        if key not in COMMON_OPTIONS
    }


def check_sampler_options(name: str, process: Any, options: Mapping[str, Any]) -> None:
    """Checks sampler ``name``'s options for ``process`` as sampling would, compiling nothing.

    Args:
      name: one of :data:`SAMPLER_NAMES`.
      process: the schedule or continuous process.
      options: the sampler's keyword arguments (e.g. ``{'num_steps': 50, 'eta': 0.5,
        'prediction_type': 'v'}``), without the runner's common options.

    Raises:
      ValueError: an unknown name; TypeError: an option the sampler does not take; and the
        sampler's own ``ValueError`` / ``TypeError`` for a bad value.
    """
    allowed = tuple(sampler_options(name))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"Sampler {name!r} does not take {unknown}; its options are {allowed}.")
    _entry(name).plan(process, **options)


def sample(
    name: str,
    model_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    process: Any,
    key: jax.Array,
    shape: tuple[int, ...],
    **kwargs,
):
    """Runs the sampler called ``name`` (one of :data:`SAMPLER_NAMES`).

    Args:
      name: ``'ddpm' | 'ddim' | 'dpm_solver' | 'euler' | 'heun' | 'flow_euler' |
        'flow_midpoint' | 'flow_heun' | 'euler_maruyama' | 'pc' | 'ode'``.
      model_fn: ``model_fn(x_in [B, ...], t_in [B]) -> prediction [B, ...]``.
      process: the schedule or continuous process.
      key: PRNG key, or ``[B]`` per-sample keys.
      shape: ``(B, ...)`` of the samples.
      **kwargs: that sampler's keyword arguments (e.g. ``num_steps``, ``eta`` for DDIM,
        ``prediction_type``, ``clip_x0``, ``x_T``, ``return_trajectory``, ``out_sharding``).

    Returns:
      What the sampler returns: samples ``[B, ...]`` or ``(samples, trajectory)``.

    Raises:
      ValueError: for an unknown name; TypeError: for a keyword that sampler does not take.
    """
    sampler = _entry(name).sample
    allowed = _keyword_names(sampler)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"Sampler {name!r} does not take {unknown}; its options are {allowed}.")
    return sampler(model_fn, process, key, shape, **kwargs)
