"""Samplers by name, and the registry open to user code (diffjax/samplers/registry.py): a
sampler registered in a user's module works through dj.sample, a config and the sample CLI."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import user_extensions  # noqa: E402,F401  (registers 'squared_ddim')
from train_helpers import (  # noqa: E402
    PYTHON,
    make_image_folder,
    make_test_config,
    subprocess_env,
    train_command,
)

import diffjax as dj  # noqa: E402
from diffjax import samplers  # noqa: E402
from diffjax.errors import ConfigError  # noqa: E402
from diffjax.training.programs import validate_config  # noqa: E402

IMAGE = jnp.full((8,), 0.25)


def _exact_x0(x_in, t_in):
    return jnp.broadcast_to(IMAGE, x_in.shape)


def test_a_registered_sampler_is_one_of_the_names_and_samples():
    assert "squared_ddim" in dj.SAMPLER_NAMES and "squared_ddim" in tuple(dj.SAMPLER_NAMES)
    assert samplers.sampler_options("squared_ddim") == {
        "num_steps": 8,
        "prediction_type": samplers.REQUIRED,
    }
    assert samplers.is_deterministic("squared_ddim", {})
    x = dj.sample("squared_ddim", _exact_x0, dj.RectifiedFlow(), jax.random.key(0), (4, 8),
                  num_steps=5, prediction_type="x0")  # fmt: skip
    np.testing.assert_allclose(x, jnp.broadcast_to(IMAGE, (4, 8)), atol=1e-6)
    # The runner's common options reach it too.
    clipped = dj.sample("squared_ddim", lambda x, t: 3.0 * jnp.ones_like(x), dj.RectifiedFlow(),
                        jax.random.key(0), (4, 8), prediction_type="x0", clip_x0=True)  # fmt: skip
    np.testing.assert_allclose(clipped, 1.0)
    with pytest.raises(TypeError, match=r"does not take \['eta'\]"):
        samplers.check_sampler_options("squared_ddim", dj.RectifiedFlow(), {"eta": 0.5})
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        samplers.check_sampler_options(
            "squared_ddim", dj.RectifiedFlow(), {"num_steps": 0, "prediction_type": "eps"}
        )


def test_prediction_type_has_no_default():
    """No sampler guesses what the network predicts: the dispatcher names the missing option,
    and a sampler function called directly lacks its keyword-only argument."""
    process = dj.RectifiedFlow()
    with pytest.raises(TypeError, match="needs prediction_type="):
        dj.sample("flow_euler", _exact_x0, process, jax.random.key(0), (4, 8), num_steps=2)
    with pytest.raises(
        TypeError, match="missing 1 required keyword-only argument: 'prediction_type'"
    ):
        dj.samplers.ddim_sample(_exact_x0, process, jax.random.key(0), (4, 8), num_steps=2)
    assert samplers.sampler_options("flow_euler")["prediction_type"] is samplers.REQUIRED
    assert repr(samplers.REQUIRED) == "REQUIRED"


def test_deterministic_is_one_table():
    assert samplers.is_deterministic("ddim", {"eta": 0.0})
    assert not samplers.is_deterministic("ddim", {"eta": 0.5})
    assert not samplers.is_deterministic("heun", {"s_churn": 10.0})
    assert samplers.is_deterministic("ode", {}) and not samplers.is_deterministic("pc", {})


def test_registration_refuses_taken_names_and_plans_without_a_prediction_type():
    with pytest.raises(ValueError, match="'ddim' is taken"):
        samplers.register_sampler("ddim", user_extensions.squared_grid_plan, deterministic=True)

    def plan(process, *, num_steps=4):
        raise AssertionError("never called")

    with pytest.raises(TypeError, match="keyword-only prediction_type"):
        samplers.register_sampler("no_prediction_type", plan, deterministic=True)
    assert "no_prediction_type" not in dj.SAMPLER_NAMES


def test_a_config_names_the_registered_sampler_through_its_imports(tmp_path):
    config = make_test_config(str(tmp_path))
    config.imports = ("user_extensions",)
    config.diffusion.process = "rectified_flow"
    config.diffusion.prediction_type = "flow"
    config.sampling.sampler = "squared_ddim"
    config.sampling.num_steps = 3
    assert validate_config(config)["sampling"]["sampler"] == "squared_ddim"
    config.imports = ("no_such_module_of_the_user",)
    with pytest.raises(ConfigError, match="config.imports names 'no_such_module_of_the_user'"):
        validate_config(config)


@pytest.mark.usefixtures("unoptimized")
def test_the_sample_cli_finds_the_registered_sampler_in_a_fresh_process(tmp_path):
    """train (a subprocess) with the sampler in its config, then `python -m diffjax.sample
    --sampler squared_ddim` in another fresh process: the run's config.imports registers it."""
    data = make_image_folder(tmp_path / "data")
    workdir = tmp_path / "run"
    env = subprocess_env()
    env["PYTHONPATH"] = os.path.dirname(os.path.abspath(__file__)) + os.pathsep + env["PYTHONPATH"]
    overrides = {
        "diffusion.process": "rectified_flow", "diffusion.prediction_type": "flow",
        "sampling.sampler": "squared_ddim", "training.num_steps": 2,
        "sampling.num_steps": 3, "eval.every_steps": 0,
    }  # fmt: skip
    command = train_command(str(workdir), data, **overrides) + [
        "--config.imports=('user_extensions',)"
    ]
    subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=600)
    assert (workdir / "samples" / "step_0000002.png").exists()
    result = subprocess.run(
        [PYTHON, "-m", "diffjax.sample", f"--workdir={workdir}", "--sampler=squared_ddim",
         "--steps=4", "--num=8", "--cpu_devices=1"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    with np.load(workdir / "samples" / "cli_squared_ddim_4steps_step2_seed0.npz") as saved:
        assert saved["samples"].shape == (8, 8, 8, 1)
