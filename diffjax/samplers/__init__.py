"""Samplers: pure functions of a ``model_fn(x_t, t) -> prediction``, a schedule, a key and a shape.

================================  ==========================================================
:func:`ddpm_sample`               ancestral DDPM (Ho et al. 2020, Alg. 2), all T or respaced
:func:`ddim_sample`               DDIM with eta in [0, 1] (Song et al. 2021)
:func:`dpm_solver_sample`         DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), 10-20 steps
:func:`ddim_invert`               deterministic DDIM inversion x0 -> x_T
:func:`classifier_free_guidance`  guided model_fn from a class-conditional one
:func:`sample`                    any of the samplers by name (for CLIs)
================================  ==========================================================

Each sampler checks its arguments in Python, builds its timestep grid in NumPy, then runs one
jitted ``jax.lax.scan`` over the grid: one compile per (model_fn, shape, number of steps,
static options); a new key, x_T, schedule or set of params (bound in a
:class:`jax.tree_util.Partial`) reuses it. Samples do not depend on ``out_sharding``.
"""

from diffjax.samplers.common import Trajectory
from diffjax.samplers.ddim import ddim_invert, ddim_sample
from diffjax.samplers.ddpm import ddpm_sample, respace_schedule
from diffjax.samplers.dpm_solver import SOLVER_ORDERS, dpm_solver_coefficients, dpm_solver_sample
from diffjax.samplers.guidance import classifier_free_guidance
from diffjax.samplers.registry import SAMPLER_NAMES, SAMPLERS, sample
from diffjax.samplers.timesteps import (
    SOLVER_SPACINGS,
    SPACINGS,
    log_snr_timesteps,
    solver_timesteps,
    spaced_timesteps,
)

__all__ = [
    "SAMPLERS",
    "SAMPLER_NAMES",
    "SOLVER_ORDERS",
    "SOLVER_SPACINGS",
    "SPACINGS",
    "Trajectory",
    "classifier_free_guidance",
    "ddim_invert",
    "ddim_sample",
    "ddpm_sample",
    "dpm_solver_coefficients",
    "dpm_solver_sample",
    "log_snr_timesteps",
    "respace_schedule",
    "sample",
    "solver_timesteps",
    "spaced_timesteps",
]
