"""Checkpoints that survive kills and corruption: the only module of diffjax that imports orbax.

A checkpoint is an orbax step folder with two items:

- ``state``: the :class:`~diffjax.training.train_state.TrainState` (step, params, EMA params,
  optimizer state), written by orbax's PyTree handler as TensorStore arrays (no pickle);
- ``meta``: JSON holding the data iterator's position, caller metadata, and an integrity record:
  for every array of the state an exact checksum of its bits, plus a SHA-256 of the JSON itself.

Saving is asynchronous (training continues while the files are written), keeps the last
``max_to_keep`` steps, and refuses a state that holds NaN or Inf. orbax writes each step into a
temporary folder and renames it when complete, and only deletes old steps after a newer one has
committed, so a good checkpoint is never deleted before a newer one is complete.

orbax does not skip a damaged checkpoint (``latest_step()`` still names it and ``restore``
raises), and it reads bit flips in array data or JSON silently. :meth:`CheckpointManager.
restore_latest` therefore tries steps newest first, verifies every one against its integrity
record, reports each unusable step in one line, moves it aside into ``quarantine_dir`` (never
deletes it), and restores the newest good one. Restoring takes an abstract state whose leaves
carry the target shardings, so a checkpoint written on 8 devices restores onto 1 and back.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import shutil
import sys
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "CheckpointManager",
    "CorruptCheckpointError",
    "IncompatibleCheckpointError",
    "NoUsableCheckpointError",
    "NonFiniteStateError",
    "Restored",
    "state_digest",
]

_FORMAT = "diffjax-checkpoint-1"
_STATE_ITEM = "state"
_META_ITEM = "meta"
_MIN_REPLICA_SLICE_BYTES = 8 * 2**20


class CorruptCheckpointError(ValueError):
    """A checkpoint step exists but cannot be read back exactly as it was written."""


class IncompatibleCheckpointError(ValueError):
    """A readable checkpoint holds arrays of other shapes or dtypes than the state asked for."""


class NoUsableCheckpointError(RuntimeError):
    """Checkpoint steps exist, but none of them could be restored."""


class NonFiniteStateError(FloatingPointError):
    """A state holding NaN or Inf was about to be saved."""


class Restored(NamedTuple):
    """What :meth:`CheckpointManager.restore_latest` returns.

    Attributes:
      step: the restored step.
      state: the train state, each array placed with the sharding of the abstract state.
      data_state: the data iterator's position as saved (JSON data), or ``None``.
      metadata: the caller's metadata dict as saved.
    """

    step: int
    state: Any
    data_state: Any
    metadata: dict[str, Any]


def _leaf_name(path: tuple[Any, ...]) -> str:
    """``('opt_state', 1, 'mu', 'conv', 'kernel')`` style path as ``opt_state.1.mu.conv.kernel``
    (the naming orbax's array metadata uses, whatever the container types were)."""
    parts = []
    for entry in path:
        for attribute in ("name", "key", "idx"):
            if hasattr(entry, attribute):
                parts.append(str(getattr(entry, attribute)))
                break
        else:
            parts.append(str(entry))
    return ".".join(parts)


def _leaf_bits(leaf: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(raw bits as flat uint32, all finite) of one array, traced on its devices."""
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    finite = jnp.all(jnp.isfinite(leaf)) if jnp.issubdtype(leaf.dtype, jnp.inexact) else True
    if leaf.dtype == jnp.bool_:
        leaf = leaf.astype(jnp.uint8)
    unsigned = jnp.dtype(f"uint{8 * leaf.dtype.itemsize}")
    bits = jax.lax.bitcast_convert_type(leaf, unsigned).astype(jnp.uint32)
    return bits.reshape(-1), jnp.asarray(finite)


@jax.jit
def _device_digest(leaves: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Checksums ``[n]`` (uint32) and finiteness ``[n]`` of 4-byte-or-smaller leaves."""
    checksums, finite = [], []
    for leaf in leaves:
        bits, leaf_finite = _leaf_bits(leaf)
        # uint32 products and sums wrap mod 2**32, in any order: the NumPy formula exactly.
        weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
        checksums.append(jnp.sum(bits * weights, dtype=jnp.uint32))
        finite.append(leaf_finite)
    return jnp.stack(checksums), jnp.stack(finite)


def _host_digest(leaf: Any) -> tuple[int, bool]:
    """(checksum, all finite) of an 8-byte leaf (float64/int64 under x64), on the host."""
    values = np.asarray(leaf).reshape(-1)
    bits = values.view(np.uint32)
    weights = np.arange(bits.size, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    checksum = int(np.sum(bits * weights, dtype=np.uint32))
    finite = bool(np.isfinite(values).all()) if jnp.issubdtype(values.dtype, jnp.inexact) else True
    return checksum, finite


def state_digest(state: Any) -> dict[str, tuple[int, bool]]:
    """Exact checksum and finiteness of every array in a pytree.

    The checksum of a leaf with raw bits b_i (as uint32; an 8-byte element counts as two
    4-byte words) is sum_i b_i * (2 i + 1) mod 2**32. Odd weights are invertible mod 2**32, so
    changing any single element (in particular flipping any bit) always changes the sum, and
    the positions make swaps visible. It depends on the bits only, not on the sharding or the
    number of devices, so a checkpoint verified on 1 device matches the record written on 8.
    It is computed where the arrays live, in one jitted call (compiled once per state
    structure), so only two numbers per array leave the devices: no host copy of the state.

    Args:
      state: a pytree of arrays (e.g. a ``TrainState``), with any sharding.

    Returns:
      ``{leaf name: (checksum, all finite)}``, names like ``'params.conv_in.kernel'``.
    """
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    names = [_leaf_name(path) for path, _ in flat]
    leaves = [leaf if hasattr(leaf, "dtype") else np.asarray(leaf) for _, leaf in flat]
    small = [i for i, leaf in enumerate(leaves) if _itemsize(leaf) <= 4]
    results: list[tuple[int, bool] | None] = [None] * len(leaves)
    if small:
        checksums, finite = jax.device_get(_device_digest([leaves[i] for i in small]))
        for position, i in enumerate(small):
            results[i] = (int(checksums[position]), bool(finite[position]))
    for i, leaf in enumerate(leaves):
        if results[i] is None:
            results[i] = _host_digest(leaf)
    return dict(zip(names, results, strict=True))


def _itemsize(leaf: Any) -> int:
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(leaf).dtype.itemsize
    return leaf.dtype.itemsize


def _array_registry(ocp: Any) -> Any:
    """orbax's handler for ``jax.Array`` leaves, replica-parallel only for large arrays.

    By default orbax splits every replicated array into one slice per device and copies the
    slices separately, which costs one eager slice operation (and compilation) per array and
    device: 7 s of blocking time for the 500 small arrays of a tiny UNet on 8 CPU devices,
    against 0.1 s when each array is copied whole. Arrays whose per-device slice exceeds
    ``_MIN_REPLICA_SLICE_BYTES`` still get the parallel copy.
    """
    handler = ocp.type_handlers.ArrayHandler(
        min_slice_bytes_for_replica_parallel=_MIN_REPLICA_SLICE_BYTES
    )
    return ocp.type_handlers.create_type_handler_registry((jax.Array, handler))


def _json_sha256(payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@contextlib.contextmanager
def _quiet_aborted_reads() -> Iterator[None]:
    """Silences the echo of orbax's aborted reads while damaged steps are tried.

    When one array of a damaged step fails to read, orbax closes its event loop while
    TensorStore still completes the step's other reads; each completion then raises
    "Event loop is closed" in a background thread, and asyncio logs "Task exception was never
    retrieved". Both repeat the failure already reported in one line, so they are dropped
    here; any other unraisable exception or asyncio error is passed on unchanged.
    """
    previous_hook = sys.unraisablehook
    asyncio_logger = logging.getLogger("asyncio")
    previous_level = asyncio_logger.level

    def hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous_hook(unraisable)

    sys.unraisablehook = hook
    asyncio_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        asyncio_logger.setLevel(previous_level)


def _first_line(error: BaseException, limit: int = 160) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class CheckpointManager:
    """Asynchronous, verified, fall-back-on-damage checkpoints of a train state (wraps orbax).

    Args:
      directory: folder holding one sub-folder per saved step (created if missing).
      max_to_keep: how many of the newest steps to keep, >= 1 (keep >= 2 so that a damaged
        newest step still leaves a good one to fall back on).
      async_save: write in a background thread (the step only blocks while the arrays are
        copied off the devices).
      quarantine_dir: where unusable steps are moved; default ``<directory>_corrupt``.
      report: called with one line per unusable step found while restoring; default
        ``print``.
      read_only: only read (e.g. to sample while a training run writes the same folder):
        nothing is saved, cleaned up or moved; damaged steps are reported and skipped.

    Example:
      >>> manager = CheckpointManager("runs/x/checkpoints", max_to_keep=3)
      >>> manager.save(100, state, data_state={"epoch": 0, "index": 6400})
      >>> restored = manager.restore_latest(abstract_state)  # None when there is nothing yet
      >>> manager.close()
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int = 3,
        async_save: bool = True,
        quarantine_dir: str | os.PathLike | None = None,
        report: Callable[[str], None] = print,
        read_only: bool = False,
    ) -> None:
        import orbax.checkpoint as ocp  # orbax loads only when checkpoints are used.

        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be an int >= 1, got {max_to_keep!r}.")
        self._ocp = ocp
        self.directory = os.path.abspath(os.fspath(directory))
        self.quarantine_dir = os.path.abspath(
            os.fspath(quarantine_dir) if quarantine_dir is not None else self.directory + "_corrupt"
        )
        self._report = report
        self.read_only = read_only
        # A reader never saves (see `save`), so orbax deletes nothing for it; orbax's own
        # read_only mode would only add two warnings to every sampling run.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
            enable_async_checkpointing=async_save,
            # Folders of saves that a kill interrupted are never valid steps; clear them away
            # (but never under a reader: they may be the save a running trainer is writing).
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            save_root_metadata=not read_only,
        )
        state_handler = ocp.PyTreeCheckpointHandler(type_handler_registry=_array_registry(ocp))
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={
                _STATE_ITEM: state_handler,
                _META_ITEM: ocp.JsonCheckpointHandler(),
            },
            options=options,
        )

    def all_steps(self) -> list[int]:
        """The saved steps, oldest first (a save still in flight is not listed)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest saved step, or ``None``; it may still be damaged (see ``restore_latest``)."""
        return self._manager.latest_step()

    def save(
        self,
        step: int,
        state: Any,
        data_state: Any = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Starts writing ``state`` as ``step``; returns once the arrays are off the devices.

        Args:
          step: the step number (the train state's ``step``), not already saved.
          state: the train state pytree.
          data_state: JSON-serialisable position of the data iterator.
          metadata: JSON-serialisable extra information (e.g. the config).

        Raises:
          NonFiniteStateError: the state holds NaN or Inf (nothing is written).
          TypeError: ``data_state`` or ``metadata`` is not JSON-serialisable.
        """
        if self.read_only:
            raise ValueError(f"This CheckpointManager of {self.directory} is read-only.")
        ocp = self._ocp
        digest = state_digest(state)
        bad = [name for name, (_, finite) in digest.items() if not finite]
        if bad:
            raise NonFiniteStateError(
                f"Refusing to save the state of step {step}: it holds NaN or Inf in "
                f"{len(bad)} arrays (first: {', '.join(bad[:3])}). The checkpoints already "
                f"saved ({self.all_steps()}) are untouched."
            )
        payload = dict(
            format=_FORMAT,
            step=int(step),
            data_state=data_state,
            metadata=metadata or {},
            checksums={name: checksum for name, (checksum, _) in digest.items()},
            saved_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        )
        try:
            meta = dict(payload=payload, sha256=_json_sha256(payload))
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"data_state and metadata must be JSON-serialisable (no NaN); {error}"
            ) from error
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                **{_STATE_ITEM: ocp.args.PyTreeSave(state), _META_ITEM: ocp.args.JsonSave(meta)}
            ),
        )

    def _check_shapes(self, step: int, abstract_state: Any, partial: bool = False) -> None:
        """Compares the checkpoint's array metadata with the wanted state, before reading arrays
        (with ``partial``, the wanted arrays only need to be among the stored ones).

        Raises:
          IncompatibleCheckpointError: names the first arrays whose shape or dtype differ.
        """
        stored_tree = self._manager.item_metadata(step)[_STATE_ITEM]
        if stored_tree is None:
            raise CorruptCheckpointError("its state metadata is missing")
        stored = {
            _leaf_name(path): (tuple(leaf.shape), np.dtype(leaf.dtype))
            for path, leaf in jax.tree_util.tree_flatten_with_path(stored_tree)[0]
        }
        wanted = {
            _leaf_name(path): (tuple(leaf.shape), np.dtype(leaf.dtype))
            for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]
        }
        if stored == wanted or (partial and all(stored.get(k) == v for k, v in wanted.items())):
            return
        if not stored:
            raise CorruptCheckpointError("its state metadata lists no arrays")
        problems = [f"{name} missing from the checkpoint" for name in wanted if name not in stored]
        if not partial:
            problems += [
                f"{name} not in the current state" for name in stored if name not in wanted
            ]
        problems += [
            f"{name}: checkpoint {stored[name][0]} {stored[name][1]}, "
            f"current {wanted[name][0]} {wanted[name][1]}"
            for name in wanted
            if name in stored and stored[name] != wanted[name]
        ]
        raise IncompatibleCheckpointError(
            f"The checkpoint of step {step} in {self.directory} does not fit the current model "
            f"and optimizer ({len(problems)} differences; {'; '.join(problems[:3])}). Resume "
            f"with the config it was written with, or start a new workdir."
        )

    def restore(self, step: int, abstract_state: Any, partial: bool = False) -> Restored:
        """Restores and verifies one step.

        Args:
          step: a step listed by :meth:`all_steps`.
          abstract_state: the state's structure as ``jax.ShapeDtypeStruct`` leaves whose
            ``sharding`` says where each restored array goes.
          partial: restore only the arrays of ``abstract_state``, a dict with some of the
            state's fields (``{'step': ..., 'params': ..., 'ema_params': ...}`` for sampling:
            no optimizer state is read).

        Returns:
          The verified :class:`Restored`.

        Raises:
          IncompatibleCheckpointError: the step holds other shapes or dtypes.
          CorruptCheckpointError: anything is missing, unreadable, or differs from what was
            written (checksums, JSON digest, step numbers).
        """
        ocp = self._ocp
        try:
            self._check_shapes(step, abstract_state, partial)
        except (IncompatibleCheckpointError, CorruptCheckpointError):
            raise
        except Exception as error:  # orbax raises many types for unreadable metadata.
            raise CorruptCheckpointError(_first_line(error)) from error
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    **{
                        # The shapes were checked above; partial_restore lets a state with
                        # empty fields (TrainState.extra = {}) read a checkpoint without them.
                        _STATE_ITEM: ocp.args.PyTreeRestore(
                            item=abstract_state,
                            restore_args=ocp.checkpoint_utils.construct_restore_args(
                                abstract_state
                            ),
                            partial_restore=True,
                        ),
                        _META_ITEM: ocp.args.JsonRestore(),
                    }
                ),
            )
        except Exception as error:  # TensorStore, JSON and file errors alike mean damage.
            raise CorruptCheckpointError(_first_line(error)) from error
        state, meta = restored[_STATE_ITEM], restored[_META_ITEM]
        payload = meta.get("payload") if isinstance(meta, dict) else None
        if not isinstance(payload, dict) or meta.get("sha256") != _json_sha256(payload):
            raise CorruptCheckpointError("its metadata JSON does not match its SHA-256 digest")
        if payload.get("format") != _FORMAT or payload.get("step") != step:
            raise CorruptCheckpointError(
                f"its metadata names format {payload.get('format')!r} and step "
                f"{payload.get('step')!r}, expected {_FORMAT!r} and {step}"
            )
        digest = state_digest(state)
        expected = payload.get("checksums", {})
        mismatched = [
            name for name, (checksum, _) in digest.items() if expected.get(name) != checksum
        ]
        if mismatched or (not partial and set(expected) != set(digest)):
            raise CorruptCheckpointError(
                f"{len(mismatched)} arrays differ from what was written "
                f"(first: {', '.join(mismatched[:3]) or 'the array list'})"
            )
        return Restored(
            step=step,
            state=state,
            data_state=payload.get("data_state"),
            metadata=payload.get("metadata", {}),
        )

    def _quarantine(self, step: int) -> str:
        """Moves a damaged step out of orbax's sight (so it is neither listed nor overwritten)."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = os.path.join(self.quarantine_dir, f"{step}-{stamp}")
        if jax.process_index() == 0:
            os.makedirs(self.quarantine_dir, exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"diffjax-quarantine-{step}")
        self._manager.reload()
        return target

    def restore_latest(self, abstract_state: Any, partial: bool = False) -> Restored | None:
        """Restores the newest step that verifies, moving newer damaged steps aside.

        Each damaged step is reported in one line naming it, then moved to ``quarantine_dir``
        (only once an older good step has been found: if none restores, nothing is moved; a
        read-only manager moves nothing).

        Args:
          abstract_state: as for :meth:`restore`.
          partial: as for :meth:`restore`.

        Returns:
          The newest good :class:`Restored`, or ``None`` when no step was ever saved.

        Raises:
          IncompatibleCheckpointError: the newest readable step does not fit ``abstract_state``
            (a different model or optimizer; nothing is moved).
          NoUsableCheckpointError: steps exist but every one is damaged (nothing is moved).
        """
        steps = sorted(self.all_steps(), reverse=True)
        damaged: list[tuple[int, str]] = []
        for step in steps:
            try:
                with _quiet_aborted_reads():
                    restored = self.restore(step, abstract_state, partial)
            except CorruptCheckpointError as error:
                older = [s for s in steps if s < step]
                fallback = f"trying step {older[0]}" if older else "no older step left"
                self._report(
                    f"diffjax: checkpoint step {step} in {self.directory} is unusable "
                    f"({error}); {fallback}."
                )
                damaged.append((step, str(error)))
                continue
            for bad_step, _ in [] if self.read_only else damaged:
                target = self._quarantine(bad_step)
                self._report(f"diffjax: moved the unusable checkpoint step {bad_step} to {target}.")
            return restored
        if damaged:
            raise NoUsableCheckpointError(
                f"None of the checkpoints in {self.directory} can be restored (steps "
                f"{[step for step, _ in damaged]}; newest: {damaged[0][1]}). Nothing was moved "
                f"or deleted; start a new workdir or repair the files."
            )
        return None

    def wait_until_finished(self) -> None:
        """Blocks until every save in flight is durable on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for saves in flight, then releases orbax's threads. Call before exiting."""
        self._manager.close()

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
