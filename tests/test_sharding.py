"""Tests for diffjax.sharding on the 8 fake CPU devices set up by conftest."""

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec

from diffjax.sharding import (
    DATA_AXIS,
    FSDP_AXIS,
    batch_sharding,
    check_batch_divisible,
    fsdp_rules,
    fsdp_spec,
    host_batch_to_global,
    make_mesh,
    prefetch_to_mesh,
    process_batch_size,
    replicated_sharding,
)


def test_make_mesh_spans_all_devices_on_one_auto_axis():
    mesh = make_mesh()
    assert mesh.axis_names == (DATA_AXIS,)
    assert mesh.shape[DATA_AXIS] == jax.device_count() == 8
    assert mesh.axis_types == (AxisType.Auto,)
    assert list(mesh.devices.flat) == jax.devices()


def test_make_mesh_on_a_subset_and_empty():
    assert make_mesh(jax.devices()[:1]).shape[DATA_AXIS] == 1
    with pytest.raises(ValueError, match="at least one device"):
        make_mesh([])


def test_shardings():
    mesh = make_mesh()
    assert replicated_sharding(mesh).spec == PartitionSpec()
    assert batch_sharding(mesh).spec == PartitionSpec(DATA_AXIS)
    assert replicated_sharding(mesh).mesh is mesh


@pytest.mark.parametrize("global_batch_size", [12, 4, 0])
def test_check_batch_divisible_names_both_numbers(global_batch_size):
    with pytest.raises(ValueError, match=rf"batch size {global_batch_size} .* devices 8"):
        check_batch_divisible(global_batch_size, make_mesh())
    check_batch_divisible(16, make_mesh())


def test_process_batch_size_on_one_process():
    assert process_batch_size(64, make_mesh()) == 64
    with pytest.raises(ValueError, match="60"):
        process_batch_size(60, make_mesh())


def test_host_batch_to_global_places_rows_device_by_device():
    mesh = make_mesh()
    images = np.arange(16 * 2 * 2 * 1, dtype=np.float32).reshape(16, 2, 2, 1)
    labels = np.arange(16, dtype=np.int32)
    batch = host_batch_to_global({"image": images, "label": labels}, mesh)
    assert set(batch) == {"image", "label"}
    for name, host in (("image", images), ("label", labels)):
        array = batch[name]
        assert isinstance(array, jax.Array)
        assert array.shape == host.shape and array.dtype == host.dtype
        assert array.sharding.is_equivalent_to(batch_sharding(mesh), array.ndim)
        np.testing.assert_array_equal(np.asarray(array), host)
        for shard in array.addressable_shards:
            # Two rows per device, in device order along the mesh axis.
            position = list(mesh.devices.flat).index(shard.device)
            np.testing.assert_array_equal(shard.data, host[2 * position : 2 * position + 2])


def test_host_batch_to_global_rejects_bad_batches():
    mesh = make_mesh()
    with pytest.raises(ValueError, match=r"batch size 6 .* local devices 8"):
        host_batch_to_global({"image": np.zeros((6, 2, 2, 1), np.float32)}, mesh)
    with pytest.raises(ValueError, match="same leading"):
        host_batch_to_global(
            {"image": np.zeros((8, 2, 2, 1), np.float32), "label": np.zeros(16, np.int32)}, mesh
        )
    with pytest.raises(ValueError, match="empty batch"):
        host_batch_to_global({}, mesh)


class CountingIterator:
    """Host batches 0, 1, 2, ... (``num`` of them) whose state is the next batch's index."""

    def __init__(self, num: int):
        self.position, self.num = 0, num

    def __next__(self):
        if self.position == self.num:
            raise StopIteration
        self.position += 1
        return {"image": np.full((8, 2), self.position - 1, np.float32)}

    def get_state(self):
        return {"next": self.position}


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_prefetch_yields_every_batch_in_order_with_the_state_after_it(depth):
    mesh = make_mesh()
    iterator = CountingIterator(5)
    batches = prefetch_to_mesh(iterator, mesh, depth)
    first, state = next(batches)
    # ``depth`` batches were read and sent to the devices before the first one is used.
    assert iterator.position == depth and state == {"next": 1}
    assert first["image"].sharding == batch_sharding(mesh)
    rest = list(batches)
    values = [int(np.asarray(batch["image"])[0, 0]) for batch, _ in [(first, state), *rest]]
    assert values == [0, 1, 2, 3, 4]
    assert [state for _, state in rest] == [{"next": i} for i in range(2, 6)]


def test_prefetch_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth must be >= 1; got 0"):
        next(prefetch_to_mesh(CountingIterator(1), make_mesh(), 0))


@pytest.mark.parametrize(
    "shape, shards, spec",
    [
        ((3, 3, 64, 128), 8, (None, None, None, FSDP_AXIS)),  # output channels
        ((3, 3, 3, 64), 2, (None, None, None, FSDP_AXIS)),  # never a 3-wide axis
        ((512, 64), 8, (FSDP_AXIS, None)),  # the largest divisible axis
        ((64, 64), 8, (None, FSDP_AXIS)),  # a tie: the later axis
        ((50, 8), 8, (None, FSDP_AXIS)),
        ((5, 7), 2, ()),  # nothing divisible: whole
        ((), 8, ()),
        ((128,), 1, ()),
    ],
)
def test_fsdp_spec_splits_one_divisible_axis(shape, shards, spec):
    assert fsdp_spec(shape, shards) == PartitionSpec(*spec)


def test_fsdp_state_takes_one_nth_of_the_memory_per_device():
    """Parameters and Adam's moments of a small UNet on a (1, 8) mesh: each device holds 1/8
    of every split array and all of the few that no axis divides (measured from the arrays)."""
    import optax

    from diffjax.models import UNet
    from diffjax.training import create_train_state

    model = UNet(base_channels=16, channel_mults=(1, 2), attn_resolutions=(4,), num_groups=4)
    mesh = make_mesh(axes=("data", FSDP_AXIS), shape=(1, 8))
    x = jax.numpy.zeros((1, 8, 8, 1))
    state = create_train_state(
        lambda key: model.init(key, x, jax.numpy.zeros((1,), jax.numpy.int32))["params"],
        jax.random.key(0), optax.adam(1e-3), mesh,
        shardings=lambda abstract: fsdp_rules(abstract, mesh),
    )  # fmt: skip
    leaves = jax.tree.leaves(state)
    total = sum(leaf.nbytes for leaf in leaves)
    whole = sum(leaf.nbytes for leaf in leaves if leaf.sharding.spec == PartitionSpec())
    device = jax.devices()[0]
    on_one_device = sum(
        shard.data.nbytes for leaf in leaves for shard in leaf.addressable_shards
        if shard.device == device
    )  # fmt: skip
    assert on_one_device == (total - whole) / 8 + whole
    assert whole < 0.01 * total  # the step counters, a few odd-sized vectors


def test_fsdp_rules_replicate_on_a_mesh_without_the_axis():
    abstract = {"kernel": jax.ShapeDtypeStruct((3, 3, 16, 32), np.float32)}
    assert fsdp_rules(abstract, make_mesh())["kernel"].spec == PartitionSpec()
