"""diffusers' ``scheduler_config.json`` as a diffjax schedule, prediction type and sampler.

A published pipeline names its noise schedule and its default sampler in one scheduler config.
The schedule part (``beta_schedule``, ``beta_start``, ``beta_end``, ``num_train_timesteps``,
``trained_betas``, ``rescale_betas_zero_snr``) maps onto :mod:`diffjax.schedules` exactly; the
sampler part onto a registered sampler and its options:

=============================  ===================================================
scheduler class                diffjax sampler
=============================  ===================================================
``DDIMScheduler``              ``'ddim'`` with ``timestep_spacing``, ``steps_offset``,
                               ``set_alpha_to_one`` (the same steps as diffusers')
``PNDMScheduler``              ``'ddim'`` on the same grid (diffjax has no PNDM; SD 1.x
                               folders name it)
``DDPMScheduler``              ``'ddpm'``
``DPMSolverMultistepScheduler``  ``'dpm_solver'`` (DPM-Solver++ of ``solver_order``)
=============================  ===================================================

``clip_sample`` (diffusers' default: on) clips every x0-prediction to [-1, 1] (``clip_x0``).
Any other class is refused with the list above; a caller's ``sampler`` argument overrides the
config's choice.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from diffjax import schedules
from diffjax.errors import ConfigError
from diffjax.samplers.registry import check_sampler_options

__all__ = [
    "PREDICTION_TYPES",
    "checked_sampler",
    "prediction_type_of",
    "sampler_from_scheduler_config",
    "schedule_from_scheduler_config",
]

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
"""diffusers' ``prediction_type`` -> diffjax's."""

# diffusers' betas span [beta_start, beta_end] at any T (diffjax's linear_betas rescales them
# by 1000 / T, equal at T = 1000).
_BETAS = {
    "linear": lambda start, end, steps: np.linspace(start, end, steps, dtype=np.float64),
    "scaled_linear": lambda start, end, steps: schedules.scaled_linear_betas(steps, start, end),
}
_SAMPLERS = {
    "DDIMScheduler": "ddim",
    "PNDMScheduler": "ddim",
    "DDPMScheduler": "ddpm",
    "DPMSolverMultistepScheduler": "dpm_solver",
}


def schedule_from_scheduler_config(config: Mapping[str, Any]) -> schedules.DiffusionSchedule:
    """The discrete schedule of a diffusers scheduler config.

    ``'linear'`` and ``'scaled_linear'`` betas are ``linspace(beta_start, beta_end, T)``
    (of the square roots for scaled_linear; Ho et al. 2020, Rombach et al. 2022),
    ``'squaredcos_cap_v2'`` the cosine schedule (Nichol & Dhariwal 2021, eq. 17), and
    ``trained_betas`` are taken as given.

    Raises:
      ValueError: an unknown ``beta_schedule``.
    """
    steps = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], np.float64)
    elif config.get("beta_schedule", "linear") == "squaredcos_cap_v2":
        betas = schedules.cosine_betas(steps)
    elif config.get("beta_schedule", "linear") in _BETAS:
        start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
        betas = _BETAS[config.get("beta_schedule", "linear")](start, end, steps)
    else:
        raise ValueError(
            f"beta_schedule={config.get('beta_schedule')!r} is not supported; expected one of "
            f"{sorted(_BETAS) + ['squaredcos_cap_v2']} or trained_betas."
        )
    if config.get("rescale_betas_zero_snr", False):
        betas = schedules.rescale_zero_terminal_snr(betas)
    return schedules.make_schedule(betas)


def prediction_type_of(config: Mapping[str, Any]) -> str:
    """diffjax's prediction type (``'eps' | 'v' | 'x0'``) of a scheduler config."""
    name = config.get("prediction_type", "epsilon")
    if name not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={name!r}; expected one of {sorted(PREDICTION_TYPES)}.")
    return PREDICTION_TYPES[name]


def sampler_from_scheduler_config(
    config: Mapping[str, Any], sampler: str | None = None
) -> tuple[str, dict[str, Any]]:
    """``(sampler name, options)`` that reproduce a scheduler config's sampling (module
    docstring); ``sampler`` picks another registered sampler, with the config's DDIM grid
    options when it is ``'ddim'``.

    Raises:
      ValueError: a scheduler class diffjax does not map and no ``sampler`` given.
    """
    name = config.get("_class_name")
    if sampler is None:
        if name not in _SAMPLERS:
            raise ValueError(
                f"scheduler {name!r} has no diffjax counterpart; pass sampler= one of diffjax's "
                f"samplers (the configs it maps: {sorted(_SAMPLERS)})."
            )
        sampler = _SAMPLERS[name]
    if config.get("thresholding", False):
        raise ValueError("dynamic thresholding (thresholding=True) is not supported.")
    if float(config.get("clip_sample_range", 1.0)) != 1.0:
        raise ValueError(
            f"clip_sample_range={config['clip_sample_range']}; diffjax clips to [-1, 1]."
        )
    options: dict[str, Any] = dict(
        prediction_type=prediction_type_of(config),
        clip_x0=bool(config.get("clip_sample", True)),
    )
    if sampler == "ddim":
        options.update(
            spacing=config.get("timestep_spacing", "leading"),
            steps_offset=int(config.get("steps_offset", 0)),
            set_alpha_to_one=bool(config.get("set_alpha_to_one", True)),
        )
    elif sampler == "dpm_solver" and name == "DPMSolverMultistepScheduler":
        options.update(order=int(config.get("solver_order", 2)))
    return sampler, options


def checked_sampler(
    config: Mapping[str, Any],
    sampler: str | None,
    sampler_options: Mapping[str, Any] | None,
    steps: int,
) -> tuple[str, dict[str, Any]]:
    """:func:`sampler_from_scheduler_config` with the caller's options and step count on top,
    checked against the schedule before anything compiles.

    Raises:
      ConfigError: naming the bad sampler, option or step count.
    """
    try:
        name, options = sampler_from_scheduler_config(config, sampler)
        options.update(sampler_options or {}, num_steps=steps)
        check_sampler_options(name, schedule_from_scheduler_config(config), options)
    except (ValueError, TypeError) as error:
        raise ConfigError(str(error)) from error
    return name, options
