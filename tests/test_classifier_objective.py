"""The classifier objective through the training program
(diffjax/training/objectives/classifier.py): stratified noise levels, the cross-entropy and
accuracies it logs, a stopped and resumed run equal to a straight one, and one-line errors."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_helpers import fast_compiles, make_image_folder, make_test_config  # noqa: E402

import diffjax as dj  # noqa: E402
from diffjax.errors import ConfigError  # noqa: E402
from diffjax.models import default_model_config  # noqa: E402
from diffjax.training import default_objective_config  # noqa: E402
from diffjax.training.loop import train_and_evaluate  # noqa: E402
from diffjax.training.objectives.classifier import (  # noqa: E402
    make_classifier_loss,
    stratified_times,
)
from diffjax.training.programs import validate_config  # noqa: E402

TINY_CLASSIFIER = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, num_groups=4)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


def classifier_config(data_dir, **objective):
    """configs/test.py's data (two classes) and budget with a tiny classifier."""
    config = make_test_config(data_dir)
    config.model = default_model_config("unet_classifier")
    config.model.update(TINY_CLASSIFIER, num_classes=2)
    config.objective = default_objective_config("classifier")
    config.objective.update(objective)
    config.eval.fd_every_steps = 0
    config.sampling.every_steps = 0
    config.training.checkpoint_every_steps = 2
    config.training.keep_checkpoints = 10
    return config


@pytest.mark.parametrize("process", [dj.get_schedule("cosine", 1000), dj.RectifiedFlow()])
def test_stratified_times_put_group_k_in_slice_k_and_are_uniform(process):
    """Example i lies in [i / B, (i + 1) / B) of the range (floored to a timestep for a
    schedule), so group k of 4 in its quarter, and
    over many batches the times are uniform (a quarter each to within 4 standard errors)."""
    batch, draws = 16, 200
    times = jax.vmap(lambda key: stratified_times(key, batch, 4, process))(
        jax.random.split(jax.random.key(0), draws)
    )
    scale = 1000 if isinstance(process, dj.DiffusionSchedule) else 1.0
    u = np.asarray(times, np.float64) / scale
    # A schedule's timestep is floor(T u): its slice starts at floor(T i / B) / T.
    assert np.all(u >= np.floor(np.arange(batch) / batch * scale) / scale - 1e-7)
    assert np.all(u < (np.arange(batch) + 1) / batch)
    shares = np.histogram(u.ravel(), bins=4, range=(0, 1))[0] / u.size
    np.testing.assert_allclose(shares, 0.25, atol=4 * np.sqrt(0.25 * 0.75 / u.size))
    with pytest.raises(ValueError, match="batch_size=10 must be divisible by num_bins=4"):
        stratified_times(jax.random.key(0), 10, 4, process)


def test_an_untrained_classifier_scores_log_k_and_its_accuracy_by_slice():
    """The zero head predicts the uniform distribution: cross-entropy log K exactly; argmax is
    class 0, so each slice's accuracy is its share of label 0."""
    model = dj.models.NoisyClassifier(num_classes=3, **TINY_CLASSIFIER)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)))["params"]
    loss_fn = make_classifier_loss(model, dj.RectifiedFlow(), prediction_type="flow")
    labels = jnp.asarray([0, 1, 2, 0, 0, 0, 1, 1])
    batch = {"image": jnp.zeros((8, 8, 8, 1)), "cond": {"label": labels}}
    loss, metrics = loss_fn(params, {}, batch, jax.random.key(1), False)
    np.testing.assert_allclose(loss, np.log(3), rtol=1e-6)
    expected = [0.5, 0.5, 1.0, 0.0]  # label 0's share in each pair of examples
    np.testing.assert_allclose([metrics[f"accuracy_q{k}"] for k in range(1, 5)], expected)
    np.testing.assert_allclose(metrics["accuracy"], 0.5)


def test_a_run_learns_logs_its_metrics_and_resumes_exactly(data_dir, tmp_path, capsys):
    """Six steps on two classes (one brighter): the logged metrics hold the cross-entropy and
    the per-slice accuracies, the held-out loss is written; four steps, a stop and two more end
    where six straight steps end, bit for bit."""
    config = classifier_config(data_dir)
    config.training.num_steps = 4
    stopped = str(tmp_path / "stopped")
    with fast_compiles():
        train_and_evaluate(config, stopped)
        config.training.num_steps = 6
        resumed = train_and_evaluate(config, stopped)
        straight = train_and_evaluate(config, str(tmp_path / "straight"))
    assert jax.tree.all(jax.tree.map(np.array_equal, resumed.params, straight.params))
    assert jax.tree.all(jax.tree.map(np.array_equal, resumed.opt_state, straight.opt_state))
    logged = [json.loads(line) for line in open(os.path.join(stopped, "metrics.jsonl"))]
    trained = [entry for entry in logged if "accuracy" in entry]
    assert trained and all(
        {"cross_entropy", "accuracy_q1", "accuracy_q4"} <= set(entry) for entry in trained
    )
    assert any("eval_loss" in entry for entry in logged)
    # The closing message says how to guide a run with it (not how to sample from it).
    out = capsys.readouterr()
    assert f"--classifier {stopped}" in out.out + out.err


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "model.num_classes",
            None,
            r"config.model \(unet_classifier\): num_classes must be an int >= 2",
        ),
        ("objective.num_bins", 3, "batch_size=8 must be divisible by config.objective.num_bins=3"),
        ("training.cond_dropout", 0.1, "the classifier's label is its target"),
    ],
)
def test_bad_classifier_configs_are_one_line_errors(data_dir, key, value, message):
    config = classifier_config(data_dir)
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config)
