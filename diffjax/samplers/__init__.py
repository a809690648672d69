"""Samplers: pure functions of a ``model_fn(x_in, t_in) -> prediction``, a process, a key and a
shape.

=====================================  ========================================================
:func:`ddpm_sample`                    ancestral DDPM (Ho et al. 2020, Alg. 2), all T or respaced
:func:`ddim_sample`                    DDIM with eta in [0, 1] (Song et al. 2021), any process
:func:`dpm_solver_sample`              DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), 10-20 steps
:func:`euler_sample`, ``heun_sample``  EDM's samplers on the Karras grid, with churn
                                       (Karras et al. 2022, Alg. 1-2)
``flow_euler/midpoint/heun_sample``    the velocity field dx/dt = v (rectified flow)
:func:`euler_maruyama_sample`          Euler-Maruyama on the reverse SDE (Song et al. 2021)
:func:`pc_sample`                      score_sde's predictor-corrector (reverse diffusion /
                                       ancestral + Langevin), VP and VE
:func:`ode_sample`                     the probability-flow ODE, adaptive (diffrax Tsit5 /
                                       Dopri5 + PID), NFE reported
:func:`ddim_invert`                    deterministic DDIM inversion x0 -> x_T
:func:`classifier_free_guidance`       guided model_fn from a conditional one (any cond pytree)
``guide=``                             every sampler's denoiser-level hook (x0_hat, eps_hat)
                                       -> (x0_hat, eps_hat): :func:`clip_x0_guide`,
                                       :func:`compose_guides`
:func:`gradient_guidance`              classifier guidance (Dhariwal & Nichol 2021) with a
                                       noisy classifier (:func:`classifier_log_prob`) or any
                                       differentiable function of x0_hat, as a guide
:func:`sample`                         any of the samplers by name (for CLIs and configs);
                                       :func:`register_sampler` adds one
=====================================  ========================================================

Each sampler checks its options in Python and builds its grid in float64 NumPy (its *plan*),
then runs one jitted ``jax.lax.scan`` over the grid through :func:`run_plan` (the adaptive
:func:`ode_sample` is one ``diffrax.diffeqsolve`` instead): one compile per
(model_fn, shape, number of steps, static options); a new key, x_T, process or set of params
(bound in a :class:`jax.tree_util.Partial`) reuses it. Samples do not depend on
``out_sharding``; with per-sample keys they do not depend on the batch either. The single
steps (:mod:`diffjax.samplers.steps`) are public for distillation and custom samplers.
"""

from diffjax.samplers.common import Trajectory, denoise, sample_keys
from diffjax.samplers.ddim import ddim_invert, ddim_plan, ddim_sample
from diffjax.samplers.ddpm import ddpm_plan, ddpm_sample, respace_schedule
from diffjax.samplers.dpm_solver import (
    SOLVER_ORDERS,
    dpm_solver_coefficients,
    dpm_solver_plan,
    dpm_solver_sample,
)
from diffjax.samplers.edm import euler_plan, euler_sample, heun_plan, heun_sample
from diffjax.samplers.flow import (
    FLOW_METHODS,
    flow_euler_sample,
    flow_heun_sample,
    flow_midpoint_sample,
    flow_plan,
)
from diffjax.samplers.grids import (
    Grid,
    karras_sigmas,
    karras_times,
    log_snr_times,
    make_grid,
    uniform_times,
)
from diffjax.samplers.guidance import (
    GRADIENT_TARGETS,
    Guide,
    classifier_free_guidance,
    classifier_log_prob,
    clip_x0_guide,
    compose_guides,
    gradient_guidance,
)
from diffjax.samplers.input_gradient import input_gradient
from diffjax.samplers.ode import EVALS_PER_STEP, ODE_SOLVERS, OdeStats, ode_sample
from diffjax.samplers.registry import (
    COMMON_OPTIONS,
    REQUIRED,
    SAMPLER_NAMES,
    SAMPLERS,
    SamplerEntry,
    check_sampler_options,
    is_deterministic,
    register_sampler,
    sample,
    sampler_options,
)
from diffjax.samplers.runner import BodySettings, Denoiser, Plan, Point, Step, run_plan
from diffjax.samplers.sde import CORRECTORS, PREDICTORS, euler_maruyama_sample, pc_sample
from diffjax.samplers.steps import (
    ddim_noise_scale,
    ddim_step,
    dpm_solver_2m_step,
    euler_step,
    flow_euler_step,
    flow_heun_step,
    heun_step,
    langevin_step,
    reverse_diffusion_step,
    reverse_sde_step,
)
from diffjax.samplers.timesteps import (
    SOLVER_SPACINGS,
    SPACINGS,
    log_snr_timesteps,
    solver_timesteps,
    spaced_timesteps,
)

__all__ = [
    "GRADIENT_TARGETS",
    "COMMON_OPTIONS",
    "CORRECTORS",
    "EVALS_PER_STEP",
    "FLOW_METHODS",
    "ODE_SOLVERS",
    "OdeStats",
    "PREDICTORS",
    "REQUIRED",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "SOLVER_ORDERS",
    "SOLVER_SPACINGS",
    "SPACINGS",
    "BodySettings",
    "Denoiser",
    "Grid",
    "Guide",
    "Plan",
    "Point",
    "SamplerEntry",
    "Step",
    "Trajectory",
    "check_sampler_options",
    "classifier_free_guidance",
    "classifier_log_prob",
    "clip_x0_guide",
    "compose_guides",
    "gradient_guidance",
    "input_gradient",
    "ddim_invert",
    "ddim_noise_scale",
    "ddim_plan",
    "ddim_sample",
    "ddim_step",
    "ddpm_plan",
    "ddpm_sample",
    "denoise",
    "dpm_solver_2m_step",
    "dpm_solver_coefficients",
    "dpm_solver_plan",
    "dpm_solver_sample",
    "euler_maruyama_sample",
    "euler_plan",
    "euler_sample",
    "euler_step",
    "flow_euler_sample",
    "flow_euler_step",
    "flow_heun_sample",
    "flow_heun_step",
    "flow_midpoint_sample",
    "flow_plan",
    "heun_plan",
    "heun_sample",
    "heun_step",
    "is_deterministic",
    "karras_sigmas",
    "langevin_step",
    "karras_times",
    "log_snr_times",
    "log_snr_timesteps",
    "make_grid",
    "ode_sample",
    "pc_sample",
    "register_sampler",
    "respace_schedule",
    "reverse_diffusion_step",
    "reverse_sde_step",
    "run_plan",
    "sample",
    "sample_keys",
    "sampler_options",
    "solver_timesteps",
    "spaced_timesteps",
    "uniform_times",
]
