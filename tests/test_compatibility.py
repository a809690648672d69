"""A workdir written by diffjax 0.2.0 (tests/fixtures/workdir_0_2_0: its config.json and its
checkpoint of step 2, made by commit a15d3da with a 2-step run of configs/test.py on the
generated image folder, UNet base_channels=4) still samples, evaluates and resumes."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from train_helpers import fast_compiles, make_image_folder, make_test_config

import diffjax as dj
from diffjax.evaluation.program import EvalSettings, evaluate_run
from diffjax.sharding import make_mesh
from diffjax.training.loop import train_and_evaluate
from diffjax.training.programs import make_run_generator
from diffjax.training.trained_run import load_trained_run

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "workdir_0_2_0")
OVERRIDES = {
    "training.checkpoint_every_steps": 2, "training.keep_checkpoints": 1, "eval.every_steps": 0,
    "sampling.num_samples": 0, "model.base_channels": 4, "model.num_groups": 2,
    "data.batch_size": 2, "eval.batch_size": 2,
}  # fmt: skip


@pytest.fixture
def old_workdir(tmp_path):
    """A copy of the fixture whose data folder (``/tmp/oldfix/data`` when it was made) is a
    freshly generated one, as when a user moves their data: the record is otherwise untouched."""
    workdir = str(tmp_path / "run")
    shutil.copytree(FIXTURE, workdir)
    data_dir = make_image_folder(tmp_path / "data")
    record_path = os.path.join(workdir, "config.json")
    with open(record_path) as f:
        record = json.load(f)
    record["config"]["data"]["data_dir"] = data_dir
    with open(record_path, "w") as f:
        json.dump(record, f, indent=2)
    return workdir, data_dir


def test_the_fixture_is_a_0_2_0_run_record():
    with open(os.path.join(FIXTURE, "config.json")) as f:
        record = json.load(f)
    assert record["diffjax_version"] == "0.2.0"
    assert "label_dropout" in record["config"]["training"] and "objective" not in record["config"]


def test_an_old_workdir_samples_and_evaluates(old_workdir, monkeypatch, tmp_path):
    workdir, _ = old_workdir
    # No Inception weights anywhere: bits/dim needs no feature network.
    monkeypatch.setenv("DIFFJAX_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    run = load_trained_run(workdir)
    assert run.step == 2 and run.programs.latent_shape == (8, 8, 1)
    generate = make_run_generator(run.config, run.programs, 4, None)
    images = generate(run.state.ema_params, dj.sample_keys(0, 0, 4))
    assert images.shape == (4, 8, 8, 1) and bool(np.all(np.isfinite(images)))
    settings = EvalSettings(
        metrics=("bpd",), num_samples=2, batch_size=2, sampler="ddim",
        options=dict(num_steps=2, prediction_type="eps"), guidance_scale=1.0, ema=True, seed=0,
        features="inception", bpd_num=2, bpd_timesteps=4, bpd_rtol=1e-2,
    )  # fmt: skip
    with fast_compiles():
        record = evaluate_run(
            workdir, settings, mesh=make_mesh(jax.devices()[:2]), progress=False, download=False
        )
    assert record["step"] == 2 and np.isfinite(record["results"]["bpd"]["mean"])


def test_an_old_workdir_resumes(old_workdir):
    workdir, data_dir = old_workdir
    config = make_test_config(data_dir, **OVERRIDES, **{"training.num_steps": 4})
    with fast_compiles():
        state = train_and_evaluate(config, workdir, devices=jax.devices()[:2])
    assert int(state.step) == 4
    with open(os.path.join(workdir, "config.json")) as f:
        record = json.load(f)
    assert record["config"]["training"]["cond_dropout"] == 0.0
    assert record["config"]["objective"] == {"name": "denoising"}
