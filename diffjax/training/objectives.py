"""Loss factories: a network, a noise process and a config become one pure ``loss_fn``.

A loss function has the signature the generic train step (:mod:`diffjax.training.step`) and the
held-out evaluation both call:

    loss_fn(params, frozen, batch, key, train) -> (loss, metrics)

``params`` are the trained parameters, ``frozen`` a pytree of arrays the loss reads but does not
train (a distillation teacher, a frozen autoencoder, the base model under a ControlNet; ``{}``
here), ``batch`` a dict of arrays, ``key`` the step's key, and ``train`` a static Python bool
(dropout and label dropout on). ``metrics`` is a dict of float32 scalars, e.g. the unweighted
MSE. Frozen networks enter as the argument, never as constants closed over, so the train step's
HLO does not embed them (DESIGN rule 10).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from diffjax.losses import (
    TimeSampler,
    check_min_snr_gamma,
    check_weighting,
    denoising_loss,
)
from diffjax.predictions import check_prediction_supported
from diffjax.processes import check_process, is_discrete

__all__ = [
    "ApplyFn",
    "LossFn",
    "check_batch",
    "drop_labels",
    "flax_apply_fn",
    "make_denoising_loss",
]

Params = Any
Batch = Mapping[str, jnp.ndarray]

ApplyFn = Callable[
    [Params, jnp.ndarray, jnp.ndarray, "jnp.ndarray | None", bool, "jax.Array | None"], jnp.ndarray
]
"""``apply_fn(params, x_in [B, H, W, C], t_in [B], labels int32 [B] | None, train,
dropout_key) -> prediction [B, H, W, C]``."""

LossFn = Callable[[Params, Any, Batch, jax.Array, bool], tuple[jnp.ndarray, dict[str, jnp.ndarray]]]
"""``loss_fn(params, frozen, batch, key, train) -> (loss, metrics)``."""


def flax_apply_fn(module: Any) -> ApplyFn:
    """Adapts a Flax Linen module called as ``module(x, t, labels, train=...)`` to an ApplyFn.

    Args:
      module: e.g. :class:`diffjax.models.UNet`; dropout draws from the ``'dropout'`` stream.

    Returns:
      ``apply_fn(params, x_in, t_in, labels, train, dropout_key) -> prediction``;
      ``dropout_key`` may be ``None`` when ``train`` is False (evaluation, sampling).
    """

    def apply_fn(params, x_t, t, labels, train, dropout_key):
        rngs = {} if dropout_key is None else {"dropout": dropout_key}
        return module.apply({"params": params}, x_t, t, labels, train=train, rngs=rngs)

    return apply_fn


def drop_labels(
    key: jax.Array, labels: jnp.ndarray, num_classes: int, label_dropout: float
) -> jnp.ndarray:
    """Replaces each label by the null label ``num_classes`` with probability ``label_dropout``.

    Trains the conditional and the unconditional model at once, as classifier-free guidance
    needs (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", Algorithm 1).

    Args:
      key: a JAX PRNG key.
      labels: int ``[B]`` class labels in ``[0, num_classes)``.
      num_classes: the number of classes; ``num_classes`` itself is the null label.
      label_dropout: the replacement probability p in [0, 1).

    Returns:
      int ``[B]``, the labels with a Bernoulli(p) subset set to ``num_classes``.
    """
    drop = jax.random.bernoulli(key, label_dropout, labels.shape)
    return jnp.where(drop, jnp.asarray(num_classes, labels.dtype), labels)


def check_batch(batch: Batch, num_classes: int | None) -> None:
    """Trace-time validation of a batch dict (raised before anything compiles)."""
    if "image" not in batch:
        raise ValueError(
            f"The batch needs an 'image' entry [B, H, W, C]; got keys {sorted(batch)}."
        )
    image = batch["image"]
    if image.ndim != 4 or not jnp.issubdtype(image.dtype, jnp.floating):
        raise TypeError(
            f"batch['image'] must be a float array [B, H, W, C] scaled to [-1, 1]; got dtype "
            f"{image.dtype} and shape {image.shape}."
        )
    if num_classes is None:
        return
    if "label" not in batch:
        raise ValueError(
            f"num_classes={num_classes} (class-conditional training) needs a 'label' entry "
            f"int32 [B] in the batch; got keys {sorted(batch)}."
        )
    label = batch["label"]
    if label.shape != image.shape[:1] or not jnp.issubdtype(label.dtype, jnp.integer):
        raise TypeError(
            f"batch['label'] must be an integer array of shape [B] = [{image.shape[0]}]; got "
            f"dtype {label.dtype} and shape {label.shape}."
        )


def make_denoising_loss(
    apply_fn: ApplyFn,
    process: Any,
    *,
    prediction_type: str = "eps",
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    offset_noise: float = 0.0,
    time_sampler: TimeSampler | None = None,
    num_classes: int | None = None,
    label_dropout: float = 0.0,
) -> LossFn:
    """The denoising loss of :func:`diffjax.losses.denoising_loss` as a train-step ``loss_fn``.

    Each call splits ``key`` into the loss key (times and noise), the dropout key and the
    label-dropout key; with ``train`` it applies dropout and drops labels to the null label for
    classifier-free guidance; without, neither (the held-out loss).

    Args:
      apply_fn: ``apply_fn(params, x_in, t_in, labels, train, dropout_key) -> prediction``;
        see :func:`flax_apply_fn`.
      process: the schedule or continuous process.
      prediction_type: what the network predicts.
      weighting: one of :data:`diffjax.losses.LOSS_WEIGHTINGS`.
      min_snr_gamma: gamma of the Min-SNR weighting.
      offset_noise: per-channel offset-noise scale (0 disables it).
      time_sampler: training times for a continuous process (default uniform).
      num_classes: number of classes of a class-conditional model; ``None`` trains an
        unconditional model and ignores any ``'label'`` in the batch.
      label_dropout: probability of replacing a label by the null label ``num_classes``.

    Returns:
      ``loss_fn(params, frozen, batch, key, train) -> (loss, {'mse': ...})``. ``batch`` holds
      ``'image'`` float ``[B, H, W, C]`` in [-1, 1], with ``num_classes`` ``'label'``, and
      optionally ``'noise'`` ``[B, H, W, C]``, the eps paired with each image (reflow).

    Raises:
      ValueError: a bad option, before anything is traced.
    """
    check_process(process)
    check_prediction_supported(prediction_type, process)
    check_weighting(weighting)
    if weighting == "min_snr":
        check_min_snr_gamma(min_snr_gamma)
    if not offset_noise >= 0:
        raise ValueError(f"offset_noise must be >= 0, got {offset_noise}.")
    if time_sampler is not None and is_discrete(process):
        raise ValueError("time_sampler is for continuous processes; a schedule draws U{0..T-1}.")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be None or >= 1, got {num_classes}.")
    if not 0.0 <= label_dropout < 1.0:
        raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout}.")
    if label_dropout > 0 and num_classes is None:
        raise ValueError(
            f"label_dropout={label_dropout} needs num_classes (the null label's index); got None."
        )

    def loss_fn(params, frozen, batch, key, train):
        del frozen  # the denoising loss reads no frozen network
        check_batch(batch, num_classes)
        loss_key, dropout_key, label_key = jax.random.split(key, 3)
        labels = None
        if num_classes is not None:
            labels = batch["label"]
            if train and label_dropout > 0:
                labels = drop_labels(label_key, labels, num_classes, label_dropout)

        def model_fn(x_in, t_in):
            return apply_fn(params, x_in, t_in, labels, train, dropout_key if train else None)

        loss, aux = denoising_loss(
            model_fn, process, batch["image"], loss_key, prediction_type=prediction_type,
            weighting=weighting, min_snr_gamma=min_snr_gamma, offset_noise=offset_noise,
            time_sampler=time_sampler, noise=batch.get("noise"),
        )  # fmt: skip
        return loss, dict(mse=jnp.mean(aux["mse"]))

    return loss_fn
