"""diffjax: diffusion models in JAX and Flax.

The stable public API. The math (schedules, diffusion, losses, samplers) takes arrays, a
:class:`DiffusionSchedule` and a plain ``model_fn(x_t, t) -> prediction``, so a network written
in any JAX framework plugs in unchanged; :class:`UNet` is the Flax network diffjax trains; the
training machinery lives in :mod:`diffjax.training`. ``import diffjax`` never imports TensorFlow,
tensorflow-datasets or orbax: :func:`train_and_evaluate` loads its module on first use.
:func:`enable_fast_cpu_convolutions` and :func:`use_cpu_devices` (with :func:`cpu_device_count`)
set up a CPU for speed and must run before JAX starts.
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
from diffjax.losses import LOSS_WEIGHTINGS, denoising_loss, sample_timesteps, snr_loss_weight
from diffjax.models import UNet, count_params
from diffjax.samplers import (
    SAMPLER_NAMES,
    classifier_free_guidance,
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    dpm_solver_sample,
    sample,
)
from diffjax.schedules import (
    SCHEDULE_NAMES,
    DiffusionSchedule,
    get_schedule,
    make_schedule,
    rescale_zero_terminal_snr,
)
from diffjax.xla_cpu import (
    FAST_CPU_CONVOLUTION_FLAG,
    cpu_device_count,
    enable_fast_cpu_convolutions,
    use_cpu_devices,
)

__version__ = "0.1.0"

__all__ = [
    "FAST_CPU_CONVOLUTION_FLAG",
    "LOSS_WEIGHTINGS",
    "PREDICTION_TYPES",
    "SAMPLER_NAMES",
    "SCHEDULE_NAMES",
    "DiffusionSchedule",
    "PosteriorMeanVariance",
    "UNet",
    "alpha_sigma",
    "classifier_free_guidance",
    "count_params",
    "cpu_device_count",
    "ddim_invert",
    "ddim_sample",
    "ddpm_sample",
    "denoising_loss",
    "dpm_solver_sample",
    "eps_from_v",
    "eps_from_x0",
    "enable_fast_cpu_convolutions",
    "get_schedule",
    "make_schedule",
    "p_mean_variance",
    "predict_x0_and_eps",
    "prediction_target",
    "q_mean_variance",
    "q_posterior_mean_variance",
    "q_sample",
    "rescale_zero_terminal_snr",
    "sample",
    "sample_timesteps",
    "snr_loss_weight",
    "train_and_evaluate",
    "use_cpu_devices",
    "v_from_x0_eps",
    "x0_from_eps",
    "x0_from_v",
]


def __getattr__(name: str) -> Any:
    # The training program imports orbax and grain; load it only when it is asked for.
    if name == "train_and_evaluate":
        from diffjax.training.loop import train_and_evaluate

        return train_and_evaluate
    raise AttributeError(f"module 'diffjax' has no attribute {name!r}")
