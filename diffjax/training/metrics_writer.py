"""Scalar and image logs of a run: TensorBoard event files and a plain ``metrics.jsonl``.

TensorBoard files come from tensorboardX, which writes the event protocol buffers itself and
needs no TensorFlow. ``metrics.jsonl`` holds one JSON object per logged step, readable with
nothing but the standard library (``pandas.read_json(path, lines=True)`` also works).

A resumed run first drops the records past the step it restarts from (they belong to the
interrupted attempt and would otherwise appear twice) and opens TensorBoard with
``purge_step``, which tells TensorBoard to discard the stale events of the earlier attempt.
Only process 0 writes; on other processes every method is a no-op.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np

from diffjax.images import atomic_write

__all__ = ["METRICS_FILE", "MetricsWriter", "read_metrics", "truncate_metrics"]

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads ``metrics.jsonl``, skipping a last line cut short by a killed process.

    Args:
      path: the ``metrics.jsonl`` file.

    Returns:
      The records in file order; each is a dict with at least ``'step'``. An absent file gives
      an empty list.
    """
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
    return records


def truncate_metrics(path: str | os.PathLike, last_step: int) -> int:
    """Keeps only the records with ``step <= last_step`` (atomic rewrite).

    Args:
      path: the ``metrics.jsonl`` file (nothing happens if it does not exist).
      last_step: the step a resumed run restarts from.

    Returns:
      The number of records dropped.
    """
    if not os.path.exists(path):
        return 0
    records = read_metrics(path)
    kept = [record for record in records if record["step"] <= last_step]
    with open(path, encoding="utf-8") as f:
        num_lines = sum(1 for _ in f)
    if len(kept) != num_lines:

        def write(tmp_path: str) -> None:
            with open(tmp_path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(record) + "\n" for record in kept)

        atomic_write(path, write)
    return num_lines - len(kept)


def _to_float(value: Any) -> float | None:
    """A JSON-friendly float; non-finite values become None (JSON has no NaN)."""
    value = float(np.asarray(value))
    return value if math.isfinite(value) else None


class MetricsWriter:
    """Writes scalars to TensorBoard and ``metrics.jsonl``, images to TensorBoard.

    Args:
      workdir: the run's folder; event files and ``metrics.jsonl`` go directly into it, so
        ``tensorboard --logdir runs/`` shows every run under ``runs/``.
      resume_step: the step a resumed run restarts from; later records of the earlier attempt
        are dropped. ``None`` for a fresh run.

    Example:
      >>> writer = MetricsWriter("runs/fmnist")
      >>> writer.write_scalars(100, {"loss": 0.05, "learning_rate": 2e-4})
      >>> writer.close()
    """

    def __init__(self, workdir: str | os.PathLike, resume_step: int | None = None) -> None:
        self._enabled = jax.process_index() == 0
        self._jsonl_path = os.path.join(os.fspath(workdir), METRICS_FILE)
        self._tensorboard = None
        self._jsonl = None
        if not self._enabled:
            return
        from tensorboardX import SummaryWriter  # protobuf-only; loads only when logging.

        if resume_step is not None:
            truncate_metrics(self._jsonl_path, resume_step)
        self._tensorboard = SummaryWriter(
            logdir=os.fspath(workdir), purge_step=resume_step, flush_secs=30
        )
        self._jsonl = open(self._jsonl_path, "a", encoding="utf-8")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Logs one record of scalars at ``step``.

        Args:
          step: the training step (updates applied so far).
          scalars: name -> number (Python, NumPy or 0-d JAX values).
        """
        if not self._enabled:
            return
        values = {name: _to_float(value) for name, value in scalars.items()}
        for name, value in values.items():
            self._tensorboard.add_scalar(name, math.nan if value is None else value, step)
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        self._jsonl.flush()

    def write_image(self, tag: str, step: int, image: np.ndarray) -> None:
        """Logs one uint8 picture ``[H, W, C]`` (e.g. a sample grid) to TensorBoard.

        Args:
          tag: the TensorBoard tag.
          step: the training step.
          image: uint8 ``[H, W, C]`` with C in {1, 3}.
        """
        if not self._enabled:
            return
        self._tensorboard.add_image(tag, np.asarray(image), step, dataformats="HWC")

    def flush(self) -> None:
        """Pushes buffered events to disk."""
        if self._enabled:
            self._tensorboard.flush()
            self._jsonl.flush()

    def close(self) -> None:
        """Flushes and closes both files; safe to call twice."""
        if self._enabled and self._jsonl is not None:
            self._tensorboard.close()
            self._jsonl.close()
            self._jsonl = None
