"""A training run loaded back from its workdir, parameters only, for sampling and evaluation.

The run's config (``config.json``, upgraded from older layouts) rebuilds its programs; the
newest good checkpoint is read without its optimizer state (:meth:`CheckpointManager.restore`
with ``partial``), onto any mesh, each array placed by the run's sharding rules.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
from jax.sharding import Mesh

from diffjax.training.config import upgrade_config
from diffjax.training.console import log
from diffjax.training.programs import (
    Programs,
    build_programs,
    mesh_from_config,
    program_spec,
    validate_config,
)
from diffjax.training.train_state import TrainState
from diffjax.training.workdir import (
    CHECKPOINT_DIR,
    RUN_RECORD_FILE,
    WorkdirError,
    cond_spec_of,
    load_run_record,
    resolve_run_dir,
)

__all__ = ["TrainedRun", "load_trained_run", "place"]


class TrainedRun(NamedTuple):
    """A finished or running training run, loaded for sampling (see :func:`load_trained_run`).

    Attributes:
      config: the run's validated config as a plain dict.
      dataset: the description of its training data (``image_shape``, ``num_classes``,
        ``cond_spec``, ...).
      model: the network.
      process: the noise process (schedule or continuous process) it was trained with.
      state: the restored :class:`~diffjax.training.train_state.TrainState`: ``step``,
        ``params`` and ``ema_params`` (``opt_state`` is None: it is not read).
      step: the step of the restored checkpoint.
      programs: the run's :class:`~diffjax.training.programs.Programs` (codec, latent shape,
        sharding).
      frozen: the run's frozen pytrees as ``config.json`` records them (``{}`` for none).
      mesh: the devices the parameters are placed on.
    """

    config: dict[str, Any]
    dataset: dict[str, Any]
    model: nn.Module
    process: Any
    state: TrainState
    step: int
    programs: Programs
    frozen: dict[str, Any]
    mesh: Mesh


def load_trained_run(workdir: str | os.PathLike, mesh: Mesh | None = None) -> TrainedRun:
    """Loads the parameters of the newest good checkpoint of a run, read-only (safe while it
    is training).

    Args:
      workdir: the run's folder, as given to :func:`~diffjax.training.loop.train_and_evaluate`
        (or a folder of chained runs: :func:`~diffjax.training.workdir.resolve_run_dir`).
      mesh: where to place the parameters (by the run's sharding rules); default the run's
        mesh over every device.

    Returns:
      The :class:`TrainedRun`.

    Raises:
      WorkdirError: the folder holds no run record or no checkpoint.
      NoUsableCheckpointError: every checkpoint is damaged.
      ConfigError: its config names something that is not registered (its ``imports`` cannot
        be imported).
    """
    from diffjax.training.checkpoint import CheckpointManager

    workdir = resolve_run_dir(os.path.abspath(os.fspath(workdir)))
    record = load_run_record(workdir)
    if record is None:
        raise WorkdirError(
            f"{workdir} holds no diffjax run (no {RUN_RECORD_FILE}); pass the --workdir of a "
            f"training run."
        )
    values = validate_config(upgrade_config(record["config"]))
    dataset = dict(record["dataset"], cond_spec=cond_spec_of(record["dataset"]))
    mesh = mesh_from_config(values) if mesh is None else mesh
    programs = build_programs(program_spec(values, dataset), mesh)
    abstract = programs.abstract_state
    wanted = {"step": abstract.step, "params": abstract.params, "ema_params": abstract.ema_params}
    manager = CheckpointManager(os.path.join(workdir, CHECKPOINT_DIR), read_only=True, report=log)
    try:
        restored = manager.restore_latest(wanted, partial=True)
    finally:
        manager.close()
    if restored is None:
        raise WorkdirError(f"{workdir} holds no checkpoint yet; train first.")
    parts = restored.state
    state = TrainState(
        step=parts["step"], params=parts["params"], ema_params=parts["ema_params"],
        opt_state=None, extra={},
    )  # fmt: skip
    return TrainedRun(
        values, dataset, programs.model, programs.process, state, restored.step, programs,
        record.get("frozen", {}), mesh,
    )  # fmt: skip


def place(tree: Any, abstract: Any) -> Any:
    """``tree``'s arrays placed with the shardings of ``abstract`` (its ShapeDtypeStructs)."""
    return jax.tree.map(lambda leaf, target: jax.device_put(leaf, target.sharding), tree, abstract)
