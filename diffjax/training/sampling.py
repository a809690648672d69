"""Sampling from a trained network: ``make_sample_fn`` and the labels of a sample grid.

What the training loop (its sample grids), ``python -m diffjax.sample``, ``python -m
diffjax.evaluate`` and the notebooks use to turn a network and its parameters into images with
the samplers of :mod:`diffjax.samplers`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffjax.sharding import batch_sharding
from diffjax.training.config_validation import ConfigError

__all__ = ["grid_labels", "make_sample_fn"]


def _apply_unconditional(model: nn.Module, params: Any, x_t: jnp.ndarray, t: jnp.ndarray):
    return model.apply({"params": params}, x_t, t, None, train=False)


def _apply_conditional(model: nn.Module, params: Any, x_t: jnp.ndarray, t: jnp.ndarray, labels):
    return model.apply({"params": params}, x_t, t, labels, train=False)


def _apply_fixed_labels(model: nn.Module, params: Any, labels, x_t: jnp.ndarray, t: jnp.ndarray):
    return model.apply({"params": params}, x_t, t, labels, train=False)


def make_sample_fn(
    model: nn.Module,
    process: Any,
    *,
    image_shape: tuple[int, int, int],
    num_samples: int,
    sampler: str,
    options: Mapping[str, Any],
    guidance_scale: float,
    clip_x0: bool,
    mesh: Mesh | None = None,
) -> Callable[[Any, jax.Array, jnp.ndarray | None], jax.Array]:
    """``sample(params, key, labels) -> images [num_samples, H, W, C]`` for a trained network.

    The network becomes a plain ``model_fn(x_t, t)`` for the samplers of
    :mod:`diffjax.samplers` (a :class:`jax.tree_util.Partial` holding the params, so new params
    reuse the compiled sampler); with ``guidance_scale != 1`` it is wrapped in classifier-free
    guidance (Ho & Salimans 2022). Each sampler is one ``lax.scan`` in one compiled function.
    With a ``mesh`` whose device count divides ``num_samples``, the samples are split over
    the devices.

    Args:
      model: the network (called as ``model(x, t, labels, train=False)``).
      process: the schedule or continuous process it was trained with.
      image_shape: ``(H, W, C)``.
      num_samples: N, images per call.
      sampler: one of :data:`diffjax.samplers.SAMPLER_NAMES`.
      options: that sampler's keyword arguments (``num_steps``, ``prediction_type``, ...),
        checked by the sampler when called.
      guidance_scale: classifier-free guidance weight w (1: the plain conditional model).
      clip_x0: clip predicted x0 to [-1, 1] in each step.
      mesh: optional mesh to split the samples over.

    Returns:
      ``sample(params, key, labels)``; ``key`` is one key or ``[N]`` per-sample keys
      (:func:`diffjax.samplers.sample_keys`); ``labels`` int32 ``[N]`` in ``[0, num_classes]`` for a
      class-conditional model (``num_classes`` = unconditional), else None. The result is
      float32 ``[N, H, W, C]`` in model space (about [-1, 1]).
    """
    from diffjax import samplers

    if model.num_classes is None and guidance_scale != 1.0:
        raise ConfigError(
            f"guidance_scale={guidance_scale} needs a class-conditional model; this network has "
            f"num_classes=None. Use guidance_scale=1.0."
        )
    shape = (num_samples, *image_shape)
    options = dict(options, clip_x0=clip_x0)
    if mesh is not None and num_samples % mesh.devices.size == 0:
        options["out_sharding"] = batch_sharding(mesh)
    unconditional = functools.partial(_apply_unconditional, model)
    conditional = functools.partial(_apply_conditional, model)
    fixed_labels = functools.partial(_apply_fixed_labels, model)

    def sample(params: Any, key: jax.Array, labels: jnp.ndarray | None) -> jax.Array:
        if model.num_classes is None:
            model_fn = jax.tree_util.Partial(unconditional, params)
        elif guidance_scale != 1.0:
            model_fn = samplers.classifier_free_guidance(
                jax.tree_util.Partial(conditional, params),
                labels,
                guidance_scale,
                num_classes=model.num_classes,
            )
        else:
            model_fn = jax.tree_util.Partial(fixed_labels, params, jnp.asarray(labels, jnp.int32))
        return samplers.sample(sampler, model_fn, process, key, shape, **options)

    return sample


def grid_labels(num_samples: int, num_classes: int | None) -> jnp.ndarray | None:
    """Labels for a grid of samples: class k for the k-th block, so a grid shows each class.

    Args:
      num_samples: N.
      num_classes: K, or None for an unconditional model.

    Returns:
      int32 ``[N]`` with ``labels[i] = i * K // N``, or None when ``num_classes`` is None.
    """
    if num_classes is None:
        return None
    return jnp.asarray(np.arange(num_samples) * num_classes // num_samples, jnp.int32)
