"""Objectives by name through the training program (diffjax/training/objectives.py): parameter
groups, a frozen teacher from a workdir, a network that reads a context and a control image
with classifier-free guidance on the whole cond pytree, and a latent codec."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import user_extensions  # noqa: E402
from train_helpers import fast_compiles, make_image_folder, make_test_config  # noqa: E402

import diffjax as dj  # noqa: E402
from diffjax.errors import ConfigError  # noqa: E402
from diffjax.models import default_model_config, make_model_fn, null_cond  # noqa: E402
from diffjax.training import default_objective_config  # noqa: E402
from diffjax.training.loop import train_and_evaluate  # noqa: E402
from diffjax.training.programs import make_run_generator, validate_config  # noqa: E402
from diffjax.training.trained_run import load_trained_run  # noqa: E402
from diffjax.training.workdir import load_run_record  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


def _config(data_dir, **overrides):
    config = make_test_config(data_dir, **overrides)
    config.imports = ("user_extensions",)
    return config


def _initial_params(config, workdir):
    """The parameters a run starts from: its programs' init_fn at its init key."""
    from diffjax.training.loop import _keys

    run = load_trained_run(workdir)
    return run.programs.init_fn(_keys(config.seed)[0])


def test_an_objective_with_two_groups_trains_one_and_leaves_the_frozen_one_bit_identical(
    data_dir, tmp_path
):
    config = _config(data_dir)
    config.objective = default_objective_config("partly_frozen")
    workdir = str(tmp_path / "run")
    with fast_compiles():
        state = train_and_evaluate(config, workdir)
    initial = _initial_params(config, workdir)
    for name in initial:
        same = jax.tree.all(
            jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), initial[name], state.params[name])
        )
        assert same == (name == "time_embedding"), name
    # The optimizer holds Adam's two moments of every trainable parameter and nothing of the
    # frozen ones.
    sizes = {
        name: sum(leaf.size for leaf in jax.tree.leaves(tree)) for name, tree in initial.items()
    }
    trainable = sum(size for name, size in sizes.items() if name != "time_embedding")
    moments = sum(leaf.size for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim)
    assert moments == 2 * trainable
    assert sizes["time_embedding"] > 0


@pytest.mark.slow
def test_a_frozen_teacher_from_a_workdir_is_loaded_recorded_and_passed_to_the_step(
    data_dir, tmp_path
):
    teacher = str(tmp_path / "teacher")
    with fast_compiles():
        train_and_evaluate(_config(data_dir), teacher)
    config = _config(data_dir, **{"training.num_steps": 8})
    config.objective = default_objective_config("teacher_regression")
    config.objective.teacher = teacher
    config.optim.learning_rate = 3e-3
    workdir = str(tmp_path / "student")
    with fast_compiles():
        train_and_evaluate(config, workdir)
    record = load_run_record(workdir)
    assert record["frozen"] == {
        "teacher": {"workdir": os.path.abspath(teacher), "step": 6, "weights": "ema"}
    }
    losses = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    losses = [entry["loss"] for entry in losses if "loss" in entry]
    # The student starts at zero output (zero-initialised last layer) and regresses onto the
    # teacher's non-zero prediction: the loss falls.
    assert losses[-1] < losses[0]
    config.objective.teacher = ""
    with pytest.raises(ConfigError, match="must name a trained workdir"):
        validate_config(config)


def _toy_config(data_dir):
    config = _config(data_dir)
    config.data.name = "toy_cond_data"
    config.model = default_model_config("toy_cond")
    config.training.cond_dropout = 0.3
    config.sampling.guidance_scale = 2.0
    config.eval.split = "test"
    return config


def test_a_network_reading_a_context_and_a_control_image_trains_and_samples_with_guidance(
    tmp_path,
):
    config = _toy_config(None)
    workdir = str(tmp_path / "toy")
    with fast_compiles():
        train_and_evaluate(config, workdir)
    assert os.path.exists(os.path.join(workdir, "samples", "step_0000006.png"))
    run = load_trained_run(workdir)
    assert run.dataset["cond_spec"] == (
        ("context", user_extensions.CONTEXT_SHAPE, "float32"),
        ("control", (8, 8, 1), "float32"),
    )
    arrays, _ = user_extensions.toy_cond_arrays("test", 8)
    cond = jax.tree.map(lambda value: jnp.asarray(value[:4]), arrays["cond"])
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    t = jnp.full((4,), 500, jnp.int32)
    params = run.state.ema_params
    guided = make_model_fn(run.model, params, cond, guidance_scale=2.0)(x, t)
    conditional = make_model_fn(run.model, params, cond)(x, t)
    unconditional = make_model_fn(run.model, params, null_cond(run.model, cond))(x, t)
    np.testing.assert_allclose(
        guided, unconditional + 2.0 * (conditional - unconditional), rtol=1e-5, atol=1e-6
    )
    # Both keys of the condition reach the network: changing either changes its prediction.
    for key in cond:
        changed = dict(cond, **{key: cond[key] + 1.0})
        assert not np.allclose(make_model_fn(run.model, params, changed)(x, t), conditional)


@pytest.mark.slow
def test_the_unets_cross_attention_trains_on_a_context_and_samples_with_guidance(tmp_path):
    config = _toy_config(None)
    config.model = make_test_config("").model
    config.model.context_dim = user_extensions.CONTEXT_SHAPE[1]
    config.model.transformer_heads = 2
    workdir = str(tmp_path / "cross_attention")
    with fast_compiles():
        train_and_evaluate(config, workdir)
    assert os.path.exists(os.path.join(workdir, "samples", "step_0000006.png"))
    run = load_trained_run(workdir)
    assert run.model.cond_keys == ("context",)
    arrays, _ = user_extensions.toy_cond_arrays("test", 8)
    cond = {"context": jnp.asarray(arrays["cond"]["context"][:4])}
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    t = jnp.full((4,), 500, jnp.int32)
    params = run.state.ema_params
    conditional = make_model_fn(run.model, params, cond)(x, t)
    unconditional = make_model_fn(run.model, params, null_cond(run.model, cond))(x, t)
    guided = make_model_fn(run.model, params, cond, guidance_scale=2.0)(x, t)
    np.testing.assert_allclose(
        guided, unconditional + 2.0 * (conditional - unconditional), rtol=1e-5, atol=1e-6
    )
    # Six steps moved the zero-initialised output projections: the context reaches the output.
    assert not np.allclose(conditional, unconditional)


@pytest.mark.slow
def test_a_latent_codec_trains_in_its_space_and_decodes_the_samples(data_dir, tmp_path):
    config = _config(data_dir)
    config.codec.name = "space_to_depth"
    config.model.attn_resolutions = (2,)  # the latents are 4x4: levels 4 and 2
    workdir = str(tmp_path / "latent")
    with fast_compiles():
        train_and_evaluate(config, workdir)
    run = load_trained_run(workdir)
    assert run.programs.latent_shape == (4, 4, 4)
    assert run.state.params["conv_in"]["kernel"].shape[2] == 4  # 4 latent channels in
    generate = make_run_generator(run.config, run.programs, 8, None)
    keys = dj.sample_keys(0, 0, 8)
    images = generate(run.state.ema_params, keys)
    latents = generate(run.state.ema_params, keys, decode=False)
    assert images.shape == (8, 8, 8, 1) and latents.shape == (8, 4, 4, 4)
    codec = run.programs.codec
    np.testing.assert_array_equal(codec.decode(None, latents), images)
    # The codec is exact: encoding then decoding the data gives it back.
    data = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1), minval=-1, maxval=1)
    np.testing.assert_array_equal(codec.decode(None, codec.encode(None, data, None)), data)
    # No x0 clipping in latent space, whatever config.sampling.clip_x0 says.
    assert run.config["sampling"]["clip_x0"] and not codec.clip
