"""A training run loaded back from its workdir, for sampling (CLI, notebooks, tests)."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import flax.linen as nn
from jax.sharding import Mesh

from diffjax.sharding import make_mesh
from diffjax.training.config_validation import upgrade_config, validate_config
from diffjax.training.console import log
from diffjax.training.programs import build_programs, program_spec
from diffjax.training.train_state import TrainState
from diffjax.training.workdir import CHECKPOINT_DIR, RUN_RECORD_FILE, WorkdirError, load_run_record

__all__ = ["TrainedRun", "load_trained_run"]


class TrainedRun(NamedTuple):
    """A finished or running training run, loaded for sampling (see :func:`load_trained_run`).

    Attributes:
      config: the run's validated config as a plain dict.
      dataset: the description of its training data (``image_shape``, ``num_classes``, ...).
      model: the network.
      process: the noise process (schedule or continuous process) it was trained with.
      state: the restored train state (params, EMA params, optimizer state).
      step: the step of the restored checkpoint.
    """

    config: dict[str, Any]
    dataset: dict[str, Any]
    model: nn.Module
    process: Any
    state: TrainState
    step: int


def load_trained_run(workdir: str | os.PathLike, mesh: Mesh | None = None) -> TrainedRun:
    """Loads the newest good checkpoint of a run, read-only (safe while it is training).

    Args:
      workdir: the run's folder, as given to :func:`~diffjax.training.loop.train_and_evaluate`.
      mesh: where to place the state; default every device (replicated).

    Returns:
      The :class:`TrainedRun`.

    Raises:
      WorkdirError: the folder holds no run record or no checkpoint.
      NoUsableCheckpointError: every checkpoint is damaged.
    """
    from diffjax.training.checkpoint import CheckpointManager

    workdir = os.path.abspath(os.fspath(workdir))
    record = load_run_record(workdir)
    if record is None:
        raise WorkdirError(
            f"{workdir} holds no diffjax run (no {RUN_RECORD_FILE}); pass the --workdir of a "
            f"training run."
        )
    values = validate_config(upgrade_config(record["config"]))
    mesh = make_mesh() if mesh is None else mesh
    programs = build_programs(program_spec(values, record["dataset"]["image_shape"]), mesh)
    manager = CheckpointManager(os.path.join(workdir, CHECKPOINT_DIR), read_only=True, report=log)
    try:
        restored = manager.restore_latest(programs.abstract_state)
    finally:
        manager.close()
    if restored is None:
        raise WorkdirError(f"{workdir} holds no checkpoint yet; train first.")
    return TrainedRun(
        values, record["dataset"], programs.model, programs.process, restored.state,
        restored.step,
    )  # fmt: skip
