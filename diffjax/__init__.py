"""diffjax: diffusion models in JAX and Flax.

The stable public API. The math (schedules, diffusion, losses, samplers) takes arrays, a
:class:`DiffusionSchedule` and a plain ``model_fn(x_t, t) -> prediction``; the training
machinery lives in :mod:`diffjax.training`. Importing this package never imports TensorFlow,
tensorflow-datasets or orbax.
"""

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
from diffjax.schedules import (
    SCHEDULE_NAMES,
    DiffusionSchedule,
    get_schedule,
    make_schedule,
    rescale_zero_terminal_snr,
)

__version__ = "0.1.0"

__all__ = [
    "PREDICTION_TYPES",
    "SCHEDULE_NAMES",
    "DiffusionSchedule",
    "PosteriorMeanVariance",
    "alpha_sigma",
    "eps_from_v",
    "eps_from_x0",
    "get_schedule",
    "make_schedule",
    "p_mean_variance",
    "predict_x0_and_eps",
    "prediction_target",
    "q_mean_variance",
    "q_posterior_mean_variance",
    "q_sample",
    "rescale_zero_terminal_snr",
    "v_from_x0_eps",
    "x0_from_eps",
    "x0_from_v",
]
