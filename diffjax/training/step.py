"""The training step: one pure function, data-parallel through ``jax.jit`` shardings.

:func:`make_train_step` closes over the network's ``apply_fn``, the schedule, the optimizer and
the loss options and returns ``train_step(state, batch, key) -> (state, metrics)``, a pure
function with no device, mesh or collective in it. :func:`jit_train_step` compiles it with the
state replicated and the batch split along the mesh axis ``'data'``; the compiler inserts the
gradient all-reduce, so the same function runs on one device, eight, or several hosts.

The network is any ``apply_fn(params, x_t, t, labels, train, dropout_key) -> prediction``;
:func:`flax_apply_fn` builds one from a Flax Linen module such as :class:`diffjax.models.UNet`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from diffjax.diffusion import check_prediction_type
from diffjax.losses import check_min_snr_gamma, check_weighting, denoising_loss
from diffjax.schedules import DiffusionSchedule
from diffjax.training.sharding import batch_sharding, check_batch_divisible, replicated_sharding
from diffjax.training.train_state import (
    TrainState,
    ema_decay_at,
    learning_rate_from_opt_state,
    update_ema,
)

__all__ = [
    "ApplyFn",
    "TrainStepFn",
    "drop_labels",
    "flax_apply_fn",
    "jit_train_step",
    "make_train_step",
]

Params = Any
Batch = Mapping[str, jnp.ndarray]
Metrics = dict[str, jnp.ndarray]

ApplyFn = Callable[
    [Params, jnp.ndarray, jnp.ndarray, "jnp.ndarray | None", bool, jax.Array], jnp.ndarray
]
"""``apply_fn(params, x_t [B, H, W, C], t int32 [B], labels int32 [B] | None, train,
dropout_key) -> prediction [B, H, W, C]``."""

TrainStepFn = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]
"""``train_step(state, batch, key) -> (new_state, metrics)``."""


def flax_apply_fn(module: Any) -> ApplyFn:
    """Adapts a Flax Linen module called as ``module(x, t, labels, train=...)`` to an ApplyFn.

    Args:
      module: e.g. :class:`diffjax.models.UNet`; dropout draws from the ``'dropout'`` stream.

    Returns:
      ``apply_fn(params, x_t, t, labels, train, dropout_key) -> prediction``; ``dropout_key``
      may be ``None`` when ``train`` is False (evaluation, sampling).
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


def _check_batch(batch: Batch, num_classes: int | None) -> None:
    """Trace-time validation of the batch dict (raised before anything compiles)."""
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


def make_train_step(
    apply_fn: ApplyFn,
    schedule: DiffusionSchedule,
    optimizer: optax.GradientTransformation,
    *,
    prediction_type: str = "eps",
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    offset_noise: float = 0.0,
    ema_decay: float = 0.9999,
    num_classes: int | None = None,
    label_dropout: float = 0.0,
    skip_nonfinite: bool = False,
) -> TrainStepFn:
    """Builds the pure training step for denoising diffusion (Ho et al. 2020, Algorithm 1).

    Each call: derives this step's key as ``fold_in(key, state.step)`` (a resumed run draws
    the same noise), drops labels to the null label for classifier-free guidance, computes
    :func:`diffjax.losses.denoising_loss` and its gradient, applies the optimizer, and updates
    the EMA with :func:`diffjax.training.train_state.update_ema`.

    Args:
      apply_fn: ``apply_fn(params, x_t, t, labels, train, dropout_key) -> prediction``; see
        :func:`flax_apply_fn`.
      schedule: the discrete diffusion schedule.
      optimizer: the optax transformation the state's ``opt_state`` belongs to.
      prediction_type: ``'eps' | 'x0' | 'v'``.
      weighting: ``'uniform' | 'min_snr'``.
      min_snr_gamma: gamma of the Min-SNR weighting.
      offset_noise: per-channel offset-noise scale (0 disables it).
      ema_decay: asymptotic EMA decay in [0, 1] (warm-up as in ``ema_decay_at``).
      num_classes: number of classes for a class-conditional model; ``None`` trains an
        unconditional model and ignores any ``'label'`` in the batch.
      label_dropout: probability of replacing a label by the null label ``num_classes``.
      skip_nonfinite: if the loss or the gradient norm is NaN/Inf, keep params, EMA and
        optimizer state as they were (the step counter still advances, so the next step draws
        fresh noise and stays in line with the data).

    Returns:
      ``train_step(state, batch, key) -> (new_state, metrics)``. ``batch`` is a dict with
      ``'image'`` float ``[B, H, W, C]`` in [-1, 1] and, when ``num_classes`` is set,
      ``'label'`` int32 ``[B]``; ``key`` is the run's base key (the same every step).
      ``metrics`` holds float32 scalars ``'loss'`` (weighted), ``'mse'`` (unweighted),
      ``'grad_norm'`` (before clipping), ``'param_norm'``, ``'ema_decay'``, bool
      ``'is_finite'``, and ``'learning_rate'`` when the optimizer records it.
    """
    check_prediction_type(prediction_type)
    check_weighting(weighting)
    if weighting == "min_snr":
        check_min_snr_gamma(min_snr_gamma)
    if not offset_noise >= 0:
        raise ValueError(f"offset_noise must be >= 0, got {offset_noise}.")
    if not 0.0 <= ema_decay <= 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1], got {ema_decay}.")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be None or >= 1, got {num_classes}.")
    if not 0.0 <= label_dropout < 1.0:
        raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout}.")
    if label_dropout > 0 and num_classes is None:
        raise ValueError(
            f"label_dropout={label_dropout} needs num_classes (the null label's index); got None."
        )

    def train_step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, Metrics]:
        _check_batch(batch, num_classes)
        step_key = jax.random.fold_in(key, state.step)
        loss_key, dropout_key, label_key = jax.random.split(step_key, 3)
        labels = None
        if num_classes is not None:
            labels = batch["label"]
            if label_dropout > 0:
                labels = drop_labels(label_key, labels, num_classes, label_dropout)

        def loss_fn(params):
            def model_fn(x_t, t):
                return apply_fn(params, x_t, t, labels, True, dropout_key)

            return denoising_loss(
                model_fn,
                schedule,
                batch["image"],
                loss_key,
                prediction_type=prediction_type,
                weighting=weighting,
                min_snr_gamma=min_snr_gamma,
                offset_noise=offset_noise,
            )

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = update_ema(state.ema_params, params, state.step, ema_decay)
        is_finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if skip_nonfinite:
            params, ema_params, opt_state = jax.tree.map(
                lambda new, old: jnp.where(is_finite, new, old),
                (params, ema_params, opt_state),
                (state.params, state.ema_params, state.opt_state),
            )
        new_state = TrainState(
            step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state
        )
        metrics = dict(
            loss=loss,
            mse=jnp.mean(aux["mse"]),
            grad_norm=grad_norm,
            param_norm=optax.tree.norm(params),
            ema_decay=ema_decay_at(state.step, ema_decay),
            is_finite=is_finite,
        )
        learning_rate = learning_rate_from_opt_state(opt_state)
        if learning_rate is not None:
            metrics["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
        return new_state, metrics

    return train_step


def jit_train_step(
    train_step: TrainStepFn, mesh: Mesh, state_shardings: Any = None
) -> TrainStepFn:
    """Compiles ``train_step`` for data parallelism over ``mesh`` (no pmap, no pmean).

    ``jax.jit`` with the state replicated (``P()``), the batch split along ``'data'`` and the
    key replicated; metrics come back replicated, so every process can read them. The incoming
    state is donated (``donate_argnums=0``): its buffers are reused for the new state, so the
    caller must not touch the old state after the call. A batch whose size does not split over
    the devices raises ``ValueError`` naming both numbers, before anything compiles.

    Args:
      train_step: from :func:`make_train_step`.
      mesh: the data-parallel mesh (:func:`diffjax.training.sharding.make_mesh`).
      state_shardings: a sharding (or a ``TrainState`` of shardings) for the state; default
        replicated over ``mesh``.

    Returns:
      ``sharded_train_step(state, batch, key) -> (state, metrics)``. ``batch`` may be host
      NumPy arrays on a single process; with several processes pass the global arrays of
      :func:`diffjax.training.sharding.host_batch_to_global`. Its attribute ``jitted`` is the
      underlying ``jax.jit`` function (for ``.lower(...)``, cost analysis and cache checks).
    """
    replicated = replicated_sharding(mesh)
    if state_shardings is None:
        state_shardings = replicated
    jitted = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding(mesh), replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )

    def sharded_train_step(
        state: TrainState, batch: Batch, key: jax.Array
    ) -> tuple[TrainState, Metrics]:
        # jit checks argument shardings before tracing, with an error that names neither the
        # batch size nor the device count: check here first.
        if "image" in batch:
            check_batch_divisible(batch["image"].shape[0], mesh)
        return jitted(state, batch, key)

    sharded_train_step.jitted = jitted
    return sharded_train_step
