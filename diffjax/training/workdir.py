"""A training run's folder: its layout, the checks before a run writes to it, its run record.

Workdir layout::

    workdir/config.json          the config, dataset description and frozen sources of the run
    workdir/checkpoints/<step>/  orbax checkpoints (the newest ``keep_checkpoints``)
    workdir/metrics.jsonl        one JSON record per logged step
    workdir/events.out.tfevents.*  TensorBoard
    workdir/samples/step_<step>.png  EMA sample grids (same seed every time)
    workdir/loss.png             the loss curve, written at the end
    workdir/eval/                evaluation results and cached reference statistics

A folder of chained runs (the rounds of ``python -m diffjax.distill``) holds no run itself but
``run_pointer.json``, ``{"workdir": "<sub-folder>"}``, naming the run that stands for it (the
newest finished student): :func:`resolve_run_dir` follows it, so such a folder samples and
evaluates like a run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import jax

from diffjax.errors import ConfigError
from diffjax.images import atomic_write
from diffjax.version import __version__

__all__ = [
    "CHECKPOINT_DIR",
    "EVAL_DIR",
    "IncompatibleResumeError",
    "LOSS_PLOT_FILE",
    "RUN_POINTER_FILE",
    "RUN_RECORD_FILE",
    "SAMPLES_DIR",
    "WorkdirError",
    "check_free_space",
    "check_workdir",
    "cond_spec_of",
    "load_run_record",
    "resolve_run_dir",
    "write_run_pointer",
    "write_run_record",
]

RUN_RECORD_FILE = "config.json"
RUN_POINTER_FILE = "run_pointer.json"
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
EVAL_DIR = "eval"
LOSS_PLOT_FILE = "loss.png"
# Headroom demanded on the workdir's disk beyond one checkpoint's size.
_DISK_MARGIN_BYTES = 32 * 2**20


class WorkdirError(OSError):
    """The workdir cannot be created, written, or has too little free space."""


class IncompatibleResumeError(ConfigError):
    """The workdir holds a run whose config cannot continue under the new one."""


def check_workdir(workdir: str) -> None:
    """Creates ``workdir`` and proves it writable with a probe file (removed again).

    Args:
      workdir: the run's folder.

    Raises:
      WorkdirError: it cannot be created or written.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-probe-", dir=workdir)
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise WorkdirError(
            f"The workdir {workdir} cannot be written ({error.strerror or error}); choose "
            f"another --workdir or fix its permissions."
        ) from error


def check_free_space(workdir: str, checkpoint_bytes: int) -> None:
    """Demands room on the workdir's disk for one checkpoint plus a fixed headroom.

    Args:
      workdir: the run's folder (existing).
      checkpoint_bytes: the size of the train state, in bytes.

    Raises:
      WorkdirError: the disk has less free space than that.
    """
    free = shutil.disk_usage(workdir).free
    needed = checkpoint_bytes + _DISK_MARGIN_BYTES
    if free < needed:
        raise WorkdirError(
            f"The workdir {workdir} has {free / 2**20:.0f} MiB free; a checkpoint of this "
            f"state needs about {checkpoint_bytes / 2**20:.0f} MiB plus "
            f"{_DISK_MARGIN_BYTES / 2**20:.0f} MiB of headroom. Free some space or choose "
            f"another --workdir."
        )


def resolve_run_dir(workdir: str | os.PathLike) -> str:
    """The folder of the run ``workdir`` stands for: itself, or, for a folder of chained runs
    without a run record of its own, the sub-folder its ``run_pointer.json`` names.

    Raises:
      IncompatibleResumeError: an unreadable pointer, or one that leaves the folder.
    """
    workdir = os.fspath(workdir)
    pointer = os.path.join(workdir, RUN_POINTER_FILE)
    if os.path.exists(os.path.join(workdir, RUN_RECORD_FILE)) or not os.path.exists(pointer):
        return workdir
    try:
        with open(pointer, encoding="utf-8") as f:
            target = json.load(f)["workdir"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise IncompatibleResumeError(
            f"{pointer} is unreadable ({error}); it should be {{'workdir': '<sub-folder>'}}."
        ) from error
    if not isinstance(target, str) or os.path.isabs(target) or ".." in target.split(os.sep):
        raise IncompatibleResumeError(f"{pointer} names {target!r}, not a sub-folder of {workdir}.")
    return os.path.join(workdir, target)


def write_run_pointer(workdir: str, target: str) -> None:
    """Makes ``workdir`` stand for its sub-folder ``target`` (atomically; process 0 only)."""
    if jax.process_index() != 0:
        return
    payload = json.dumps({"workdir": target}) + "\n"

    def write(tmp_path: str) -> None:
        with open(tmp_path, "w", encoding="utf-8") as f:
            f.write(payload)

    atomic_write(os.path.join(workdir, RUN_POINTER_FILE), write)


def load_run_record(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """Reads ``workdir/config.json`` (plain JSON: loading it runs no code); a folder of chained
    runs is read through its pointer (:func:`resolve_run_dir`).

    Args:
      workdir: a run's folder.

    Returns:
      ``{"config": {...}, "dataset": {...}, "diffjax_version": str}``, or None when the
      workdir holds no run record.

    Raises:
      IncompatibleResumeError: the file exists but is not a run record.
    """
    path = os.path.join(resolve_run_dir(workdir), RUN_RECORD_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as error:
        raise IncompatibleResumeError(
            f"{path} is unreadable ({error}); it should hold the config of the run in this "
            f"workdir. Restore it or choose a new --workdir."
        ) from error
    if not isinstance(record, dict) or not {"config", "dataset"} <= set(record):
        raise IncompatibleResumeError(
            f"{path} is not a diffjax run record (expected the keys 'config' and 'dataset')."
        )
    return record


def write_run_record(
    workdir: str, values: Mapping[str, Any], info: Any, frozen: Mapping[str, Any] | None = None
) -> None:
    """Saves the config, dataset description and frozen sources atomically (process 0 only).

    Called after every check has passed, so a run that fails its checks changes nothing.

    Args:
      workdir: the run's folder.
      values: the validated config as a plain dict.
      info: the training dataset's description (``name``, ``split``, ``num_examples``,
        ``num_classes``, ``class_names``, ``image_shape``, ``cond_spec``).
      frozen: what the run's frozen pytrees were loaded from (path and step, or path and
        SHA-256), by name.
    """
    if jax.process_index() != 0:
        return
    record = dict(
        config=values, dataset=_dataset_record(info), frozen=dict(frozen or {}),
        diffjax_version=__version__,
    )  # fmt: skip

    def write(tmp_path: str) -> None:
        with open(tmp_path, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)

    atomic_write(os.path.join(workdir, RUN_RECORD_FILE), write)


def _dataset_record(info: Any) -> dict[str, Any]:
    return dict(
        name=info.name,
        split=info.split,
        num_examples=info.num_examples,
        num_classes=info.num_classes,
        class_names=None if info.class_names is None else list(info.class_names),
        image_shape=list(info.image_shape),
        cond_spec=[[key, list(shape), dtype] for key, shape, dtype in info.cond_spec],
    )


def cond_spec_of(dataset_record: Mapping[str, Any]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """The ``cond_spec`` of a run record's dataset (records of diffjax 0.2 have none: a
    labelled dataset's is ``(('label', (), 'int32'),)``)."""
    if "cond_spec" not in dataset_record:
        labelled = dataset_record.get("num_classes") is not None
        return (("label", (), "int32"),) if labelled else ()
    return tuple((key, tuple(shape), dtype) for key, shape, dtype in dataset_record["cond_spec"])
