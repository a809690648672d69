"""The ControlNet objective through the training program
(diffjax/training/objectives/controlnet.py): the state holds the ControlNet alone, its first
parameters copy the frozen base (so the run's first samples are the base's), samples follow a
control image given to the sample CLI, a stopped run resumes exactly, and bad configs are
one-line errors."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_helpers import PYTHON, fast_compiles, subprocess_env  # noqa: E402

import diffjax as dj  # noqa: E402
from diffjax.data.datasets.control import load_circles  # noqa: E402
from diffjax.errors import ConfigError  # noqa: E402
from diffjax.losses import denoising_loss  # noqa: E402
from diffjax.models import default_model_config, make_model_fn  # noqa: E402
from diffjax.models.registry import controlnet_model_config  # noqa: E402
from diffjax.training import default_objective_config, loop  # noqa: E402
from diffjax.training.programs import validate_config  # noqa: E402

TEST_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "test.py")


def base_config():
    import runpy

    config = runpy.run_path(TEST_CONFIG)["get_config"]()
    config.data.name = "circles"
    config.data.image_size = 16
    config.model.attn_resolutions = (8,)
    config.eval.split = "test"
    config.training.num_steps = 2
    return config


def controlnet_config(base_dir):
    config = base_config()
    config.model = controlnet_model_config(config.model)
    config.model.conditioning_embedding_channels = (4, 8)
    config.objective = default_objective_config("controlnet")
    config.objective.base = base_dir
    config.training.cond_dropout = 0.2
    config.training.checkpoint_every_steps = 2
    return config


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("base"))
    with fast_compiles():
        loop.train_and_evaluate(base_config(), workdir)
    return workdir


def test_the_state_is_the_controlnet_and_starts_as_the_base(base, tmp_path):
    base_run = dj.load_trained_run(base)
    with fast_compiles():
        run = loop._Run(controlnet_config(base), str(tmp_path / "cn0"), None)
    try:
        state, network_params = run.state, run.programs.objective.network_params
        # Parameters, EMA and optimizer moments: the ControlNet's; the base is a step argument.
        assert "cond_embedding" in state.params and "up_0_res_0" not in state.params
        np.testing.assert_array_equal(
            state.params["conv_in"]["kernel"], base_run.state.ema_params["conv_in"]["kernel"]
        )
        x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
        t = np.array([10, 900])
        control = jax.random.uniform(jax.random.key(1), (2, 16, 16, 1))
        out = run.programs.model.apply(
            {"params": network_params(state.ema_params, run.frozen)}, x, t, {"control": control}
        )
    finally:
        run.checkpoints.close()
    base_out = base_run.model.apply({"params": base_run.state.ema_params}, x, t)
    assert np.abs(np.asarray(base_out)).max() > 0
    # The zero convolutions silence a new ControlNet: the base model's prediction exactly.
    np.testing.assert_array_equal(np.asarray(out), np.asarray(base_out))


def test_training_moves_only_the_controlnet_and_resumes_exactly(base, tmp_path):
    base_before = dj.load_trained_run(base).state.ema_params
    config = controlnet_config(base)
    stopped, straight = str(tmp_path / "stopped"), str(tmp_path / "straight")
    with fast_compiles():
        first = loop.train_and_evaluate(config, stopped)
        config.training.num_steps = 4
        resumed = loop.train_and_evaluate(config, stopped)
        direct = loop.train_and_evaluate(config, straight)
    zero_conv = first.params["controlnet_mid"]["kernel"]
    assert np.abs(np.asarray(zero_conv)).max() > 0
    assert jax.tree.all(jax.tree.map(np.array_equal, resumed.params, direct.params))
    assert jax.tree.all(jax.tree.map(np.array_equal, resumed.opt_state, direct.opt_state))
    base_after = dj.load_trained_run(base).state.ema_params
    assert jax.tree.all(jax.tree.map(np.array_equal, base_before, base_after))


def test_a_dit_controlnet_starts_as_its_base(tmp_path):
    config = base_config()
    config.model = default_model_config("dit")
    config.model.update(hidden_size=16, depth=2, num_heads=2, patch_size=4)
    base_dir = str(tmp_path / "dit")
    with fast_compiles():
        loop.train_and_evaluate(config, base_dir)
        config.model = controlnet_model_config(config.model)
        config.objective = default_objective_config("controlnet")
        config.objective.base = base_dir
        run = loop._Run(config, str(tmp_path / "cn"), None)
    base_run = dj.load_trained_run(base_dir)
    try:
        params = run.programs.objective.network_params(run.state.params, run.frozen)
        assert sorted(name for name in run.state.params if "blocks" in name) == [
            "controlnet_blocks_0", "transformer_blocks_0",
        ]  # fmt: skip
        x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
        t, control = np.array([10, 900]), np.ones((2, 16, 16, 1), np.float32)
        out = run.programs.model.apply({"params": params}, x, t, {"control": control})
    finally:
        run.checkpoints.close()
    base_out = base_run.model.apply({"params": base_run.state.ema_params}, x, t)
    assert np.abs(np.asarray(base_out)).max() > 0
    np.testing.assert_array_equal(np.asarray(out), np.asarray(base_out))


def _per_example_losses(run, params, images, controls, key):
    """The denoising loss of each example with its control, the same noise and time for all
    calls (a paired comparison)."""
    keys = jax.random.split(key, len(images))

    def loss(x, example_key, control):
        model_fn = make_model_fn(run.model, params, {"control": control[None]})
        return denoising_loss(model_fn, run.process, x[None], example_key)[0]

    return np.asarray(jax.jit(jax.vmap(loss))(images, keys, controls))


@pytest.mark.slow
def test_a_trained_controlnet_uses_its_control(tmp_path):
    """After 200 steps on the circles, the held-out loss with each image's own outline is
    below the loss with another image's outline and below the base model's, by more than
    three standard errors of the paired differences."""
    base_dir, workdir = str(tmp_path / "base"), str(tmp_path / "cn")
    # One checkpoint per run: configs/test.py's checkpoint every 2 steps would be 100 saves
    # (about 1 s each here), most of the test's time.
    long_run = {"training.num_steps": 200, "training.checkpoint_every_steps": 200,
                "training.log_every_steps": 50, "optim.learning_rate": 2e-3}  # fmt: skip
    config = base_config()
    config.update_from_flattened_dict(long_run)
    with fast_compiles():
        loop.train_and_evaluate(config, base_dir)
        config = controlnet_config(base_dir)
        config.update_from_flattened_dict(long_run)
        loop.train_and_evaluate(config, workdir)
    run, base_run = dj.load_trained_run(workdir), dj.load_trained_run(base_dir)
    frozen = {"base": base_run.state.ema_params}  # the frozen source: the base's EMA weights
    params = run.programs.objective.network_params(run.state.params, frozen)
    test, _ = load_circles("test", 16)
    images, controls = test["image"][:256], test["cond"]["control"][:256]
    key = jax.random.key(0)
    own = _per_example_losses(run, params, images, controls, key)
    other = _per_example_losses(run, params, images, np.roll(controls, 1, axis=0), key)
    silent = dict(params, controlnet=jax.tree.map(np.zeros_like, params["controlnet"]))
    base = _per_example_losses(run, silent, images, controls, key)
    for worse in (other, base):
        differences = worse - own
        standard_error = differences.std(ddof=1) / np.sqrt(len(differences))
        assert differences.mean() > 3 * standard_error


def test_the_sample_cli_takes_a_control_image(base, tmp_path):
    config = controlnet_config(base)
    workdir = str(tmp_path / "cn")
    with fast_compiles():
        loop.train_and_evaluate(config, workdir)
    outline = np.zeros((16, 16), np.uint8)
    outline[4:12, 4] = outline[4:12, 11] = outline[4, 4:12] = outline[11, 4:12] = 255
    path = str(tmp_path / "outline.png")
    Image.fromarray(outline).save(path)
    command = [
        PYTHON, "-m", "diffjax.sample", f"--workdir={workdir}", f"--control={path}",
        "--num=2", "--steps=2", f"--out={tmp_path / 'cli'}",
    ]  # fmt: skip
    done = subprocess.run(command, env=subprocess_env(2), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    samples = np.load(tmp_path / "cli.npz")["samples"]
    assert samples.shape == (2, 16, 16, 3) and np.isfinite(samples).all()
    wrong = str(tmp_path / "wrong.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(wrong)
    command[4] = f"--control={wrong}"
    done = subprocess.run(command, env=subprocess_env(2), capture_output=True, text=True)
    assert done.returncode != 0
    assert "is 8x8 pixels; this run's control images are 16x16" in done.stderr


def _no_base(config):
    config.objective.base = ""


def _unet_model(config):
    config.model = base_config().model


@pytest.mark.parametrize(
    "change, message",
    [
        (_no_base, "set config.objective.base to its workdir"),
        (_unet_model, "trains the 'controlnet' network"),
    ],
)
def test_bad_controlnet_configs_are_one_line_errors(base, change, message):
    config = controlnet_config(base)
    change(config)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_another_network_than_the_bases_is_refused(base, tmp_path):
    config = controlnet_config(base)
    config.model.base_channels = 16
    with pytest.raises(ConfigError, match="must be the network of the base run"):
        with fast_compiles():
            loop.train_and_evaluate(config, str(tmp_path / "other"))
