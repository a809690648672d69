"""Samplers by name, for command lines and configs: ``sample('ddim', model_fn, ...)``."""

from __future__ import annotations

import inspect
from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.samplers.ddim import ddim_sample
from diffjax.samplers.ddpm import ddpm_sample
from diffjax.samplers.dpm_solver import dpm_solver_sample
from diffjax.schedules import DiffusionSchedule

__all__ = ["SAMPLERS", "SAMPLER_NAMES", "sample"]

SAMPLERS: dict[str, Callable] = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
    "dpm_solver": dpm_solver_sample,
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)


def _keyword_names(sampler: Callable) -> tuple[str, ...]:
    parameters = inspect.signature(sampler).parameters.values()
    return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def sample(
    name: str,
    model_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    schedule: DiffusionSchedule,
    key: jax.Array,
    shape: tuple[int, ...],
    **kwargs,
):
    """Runs the sampler called ``name`` (one of :data:`SAMPLER_NAMES`).

    Args:
      name: ``'ddpm' | 'ddim' | 'dpm_solver'``.
      model_fn: ``model_fn(x_t [B, ...], t int32 [B]) -> prediction [B, ...]``.
      schedule: the discrete schedule.
      key: PRNG key.
      shape: ``(B, ...)`` of the samples.
      **kwargs: that sampler's keyword arguments (e.g. ``num_steps``, ``eta`` for DDIM,
        ``prediction_type``, ``clip_x0``, ``x_T``, ``return_trajectory``, ``out_sharding``).

    Returns:
      What the sampler returns: samples ``[B, ...]`` or ``(samples, trajectory)``.

    Raises:
      ValueError: for an unknown name; TypeError: for a keyword that sampler does not take.
    """
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; expected one of {SAMPLER_NAMES}.")
    sampler = SAMPLERS[name]
    allowed = _keyword_names(sampler)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"Sampler {name!r} does not take {unknown}; its options are {allowed}.")
    return sampler(model_fn, schedule, key, shape, **kwargs)
