"""Guidance: classifier-free guidance of a conditional model, and the denoiser-level ``guide``
hook of every sampler.

**Classifier-free guidance** (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance",
arXiv:2207.12598, eq. 6) turns a conditional ``model_fn(x_t, t, cond)`` trained with condition
dropout into a plain ``model_fn(x_t, t)`` that any sampler accepts:

    pred = pred_uncond + w (pred_cond - pred_uncond),

so w = 0 is the unconditional model, w = 1 the conditional one, and w > 1 sharpens towards the
condition. (Ho & Salimans write (1 + w') pred_cond - w' pred_uncond, i.e. w = 1 + w'.) ``cond``
is any pytree whose leaves have the batch as leading axis (a class label, a text context, a
control image, or all of them), and the unconditional prediction uses the null condition of
the same structure. Because eps-, x0-, v- and velocity predictions are affine in one another at
fixed (x_t, t), guiding the network's own prediction gives the same step as guiding any of them;
it needs neither the noise level nor the process time, so it wraps the network, and the two
predictions come from one call on ``[x_t; x_t]`` with ``[cond; null]``.

**The guide hook.** A method that needs the noise level or the process time acts on the
denoiser's outputs instead: every sampler takes ``guide(x_t, t, alpha, sigma, x0_hat, eps_hat)
-> (x0_hat, eps_hat)``, called after the network and before the step (k-diffusion's denoiser
wrappers; Karras et al. 2022, Sec. 3). ``t`` is the process time ``[B]`` (int32 for a schedule,
float32 in [0, 1] otherwise), ``alpha`` and ``sigma`` the marginal's scales there
(broadcastable to x_t), and the returned pair must satisfy x_t = alpha x0_hat + sigma eps_hat
for the deterministic samplers to stay on their ODE. :func:`clip_x0_guide` (x0 clipping, the
samplers' ``clip_x0``) is one; :func:`compose_guides` chains several (classifier guidance and
clipping, say). Guides are :class:`jax.tree_util.Partial` objects, so their arrays (a
classifier's parameters) are traced and changing them does not recompile a sampler.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.samplers.common import as_model_pytree

__all__ = [
    "Guide",
    "checked_guidance_scale",
    "classifier_free_guidance",
    "clip_x0_guide",
    "compose_guides",
]

Guide = Callable[..., tuple[jnp.ndarray, jnp.ndarray]]
"""``guide(x_t [B, ...], t [B], alpha, sigma, x0_hat [B, ...], eps_hat [B, ...]) -> (x0_hat,
eps_hat)``; see the module docstring."""


def _check_cond_batch(cond: Any, null: Any, batch: int) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(cond):
        if leaf.shape[:1] != (batch,):
            raise ValueError(
                f"classifier_free_guidance got cond{jax.tree_util.keystr(path)} of shape "
                f"{leaf.shape}, but the sampler batch has {batch} examples; every cond leaf "
                f"needs the leading axis [B] = [{batch}]."
            )
    for path, leaf in jax.tree_util.tree_leaves_with_path(null):
        if leaf.shape[:1] not in ((batch,), (1,)):
            raise ValueError(
                f"classifier_free_guidance got null_cond{jax.tree_util.keystr(path)} of shape "
                f"{leaf.shape}; expected a leading axis of {batch} or 1 (broadcast)."
            )


def _guided_prediction(conditional_model, cond, null, guidance_scale, x_t, t):
    batch = x_t.shape[0]
    _check_cond_batch(cond, null, batch)

    def both(value, empty):
        empty = jnp.broadcast_to(jnp.asarray(empty, value.dtype), value.shape)
        return jnp.concatenate([value, empty])

    predictions = conditional_model(
        jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), jax.tree.map(both, cond, null)
    )
    conditional, unconditional = jnp.split(predictions, 2)
    scale = guidance_scale.astype(predictions.dtype)
    return unconditional + scale * (conditional - unconditional)


def _check_labels(labels: Any, num_classes: Any) -> jnp.ndarray:
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
    return labels.astype(jnp.int32)


def checked_guidance_scale(guidance_scale: Any) -> float | jax.Array:
    """A guidance scale w as a finite float, or as given when it is a scalar traced inside a
    jitted caller (its value is not known yet).

    Raises:
      TypeError: not a real number; ValueError: not finite.
    """
    if isinstance(guidance_scale, jax.core.Tracer) and guidance_scale.shape == ():
        return guidance_scale
    try:
        scale = float(guidance_scale)
    except (TypeError, jax.errors.ConcretizationTypeError) as error:
        raise TypeError(f"guidance_scale must be a real number, got {guidance_scale!r}.") from error
    if not math.isfinite(scale):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale}.")
    return scale


def classifier_free_guidance(
    model_fn: Callable[[jnp.ndarray, jnp.ndarray, Any], jnp.ndarray],
    cond: Any,
    guidance_scale: float,
    num_classes: int | None = None,
    *,
    null_cond: Any = None,
) -> jax.tree_util.Partial:
    """Turns a conditional model into a guided ``model_fn(x_t, t)`` (Ho & Salimans 2022, eq. 6).

    Args:
      model_fn: ``model_fn(x_t [N, ...], t [N], cond) -> prediction [N, ...]``.
      cond: the condition of each sample, a pytree of ``[B, ...]`` arrays (e.g. int labels
        ``[B]``, or ``{'label': ..., 'context': [B, L, D]}``).
      guidance_scale: w; 0 = unconditional, 1 = conditional, > 1 = guided; a float, or a
        scalar traced inside a jitted caller (so changing it does not recompile that caller).
      num_classes: for ``cond`` = int class labels ``[B]`` in [0, num_classes]: the null label
        ``num_classes`` (a label of ``num_classes`` gives an unconditional sample in that row).
      null_cond: the null condition, of the structure of ``cond``; each leaf ``[B, ...]`` or
        ``[1, ...]`` (broadcast). Give it, or ``num_classes``.

    Returns:
      ``guided(x_t [B, ...], t [B]) -> prediction [B, ...]``, a
      :class:`jax.tree_util.Partial` whose condition and scale are traced, so changing them
      does not recompile a sampler.

    Raises:
      ValueError / TypeError: both or neither of ``null_cond`` and ``num_classes``, labels out
        of range, a non-finite scale, or a null condition of another structure.

    Example:
      >>> guided = classifier_free_guidance(cond_fn, labels, 3.0, num_classes=10)
      >>> images = ddim_sample(guided, schedule, key, (labels.shape[0], 32, 32, 3))
    """
    model = as_model_pytree(model_fn)
    if (null_cond is None) == (num_classes is None):
        raise ValueError(
            "classifier_free_guidance needs the null condition: null_cond (a pytree like cond) "
            "or, for class labels, num_classes (the null label); give exactly one."
        )
    if num_classes is not None:
        cond = _check_labels(cond, num_classes)
        null_cond = jnp.full_like(cond, num_classes)
    elif jax.tree.structure(cond) != jax.tree.structure(null_cond):
        raise ValueError(
            f"null_cond must have the structure of cond: {jax.tree.structure(cond)} vs "
            f"{jax.tree.structure(null_cond)}."
        )
    scale = jnp.asarray(checked_guidance_scale(guidance_scale), jnp.float32)
    return jax.tree_util.Partial(
        _guided_prediction,
        model,
        jax.tree.map(jnp.asarray, cond),
        jax.tree.map(jnp.asarray, null_cond),
        scale,
    )


def _clip_x0(low, high, x_t, t, alpha, sigma, x0_hat, eps_hat):
    x0_hat = jnp.clip(x0_hat, low, high)
    return x0_hat, (x_t - alpha * x0_hat) / sigma


def clip_x0_guide(low: float = -1.0, high: float = 1.0) -> jax.tree_util.Partial:
    """The guide that clips x0_hat to [low, high] and re-derives eps_hat from it, so the step
    stays on the line through x_t (static thresholding, Saharia et al. 2022, Sec. 2.3; what a
    sampler's ``clip_x0=True`` does after any other guide).

    Returns:
      ``guide(x_t, t, alpha, sigma, x0_hat, eps_hat) -> (x0_hat, eps_hat)``.
    """
    if not low < high:
        raise ValueError(f"clip_x0_guide needs low < high, got [{low}, {high}].")
    return jax.tree_util.Partial(_clip_x0, jnp.float32(low), jnp.float32(high))


def _composed(guides, x_t, t, alpha, sigma, x0_hat, eps_hat):
    for guide in guides:
        x0_hat, eps_hat = guide(x_t, t, alpha, sigma, x0_hat, eps_hat)
    return x0_hat, eps_hat


def compose_guides(*guides: Guide | None) -> jax.tree_util.Partial | None:
    """One guide applying ``guides`` in order (None entries are skipped; None if none is left).

    Example:
      >>> guide = compose_guides(classifier_guide, clip_x0_guide())
    """
    kept = tuple(as_model_pytree(guide) for guide in guides if guide is not None)
    if not kept:
        return None
    if len(kept) == 1:
        return kept[0]
    return jax.tree_util.Partial(_composed, kept)
