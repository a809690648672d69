"""The training program end to end: workdir contents, exact resume, device counts, NaN policy.

Runs ``configs/test.py`` (a 0.04M-parameter UNet on 8x8 images, 6 steps) on a generated
folder dataset, in-process through ``train_and_evaluate`` and once through the CLI. The
reference is one uninterrupted 6-step run on the 8 fake CPU devices; a run stopped at step 4 and
resumed must end with bit-identical parameters, EMA and optimizer state (same compiled step,
same data order, same noise), and a run that moves 8 -> 1 -> 8 devices must agree to float
tolerance (only the order of the gradient sums changes).
"""

import json
import os
import re

import jax
import numpy as np
import pytest
from train_helpers import (
    assert_states_equal,
    fast_compiles,
    make_image_folder,
    make_test_config,
    run_cli,
    state_leaves,
    train_command,
)

from diffjax import sharding
from diffjax.training import loop
from diffjax.training.metrics_writer import read_metrics
from diffjax.training.trained_run import load_trained_run


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """An uninterrupted 6-step run: (workdir, final state)."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    with fast_compiles():
        state = loop.train_and_evaluate(make_test_config(data_dir), workdir)
    return workdir, state


def test_uninterrupted_run_fills_the_workdir(reference):
    workdir, state = reference
    assert int(state.step) == 6
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "6"]
    assert os.path.exists(os.path.join(workdir, "samples", "step_0000006.png"))
    assert os.path.getsize(os.path.join(workdir, "loss.png")) > 1000
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    evaluations = [r for r in records if "eval_loss" in r]
    records = [r for r in records if "loss" in r]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert [r["step"] for r in evaluations] == [3, 6]
    assert all(0 < r["eval_loss"] < 2 for r in evaluations)
    for record in records:
        assert set(record) >= {"loss", "loss_ema", "grad_norm", "learning_rate",
                               "images_per_second", "skipped_steps"}  # fmt: skip
        assert np.isfinite(record["loss"]) and record["skipped_steps"] == 0
    # Warm-up of 2 steps, then the constant learning rate of configs/test.py.
    assert records[-1]["learning_rate"] == pytest.approx(1e-3)
    with open(os.path.join(workdir, "config.json")) as f:
        record = json.load(f)
    assert record["config"]["training"]["num_steps"] == 6
    assert record["dataset"]["image_shape"] == [8, 8, 1] and record["dataset"]["num_classes"] == 2


def test_stopped_and_resumed_run_ends_bit_identical(reference, data_dir, tmp_path, capsys):
    _, expected = reference
    workdir = str(tmp_path)
    with fast_compiles():
        shorter = make_test_config(data_dir, **{"training.num_steps": 4})
        first = loop.train_and_evaluate(shorter, workdir)
        assert int(first.step) == 4
        resumed = loop.train_and_evaluate(make_test_config(data_dir), workdir)
    assert int(resumed.step) == 6
    assert_states_equal(resumed, expected)
    # An 8x8 run has no offline FD: the closing hint says what does work offline.
    hint = capsys.readouterr().err
    assert (
        f"python -m diffjax.evaluate --workdir {workdir} --metrics bpd    bits/dim (offline)"
        in hint
    )
    assert "FID of 10k samples (needs the Inception weights" in hint
    # The metrics of the first attempt are kept once, not duplicated.
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]


def _files(folder):
    """{relative path: (size, mtime)} of every file under a folder."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = (
                os.path.getsize(path),
                os.stat(path).st_mtime_ns,
            )
    return found


def test_rerunning_a_finished_run_changes_nothing(reference, data_dir, capsys):
    workdir, expected = reference
    before = _files(workdir)
    with fast_compiles():
        state = loop.train_and_evaluate(make_test_config(data_dir), workdir)
    assert_states_equal(state, expected)
    assert "already reached step 6; nothing to do" in capsys.readouterr().err
    assert _files(workdir) == before  # no new events file, config.json not rewritten


def test_resume_on_one_device_and_back_on_eight(reference, data_dir, tmp_path):
    _, expected = reference
    workdir = str(tmp_path)
    with fast_compiles():
        for num_steps, num_devices in ((2, 8), (4, 1), (6, 8)):
            config = make_test_config(data_dir, **{"training.num_steps": num_steps})
            state = loop.train_and_evaluate(config, workdir, devices=jax.devices()[:num_devices])
            assert int(state.step) == num_steps
            sharding = jax.tree.leaves(state.params)[0].sharding
            assert sharding.mesh.devices.size == num_devices
    # Same data and noise; only the order of float32 gradient sums differs. Adam's update is
    # scale-free (m / sqrt(v)), so relative gradient errors of ~1e-6 move parameters by about
    # lr * 1e-6 per step: 1e-5 is a generous bound after 6 steps at lr 1e-3.
    for got, want in zip(state_leaves(state), state_leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_fsdp_run_resumes_on_other_layouts(reference, data_dir, tmp_path):
    """Saved split over a 4 x 2 mesh, resumed replicated on one device, then on a 2 x 4 mesh:
    the checkpoints are restored onto each layout, EMA and optimizer state included."""
    _, expected = reference
    workdir = str(tmp_path)

    def fsdp(shape):
        return {"sharding.mesh_axes": ("data", "fsdp"), "sharding.mesh_shape": shape,
                "sharding.rules": "fsdp"}  # fmt: skip

    with fast_compiles():
        for num_steps, num_devices, layout in (
            (2, 8, fsdp((4, 2))),
            (4, 1, {}),
            (6, 8, fsdp((2, 4))),
        ):
            config = make_test_config(data_dir, **{"training.num_steps": num_steps}, **layout)
            state = loop.train_and_evaluate(config, workdir, devices=jax.devices()[:num_devices])
            assert int(state.step) == num_steps
            specs = {leaf.sharding.spec for leaf in jax.tree.leaves(state.opt_state)}
            assert any("fsdp" in spec for spec in specs) == bool(layout)
    # As test_resume_on_one_device_and_back_on_eight: only the float32 summation order of the
    # gradient differs between layouts, and Adam's update is scale-free.
    for got, want in zip(state_leaves(state), state_leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # The split run's parameters load onto one device for sampling (the rule replicates them
    # on a mesh without an 'fsdp' axis).
    run = load_trained_run(workdir, sharding.make_mesh(jax.devices()[:1]))
    assert run.mesh.devices.size == 1
    for got, want in zip(jax.tree.leaves(run.state.ema_params), jax.tree.leaves(state.ema_params)):
        np.testing.assert_array_equal(got, want)


def _inject_nan_at(monkeypatch, bad_step):
    """Makes the image batch of update ``bad_step`` (1-based) all NaN (training batches reach
    the devices through ``sharding.prefetch_to_mesh``, which looks the function up there)."""
    original = sharding.host_batch_to_global
    calls = {"count": 0}

    def poisoned(batch, mesh):
        calls["count"] += 1
        if calls["count"] == bad_step:
            batch = dict(batch, image=np.full_like(batch["image"], np.nan))
        return original(batch, mesh)

    monkeypatch.setattr(sharding, "host_batch_to_global", poisoned)


def test_nan_stops_the_run_naming_the_step_and_saves_nothing_after_it(
    data_dir, tmp_path, monkeypatch
):
    _inject_nan_at(monkeypatch, bad_step=3)
    workdir = str(tmp_path)
    message = r"Non-finite loss or gradient at step 3 .*checkpoint \(step 2\) is intact"
    with fast_compiles(), pytest.raises(loop.NonFiniteLossError, match=message):
        loop.train_and_evaluate(make_test_config(data_dir), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    run = load_trained_run(workdir)
    assert run.step == 2
    assert all(np.isfinite(leaf).all() for leaf in state_leaves(run.state))


def test_nan_policy_skip_leaves_the_weights_and_goes_on(data_dir, tmp_path, monkeypatch):
    _inject_nan_at(monkeypatch, bad_step=3)
    workdir = str(tmp_path)
    config = make_test_config(data_dir, **{"training.nan_policy": "skip"})
    with fast_compiles():
        state = loop.train_and_evaluate(config, workdir)
    assert int(state.step) == 6
    assert all(np.isfinite(leaf).all() for leaf in state_leaves(state))
    records = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]
    assert [r["skipped_steps"] for r in records] == [0, 1, 0]
    assert all(np.isfinite(r["loss"]) for r in records)


def test_cli_trains_the_test_config_end_to_end(data_dir, tmp_path):
    workdir = str(tmp_path / "cli")
    result = run_cli(train_command(workdir, data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = [line for line in result.stderr.splitlines() if line.startswith("diffjax: 8 cpu")]
    assert len(summary) == 1
    for words in ("mesh {'data': 8}", "M params", "global batch 8", "(64 images", workdir):
        assert words in summary[0]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "6"]
    grid = os.path.join("samples", "step_0000006.png")
    for name in ("config.json", "metrics.jsonl", "loss.png", grid):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))
    assert "Traceback" not in result.stderr


def test_the_fd_log_quotes_the_recipe_only_while_the_settings_are_its_own(tmp_path, capsys):
    """A 2-step 28x28 run logs FD-FMNIST at step 2; the quote of config.eval.quoted_fd is
    printed beside it when its digest is the run's settings', and not after a change."""
    from diffjax.training.config import settings_digest
    from diffjax.training.programs import validate_config

    data_dir = make_image_folder(tmp_path / "images", num_per_class=8, size=28)
    overrides = {
        "data.image_size": 28, "model.attn_resolutions": (14,), "training.num_steps": 2,
        "eval.fd_every_steps": 2, "eval.fd_num_samples": 16, "eval.fd_batch_size": 16,
        "eval.batch_size": 16, "sampling.num_steps": 2,
    }  # fmt: skip
    config = make_test_config(data_dir, **overrides)
    config.eval.quoted_fd = {"digest": settings_digest(validate_config(config)), "2": 123.4}
    with fast_compiles():
        loop.train_and_evaluate(config, str(tmp_path / "quoted"))
        logged = capsys.readouterr().err
        config.sampling.num_steps = 3  # another sampler setting: the quote says nothing
        loop.train_and_evaluate(config, str(tmp_path / "changed"))
        changed = capsys.readouterr().err
    assert re.search(r"fd_fmnist of 16 EMA samples at step 2: [\d.]+ \(.*\); the recipe's "
                     r"measured value here: 123.4\n", logged), logged[-2000:]  # fmt: skip
    assert "fd_fmnist of 16 EMA samples at step 2" in changed
    assert "the recipe's measured value" not in changed
