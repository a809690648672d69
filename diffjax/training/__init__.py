"""The training program around the pure math core: config, objectives, state, step, loop.

Importing this package loads JAX, Flax, optax and ml_collections only; data input
(tensorflow-datasets, grain) and checkpointing (orbax) live in modules that import those
libraries themselves (:mod:`diffjax.data.pipeline`, :mod:`diffjax.training.checkpoint`).
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
from diffjax.training.config import base_config, config_schema, upgrade_config
from diffjax.training.objectives import (
    FROZEN_GROUP,
    OBJECTIVE_NAMES,
    OBJECTIVES,
    LossFn,
    Objective,
    ObjectiveContext,
    ObjectiveEntry,
    default_objective_config,
    make_denoising_loss,
    register_objective,
)
from diffjax.training.programs import validate_config
from diffjax.training.step import jit_train_step, make_train_step
from diffjax.training.train_state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    ema_decay_at,
    group_optimizer,
    learning_rate_from_opt_state,
    learning_rate_schedule,
    make_optimizer,
    merge_trainable,
    trainable_part,
    update_ema,
)

__all__ = [
    "DATA_AXIS",
    "FROZEN_GROUP",
    "OBJECTIVES",
    "OBJECTIVE_NAMES",
    "LossFn",
    "Objective",
    "ObjectiveContext",
    "ObjectiveEntry",
    "TrainState",
    "abstract_train_state",
    "base_config",
    "batch_sharding",
    "check_batch_divisible",
    "config_schema",
    "create_train_state",
    "default_objective_config",
    "ema_decay_at",
    "group_optimizer",
    "host_batch_to_global",
    "jit_train_step",
    "learning_rate_from_opt_state",
    "learning_rate_schedule",
    "make_denoising_loss",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "merge_trainable",
    "process_batch_size",
    "register_objective",
    "replicated_sharding",
    "trainable_part",
    "update_ema",
    "upgrade_config",
    "validate_config",
]
