"""Parallelism with ``jax.jit`` shardings: the named mesh, the sharding rules, host batches.

The mesh's axes are named (``config.sharding.mesh_axes``): ``'data'`` by default, spanning every
device of every process; ``'fsdp'`` is the second batch axis, the one the ``'fsdp'`` rule splits
the state over. The batch is split along its first axis over the batch axes (``P('data')``, or
``P(('data', 'fsdp'))`` on a 2-D mesh). Where the state
lives is a *sharding rule* (:data:`SHARDING_RULES`, chosen by ``config.sharding.rules``):
``rules(abstract_tree, mesh) -> tree of NamedSharding``, applied alike to the train state, the
frozen networks and the parameters restored for sampling. The default, ``'replicated'``, puts
a whole copy on every device (``P()``): data parallelism, where ``jax.jit`` with these
shardings makes the compiler insert the gradient all-reduce, so the step code has no ``pmap``
and no ``pmean``. ``'fsdp'`` splits every array over the ``'fsdp'`` axis (:func:`fsdp_rules`):
the same step, with the compiler's all-gathers and reduce-scatters instead. With several processes (``jax.distributed.initialize()``), each process loads
only its own rows and :func:`host_batch_to_global` assembles them into one global array.
"""

from __future__ import annotations

import collections
import json
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = [
    "BATCH_AXES",
    "DATA_AXIS",
    "FSDP_AXIS",
    "SHARDING_RULES",
    "batch_sharding",
    "broadcast_int",
    "broadcast_json",
    "check_batch_divisible",
    "fsdp_rules",
    "fsdp_spec",
    "gather_to_host",
    "host_batch_to_global",
    "make_mesh",
    "prefetch_to_mesh",
    "process_batch_size",
    "register_sharding_rules",
    "replicated_rules",
    "replicated_sharding",
    "resolve_mesh_shape",
    "state_shardings",
    "sync_processes",
]

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES: tuple[str, ...] = ("data", "fsdp")
"""The mesh axes the batch is split over (every axis of a mesh is one of them)."""


def make_mesh(
    devices: Sequence[jax.Device] | None = None,
    axes: Sequence[str] = (DATA_AXIS,),
    shape: Sequence[int] = (-1,),
) -> Mesh:
    """A device mesh with named axes (by default the 1-D ``'data'`` mesh over every device).

    The axis types are passed explicitly as ``AxisType.Auto`` (the compiler propagates
    shardings from the jit boundary), so the behaviour does not change with JAX's default for
    new meshes.

    Args:
      devices: the devices to span; default ``jax.devices()``, i.e. every device of every
        process.
      axes: the axis names, each one of :data:`BATCH_AXES`.
      shape: the axis sizes; at most one -1, which takes the remaining devices.

    Returns:
      ``jax.sharding.Mesh`` of shape ``{axis: size}``.

    Raises:
      ValueError: no devices, unknown or repeated axis names, or sizes that do not multiply
        to the device count.
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device, got an empty list.")
    axes = tuple(axes)
    shape = resolve_mesh_shape(axes, shape, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), axes, axis_types=(AxisType.Auto,) * len(axes))


def resolve_mesh_shape(
    axes: Sequence[str], shape: Sequence[int], num_devices: int | None
) -> tuple[int, ...]:
    """The mesh's axis sizes with -1 resolved, after checking the axes and sizes.

    Args:
      axes: the axis names, each one of :data:`BATCH_AXES`.
      shape: the sizes; at most one -1 (the remaining devices).
      num_devices: the device count, or None to check only the names and sizes.

    Returns:
      The sizes (``shape`` unchanged when ``num_devices`` is None).

    Raises:
      ValueError: naming the axes, the shape and the device count.
    """
    axes, shape = tuple(axes), [int(size) for size in shape]
    if len(axes) != len(shape) or not axes or len(set(axes)) != len(axes):
        raise ValueError(
            f"mesh axes {axes} and shape {tuple(shape)} must be non-empty, of equal length, and "
            f"the names distinct."
        )
    unknown = [axis for axis in axes if axis not in BATCH_AXES]
    if unknown:
        raise ValueError(f"mesh axes {unknown} are not supported; use axes of {BATCH_AXES}.")
    if shape.count(-1) > 1 or any(size < 1 and size != -1 for size in shape):
        raise ValueError(f"mesh shape {tuple(shape)}: sizes >= 1, with at most one -1.")
    if num_devices is None:
        return tuple(shape)
    known = int(np.prod([size for size in shape if size != -1]))
    if -1 in shape and num_devices % known == 0:
        shape[shape.index(-1)] = num_devices // known
    if int(np.prod(shape)) != num_devices:
        raise ValueError(
            f"mesh axes {axes} with shape {tuple(shape)} do not fit the {num_devices} devices."
        )
    return tuple(shape)


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (``P()``): used for replicated state and keys."""
    return NamedSharding(mesh, PartitionSpec())


def _batch_spec(mesh: Mesh) -> PartitionSpec:
    axes = tuple(axis for axis in mesh.axis_names if axis in BATCH_AXES)
    return PartitionSpec(axes[0] if len(axes) == 1 else axes)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis is split over the batch axes (``P('data')``); others whole."""
    return NamedSharding(mesh, _batch_spec(mesh))


def replicated_rules(abstract_tree: Any, mesh: Mesh) -> Any:
    """The ``'replicated'`` sharding rule: every leaf whole on every device (``P()``)."""
    replicated = replicated_sharding(mesh)
    return jax.tree.map(lambda _: replicated, abstract_tree)


def fsdp_spec(shape: Sequence[int], num_shards: int) -> PartitionSpec:
    """Where the ``'fsdp'`` rule splits an array of ``shape`` over ``num_shards`` devices.

    The largest axis that ``num_shards`` divides, of more than 3 entries (never a convolution's
    3-wide spatial axis); on a tie the later axis (a kernel's output channels). An array with
    no such axis, a scalar, or ``num_shards = 1`` stays whole (``P()``).

    Example:
      ``fsdp_spec((3, 3, 64, 128), 8) == P(None, None, None, 'fsdp')``.
    """
    candidates = [axis for axis, size in enumerate(shape) if size > 3 and size % num_shards == 0]
    if num_shards == 1 or not candidates:
        return PartitionSpec()
    axis = max(candidates, key=lambda candidate: (shape[candidate], candidate))
    return PartitionSpec(*(FSDP_AXIS if index == axis else None for index in range(len(shape))))


def fsdp_rules(abstract_tree: Any, mesh: Mesh) -> Any:
    """The ``'fsdp'`` sharding rule (ZeRO-3, Rajbhandari et al. 2020): every array split over
    the mesh's ``'fsdp'`` axis along one axis (:func:`fsdp_spec`) and replicated over the
    others, so parameters, EMA and optimizer state (and frozen networks) take 1/N of the memory
    on N devices; ``jax.jit`` then gathers each layer's parameters where it is used and
    reduce-scatters its gradient. Shapes decide, so it applies to any registered network. On a
    mesh without an ``'fsdp'`` axis (a sharded run's parameters restored on one device for
    sampling, say) everything is replicated."""
    num_shards = dict(zip(mesh.axis_names, mesh.devices.shape)).get(FSDP_AXIS, 1)
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, fsdp_spec(leaf.shape, num_shards)), abstract_tree
    )


SHARDING_RULES: dict[str, Callable[[Any, Mesh], Any]] = {
    "replicated": replicated_rules,
    "fsdp": fsdp_rules,
}
"""Sharding rules by name: ``rules(abstract_tree, mesh) -> tree of NamedSharding``."""


def register_sharding_rules(name: str, rules: Callable[[Any, Mesh], Any]) -> None:
    """Adds a sharding rule that ``config.sharding.rules`` can name.

    Args:
      name: a new name.
      rules: ``rules(abstract_tree, mesh) -> tree of NamedSharding`` for any pytree of
        ``jax.ShapeDtypeStruct`` (the train state, a frozen network's parameters).

    Raises:
      ValueError: the name is taken or empty.
    """
    if not isinstance(name, str) or not name or name in SHARDING_RULES:
        raise ValueError(
            f"register_sharding_rules needs a new, non-empty name; {name!r} is taken or empty "
            f"(registered: {tuple(SHARDING_RULES)})."
        )
    SHARDING_RULES[name] = rules


def state_shardings(abstract_tree: Any, mesh: Mesh, rules: str = "replicated") -> Any:
    """The shardings the rule ``rules`` gives the leaves of ``abstract_tree`` on ``mesh``.

    Raises:
      ValueError: an unknown rule name.
    """
    if rules not in SHARDING_RULES:
        raise ValueError(
            f"Unknown sharding rules {rules!r}; expected one of {tuple(SHARDING_RULES)}."
        )
    return SHARDING_RULES[rules](abstract_tree, mesh)


def check_batch_divisible(global_batch_size: int, mesh: Mesh) -> None:
    """Raises ``ValueError`` unless the global batch splits evenly over the mesh's devices.

    Args:
      global_batch_size: B, summed over all processes.
      mesh: the mesh.
    """
    num_devices = mesh.devices.size
    if global_batch_size < 1 or global_batch_size % num_devices:
        raise ValueError(
            f"The global batch size {global_batch_size} must be a positive multiple of the "
            f"number of devices {num_devices} (mesh axes {tuple(mesh.axis_names)})."
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
