"""``python -m diffjax.sample``: PNG + npz from a trained run, timing line, guidance, errors.

A class-conditional tiny run (2 classes, condition dropout 0.5, guidance 2) is trained
in-process; the CLI's samples must equal those of the library's ``make_generator`` called with
the same EMA parameters, key and labels (the CLI is only a wrapper), and its labels must come in
blocks, one class after the other.
"""

import os
import re
import shutil

import numpy as np
import pytest
from train_helpers import PYTHON, fast_compiles, make_image_folder, make_test_config, run_cli

import diffjax as dj
from diffjax.errors import ConfigError
from diffjax.generation import make_generator
from diffjax.samplers import sample_keys
from diffjax.sharding import make_mesh
from diffjax.training import loop
from diffjax.training.run_sampling import run_sampler
from diffjax.training.trained_run import load_trained_run

CONDITIONAL = {
    "model.num_classes": 2,
    "training.cond_dropout": 0.5,
    "sampling.guidance_scale": 2.0,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data_dir = make_image_folder(tmp_path_factory.mktemp("images"))
    workdir = str(tmp_path_factory.mktemp("run"))
    with fast_compiles():
        loop.train_and_evaluate(make_test_config(data_dir, **CONDITIONAL), workdir)
    return workdir


def sample_command(workdir, *flags):
    return [PYTHON, "-m", "diffjax.sample", f"--workdir={workdir}", *flags]


def test_sample_cli_writes_png_and_npz_equal_to_the_library(trained):
    result = run_cli(sample_command(trained, "--num=10", "--batch=8", "--steps=3", "--seed=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    # The timing line is reported (its numbers are measurements, not checked here).
    assert re.search(r"\(ddim, 3 steps, EMA weights\) on 8 cpu device\(s\): compiling and the "
                     r"first batch of 8 took [\d.]+ s; compiled, [\d.]+ ms per sample",
                     result.stdout)  # fmt: skip
    prefix = os.path.join(trained, "samples", "cli_ddim_3steps_step6_seed1_w2")
    assert os.path.getsize(prefix + ".png") > 100
    with np.load(prefix + ".npz", allow_pickle=False) as saved:
        samples, labels = saved["samples"], saved["labels"]
    assert samples.shape == (10, 8, 8, 1) and samples.dtype == np.float32
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    assert np.all(np.abs(samples) <= 1.0)  # clip_x0 keeps the x0-predictions in range

    run = load_trained_run(trained)
    generate = make_generator(
        run.model, run.process, shape=(8, 8, 1), num_samples=8, sampler="ddim",
        options=dict(num_steps=3, prediction_type="eps"), guidance_scale=2.0, clip_x0=True,
        mesh=make_mesh(),
    )  # fmt: skip
    # Sample i is drawn with fold_in(key(seed), i), whatever batch it falls in.
    params = run.state.ema_params
    first = generate(params, sample_keys(1, 0, 8), {"label": labels[:8]})
    second = generate(params, sample_keys(1, 8, 8), {"label": np.resize(labels[8:], 8)})
    expected = np.concatenate([np.asarray(first), np.asarray(second)[:2]])
    np.testing.assert_allclose(samples, expected, rtol=0, atol=1e-6)
    # The run's own sampling API applies the same defaults (clip_x0, guidance, prediction type).
    from_python = dj.sample_run(run, 10, batch_size=8, num_steps=3, seed=1, labels=labels)
    np.testing.assert_allclose(from_python, samples, rtol=0, atol=1e-6)


def test_another_sampler_starts_from_its_own_defaults_and_the_run_fixes_the_prediction(trained):
    run = load_trained_run(trained)
    steps = run.config["sampling"]["num_steps"]
    # The config's sampler with its steps; ddpm with its own default, as in the API: all T.
    # clip_x0 is the config's (True) unless an option says otherwise, and always stated.
    clip = run.config["sampling"]["clip_x0"]
    assert run_sampler(run, 8).options == dict(num_steps=steps, prediction_type="eps", clip_x0=clip)
    assert run_sampler(run, 8, sampler="ddpm").options == dict(prediction_type="eps", clip_x0=clip)
    with pytest.raises(ConfigError, match="prediction_type='v' contradicts the run.*'eps'"):
        run_sampler(run, 8, options={"prediction_type": "v"})
    with pytest.raises(ConfigError, match="clip_x0='no' must be true or false"):
        run_sampler(run, 8, options={"clip_x0": "no"})


def test_the_clip_x0_option_overrides_the_config(trained):
    """Unclipped DDIM samples of the 3-step toy run leave [-1, 1]; the config's clipped ones do
    not, and they differ from the unclipped ones."""
    run = load_trained_run(trained)
    assert run.config["sampling"]["clip_x0"] is True
    settings = dict(num_steps=3, seed=1, labels=np.zeros(8, np.int32), batch_size=8)
    clipped = dj.sample_run(run, 8, **settings)
    unclipped = dj.sample_run(run, 8, options={"clip_x0": False}, **settings)
    assert np.abs(clipped).max() <= 1.0 < np.abs(unclipped).max()


def test_sample_cli_rejects_a_bad_label_in_one_line(trained):
    result = run_cli(sample_command(trained, "--num=2", "--label=7"))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("diffjax.sample:")]
    assert lines == ["diffjax.sample: error: --label=7 is not a class of this run; allowed: 0..2."]
    assert "Traceback" not in result.stderr


def test_sample_cli_rejects_more_steps_than_timesteps_in_one_line(trained):
    result = run_cli(sample_command(trained, "--num=2", "--steps=5000"))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("diffjax.sample:")]
    assert lines == [
        "diffjax.sample: error: sampler 'ddim', num_steps=5000: num_steps must be in "
        "[1, T=1000] for a schedule of 1000 timesteps, got 5000."
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "sampler, flags",
    [("pc", ["--steps=3", "--option=t_max=0.999", "--option=snr=0.01"]),
     ("ode", ["--option=rtol=0.01", "--option=atol=0.01"])],
)  # fmt: skip
def test_sample_cli_runs_the_sde_and_ode_samplers_with_guidance(trained, sampler, flags):
    """The discrete run, sampled in its continuous-time view, with guidance 2 (the config's)."""
    result = run_cli(
        sample_command(trained, "--num=8", "--batch=8", f"--sampler={sampler}", *flags)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = [name for name in os.listdir(os.path.join(trained, "samples")) if sampler in name]
    with np.load(os.path.join(trained, "samples", sorted(names)[0].replace(".png", ".npz"))) as f:
        samples = f["samples"]
    assert samples.shape == (8, 8, 8, 1) and np.all(np.isfinite(samples))
    assert np.all(np.abs(samples) <= 1.0)
    if sampler == "ode":  # named and described by its tolerance, with its cost
        assert "cli_ode_rtol0.01_step6" in sorted(names)[0]
        assert re.search(r"\(ode, adaptive, rtol=0.01, EMA weights, \d+ function evaluations "
                         r"per batch\)", result.stdout), result.stdout  # fmt: skip


@pytest.mark.parametrize(
    "flag, message",
    [("--option=eta=abc", "eta must be a real number in [0, 1], got 'abc'."),
     ("--option=prediction_type=v", "prediction_type='v' contradicts the run"),
     ("--option=clip_x0=1", "clip_x0=1 must be true or false.")],
)  # fmt: skip
def test_sample_cli_names_a_bad_option_in_one_line(trained, flag, message):
    result = run_cli(sample_command(trained, "--num=2", flag))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("diffjax.sample:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]


def test_sample_cli_checks_its_flags_before_loading_the_checkpoint(trained, tmp_path):
    """A run record without checkpoints: a bad flag is reported, not the missing checkpoint,
    so the flags were checked first (before the checkpoint and its libraries load)."""
    shutil.copy(os.path.join(trained, "config.json"), tmp_path / "config.json")
    result = run_cli(sample_command(str(tmp_path), "--num=0"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--num and --batch must be >= 1, got 0 and 256." in result.stderr, result.stderr
