"""The generic training step: gradients, optax, EMA, non-finite skip and metrics, for any loss.

:func:`make_train_step` takes a ``loss_fn(params, frozen, batch, key, train) -> (loss,
metrics)`` (:mod:`diffjax.training.objectives`) and returns
``train_step(state, batch, key, frozen) -> (state, metrics)``, a pure function with no device,
mesh or collective in it. Every objective runs through this one step: parameter groups (a
trainable mask: frozen parameters get no gradient, no optimizer state and stay bit-identical;
per-group optimizers inside the optax transformation) and state outside the gradient (the
loss's sixth argument ``extra``) are options of it, not copies of it.

:func:`jit_train_step` compiles it with the state and the frozen pytree placed by the mesh's
sharding rules (replicated by default) and the batch split over the batch axes; the compiler
inserts the gradient all-reduce, so the same function runs on one device, eight, or several
hosts. ``frozen`` (a teacher, an autoencoder, a frozen base model) is an argument of the
compiled step, so its arrays are inputs of the HLO rather than constants baked into it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from diffjax.sharding import batch_sharding, check_batch_divisible, replicated_sharding
from diffjax.training.train_state import (
    TrainState,
    ema_decay_at,
    float32_copy,
    learning_rate_from_opt_state,
    merge_trainable,
    trainable_part,
    update_ema,
)

__all__ = ["TrainStepFn", "jit_train_step", "make_train_step"]

Batch = Mapping[str, jnp.ndarray]
Metrics = dict[str, jnp.ndarray]

TrainStepFn = Callable[[TrainState, Batch, jax.Array, Any], tuple[TrainState, Metrics]]
"""``train_step(state, batch, key, frozen) -> (new_state, metrics)``."""


def make_train_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    *,
    ema_decay: float = 0.9999,
    skip_nonfinite: bool = False,
    trainable: Any = None,
    stateful: bool = False,
    assign: Callable[[Any, Any], Any] | None = None,
) -> TrainStepFn:
    """Builds the pure training step around a loss function.

    Each call: derives this step's key as ``fold_in(key, state.step)`` (a resumed run draws
    the same noise), computes ``loss_fn(params, frozen, batch, step_key, train=True)`` and its
    gradient with respect to the trainable parameters only, applies the optimizer to a float32
    copy of them (rounded back to their dtype), and updates their float32 EMA with
    :func:`diffjax.training.train_state.update_ema`. For float32 parameters the casts are
    no-ops. Frozen parameters and their EMA are returned as they came, bit for bit.

    Args:
      loss_fn: ``loss_fn(params, frozen, batch, key, train) -> (loss, metrics)``, e.g.
        :func:`diffjax.training.objectives.make_denoising_loss`; with ``stateful``,
        ``loss_fn(params, frozen, batch, key, train, extra) -> (loss, (metrics, new_extra))``.
      optimizer: the optax transformation the state's ``opt_state`` belongs to (of the
        trainable parameters: :func:`~diffjax.training.train_state.trainable_part`).
      ema_decay: asymptotic EMA decay in [0, 1] (warm-up as in ``ema_decay_at``).
      skip_nonfinite: if the loss or the gradient norm is NaN/Inf, keep params, EMA, optimizer
        state and extra state as they were (the step counter still advances, so the next step
        draws fresh noise and stays in line with the data).
      trainable: a pytree of Python bools with the params' structure (False: frozen), or None
        (everything trained).
      stateful: the loss reads and returns the state's ``extra`` (state outside the gradient).
      assign: ``assign(params, extra) -> params``, applied after the update to the parameters
        and to their EMA with the new ``extra`` (parameters the state outside the gradient
        sets, such as an EMA codebook); None for none.

    Returns:
      ``train_step(state, batch, key, frozen) -> (new_state, metrics)``; ``key`` is the run's
      base key (the same every step), ``frozen`` any pytree the loss reads (``{}`` for none).
      ``metrics`` holds float32 scalars ``'loss'``, ``'grad_norm'`` (before clipping),
      ``'param_norm'``, ``'ema_decay'``, bool ``'is_finite'``, ``'learning_rate'`` when the
      optimizer records it, and the loss's own metrics (e.g. ``'mse'``).
    """
    if not 0.0 <= ema_decay <= 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1], got {ema_decay}.")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {loss_fn!r}.")

    def train_step(
        state: TrainState, batch: Batch, key: jax.Array, frozen: Any
    ) -> tuple[TrainState, Metrics]:
        step_key = jax.random.fold_in(key, state.step)

        def objective(trainable_params):
            params = merge_trainable(state.params, trainable_params)
            if stateful:
                loss, (loss_metrics, extra) = loss_fn(
                    params, frozen, batch, step_key, True, state.extra
                )
                return loss, (loss_metrics, extra)
            loss, loss_metrics = loss_fn(params, frozen, batch, step_key, True)
            return loss, (loss_metrics, state.extra)

        current = trainable_part(state.params, trainable)
        (loss, (loss_metrics, extra)), grads = jax.value_and_grad(objective, has_aux=True)(current)
        grads = float32_copy(grads)
        grad_norm = optax.tree.norm(grads)
        # The optimizer updates a float32 copy; bfloat16 parameters are rounded once at the end.
        master = float32_copy(current)
        updates, opt_state = optimizer.update(grads, state.opt_state, master)
        updated = jax.tree.map(
            lambda new, old: new.astype(old.dtype), optax.apply_updates(master, updates), current
        )
        params = merge_trainable(state.params, updated)
        ema_params = merge_trainable(
            state.ema_params,
            update_ema(trainable_part(state.ema_params, trainable), updated, state.step, ema_decay),
        )
        if assign is not None:
            params, ema_params = assign(params, extra), assign(ema_params, extra)
        is_finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if skip_nonfinite:
            params, ema_params, opt_state, extra = jax.tree.map(
                lambda new, old: jnp.where(is_finite, new, old),
                (params, ema_params, opt_state, extra),
                (state.params, state.ema_params, state.opt_state, state.extra),
            )
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            ema_params=ema_params,
            opt_state=opt_state,
            extra=extra,
        )
        metrics = dict(
            loss=loss,
            grad_norm=grad_norm,
            param_norm=optax.tree.norm(params),
            ema_decay=ema_decay_at(state.step, ema_decay),
            is_finite=is_finite,
            **loss_metrics,
        )
        learning_rate = learning_rate_from_opt_state(opt_state)
        if learning_rate is not None:
            metrics["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
        return new_state, metrics

    return train_step


def jit_train_step(
    train_step: TrainStepFn,
    mesh: Mesh,
    state_shardings: Any = None,
    frozen_shardings: Any = None,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """Compiles ``train_step`` for ``mesh`` with ``jax.jit`` shardings (no pmap, no pmean).

    The state and ``frozen`` are placed as their shardings say (default: replicated, ``P()``),
    the batch is split over the batch axes and the key replicated; metrics come back
    replicated, so every process can read them. The incoming state is donated
    (``donate_argnums=0``): its buffers are reused for the new state, so the caller must not
    touch the old state after the call. A batch whose size does not split over the devices
    raises ``ValueError`` naming both numbers, before anything compiles.

    Args:
      train_step: from :func:`make_train_step`.
      mesh: the mesh (:func:`diffjax.sharding.make_mesh`).
      state_shardings: a sharding (or a ``TrainState`` of shardings, e.g. from
        :func:`diffjax.sharding.state_shardings`) for the state; default replicated.
      frozen_shardings: the same for ``frozen``; default replicated.

    Returns:
      ``sharded_train_step(state, batch, key, frozen={}) -> (state, metrics)``. ``batch`` may
      be host NumPy arrays on a single process; with several processes pass the global arrays
      of :func:`diffjax.sharding.host_batch_to_global`. Its attribute ``jitted`` is the
      underlying ``jax.jit`` function (for ``.lower(...)``, cost analysis and cache checks).
    """
    replicated = replicated_sharding(mesh)
    if state_shardings is None:
        state_shardings = replicated
    if frozen_shardings is None:
        frozen_shardings = replicated
    jitted = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding(mesh), replicated, frozen_shardings),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )

    def sharded_train_step(
        state: TrainState, batch: Batch, key: jax.Array, frozen: Any = None
    ) -> tuple[TrainState, Metrics]:
        # jit checks argument shardings before tracing, with an error that names neither the
        # batch size nor the device count: check here first.
        if "image" in batch:
            check_batch_divisible(batch["image"].shape[0], mesh)
        return jitted(state, batch, key, {} if frozen is None else frozen)

    sharded_train_step.jitted = jitted
    return sharded_train_step
