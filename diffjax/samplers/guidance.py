"""Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance",
arXiv:2207.12598, eq. 6), as a transformation of the model function.

A class-conditional ``model_fn(x_t, t, labels)`` trained with label dropout (the dropped label
being ``num_classes``) becomes a plain ``model_fn(x_t, t)`` that any sampler accepts:

    pred = pred_uncond + w (pred_cond - pred_uncond),

so w = 0 is the unconditional model, w = 1 the conditional one, and w > 1 sharpens towards the
class. (Ho & Salimans write (1 + w') pred_cond - w' pred_uncond, i.e. w = 1 + w'.) Because eps-,
x0- and v-predictions are affine in one another at fixed (x_t, t), guiding any of them gives
the same step. The two predictions come from one model call on the batch concatenated with
itself, ``[x_t; x_t]`` with labels ``[labels; null]``.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.samplers.common import as_model_pytree

__all__ = ["classifier_free_guidance"]


def _guided_prediction(conditional_model, labels, guidance_scale, null_label, x_t, t):
    if labels.shape[0] != x_t.shape[0]:
        raise ValueError(
            f"classifier_free_guidance got labels for {labels.shape[0]} examples but the sampler "
            f"batch has {x_t.shape[0]}; pass labels of shape [B] = [{x_t.shape[0]}]."
        )
    null_labels = jnp.full_like(labels, null_label)
    both = conditional_model(
        jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), jnp.concatenate([labels, null_labels])
    )
    conditional, unconditional = jnp.split(both, 2)
    return unconditional + guidance_scale.astype(both.dtype) * (conditional - unconditional)


def classifier_free_guidance(
    model_fn: Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray],
    labels: jnp.ndarray,
    guidance_scale: float,
    num_classes: int,
) -> jax.tree_util.Partial:
    """Turns a class-conditional model into a guided ``model_fn(x_t, t)`` (Ho & Salimans 2022).

    Args:
      model_fn: ``model_fn(x_t [N, ...], t int32 [N], labels int32 [N]) -> prediction``;
        label ``num_classes`` means "no class" (the unconditional model).
      labels: int ``[B]`` class of each sample, in [0, num_classes] (``num_classes`` gives an
        unconditional sample in that row).
      guidance_scale: w; 0 = unconditional, 1 = conditional, > 1 = guided.
      num_classes: the number of real classes; also the null label.

    Returns:
      ``guided(x_t [B, ...], t int32 [B]) -> prediction [B, ...]``, a
      :class:`jax.tree_util.Partial` whose labels and scale are traced, so changing them does
      not recompile a sampler.

    Example:
      >>> guided = classifier_free_guidance(cond_fn, labels, 3.0, num_classes=10)
      >>> images = ddim_sample(guided, schedule, key, (labels.shape[0], 32, 32, 3))
    """
    model = as_model_pytree(model_fn)
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 1
    ):
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}.")
    labels = jnp.asarray(labels)
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"labels must be an int array of shape [B], got {labels.dtype}{list(labels.shape)}."
        )
    if not isinstance(labels, jax.core.Tracer) and labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high > num_classes:
            raise ValueError(
                f"labels must lie in [0, {num_classes}] ({num_classes} = unconditional), got "
                f"values in [{low}, {high}]."
            )
    try:
        scale = float(guidance_scale)
    except (TypeError, jax.errors.ConcretizationTypeError) as error:
        raise TypeError(f"guidance_scale must be a real number, got {guidance_scale!r}.") from error
    if not math.isfinite(scale):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale}.")
    return jax.tree_util.Partial(
        _guided_prediction,
        model,
        labels.astype(jnp.int32),
        jnp.float32(scale),
        jnp.int32(num_classes),
    )
