"""A trained run loaded back for sampling: parameters only, onto any mesh
(diffjax/training/trained_run.py)."""

import jax
import numpy as np
import pytest
from train_helpers import fast_compiles, make_image_folder, make_test_config

from diffjax.sharding import make_mesh
from diffjax.training import loop
from diffjax.training.checkpoint import CheckpointManager
from diffjax.training.trained_run import load_trained_run
from diffjax.training.workdir import WorkdirError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data_dir = make_image_folder(tmp_path_factory.mktemp("images"))
    workdir = str(tmp_path_factory.mktemp("run"))
    with fast_compiles():
        state = loop.train_and_evaluate(make_test_config(data_dir), workdir)
    return workdir, jax.tree.map(np.asarray, (state.params, state.ema_params))


@pytest.mark.parametrize("num_devices", [1, 8])
def test_parameters_only_are_restored_onto_any_mesh(trained, num_devices):
    workdir, (params, ema_params) = trained
    mesh = make_mesh(jax.devices()[:num_devices])
    run = load_trained_run(workdir, mesh)
    assert run.step == 6 and int(run.state.step) == 6
    assert run.state.opt_state is None and run.state.extra == {}
    for restored, expected in ((run.state.params, params), (run.state.ema_params, ema_params)):
        for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
            np.testing.assert_array_equal(leaf, want)
            assert len(leaf.sharding.device_set) == num_devices


def test_a_partial_restore_reads_no_optimizer_state(trained):
    """The restore asks orbax for the step, params and EMA only (verified against their
    checksums); the optimizer state is not among the arrays it returns."""
    workdir, _ = trained
    run = load_trained_run(workdir)
    abstract = run.programs.abstract_state
    wanted = {"step": abstract.step, "params": abstract.params, "ema_params": abstract.ema_params}
    with CheckpointManager(f"{workdir}/checkpoints", read_only=True) as manager:
        restored = manager.restore_latest(wanted, partial=True)
    assert sorted(restored.state) == ["ema_params", "params", "step"]


def test_a_folder_without_a_run_is_one_clear_error(tmp_path):
    with pytest.raises(WorkdirError, match="holds no diffjax run"):
        load_trained_run(tmp_path)
