"""Classifier guidance of a trained run by a trained classifier run
(diffjax/training/classifier_guidance.py) through the sample CLI and ``dj.sample_run``: the
CLI's samples equal the library's generator with the classifier's guide, the guide changes
the samples, and bad flags are one-line errors before anything loads."""

import os

import numpy as np
import pytest
from train_helpers import PYTHON, fast_compiles, make_image_folder, make_test_config, run_cli

import diffjax as dj
from diffjax.errors import ConfigError
from diffjax.generation import make_generator
from diffjax.models import default_model_config
from diffjax.samplers import sample_keys
from diffjax.sharding import make_mesh
from diffjax.training import default_objective_config, loop
from diffjax.training.classifier_guidance import load_run_classifier
from diffjax.training.trained_run import load_trained_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny unconditional run and a tiny classifier run on the same data and process."""
    data_dir = make_image_folder(tmp_path_factory.mktemp("images"))
    denoiser = str(tmp_path_factory.mktemp("denoiser"))
    classifier = str(tmp_path_factory.mktemp("classifier"))
    config = make_test_config(data_dir)
    classifier_config = make_test_config(data_dir)
    classifier_config.model = default_model_config("unet_classifier")
    classifier_config.model.update(
        num_classes=2, base_channels=8, channel_mults=(1, 2), num_groups=4
    )
    classifier_config.objective = default_objective_config("classifier")
    classifier_config.eval.every_steps = 0
    with fast_compiles():
        loop.train_and_evaluate(config, denoiser)
        loop.train_and_evaluate(classifier_config, classifier)
    return denoiser, classifier


def sample_command(workdir, *flags):
    return [PYTHON, "-m", "diffjax.sample", f"--workdir={workdir}", *flags]


def test_the_cli_guides_with_the_classifier_as_the_library_does(runs):
    denoiser, classifier = runs
    flags = ["--num=6", "--batch=8", "--steps=3", "--seed=1", f"--classifier={classifier}",
             "--classifier_scale=50", "--class=1"]  # fmt: skip
    result = run_cli(sample_command(denoiser, *flags))
    assert result.returncode == 0, result.stderr[-3000:]
    prefix = os.path.join(denoiser, "samples", "cli_ddim_3steps_step6_seed1_cg50")
    with np.load(prefix + ".npz", allow_pickle=False) as saved:
        samples, labels = saved["samples"], saved["labels"]
    np.testing.assert_array_equal(labels, [1] * 6)

    run = load_trained_run(denoiser)
    guidance = load_run_classifier(classifier, run.config, 50.0)
    generate = make_generator(
        run.model, run.process, shape=(8, 8, 1), num_samples=8, sampler="ddim",
        options=dict(num_steps=3, prediction_type="eps"), clip_x0=True, mesh=make_mesh(),
    )  # fmt: skip
    keys = sample_keys(1, 0, 8)
    guided = generate(run.state.ema_params, keys, guide=guidance.guide(np.ones(8, np.int32)))
    np.testing.assert_allclose(samples, np.asarray(guided)[:6], rtol=0, atol=1e-6)
    from_python = dj.sample_run(run, 6, batch_size=8, num_steps=3, seed=1,
                                labels=labels, classifier=guidance)  # fmt: skip
    np.testing.assert_allclose(from_python, samples, rtol=0, atol=1e-6)
    unguided = dj.sample_run(run, 6, batch_size=8, num_steps=3, seed=1)
    assert np.abs(unguided - samples).max() > 1e-3
    # Class 1 is the brighter class: its classifier pulls the samples brighter.
    towards_0 = dj.sample_run(run, 6, batch_size=8, num_steps=3, seed=1,
                              labels=np.zeros(6, np.int32), classifier=guidance)  # fmt: skip
    assert samples.mean() > towards_0.mean()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--classifier_scale=2"], "--classifier_scale needs --classifier"),
        (["--classifier={classifier}", "--class=5"], "--class=5 is not a class of the classifier"),
        (["--classifier={denoiser}"], "is a 'denoising' run; classifier guidance needs"),
    ],
)
def test_bad_classifier_flags_are_one_line_errors(runs, flags, message):
    denoiser, classifier = runs
    flags = [flag.format(classifier=classifier, denoiser=denoiser) for flag in flags]
    result = run_cli(sample_command(denoiser, "--num=2", "--steps=2", *flags))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("diffjax.sample:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_a_classifier_of_another_process_or_space_is_refused(runs):
    denoiser, classifier = runs
    config = load_trained_run(denoiser).config
    other = dict(config, diffusion=dict(config["diffusion"], schedule="linear"))
    with pytest.raises(ConfigError, match="schedule: 'cosine' vs 'linear'"):
        load_run_classifier(classifier, other, 1.0)
    latent = dict(config, codec={"name": "autoencoder", "options": {}})
    with pytest.raises(ConfigError, match="latent space of codec 'autoencoder'"):
        load_run_classifier(classifier, latent, 1.0)


def test_evaluating_a_classifier_run_says_what_it_is(runs):
    _, classifier = runs
    result = run_cli([PYTHON, "-m", "diffjax.evaluate", f"--workdir={classifier}"])
    assert result.returncode == 1
    assert "is a noisy classifier" in result.stderr and "Traceback" not in result.stderr
