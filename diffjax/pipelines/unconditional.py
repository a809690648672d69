"""Samples of a published unconditional diffusers model (``UNet2DModel`` with its
``scheduler_config.json``, such as DDPM's ``google/ddpm-cifar10-32``), without torch.

The folder is either a model repository (``config.json``, the weights and
``scheduler_config.json`` side by side) or a pipeline folder (``model_index.json`` with
``unet/`` and ``scheduler/``). The schedule, prediction type, x0 clipping and default sampler
come from the scheduler config (:mod:`diffjax.pipelines.scheduler_configs`); the network is
loaded strictly by :func:`~diffjax.models.from_pretrained`. A batch that the device count divides
is split over the devices.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import diffjax.models.pretrained as pretrained
import diffjax.pipelines.scheduler_configs as scheduler_configs
from diffjax.errors import ConfigError
from diffjax.models.conditioning import make_model_fn
from diffjax.pipelines.stable_diffusion import batch_sharding_for
from diffjax.samplers.registry import sample
from diffjax.sharding import make_mesh, replicated_sharding

__all__ = ["sample_pretrained"]


def _folders(folder: str) -> tuple[str, str]:
    """``(network folder, scheduler config path)`` of a model or pipeline folder."""
    if os.path.isfile(os.path.join(folder, "model_index.json")):
        return os.path.join(folder, "unet"), os.path.join(
            folder, "scheduler", "scheduler_config.json"
        )
    return folder, os.path.join(folder, "scheduler_config.json")


@functools.partial(
    jax.jit, static_argnames=("module", "sampler", "options", "config", "out_sharding")
)
def _sample(params, noise, key, module, sampler, options, config, out_sharding):
    with jax.ensure_compile_time_eval():  # the samplers build their grids in NumPy
        schedule = scheduler_configs.schedule_from_scheduler_config(json.loads(config))
    model_fn = make_model_fn(module, params)
    x = sample(
        sampler, model_fn, schedule, key, noise.shape, x_T=noise, out_sharding=out_sharding,
        **dict(options),
    )  # fmt: skip
    return jnp.clip(x, -1.0, 1.0)


def sample_pretrained(
    folder: str | os.PathLike,
    num_images: int = 16,
    *,
    steps: int = 50,
    sampler: str | None = None,
    sampler_options: dict[str, Any] | None = None,
    seed: int = 0,
    noise: np.ndarray | None = None,
) -> np.ndarray:
    """Images of a published unconditional diffusers model (module docstring).

    Args:
      folder: the model or pipeline folder.
      num_images: how many (ignored when ``noise`` is given).
      steps: sampler steps (at most the schedule's ``num_train_timesteps``).
      sampler: a diffjax sampler; default the scheduler config's (``'ddpm'`` for DDPM's).
      sampler_options: more options for it, over the config's.
      seed: seed of the initial noise and of a stochastic sampler's noise.
      noise: optional initial noise ``[N, H, W, C]`` (``sample_size`` and ``in_channels``).

    Returns:
      ``[N, H, W, C]`` float32 images in [-1, 1] (NumPy), clipped.

    Raises:
      ConfigError: a bad noise shape, step count or sampler option, before compiling.

    Example:
      >>> images = dj.pipelines.sample_pretrained("ddpm-cifar10-32", 64, steps=100,
      ...                                        sampler="ddim")
    """
    network, scheduler_path = _folders(os.fspath(folder))
    module, params = pretrained.from_pretrained(network)
    config = pretrained.read_config(network)
    with open(scheduler_path) as file:
        scheduler_config = json.load(file)
    name, options = scheduler_configs.checked_sampler(
        scheduler_config, sampler, sampler_options, steps
    )
    side, channels = int(config.get("sample_size", 32)), int(config.get("in_channels", 3))
    key = jax.random.key(seed)
    if noise is None:
        noise = jax.random.normal(jax.random.fold_in(key, 1), (num_images, side, side, channels))
    elif np.ndim(noise) != 4 or np.shape(noise)[-1] != channels:
        raise ConfigError(f"noise must be [N, H, W, {channels}], got shape {np.shape(noise)}.")
    sharding = batch_sharding_for(len(noise))
    put = jnp.asarray if sharding is None else (lambda x: jax.device_put(x, sharding))
    images = _sample(
        jax.device_put(params, replicated_sharding(make_mesh())),
        put(jnp.asarray(noise, jnp.float32)), key, module, name, tuple(sorted(options.items())),
        json.dumps(scheduler_config, sort_keys=True), sharding,
    )  # fmt: skip
    return np.asarray(images)
