"""The training machinery around the pure math core: state, sharding, the train step.

Importing this package loads JAX, Flax and optax only; data input (tensorflow-datasets, grain)
and checkpointing (orbax) live in submodules that import those libraries themselves.
"""

from diffjax.sharding import (
    DATA_AXIS,
    batch_sharding,
    check_batch_divisible,
    host_batch_to_global,
    make_mesh,
    process_batch_size,
    replicated_sharding,
)
from diffjax.training.objectives import (
    ApplyFn,
    LossFn,
    drop_labels,
    flax_apply_fn,
    make_denoising_loss,
)
from diffjax.training.step import jit_train_step, make_train_step
from diffjax.training.train_state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    ema_decay_at,
    learning_rate_from_opt_state,
    learning_rate_schedule,
    make_optimizer,
    train_state_shardings,
    update_ema,
)

__all__ = [
    "DATA_AXIS",
    "ApplyFn",
    "LossFn",
    "TrainState",
    "abstract_train_state",
    "batch_sharding",
    "check_batch_divisible",
    "create_train_state",
    "drop_labels",
    "ema_decay_at",
    "flax_apply_fn",
    "host_batch_to_global",
    "jit_train_step",
    "learning_rate_from_opt_state",
    "learning_rate_schedule",
    "make_denoising_loss",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "process_batch_size",
    "replicated_sharding",
    "train_state_shardings",
    "update_ema",
]
