"""The LoRA objective through the training program (diffjax/training/objectives/lora.py): the
state holds the LoRA alone (no parameters, EMA or optimizer moments of the base), samples come
from the merged weights, a stopped run resumes exactly, and bad configs are one-line errors."""

import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_helpers import fast_compiles, make_image_folder, make_test_config  # noqa: E402

import diffjax as dj  # noqa: E402
from diffjax.errors import ConfigError  # noqa: E402
from diffjax.generation import make_generator  # noqa: E402
from diffjax.lora import flat_lora, lora_paths, merge  # noqa: E402
from diffjax.samplers import sample_keys  # noqa: E402
from diffjax.sharding import make_mesh  # noqa: E402
from diffjax.training import default_objective_config, loop  # noqa: E402
from diffjax.training.programs import validate_config  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    data_dir = make_image_folder(tmp_path_factory.mktemp("images"))
    workdir = str(tmp_path_factory.mktemp("base"))
    with fast_compiles():
        loop.train_and_evaluate(make_test_config(data_dir), workdir)
    return data_dir, workdir


def lora_config(data_dir, base_dir, **objective):
    config = make_test_config(data_dir)
    config.objective = default_objective_config("lora")
    config.objective.update(base=base_dir, rank=2, **objective)
    config.eval.every_steps = 0
    config.training.checkpoint_every_steps = 2
    return config


def _leaves_bytes(tree) -> int:
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def test_the_state_is_the_lora_and_samples_use_the_merged_weights(base, tmp_path):
    data_dir, base_dir = base
    base_run = dj.load_trained_run(base_dir)
    config = lora_config(data_dir, base_dir)
    config.training.num_steps = 4
    workdir = str(tmp_path / "lora")
    with fast_compiles():
        state = loop.train_and_evaluate(config, workdir)
    # Parameters, EMA and optimizer moments: the LoRA's shapes only.
    assert sorted(flat_lora(state.params)) == lora_paths(base_run.state.ema_params)
    base_bytes = _leaves_bytes(base_run.state.ema_params)
    assert _leaves_bytes(state.params) < base_bytes / 10
    assert _leaves_bytes(state.opt_state) < 3 * _leaves_bytes(state.params) + 1024
    assert any(np.any(pair["up"] != 0) for pair in flat_lora(state.params).values())

    run = dj.load_trained_run(workdir)
    samples = dj.sample_run(run, 4, batch_size=4, num_steps=2, seed=3)
    merged = merge(base_run.state.ema_params, run.state.ema_params, 4.0 / 2)  # alpha / rank
    generate = make_generator(
        run.model, run.process, shape=(8, 8, 1), num_samples=4, sampler="ddim",
        options=dict(num_steps=2, prediction_type="eps"), clip_x0=True, mesh=make_mesh(),
    )  # fmt: skip
    np.testing.assert_allclose(samples, generate(merged, sample_keys(3, 0, 4)), atol=1e-6)
    unadapted = generate(base_run.state.ema_params, sample_keys(3, 0, 4))
    assert np.abs(np.asarray(unadapted) - samples).max() > 0


def test_a_stopped_run_resumes_exactly(base, tmp_path):
    """Two steps, a stop and two more end where four straight steps end."""
    data_dir, base_dir = base
    config = lora_config(data_dir, base_dir)
    config.training.num_steps = 2
    stopped, straight = str(tmp_path / "stopped"), str(tmp_path / "straight")
    with fast_compiles():
        loop.train_and_evaluate(config, stopped)
        config.training.num_steps = 4
        resumed = loop.train_and_evaluate(config, stopped)
        direct = loop.train_and_evaluate(config, straight)
    assert jax.tree.all(jax.tree.map(np.array_equal, resumed.params, direct.params))
    assert jax.tree.all(jax.tree.map(np.array_equal, resumed.opt_state, direct.opt_state))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(base=""), "set config.objective.base to its workdir"),
        (dict(rank=0), "config.objective.rank must be >= 1"),
        (dict(targets="(bad"), "a regular expression"),
    ],
)
def test_bad_lora_configs_are_one_line_errors(base, changes, message):
    data_dir, base_dir = base
    config = lora_config(data_dir, base_dir)
    config.objective.update(changes)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_another_network_than_the_bases_is_refused(base, tmp_path):
    data_dir, base_dir = base
    config = lora_config(data_dir, base_dir)
    config.model.base_channels = 16
    config.model.num_groups = 4
    with pytest.raises(ConfigError, match="must be the network of the base run"):
        with fast_compiles():
            loop.train_and_evaluate(config, str(tmp_path / "other"))
