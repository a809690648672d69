"""Checkpoints: exact round trips, other device counts, damage detection and fallback, no NaN.

The state is a real TrainState (params, EMA, Adam with injected hyperparameters) of a small
parameter tree, so no network has to compile. Every restore is compared bit for bit with the
state that was saved; every kind of damage (a truncated array file, a deleted file, garbage in
the metadata, one flipped bit in the array data) must be reported in one line naming the step,
and the previous good step must come back unchanged.
"""

import os
import pickle
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.sharding import make_mesh, replicated_sharding
from diffjax.training.checkpoint import (
    CheckpointManager,
    IncompatibleCheckpointError,
    NonFiniteStateError,
    NoUsableCheckpointError,
    state_digest,
)
from diffjax.training.train_state import abstract_train_state, create_train_state, make_optimizer

OPTIMIZER = make_optimizer(1e-3, warmup_steps=10)


def init_params(key, width=16):
    k1, k2 = jax.random.split(key)
    return {
        "dense": {"kernel": jax.random.normal(k1, (8, width)), "bias": jnp.zeros((width,))},
        "out": {"kernel": jax.random.normal(k2, (width, 3))},
    }


def make_state(mesh, seed=0, step=0):
    state = create_train_state(init_params, jax.random.key(seed), OPTIMIZER, mesh)
    return state.replace(step=jnp.int32(step))


def abstract(mesh, width=16):
    return abstract_train_state(
        lambda key: init_params(key, width), jax.random.key(0), OPTIMIZER, mesh
    )


def assert_same(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.fixture
def saved(tmp_path):
    """Steps 1, 2, 3 (different states) saved on 8 devices with max_to_keep=3."""
    mesh = make_mesh()
    states = {step: make_state(mesh, seed=step, step=step) for step in (1, 2, 3)}
    with CheckpointManager(tmp_path / "ckpt", max_to_keep=3) as manager:
        for step, state in states.items():
            manager.save(step, state, data_state={"position": step}, metadata={"note": "x"})
    return tmp_path / "ckpt", states


def test_round_trip_is_exact_and_keeps_data_state_and_metadata(saved):
    directory, states = saved
    lines = []
    with CheckpointManager(directory, report=lines.append) as manager:
        assert manager.all_steps() == [1, 2, 3]
        restored = manager.restore_latest(abstract(make_mesh()))
    assert restored.step == 3 and lines == []
    assert restored.data_state == {"position": 3} and restored.metadata == {"note": "x"}
    assert_same(restored.state, states[3])


def test_only_the_newest_max_to_keep_steps_stay(tmp_path):
    mesh = make_mesh()
    with CheckpointManager(tmp_path, max_to_keep=2) as manager:
        for step in (1, 2, 3, 4):
            manager.save(step, make_state(mesh, step=step))
        manager.wait_until_finished()
        assert manager.all_steps() == [3, 4]


@pytest.mark.parametrize("num_devices", [1, 8])
def test_restore_onto_another_device_count_and_back(saved, tmp_path, num_devices):
    directory, states = saved
    mesh = make_mesh(jax.devices()[:num_devices])
    with CheckpointManager(directory) as manager:
        restored = manager.restore_latest(abstract(mesh))
    assert_same(restored.state, states[3])
    leaf = jax.tree.leaves(restored.state.params)[0]
    assert leaf.sharding.mesh.devices.size == num_devices
    # ... and save from there, to restore on all 8 devices again.
    with CheckpointManager(tmp_path / "again") as manager:
        manager.save(3, restored.state, data_state={"position": 3})
    with CheckpointManager(tmp_path / "again") as manager:
        back = manager.restore_latest(abstract(make_mesh()))
    assert_same(back.state, states[3])
    assert jax.tree.leaves(back.state.params)[0].sharding.mesh.devices.size == 8


def test_state_digest_is_independent_of_the_device_count_and_sees_one_bit():
    state8 = make_state(make_mesh())
    state1 = jax.device_put(state8, jax.devices()[0])
    assert state_digest(state8) == state_digest(state1)
    kernel = np.asarray(state8.params["dense"]["kernel"]).copy()
    kernel.view(np.uint32)[3, 5] ^= 1  # the lowest mantissa bit of one weight
    flipped = state8.replace(params={**state8.params, "dense": {
        **state8.params["dense"], "kernel": jnp.asarray(kernel)}})  # fmt: skip
    before, after = state_digest(state8), state_digest(flipped)
    changed = [name for name in before if before[name] != after[name]]
    assert changed == ["params.dense.kernel"]


def test_state_digest_on_the_devices_equals_the_formula_on_a_host_copy():
    """sum_i b_i (2 i + 1) mod 2**32 over each leaf's raw bits, in NumPy, for every dtype a
    state holds; the digest is computed on the devices and must give the same numbers (so
    checkpoints written by the earlier host digest still verify)."""
    rng = np.random.default_rng(0)
    state = {
        "f32": jnp.asarray(rng.normal(size=(37, 5)), jnp.float32),
        "bf16": jnp.asarray(rng.normal(size=(11,)), jnp.bfloat16),
        "i32": jnp.asarray(rng.integers(-(2**31), 2**31 - 1, size=(9,)), jnp.int32),
        "u8": jnp.asarray(rng.integers(0, 255, size=(6,)), jnp.uint8),
        "mask": jnp.asarray([True, False, True]),
        "key": jax.random.key(4),
        "scalar": jnp.float32(-0.0),
        "inf": jnp.asarray([1.0, np.inf], jnp.float32),
    }

    def formula(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        values = np.asarray(leaf).reshape(-1)
        bits = values.astype(np.uint8) if values.dtype == np.bool_ else values
        bits = bits.view(f"uint{8 * bits.dtype.itemsize}").astype(np.uint64)
        weights = 2 * np.arange(bits.size, dtype=np.uint64) + 1
        checksum = int(np.sum((bits * weights) % 2**32) % 2**32)
        inexact = jnp.issubdtype(values.dtype, jnp.inexact)
        finite = bool(np.isfinite(values.astype(np.float64)).all()) if inexact else True
        return checksum, finite

    sharded = jax.device_put(state, replicated_sharding(make_mesh()))
    assert state_digest(sharded) == {name: formula(leaf) for name, leaf in state.items()}


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_a_state_with_nan_or_inf_is_never_written(tmp_path, bad_value):
    state = make_state(make_mesh(), step=1)
    with CheckpointManager(tmp_path) as manager:
        manager.save(1, state)
        poisoned = state.replace(ema_params=jax.tree.map(lambda x: x * bad_value, state.ema_params))
        with pytest.raises(NonFiniteStateError, match="step 2.*ema_params"):
            manager.save(2, poisoned)
        manager.wait_until_finished()
        assert manager.all_steps() == [1]


def _largest_array_file(step_dir):
    """The biggest data file of the merged OCDBT database that a restore reads (small arrays
    live inline in its b-tree nodes; the per-process files are merged into it)."""
    folder = os.path.join(step_dir, "state", "d")
    return max((os.path.join(folder, name) for name in os.listdir(folder)), key=os.path.getsize)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _garbage(path):
    with open(path, "wb") as f:
        f.write(b"{not json \x00\xff garbage")


def _flip_bit(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))


DAMAGE = {
    "truncated array file": lambda d: _truncate(_largest_array_file(d)),
    "missing array file": lambda d: os.remove(_largest_array_file(d)),
    "missing manifest": lambda d: os.remove(os.path.join(d, "state", "manifest.ocdbt")),
    "garbage state metadata": lambda d: _garbage(os.path.join(d, "state", "_METADATA")),
    "garbage meta json": lambda d: _garbage(os.path.join(d, "meta", "metadata")),
    "bit flip in array data": lambda d: _flip_bit(_largest_array_file(d)),
    "bit flip in meta json": lambda d: _flip_bit(os.path.join(d, "meta", "metadata")),
    "missing state folder": lambda d: shutil.rmtree(os.path.join(d, "state")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_step_is_reported_moved_aside_and_the_previous_one_used(saved, damage):
    directory, states = saved
    DAMAGE[damage](os.path.join(directory, "3"))
    lines = []
    with CheckpointManager(directory, report=lines.append) as manager:
        restored = manager.restore_latest(abstract(make_mesh()))
        assert manager.all_steps() == [1, 2]
    assert restored.step == 2
    assert_same(restored.state, states[2])
    unusable = [line for line in lines if "is unusable" in line]
    assert len(unusable) == 1 and "step 3" in unusable[0] and "\n" not in unusable[0]
    # Moved, not deleted: the damaged files are kept for inspection.
    quarantined = os.listdir(str(directory) + "_corrupt")
    assert len(quarantined) == 1 and quarantined[0].startswith("3-")


def test_saving_again_after_a_fallback_reuses_the_step_number(saved):
    directory, states = saved
    _truncate(_largest_array_file(os.path.join(directory, "3")))
    with CheckpointManager(directory, report=lambda line: None) as manager:
        manager.restore_latest(abstract(make_mesh()))
        manager.save(3, states[3])
    with CheckpointManager(directory) as manager:
        assert_same(manager.restore_latest(abstract(make_mesh())).state, states[3])


def test_when_every_step_is_damaged_nothing_is_moved_and_the_error_says_so(saved):
    directory, _ = saved
    for step in (1, 2, 3):
        _garbage(os.path.join(directory, str(step), "meta", "metadata"))
    with CheckpointManager(directory, report=lambda line: None) as manager:
        with pytest.raises(NoUsableCheckpointError, match=r"steps \[3, 2, 1\].*Nothing was moved"):
            manager.restore_latest(abstract(make_mesh()))
        assert manager.all_steps() == [1, 2, 3]


def test_a_checkpoint_of_another_model_is_a_clear_error_and_nothing_moves(saved):
    directory, _ = saved
    with CheckpointManager(directory) as manager:
        with pytest.raises(IncompatibleCheckpointError, match=r"step 3.*params.dense.kernel"):
            manager.restore_latest(abstract(make_mesh(), width=32))
        assert manager.all_steps() == [1, 2, 3]


def test_read_only_manager_neither_moves_damaged_steps_nor_removes_unfinished_saves(saved):
    directory, states = saved
    _truncate(_largest_array_file(os.path.join(directory, "3")))
    unfinished = os.path.join(directory, "4.orbax-checkpoint-tmp-123")
    os.makedirs(unfinished)
    before = sorted(os.walk(directory))
    with CheckpointManager(directory, read_only=True, report=lambda line: None) as manager:
        restored = manager.restore_latest(abstract(make_mesh()))
        with pytest.raises(ValueError, match="read-only"):
            manager.save(5, states[3])
    assert restored.step == 2
    assert sorted(os.walk(directory)) == before
    assert not os.path.exists(str(directory) + "_corrupt")


def test_restoring_never_unpickles(saved, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    directory, states = saved
    with CheckpointManager(directory) as manager:
        assert_same(manager.restore_latest(abstract(make_mesh())).state, states[3])
    for root, _, names in os.walk(directory):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                head = f.read(2)
            assert head[:1] != b"\x80", f"{name} starts like a pickle"


def test_max_to_keep_must_be_a_positive_int(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep must be an int >= 1, got 0"):
        CheckpointManager(tmp_path, max_to_keep=0)
