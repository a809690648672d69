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

A guide whose function has the attribute ``takes_denoiser = True`` is also given
``denoiser=``, the function x_t -> (x0_hat, eps_hat) of the network at this point (before any
guide), so it can differentiate through the network.

**Gradient guidance** (:func:`gradient_guidance`) adds the gradient of a log-probability to the
score, score(x_t) + s ∇_{x_t} log p(y | x_t), which in eps space is (Dhariwal & Nichol 2021,
"Diffusion Models Beat GANs on Image Synthesis", arXiv:2105.05233, Algorithm 2 and eq. 14;
guided-diffusion's ``condition_score``)

    eps_hat' = eps_hat - s sigma ∇_{x_t} log p(y | x_t),
    x0_hat'  = (x_t - sigma eps_hat') / alpha = x0_hat + s (sigma^2 / alpha) ∇_{x_t} log p,

so every sampler follows the guided score (at alpha = 0, pure noise, x_t carries no
information about y and the guide leaves the step alone). ``log p(y | x_t)`` is a noisy
classifier's (:func:`classifier_log_prob`), or any differentiable ``f(x0_hat(x_t))``
differentiated through the network (universal guidance, Bansal et al. 2023, arXiv:2302.07121,
eq. 6; diffusion posterior sampling, Chung et al. 2023, arXiv:2209.14687, with f = -||y -
A(x0_hat)||^2 / (2 s_y^2)). Classifier-free guidance composes with it by summing the two score
terms: guide the CFG-guided ``model_fn``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import predictions
from diffjax.processes import (
    as_continuous,
    as_jit_argument,
    check_process,
    is_discrete,
    marginal,
)
from diffjax.samplers.common import as_model_pytree, check_flag, takes_denoiser
from diffjax.samplers.input_gradient import input_gradient

__all__ = [
    "GRADIENT_TARGETS",
    "Guide",
    "checked_guidance_scale",
    "classifier_free_guidance",
    "classifier_log_prob",
    "clip_x0_guide",
    "compose_guides",
    "gradient_guidance",
    "takes_denoiser",
]

GRADIENT_TARGETS = ("x_t", "x0")
"""What :func:`gradient_guidance`'s ``log_prob_fn`` reads: the noisy state, or the denoised
estimate (differentiated through the network)."""

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


def _both_predictions(conditional_model, cond, null, x_t, t):
    """The conditional and the unconditional prediction, from one batched call on
    ``[x_t; x_t]`` with ``[cond; null]``."""
    batch = x_t.shape[0]
    _check_cond_batch(cond, null, batch)

    def both(value, empty):
        empty = jnp.broadcast_to(jnp.asarray(empty, value.dtype), value.shape)
        return jnp.concatenate([value, empty])

    predictions = conditional_model(
        jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), jax.tree.map(both, cond, null)
    )
    return jnp.split(predictions, 2)


def _guided_prediction(conditional_model, cond, null, guidance_scale, x_t, t):
    conditional, unconditional = _both_predictions(conditional_model, cond, null, x_t, t)
    scale = guidance_scale.astype(conditional.dtype)
    return unconditional + scale * (conditional - unconditional)


def _guided_prediction_learned_variance(conditional_model, cond, null, guidance_scale, x_t, t):
    """Guidance of the prediction half of a learned-variance output ``[B, ..., 2 C]`` (its
    first C channels); the variance half is the conditional prediction's."""
    conditional, unconditional = _both_predictions(conditional_model, cond, null, x_t, t)
    scale = guidance_scale.astype(conditional.dtype)
    guided = unconditional + scale * (conditional - unconditional)
    channels = x_t.shape[-1]
    return jnp.concatenate([guided[..., :channels], conditional[..., channels:]], axis=-1)


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
    learned_variance: bool = False,
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
      learned_variance: the model returns ``[N, ..., 2 C]``, its prediction and then variance
        values (Improved DDPM, DiT): only the prediction's C channels are guided, the variance
        values are the conditional model's (as DiT's sampling does, without its guidance of 3
        of the 4 eps channels).

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
        _guided_prediction_learned_variance
        if check_flag(learned_variance, "learned_variance")
        else _guided_prediction,
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


def _composed(guides, x_t, t, alpha, sigma, x0_hat, eps_hat, denoiser=None):
    for guide in guides:
        extra = {"denoiser": denoiser} if takes_denoiser(guide) else {}
        x0_hat, eps_hat = guide(x_t, t, alpha, sigma, x0_hat, eps_hat, **extra)
    return x0_hat, eps_hat


def _composed_with_denoiser(guides, x_t, t, alpha, sigma, x0_hat, eps_hat, *, denoiser):
    return _composed(guides, x_t, t, alpha, sigma, x0_hat, eps_hat, denoiser)


_composed_with_denoiser.takes_denoiser = True


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
    if any(takes_denoiser(guide) for guide in kept):
        return jax.tree_util.Partial(_composed_with_denoiser, kept)
    return jax.tree_util.Partial(_composed, kept)


def _shifted(scale, t_low, t_high, gradient, x_t, t, alpha, sigma, x0_hat, eps_hat):
    """(x0_hat, eps_hat) moved along the score by ``scale`` times ``gradient``, where the time
    lies in [t_low, t_high] and alpha > 0."""
    inside = (t >= t_low) & (t <= t_high)
    active = inside.reshape((-1,) + (1,) * (x_t.ndim - 1)) & (alpha > 0)
    step = jnp.where(active, scale * gradient, 0.0)
    safe_alpha = jnp.where(alpha > 0, alpha, 1.0)
    eps_guided = eps_hat - sigma * step
    x0_guided = x0_hat + jnp.square(sigma) / safe_alpha * step
    return x0_guided.astype(x0_hat.dtype), eps_guided.astype(eps_hat.dtype)


def _noisy_gradient_guide(log_prob_fn, scale, t_low, t_high, x_t, t, alpha, sigma, x0_hat,
                          eps_hat):  # fmt: skip
    gradient = input_gradient(lambda x: log_prob_fn(x, t), x_t)
    return _shifted(scale, t_low, t_high, gradient, x_t, t, alpha, sigma, x0_hat, eps_hat)


def _denoised_gradient_guide(log_prob_fn, scale, t_low, t_high, x_t, t, alpha, sigma, x0_hat,
                             eps_hat, *, denoiser):  # fmt: skip
    gradient = input_gradient(lambda x: log_prob_fn(denoiser(x)[0], t), x_t)
    return _shifted(scale, t_low, t_high, gradient, x_t, t, alpha, sigma, x0_hat, eps_hat)


_denoised_gradient_guide.takes_denoiser = True


def _time_bounds(t_range: Any) -> tuple[float, float]:
    if t_range is None:
        return -np.inf, np.inf
    try:
        low, high = (float(bound) for bound in t_range)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"t_range must be None or a pair (t_low, t_high) of process times, got {t_range!r}."
        ) from error
    if not low <= high:
        raise ValueError(f"t_range must have t_low <= t_high, got {t_range!r}.")
    return low, high


def gradient_guidance(
    log_prob_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    scale: float,
    t_range: tuple[float, float] | None = None,
    *,
    wrt: str = "x_t",
) -> jax.tree_util.Partial:
    """The guide that adds ``scale`` times the gradient of ``log_prob_fn`` to the score
    (Dhariwal & Nichol 2021, eq. 14; see the module docstring):
    eps_hat' = eps_hat - scale sigma ∇_{x_t} log p.

    Args:
      log_prob_fn: ``log_prob_fn(x [B, ...], t [B]) -> [B]``, the log-probability of the
        target of each example (per example: row i may only depend on x[i]); ``t`` the process
        time (int32 for a schedule, float32 in [0, 1] otherwise). With ``wrt='x_t'`` it reads
        the noisy state x_t (a noisy classifier, :func:`classifier_log_prob`); with
        ``wrt='x0'`` the denoised estimate x0_hat(x_t), and the gradient is taken through the
        network (universal guidance / DPS; one more forward and backward pass of the network
        per step).
      scale: s; 1 follows p(x | y) when ``log_prob_fn`` is the exact log p(y | x_t), larger
        values sharpen towards the target, 0 is unguided. A float, or a scalar traced inside a
        jitted caller.
      t_range: ``(t_low, t_high)``: guide only at process times in this closed interval
        (e.g. the noisy half of the trajectory); None: everywhere.
      wrt: ``'x_t'`` or ``'x0'`` (:data:`GRADIENT_TARGETS`).

    Returns:
      ``guide(x_t, t, alpha, sigma, x0_hat, eps_hat) -> (x0_hat, eps_hat)``, a
      :class:`jax.tree_util.Partial` (its arrays are traced: new classifier parameters or
      labels do not recompile a sampler).

    Raises:
      TypeError / ValueError: a non-callable ``log_prob_fn``, a non-finite scale, a bad
        ``t_range`` or ``wrt``.

    Example:
      >>> log_prob = classifier_log_prob(classifier_fn, process, labels)
      >>> guide = gradient_guidance(log_prob, 2.0)
      >>> images = dj.sample("ddim", model_fn, process, keys, shape, num_steps=50, guide=guide)
    """
    if not callable(log_prob_fn):
        raise TypeError(f"log_prob_fn must be callable as log_prob_fn(x, t), got {log_prob_fn!r}.")
    if wrt not in GRADIENT_TARGETS:
        raise ValueError(f"wrt must be one of {GRADIENT_TARGETS}, got {wrt!r}.")
    low, high = _time_bounds(t_range)
    guide = _noisy_gradient_guide if wrt == "x_t" else _denoised_gradient_guide
    return jax.tree_util.Partial(
        guide,
        as_model_pytree(log_prob_fn),
        jnp.asarray(checked_guidance_scale(scale), jnp.float32),
        jnp.float32(low),
        jnp.float32(high),
    )


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _PredictionType:
    """A prediction type as a static (hashable, leafless) part of a guide's pytree."""

    name: str


def _classifier_log_prob(logits_fn, process, continuous_view, labels, prediction_type, x_t, t):
    if is_discrete(process) and jnp.issubdtype(t.dtype, jnp.floating):
        # A schedule's ODE and SDE samplers visit its continuous-time view.
        process = continuous_view
    m = marginal(process, t, x_t.ndim, x_t.dtype)
    x_in, t_in = predictions.network_inputs(prediction_type.name, process, m, x_t, t)
    logits = logits_fn(x_in, t_in).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def classifier_log_prob(
    logits_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    process: Any,
    labels: Any,
    *,
    prediction_type: str = "eps",
) -> jax.tree_util.Partial:
    """log p(y | x_t) of a noise-conditional classifier, as :func:`gradient_guidance` reads it
    (the classifier p_phi(y | x_t, t) trained on noisy images of Dhariwal & Nichol 2021, Sec. 4).

    The classifier sees what a denoiser of ``prediction_type`` trained on ``process`` sees
    (:func:`diffjax.predictions.network_inputs`: x_t, scaled for 'edm', and the network time),
    which is how the training program's ``'classifier'`` objective trains it. A schedule's
    ODE and SDE samplers tell a guide the float time of its continuous-time view
    (:func:`diffjax.processes.schedule_time`); the classifier then gets that view's fractional
    index, as the denoiser does.

    Args:
      logits_fn: ``logits_fn(x_in [B, ...], t_in [B]) -> logits [B, K]`` (e.g.
        :func:`diffjax.models.make_model_fn` of a trained classifier).
      process: the schedule or continuous process the classifier was trained on.
      labels: int ``[B]`` target classes in [0, K).
      prediction_type: the prediction type whose network inputs the classifier takes.

    Returns:
      ``log_prob_fn(x_t [B, ...], t [B]) -> [B]`` float32, log softmax(logits)[y].
    """
    check_process(process)
    predictions.check_prediction_supported(prediction_type, process)
    labels = jnp.asarray(labels)
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"labels must be an int array of shape [B], got {labels.dtype}{list(labels.shape)}."
        )
    return jax.tree_util.Partial(
        _classifier_log_prob,
        as_model_pytree(logits_fn),
        as_jit_argument(process),
        as_continuous(process) if is_discrete(process) else None,
        labels.astype(jnp.int32),
        _PredictionType(prediction_type),
    )
