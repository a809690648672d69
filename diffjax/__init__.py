"""diffjax: diffusion models in JAX and Flax.

The stable public API. The math (schedules and continuous processes, the forward process,
predictions, losses, samplers) takes arrays, a process (a :class:`DiffusionSchedule` or a
continuous process such as :class:`RectifiedFlow`) and a plain ``model_fn(x_t, t) ->
prediction``, so a network written in any JAX framework plugs in unchanged; :class:`UNet` is
the Flax network diffjax trains; the training machinery lives in :mod:`diffjax.training`, and
progressive distillation's rounds are :func:`distill`.
``import diffjax`` never imports TensorFlow, tensorflow-datasets, orbax, absl or flax: the UNet
(:class:`UNet`, :func:`count_params`), the training program (:func:`train_and_evaluate`, :func:`load_trained_run`, :func:`create_dataset`,
:func:`read_metrics`), the image grids and the CPU speed settings of the command-line programs
(:func:`enable_fast_cpu_convolutions`, :func:`use_cpu_devices`, :func:`cpu_device_count`, which
must run before JAX starts) load their modules on first use.
"""

from typing import Any

from diffjax.diffusion import (
    PREDICTION_TYPES,
    PosteriorMeanVariance,
    alpha_sigma,
    eps_from_v,
    eps_from_x0,
    p_mean_variance,
    predict_x0_and_eps,
    prediction_target,
    q_mean_variance,
    q_posterior_mean_variance,
    q_sample,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from diffjax.likelihood import OdeLikelihood, bits_per_dim, ode_likelihood
from diffjax.losses import (
    LOSS_WEIGHTINGS,
    TIME_SAMPLERS,
    constant_times,
    denoising_loss,
    edm_lognormal_times,
    get_time_sampler,
    logit_normal_times,
    loss_weight,
    mode_times,
    sample_timesteps,
    snr_loss_weight,
    time_shift,
    uniform_times,
)
from diffjax.predictions import convert_prediction
from diffjax.processes import (
    EDM,
    PROCESS_NAMES,
    VE,
    Marginal,
    RectifiedFlow,
    ScheduleTime,
    VPCosine,
    VPLinear,
    get_process,
    log_snr,
    marginal,
    schedule_time,
    sde_coefficients,
)
from diffjax.samplers import (
    SAMPLER_NAMES,
    classifier_free_guidance,
    classifier_log_prob,
    clip_x0_guide,
    compose_guides,
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    dpm_solver_sample,
    euler_maruyama_sample,
    euler_sample,
    flow_euler_sample,
    flow_heun_sample,
    flow_midpoint_sample,
    gradient_guidance,
    heun_sample,
    ode_sample,
    pc_sample,
    register_sampler,
    sample,
    sample_keys,
)
from diffjax.schedules import (
    SCHEDULE_NAMES,
    DiffusionSchedule,
    get_schedule,
    make_schedule,
    rescale_zero_terminal_snr,
)
from diffjax.version import __version__  # noqa: F401  (the package's version)

__all__ = [
    "EDM",
    "LOSS_WEIGHTINGS",
    "PREDICTION_TYPES",
    "PROCESS_NAMES",
    "SAMPLER_NAMES",
    "SCHEDULE_NAMES",
    "TIME_SAMPLERS",
    "VE",
    "DiffusionSchedule",
    "Marginal",
    "OdeLikelihood",
    "PosteriorMeanVariance",
    "RectifiedFlow",
    "ScheduleTime",
    "UNet",
    "VPCosine",
    "VPLinear",
    "alpha_sigma",
    "bits_per_dim",
    "classifier_free_guidance",
    "classifier_log_prob",
    "clip_x0_guide",
    "compose_guides",
    "convert_prediction",
    "count_params",
    "ddim_invert",
    "ddim_sample",
    "ddpm_sample",
    "denoising_loss",
    "dpm_solver_sample",
    "edm_lognormal_times",
    "eps_from_v",
    "eps_from_x0",
    "euler_maruyama_sample",
    "euler_sample",
    "flow_euler_sample",
    "flow_heun_sample",
    "flow_midpoint_sample",
    "get_process",
    "gradient_guidance",
    "get_schedule",
    "get_time_sampler",
    "heun_sample",
    "log_snr",
    "constant_times",
    "logit_normal_times",
    "loss_weight",
    "make_schedule",
    "marginal",
    "mode_times",
    "ode_likelihood",
    "ode_sample",
    "p_mean_variance",
    "pc_sample",
    "predict_x0_and_eps",
    "prediction_target",
    "q_mean_variance",
    "q_posterior_mean_variance",
    "q_sample",
    "register_sampler",
    "rescale_zero_terminal_snr",
    "sample",
    "sample_keys",
    "sample_timesteps",
    "schedule_time",
    "sde_coefficients",
    "snr_loss_weight",
    "time_shift",
    "train_and_evaluate",
    "distill",
    "load_trained_run",
    "sample_run",
    "create_dataset",
    "read_metrics",
    "make_image_grid",
    "save_image_grid",
    "cpu_device_count",
    "enable_fast_cpu_convolutions",
    "use_cpu_devices",
    "uniform_times",
    "v_from_x0_eps",
    "x0_from_eps",
    "x0_from_v",
]


_LAZY: dict[str, str] = {
    "UNet": "diffjax.models",
    "count_params": "diffjax.models",
    "train_and_evaluate": "diffjax.training.loop",
    "distill": "diffjax.pipelines.distillation",
    "load_trained_run": "diffjax.training.trained_run",
    "sample_run": "diffjax.training.run_sampling",
    "create_dataset": "diffjax.data.pipeline",
    "read_metrics": "diffjax.training.metrics_writer",
    "make_image_grid": "diffjax.images",
    "save_image_grid": "diffjax.images",
    "cpu_device_count": "diffjax.cli",
    "enable_fast_cpu_convolutions": "diffjax.cli",
    "use_cpu_devices": "diffjax.cli",
}
"""Public names whose modules import flax (and through it absl), orbax, grain, TFDS or
matplotlib: loaded on first use."""


_SUBPACKAGES = ("models", "pipelines")
"""Subpackages reachable as attributes (``dj.models.from_pretrained``), imported on first use."""


def __getattr__(name: str) -> Any:
    import importlib

    if name in _SUBPACKAGES:
        return importlib.import_module(f"diffjax.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'diffjax' has no attribute {name!r}")
    attribute = "make_grid" if name == "make_image_grid" else name
    return getattr(importlib.import_module(module), attribute)
