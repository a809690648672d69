"""Samplers by name, for command lines, configs and user code: ``sample('ddim', model_fn, ...)``.

Each entry pairs a sampler with its *plan* function, which checks the sampler's own options and
builds its grid without compiling anything, and says whether the sampler maps noise to a sample
deterministically (what reflow's pairs need). :func:`check_sampler_options` runs the plan alone,
so a config is validated up front by the very code that will sample (DESIGN rule 2);
:func:`sampler_options` lists the options a sampler takes.

The registry is open: :func:`register_sampler` adds a sampler written as a plan
(:class:`~diffjax.samplers.runner.Plan`: a grid and a scan body), after which
:func:`sample`, configs (``config.sampling.sampler``), the sample and evaluate CLIs and reflow
find it by name. A config names the module that registers it in ``config.imports``, so that
every program reading the run imports it first (score_sde's ``register_predictor`` pattern).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from diffjax.names import RegistryNames
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
from diffjax.samplers.runner import run_plan
from diffjax.samplers.sde import euler_maruyama_plan, euler_maruyama_sample, pc_plan, pc_sample

__all__ = [
    "COMMON_OPTIONS",
    "REQUIRED",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "SamplerEntry",
    "check_sampler_options",
    "is_deterministic",
    "register_sampler",
    "sample",
    "sampler_options",
]

COMMON_OPTIONS: tuple[str, ...] = (
    "clip_x0", "x_T", "return_trajectory", "return_stats", "dtype", "out_sharding", "guide",
)  # fmt: skip
"""Keyword arguments every sampler takes, handled by the scan runner rather than the plan."""


class SamplerEntry(NamedTuple):
    """A registered sampler.

    Attributes:
      sample: ``sample(model_fn, process, key, shape, **options)``.
      plan: ``plan(process, **options)``, which checks the options (and builds the grid).
      deterministic: ``deterministic(options) -> bool``: whether, with these options, the
        sampler maps its start x_T to the sample with no further randomness.
    """

    sample: Callable
    plan: Callable
    deterministic: Callable[[Mapping[str, Any]], bool]


def _always(options: Mapping[str, Any]) -> bool:
    return True


def _option_is_zero(name: str, options: Mapping[str, Any]) -> bool:
    return float(options.get(name, 0.0)) == 0.0


SAMPLERS: dict[str, SamplerEntry] = {
    "ddpm": SamplerEntry(ddpm_sample, ddpm_plan, lambda options: False),
    "ddim": SamplerEntry(ddim_sample, ddim_plan, functools.partial(_option_is_zero, "eta")),
    "dpm_solver": SamplerEntry(dpm_solver_sample, dpm_solver_plan, _always),
    "euler": SamplerEntry(euler_sample, euler_plan, functools.partial(_option_is_zero, "s_churn")),
    "heun": SamplerEntry(heun_sample, heun_plan, functools.partial(_option_is_zero, "s_churn")),
    "flow_euler": SamplerEntry(
        flow_euler_sample, functools.partial(flow_plan, method="euler"), _always
    ),
    "flow_midpoint": SamplerEntry(
        flow_midpoint_sample, functools.partial(flow_plan, method="midpoint"), _always
    ),
    "flow_heun": SamplerEntry(
        flow_heun_sample, functools.partial(flow_plan, method="heun"), _always
    ),
    "euler_maruyama": SamplerEntry(
        euler_maruyama_sample, euler_maruyama_plan, lambda options: False
    ),
    "pc": SamplerEntry(pc_sample, pc_plan, lambda options: False),
    "ode": SamplerEntry(ode_sample, ode_plan, _always),
}
"""The registered samplers by name (the built-in ones and those of :func:`register_sampler`)."""


SAMPLER_NAMES: Sequence[str] = RegistryNames(SAMPLERS)
"""The names of the registered samplers (a live view: it includes user registrations)."""


def _entry(name: str) -> SamplerEntry:
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; expected one of {tuple(SAMPLERS)}.")
    return SAMPLERS[name]


def _keyword_names(function: Callable) -> tuple[str, ...]:
    parameters = inspect.signature(function).parameters.values()
    return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _plan_sampler(plan: Callable) -> Callable:
    """``sample(model_fn, process, key, shape, **options)`` for a plan function: the plan's
    own options build the grid, the runner's common options go to :func:`run_plan`."""
    plan_options = _keyword_names(plan)

    def sample(model_fn, process, key, shape, **options):
        own = {name: options.pop(name) for name in list(options) if name in plan_options}
        return run_plan(plan(process, **own), model_fn, process, key, shape, **options)

    parameters = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for name in ("model_fn", "process", "key", "shape")
    ]
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(plan).parameters.items()
        if name in plan_options
    }
    common = {
        name: parameter.default
        for name, parameter in inspect.signature(run_plan).parameters.items()
        if name in COMMON_OPTIONS
    }
    parameters += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
        for name, default in {**defaults, **common}.items()
    ]
    sample.__signature__ = inspect.Signature(parameters)
    sample.__name__ = sample.__qualname__ = getattr(plan, "__name__", "plan").replace(
        "_plan", "_sample"
    )
    sample.__doc__ = f"Samples with the plan {sample.__name__} (see its docstring)."
    return sample


def register_sampler(
    name: str,
    plan: Callable,
    *,
    deterministic: bool | Callable[[Mapping[str, Any]], bool],
    sample: Callable | None = None,
) -> None:
    """Adds a sampler that :func:`sample`, configs, the CLIs and reflow can use by name.

    Args:
      name: the new name (not one already registered).
      plan: ``plan(process, *, prediction_type=..., **options) -> Plan``: checks the sampler's
        keyword-only options and returns its :class:`~diffjax.samplers.runner.Plan` (grid,
        coefficients and scan body), or, for a sampler that is not a scan, just checks them.
      deterministic: whether the sampler maps x_T to the sample without further noise; a
        callable ``deterministic(options) -> bool`` when that depends on the options (like
        DDIM's eta).
      sample: ``sample(model_fn, process, key, shape, **options)``; default: the plan run by
        :func:`~diffjax.samplers.runner.run_plan` (which takes the common options
        :data:`COMMON_OPTIONS`).

    Raises:
      ValueError: the name is taken or empty; TypeError: ``plan`` takes no keyword-only
        ``prediction_type``.

    Example:
      >>> dj.register_sampler("my_ddim", my_plan, deterministic=True)
      >>> x = dj.sample("my_ddim", model_fn, schedule, keys, shape, num_steps=10)
    """
    if not isinstance(name, str) or not name or name in SAMPLERS:
        raise ValueError(
            f"register_sampler needs a new, non-empty name; {name!r} is "
            f"{'taken' if name in SAMPLERS else 'not one'} (registered: {tuple(SAMPLERS)})."
        )
    if "prediction_type" not in _keyword_names(plan):
        raise TypeError(
            f"The plan of sampler {name!r} must take a keyword-only prediction_type (the "
            f"network's output type); its keyword-only options are {_keyword_names(plan)}."
        )
    rule = deterministic if callable(deterministic) else (lambda options: bool(deterministic))
    SAMPLERS[name] = SamplerEntry(sample or _plan_sampler(plan), plan, rule)


class _Required:
    """The default :func:`sampler_options` shows for an option that has none."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()
"""What :func:`sampler_options` gives for an option without a default (``prediction_type``)."""


def sampler_options(name: str) -> dict[str, Any]:
    """The options of sampler ``name`` with their defaults (:data:`REQUIRED` for
    ``prediction_type``, which has none), the runner's common options excluded."""
    parameters = inspect.signature(_entry(name).sample).parameters
    return {
        key: REQUIRED
        if parameters[key].default is inspect.Parameter.empty
        else parameters[key].default
        for key in _keyword_names(_entry(name).sample)
        if key not in COMMON_OPTIONS
    }


def check_sampler_options(name: str, process: Any, options: Mapping[str, Any]) -> None:
    """Checks sampler ``name``'s options for ``process`` as sampling would, compiling nothing.

    Args:
      name: a registered sampler (:data:`SAMPLER_NAMES`).
      process: the schedule or continuous process.
      options: the sampler's keyword arguments (e.g. ``{'num_steps': 50, 'eta': 0.5,
        'prediction_type': 'v'}``); of the runner's common options only ``clip_x0``, which
        every sampler takes.

    Raises:
      ValueError: an unknown name; TypeError: an option the sampler does not take, or a
        ``clip_x0`` that is not a bool; and the sampler's own ``ValueError`` / ``TypeError``
        for a bad value.
    """
    options = dict(options)
    clip_x0 = options.pop("clip_x0", False)
    if not isinstance(clip_x0, bool):
        raise TypeError(f"clip_x0 must be True or False, got {clip_x0!r}.")
    allowed = tuple(sampler_options(name))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"Sampler {name!r} does not take {unknown}; its options are {allowed}.")
    _entry(name).plan(process, **options)


def is_deterministic(name: str, options: Mapping[str, Any]) -> bool:
    """Whether sampler ``name`` with ``options`` maps x_T to its sample without further noise.

    Raises:
      ValueError: an unknown name.
    """
    return bool(_entry(name).deterministic(options))


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
        'flow_midpoint' | 'flow_heun' | 'euler_maruyama' | 'pc' | 'ode'``, or a name added
        with :func:`register_sampler`.
      model_fn: ``model_fn(x_in [B, ...], t_in [B]) -> prediction [B, ...]``.
      process: the schedule or continuous process.
      key: PRNG key, or ``[B]`` per-sample keys.
      shape: ``(B, ...)`` of the samples.
      **kwargs: that sampler's keyword arguments: ``prediction_type`` (required: what
        ``model_fn`` predicts, one of :data:`~diffjax.predictions.PREDICTION_TYPES`; no sampler
        guesses it, because a wrong guess gives wrong samples without an error), and e.g.
        ``num_steps``, ``eta`` for DDIM, ``clip_x0``, ``guide``, ``x_T``,
        ``return_trajectory``, ``out_sharding``.

    Returns:
      What the sampler returns: samples ``[B, ...]`` or ``(samples, trajectory)``.

    Raises:
      ValueError: for an unknown name; TypeError: for a keyword that sampler does not take, or
        no ``prediction_type``.
    """
    sampler = _entry(name).sample
    if "prediction_type" not in kwargs:
        from diffjax.predictions import PREDICTION_TYPES

        raise TypeError(
            f"sample({name!r}, ...) needs prediction_type=, what model_fn predicts: one of "
            f"{PREDICTION_TYPES}. No sampler assumes one (the flow samplers' 'flow' and the "
            f"others' 'eps' would silently misread a model of another type)."
        )
    allowed = _keyword_names(sampler)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"Sampler {name!r} does not take {unknown}; its options are {allowed}.")
    return sampler(model_fn, process, key, shape, **kwargs)
