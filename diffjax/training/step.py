"""The generic training step: gradients, optax, EMA, non-finite skip and metrics, for any loss.

:func:`make_train_step` takes a ``loss_fn(params, frozen, batch, key, train) -> (loss,
metrics)`` (:mod:`diffjax.training.objectives`) and returns
``train_step(state, batch, key, frozen) -> (state, metrics)``, a pure function with no device,
mesh or collective in it. :func:`jit_train_step` compiles it with the state and the frozen pytree
replicated and the batch split along the mesh axis ``'data'``; the compiler inserts the gradient
all-reduce, so the same function runs on one device, eight, or several hosts. ``frozen`` (a
teacher, an autoencoder, a frozen base model) is an argument of the compiled step, so its arrays
are inputs of the HLO rather than constants baked into it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from diffjax.sharding import batch_sharding, check_batch_divisible, replicated_sharding
from diffjax.training.objectives import LossFn
from diffjax.training.train_state import (
    TrainState,
    ema_decay_at,
    float32_copy,
    learning_rate_from_opt_state,
    update_ema,
)

__all__ = ["TrainStepFn", "jit_train_step", "make_train_step"]

Batch = Mapping[str, jnp.ndarray]
Metrics = dict[str, jnp.ndarray]

TrainStepFn = Callable[[TrainState, Batch, jax.Array, Any], tuple[TrainState, Metrics]]
"""``train_step(state, batch, key, frozen) -> (new_state, metrics)``."""


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    ema_decay: float = 0.9999,
    skip_nonfinite: bool = False,
) -> TrainStepFn:
    """Builds the pure training step around a loss function.

    Each call: derives this step's key as ``fold_in(key, state.step)`` (a resumed run draws
    the same noise), computes ``loss_fn(params, frozen, batch, step_key, train=True)`` and its
    gradient with respect to ``params`` only, applies the optimizer to a float32 copy of the
    parameters (rounded back to their dtype), and updates the float32 EMA with
    :func:`diffjax.training.train_state.update_ema`. For float32 parameters the casts are
    no-ops.

    Args:
      loss_fn: ``loss_fn(params, frozen, batch, key, train) -> (loss, metrics)``, e.g.
        :func:`diffjax.training.objectives.make_denoising_loss`.
      optimizer: the optax transformation the state's ``opt_state`` belongs to.
      ema_decay: asymptotic EMA decay in [0, 1] (warm-up as in ``ema_decay_at``).
      skip_nonfinite: if the loss or the gradient norm is NaN/Inf, keep params, EMA and
        optimizer state as they were (the step counter still advances, so the next step draws
        fresh noise and stays in line with the data).

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

        def objective(params):
            return loss_fn(params, frozen, batch, step_key, True)

        (loss, loss_metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        grads = float32_copy(grads)
        grad_norm = optax.tree.norm(grads)
        # The optimizer updates a float32 copy; bfloat16 parameters are rounded once at the end.
        master = float32_copy(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, master)
        params = jax.tree.map(
            lambda new, old: new.astype(old.dtype), optax.apply_updates(master, updates),
            state.params,
        )  # fmt: skip
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
    train_step: TrainStepFn, mesh: Mesh, state_shardings: Any = None
) -> Callable[..., tuple[TrainState, Metrics]]:
    """Compiles ``train_step`` for data parallelism over ``mesh`` (no pmap, no pmean).

    ``jax.jit`` with the state and ``frozen`` replicated (``P()``), the batch split along
    ``'data'`` and the key replicated; metrics come back replicated, so every process can read
    them. The incoming state is donated (``donate_argnums=0``): its buffers are reused for the
    new state, so the caller must not touch the old state after the call. A batch whose size
    does not split over the devices raises ``ValueError`` naming both numbers, before anything
    compiles.

    Args:
      train_step: from :func:`make_train_step`.
      mesh: the data-parallel mesh (:func:`diffjax.sharding.make_mesh`).
      state_shardings: a sharding (or a ``TrainState`` of shardings) for the state; default
        replicated over ``mesh``.

    Returns:
      ``sharded_train_step(state, batch, key, frozen={}) -> (state, metrics)``. ``batch`` may
      be host NumPy arrays on a single process; with several processes pass the global arrays
      of :func:`diffjax.sharding.host_batch_to_global`. Its attribute ``jitted`` is
      the underlying ``jax.jit`` function (for ``.lower(...)``, cost analysis and cache checks).
    """
    replicated = replicated_sharding(mesh)
    if state_shardings is None:
        state_shardings = replicated
    jitted = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding(mesh), replicated, replicated),
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
