"""Data parallelism with ``jax.jit`` shardings: the mesh, its two shardings, host-to-global batches.

One mesh axis, ``'data'``, spans every device of every process. The train state is replicated
(``P()``) and the batch is split along its first axis (``P('data')``); ``jax.jit`` with these
shardings makes the compiler insert the gradient all-reduce, so the step code has no ``pmap``
and no ``pmean``. With several processes (``jax.distributed.initialize()``), each process loads
only its own rows and :func:`host_batch_to_global` assembles them into one global array.
"""

from __future__ import annotations

import collections
import json
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "batch_sharding",
    "broadcast_int",
    "broadcast_json",
    "check_batch_divisible",
    "gather_to_host",
    "host_batch_to_global",
    "make_mesh",
    "prefetch_to_mesh",
    "process_batch_size",
    "replicated_sharding",
    "sync_processes",
]

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D device mesh with the single axis ``'data'``.

    The axis type is passed explicitly as ``AxisType.Auto`` (the compiler propagates shardings
    from the jit boundary), so the behaviour does not change with JAX's default for new meshes.

    Args:
      devices: the devices to span; default ``jax.devices()``, i.e. every device of every
        process.

    Returns:
      ``jax.sharding.Mesh`` of shape ``{'data': len(devices)}``.
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device, got an empty list.")
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (``P()``): used for the train state and the key."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis is split over ``'data'`` (``P('data')``); other axes are whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_divisible(global_batch_size: int, mesh: Mesh) -> None:
    """Raises ``ValueError`` unless the global batch splits evenly over the mesh's devices.

    Args:
      global_batch_size: B, summed over all processes.
      mesh: the data-parallel mesh.
    """
    num_devices = mesh.devices.size
    if global_batch_size < 1 or global_batch_size % num_devices:
        raise ValueError(
            f"The global batch size {global_batch_size} must be a positive multiple of the "
            f"number of devices {num_devices} (mesh axis {DATA_AXIS!r})."
        )


def process_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """The number of rows each process loads: B * (local devices / all devices).

    Args:
      global_batch_size: B, summed over all processes; must split evenly over the devices.
      mesh: the data-parallel mesh.

    Returns:
      The per-process batch size (B on a single process).
    """
    check_batch_divisible(global_batch_size, mesh)
    per_device = global_batch_size // mesh.devices.size
    return per_device * len(mesh.local_devices)


def host_batch_to_global(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays sharded along ``'data'``.

    Each process passes the rows it loaded (its slice of the global batch, in process order);
    the result is one ``jax.Array`` per key of global shape ``[B_local * num_processes, ...]``
    with rows laid out device by device. Uses ``jax.make_array_from_process_local_data``; on a
    single process it is a sharded ``device_put``.

    Args:
      batch: a dict (nested dicts allowed, e.g. ``{'image': ..., 'cond': {'label': ...}}``)
        of host-local NumPy arrays, each ``[B_local, ...]`` with the same B_local.
      mesh: the data-parallel mesh.

    Returns:
      dict with the same keys of global ``jax.Array`` s sharded by :func:`batch_sharding`.
    """
    leaves = jax.tree_util.tree_leaves_with_path(batch)
    if not leaves:
        raise ValueError("host_batch_to_global got an empty batch; expected e.g. {'image': ...}.")
    local_sizes = {
        jax.tree_util.keystr(path): np.shape(value)[0] if np.ndim(value) else None
        for path, value in leaves
    }
    sizes = set(local_sizes.values())
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            f"Every batch entry needs the same leading (batch) size; got {local_sizes}."
        )
    local_batch_size = sizes.pop()
    num_local_devices = len(mesh.local_devices)
    if local_batch_size % num_local_devices:
        raise ValueError(
            f"The per-process batch size {local_batch_size} must be a multiple of the number of "
            f"local devices {num_local_devices} of this process."
        )
    return jax.make_array_from_process_local_data(batch_sharding(mesh), dict(batch))


def prefetch_to_mesh(
    iterator: Iterator[Mapping[str, Any]], mesh: Mesh, depth: int = 2
) -> Iterator[tuple[dict[str, jax.Array], Any]]:
    """Global batches placed on the devices ``depth - 1`` batches ahead of their use.

    Yields ``(batch, data_state)``: the batch as :func:`host_batch_to_global` makes it, and the
    iterator's ``get_state()`` right after that batch was read (what a checkpoint saved after
    that batch's step must record, whatever was read ahead). When batch i is yielded, batch
    i + 1 is already read and its transfer dispatched, so it overlaps step i on the devices.

    Args:
      iterator: host batches (dicts of this process's rows) with a ``get_state()`` method.
      mesh: the data-parallel mesh.
      depth: batches held on the devices at once (>= 1; 1 is no read-ahead).

    Returns:
      An iterator that ends when ``iterator`` does.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1; got {depth}.")
    queue: collections.deque = collections.deque()
    exhausted = False
    while True:
        while not exhausted and len(queue) < depth:
            try:
                host_batch = next(iterator)
            except StopIteration:
                exhausted = True
                break
            queue.append((host_batch_to_global(host_batch, mesh), iterator.get_state()))
        if not queue:
            return
        yield queue.popleft()


def gather_to_host(array: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-host) sharded array as NumPy, on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(jax.device_get(array))


def broadcast_int(value: int) -> int:
    """Process 0's ``value`` on every process."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def broadcast_json(value: Any) -> Any:
    """Process 0's JSON-serialisable ``value``, on every process."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    text = np.frombuffer(json.dumps(value).encode(), np.uint8)
    size = broadcast_int(text.size)
    buffer = np.zeros(size, np.uint8)
    if jax.process_index() == 0:
        buffer[:] = text
    return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))).decode())


def sync_processes(name: str) -> None:
    """Waits until every process gets here (after process 0 wrote a file the others read)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"diffjax-{name}")
