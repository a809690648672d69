"""The evaluation program: streamed features that resume, device-count invariance, the protocol
record, reference statistics, and ``python -m diffjax.evaluate`` on a tiny trained run."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import PYTHON, fast_compiles, make_image_folder, make_test_config, run_cli

import diffjax as dj
from diffjax.errors import ConfigError
from diffjax.evaluation import features, program
from diffjax.metrics import frechet, load_feature_network
from diffjax.sharding import batch_sharding, make_mesh
from diffjax.training import loop

# 28x28 grayscale, the FD-FMNIST classifier's input; a 2-level UNet with attention at 14.
TINY_28 = {"data.image_size": 28, "model.attn_resolutions": (14,)}


@pytest.fixture(scope="module")
def fmnist():
    return load_feature_network("fmnist")


def synthetic_source(mesh, seed=0):
    """Deterministic uint8 images, image i a function of i only."""

    def make_images(start, count):
        index = np.arange(start, start + count)[:, None, None, None]
        grid = np.arange(28 * 28).reshape(1, 28, 28, 1)
        images = ((index * 37 + grid * (7 + seed)) % 251).astype(np.uint8)
        return jax.device_put(images, batch_sharding(mesh))

    return make_images


class Interrupt(Exception):
    pass


def test_a_feature_job_resumes_to_the_same_moments_and_features(tmp_path, fmnist):
    mesh = make_mesh()
    settings = dict(source="synthetic")
    whole = features.FeatureJob(None, 100, fmnist, keep=("features", "logits"), settings=settings)
    whole.run(synthetic_source(mesh), 16, progress=False)

    source = synthetic_source(mesh)
    calls = []

    def failing(start, count):
        calls.append(start)
        if len(calls) == 3:
            raise Interrupt  # a kill after two finished batches
        return source(start, count)

    folder = str(tmp_path / "job")
    first = features.FeatureJob(folder, 100, fmnist, keep=("features", "logits"), settings=settings)
    with pytest.raises(Interrupt):
        first.run(failing, 16, progress=False)
    resumed = features.FeatureJob(
        folder, 100, fmnist, keep=("features", "logits"), settings=settings
    )
    assert resumed.done == 32
    resumed.run(source, 16, progress=False)
    np.testing.assert_array_equal(resumed.arrays["features"], whole.arrays["features"])
    np.testing.assert_array_equal(resumed.arrays["logits"], whole.arrays["logits"])
    np.testing.assert_array_equal(resumed.statistics().sigma, whole.statistics().sigma)
    # Other settings discard the partial state instead of mixing two evaluations.
    other = features.FeatureJob(folder, 100, fmnist, keep=("features",), settings=dict(source="b"))
    assert other.done == 0


def test_generated_samples_and_their_distance_do_not_depend_on_the_device_count(fmnist):
    """Per-sample keys: on 1 device or 8, in batches of 8 or 16, the same samples; the float32
    features may round differently per batch shape (XLA's kernels), which moves the Fréchet
    distance by far less than 1e-4 of itself."""
    process = dj.RectifiedFlow()

    def model_fn(x, t):  # a fixed smooth 'velocity field'
        return jnp.tanh(x) - 0.3 * x + 1e-3 * t[:, None, None, None]

    results = []
    for devices, batch in ((1, 8), (8, 16)):
        mesh = make_mesh(jax.devices()[:devices])

        def draw(start, count, mesh=mesh):
            return dj.sample("flow_euler", model_fn, process, dj.sample_keys(3, start, count),
                             (count, 28, 28, 1), num_steps=4, prediction_type="flow",
                             out_sharding=batch_sharding(mesh))  # fmt: skip

        job = features.FeatureJob(None, 48, fmnist, keep=("features",), settings={})
        job.run(features.sample_image_source(draw, mesh), batch, progress=False)
        results.append(job)
    np.testing.assert_allclose(
        results[0].arrays["features"], results[1].arrays["features"], atol=1e-3
    )
    reference = frechet.statistics_from_features(np.asarray(results[0].arrays["features"]) + 1.0)
    distances = [frechet.frechet_distance(job.statistics(), reference) for job in results]
    assert abs(distances[0] - distances[1]) < 1e-4 * distances[0], distances


@pytest.fixture(scope="module")
def trained_28(tmp_path_factory):
    data_dir = make_image_folder(tmp_path_factory.mktemp("images28"), size=28)
    workdir = str(tmp_path_factory.mktemp("run28"))
    with fast_compiles():
        loop.train_and_evaluate(make_test_config(data_dir, **TINY_28), workdir)
    return workdir


def _settings(**changes):
    base = dict(
        metrics=("fd", "pr", "is", "bpd"), num_samples=40, batch_size=16, sampler="ddim",
        options=dict(num_steps=3, prediction_type="eps"), guidance_scale=1.0, ema=True, seed=0,
        features="fmnist", bpd_num=16, bpd_timesteps=4, bpd_rtol=1e-2,
    )  # fmt: skip
    return program.EvalSettings(**{**base, **changes})


def test_evaluate_run_writes_the_result_and_its_protocol(trained_28):
    with fast_compiles():
        record = program.evaluate_run(trained_28, _settings(), progress=False)
    path = record["path"]
    assert os.path.dirname(path) == os.path.join(trained_28, "eval")
    assert re.fullmatch(rf"{record['step']}-ddim-40-[0-9a-f]{{8}}\.json", os.path.basename(path))
    with open(path) as f:
        saved = json.load(f)
    assert saved["results"]["fd_fmnist"] == pytest.approx(record["results"]["fd_fmnist"])
    results = saved["results"]
    assert (
        results["fd_fmnist"] > 0 and 0 <= results["precision"] <= 1 and results["is"]["mean"] >= 1
    )
    assert results["bpd"]["num_images"] == 16 and results["bpd"]["std_error"] > 0
    # The dequantized ODE likelihood bounds -log2 P(x) >= 0 of 8-bit data from above.
    ode = results["bpd_ode"]
    assert ode["num_images"] == 16 and ode["mean"] > 0 and ode["mean_function_evals"] > 6
    assert ode["autodiff"] == "forward" and saved["protocol"]["bpd_autodiff"] == "forward"
    protocol = saved["protocol"]
    assert protocol["num_samples"] == 40 and protocol["sampler"] == "ddim"
    assert protocol["options"]["num_steps"] == 3 and protocol["weights"] == "ema"
    assert protocol["network"]["sha256"] == dj.metrics.fmnist_classifier.FMNIST_CLASSIFIER_SHA256
    assert protocol["reference"]["count"] == 64  # the folder split's 64 images
    assert not os.path.exists(path.replace(".json", ".partial"))


def test_evaluations_with_other_settings_keep_their_own_results(trained_28):
    first_settings = _settings(metrics=("fd",), num_samples=32, seed=1)
    with fast_compiles():
        first = program.evaluate_run(trained_28, first_settings, progress=False)
        with open(first["path"]) as f:
            first_saved = f.read()
        second = program.evaluate_run(trained_28, first_settings._replace(seed=2), progress=False)
    assert second["path"] != first["path"] and second["step"] == first["step"]
    with open(first["path"]) as f:
        assert f.read() == first_saved
    assert second["results"]["fd_fmnist"] != first["results"]["fd_fmnist"]


def test_an_interrupted_evaluation_resumes_to_the_same_result(trained_28, monkeypatch):
    settings = _settings(metrics=("fd",), num_samples=48, seed=5)
    with fast_compiles():
        expected = program.evaluate_run(trained_28, settings, progress=False)["results"]
        real_source = program.sample_image_source
        calls = []

        def failing_source(*args, **kwargs):
            source = real_source(*args, **kwargs)

            def make_images(start, count):
                calls.append(start)
                if len(calls) == 2:
                    raise Interrupt
                return source(start, count)

            return make_images

        monkeypatch.setattr(program, "sample_image_source", failing_source)
        with pytest.raises(Interrupt):
            program.evaluate_run(trained_28, settings, progress=False)
        monkeypatch.setattr(program, "sample_image_source", real_source)
        resumed = program.evaluate_run(trained_28, settings, progress=False)["results"]
    assert resumed["fd_fmnist"] == pytest.approx(expected["fd_fmnist"], rel=1e-9)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(metrics=("fid",)), r"unknown \['fid'\]"),
        (dict(batch_size=12), "must be a multiple of the 8 devices"),
        (dict(metrics=("kid",)), "KID uses subsets of 1000 samples"),
        (
            dict(options=dict(num_steps=3, prediction_type="eps", eta=2.0)),
            r"eta must be in \[0, 1\]",
        ),
        (dict(features="inception"), "Inception|inception"),
        (dict(bpd_autodiff="backward"), "bpd_autodiff must be one of"),
    ],
)
def test_bad_settings_fail_before_sampling(trained_28, changes, message, monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFJAX_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(program, "sample_image_source", lambda *a, **k: pytest.fail("sampled"))
    with pytest.raises(Exception, match=message):
        program.evaluate_run(trained_28, _settings(**changes), download=False, progress=False)


def test_reference_statistics_of_the_wrong_dimension_are_refused(trained_28, tmp_path, monkeypatch):
    path = str(tmp_path / "wrong.npz")
    frechet.save_statistics(
        path, frechet.statistics_from_features(np.random.default_rng(0).normal(size=(10, 4)))
    )
    monkeypatch.setattr(program, "sample_image_source", lambda *a, **k: pytest.fail("sampled"))
    with pytest.raises(Exception, match="4-d statistics, but the feature network gives 128-d"):
        program.evaluate_run(trained_28, _settings(reference=path, metrics=("fd",)), progress=False)


def evaluate_command(workdir, *flags):
    return [PYTHON, "-m", "diffjax.evaluate", f"--workdir={workdir}", *flags]


def test_the_evaluate_cli_prints_a_table_and_names_missing_weights_in_one_line(
    trained_28, tmp_path
):
    result = run_cli(
        evaluate_command(trained_28, "--num=32", "--batch=16", "--steps=2", "--metrics=fd,is")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fd_fmnist" in result.stderr and "wrote" in result.stderr
    env_dirs = [f"--inception_weights={tmp_path / 'absent.pth'}"]
    failed = run_cli(
        evaluate_command(trained_28, "--num=32", "--batch=16", "--features=inception", *env_dirs)
    )
    assert failed.returncode == 1
    lines = [line for line in failed.stderr.splitlines() if line.startswith("diffjax.evaluate:")]
    assert len(lines) == 1 and "absent.pth" in lines[0] and "6726825d" in lines[0], failed.stderr[
        -2000:
    ]
    assert "Traceback" not in failed.stderr
    wrong = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    wrong.write_bytes(b"not the weights")
    failed = run_cli(evaluate_command(trained_28, "--num=32", "--batch=16", "--features=inception",
                                      f"--inception_weights={wrong}"))  # fmt: skip
    assert failed.returncode == 1 and "is not the published" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_make_reference_stats_from_a_dataset_split(tmp_path):
    data_dir = make_image_folder(tmp_path / "images", num_per_class=8, size=28)
    out = str(tmp_path / "ref.npz")
    result = run_cli([
        PYTHON, "-m", "diffjax.evaluate", "--make_reference_stats", "--dataset=folder",
        f"--data_dir={data_dir}", "--split=train", "--image_size=28", "--features=fmnist",
        f"--out={out}", "--batch=8",
    ])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    stats, metadata = frechet.load_statistics(out, expected_dim=128)
    assert stats.count == 16 and metadata["split"] == "train"
    assert frechet.load_features(out).shape == (16, 128)


@pytest.fixture
def fmnist_reference(tmp_path, fmnist):
    """Reference statistics that record the Fashion-MNIST classifier (random 128-d features)."""
    features = np.random.default_rng(0).normal(size=(200, fmnist.dim)).astype(np.float32)
    path = str(tmp_path / "reference.npz")
    frechet.save_statistics(
        path, frechet.statistics_from_features(features), features=features,
        network=fmnist.record(),
    )  # fmt: skip
    return path


def _write_samples(path, samples):
    np.savez(path, samples=samples)
    return str(path)


def test_samples_are_scored_with_the_network_the_reference_records(
    tmp_path, fmnist_reference, monkeypatch
):
    # No Inception weights anywhere: the FD-FMNIST reference alone decides the network.
    monkeypatch.setenv("DIFFJAX_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    images = np.random.default_rng(1).integers(0, 256, size=(24, 28, 28, 1), dtype=np.uint8)
    as_uint8 = _write_samples(tmp_path / "uint8.npz", images)
    as_float = _write_samples(tmp_path / "float.npz", images.astype(np.float32) / 127.5 - 1.0)
    results = [
        program.evaluate_samples(path, fmnist_reference, batch_size=8, download=False)
        for path in (as_uint8, as_float)
    ]
    assert results[0]["protocol"]["network"]["name"] == "fmnist"
    assert np.isfinite(results[0]["results"]["fd_fmnist"])
    # [-1, 1] floats are quantized to exactly the uint8 images they came from.
    assert results[1]["results"] == results[0]["results"]


@pytest.mark.parametrize(
    "samples, message",
    [
        (
            np.full((4, 28, 28, 1), 200.0, np.float32),
            r"must lie in \[-1, 1\], these span \[200, 200\]",
        ),
        (np.zeros((4, 28, 28, 1), np.int64), "uint8 or floats in \\[-1, 1\\], got dtype int64"),
        (np.zeros((4, 28, 28), np.uint8), r"must be \[N, H, W, C\], got \(4, 28, 28\)"),
    ],
)
def test_samples_outside_the_documented_range_are_refused(
    tmp_path, fmnist_reference, samples, message
):
    path = _write_samples(tmp_path / "samples.npz", samples)
    with pytest.raises(ConfigError, match=message):
        program.evaluate_samples(path, fmnist_reference, batch_size=8)


def test_files_that_are_not_npz_archives_are_named_in_one_line(tmp_path, fmnist_reference):
    text = tmp_path / "samples.txt"
    text.write_text("not an archive")
    lone = tmp_path / "lone.npy"
    np.save(lone, np.zeros((2, 28, 28, 1), np.uint8))
    for path in (text, lone):
        with pytest.raises(ConfigError, match=rf"{path} is not an .npz archive of arrays"):
            program.evaluate_samples(str(path), fmnist_reference)
    samples = _write_samples(tmp_path / "ok.npz", np.zeros((8, 28, 28, 1), np.uint8))
    with pytest.raises(ConfigError, match=rf"{text} is not an .npz archive"):
        program.evaluate_samples(samples, str(text), features="fmnist")
    failed = run_cli([PYTHON, "-m", "diffjax.evaluate", f"--samples={text}",
                      f"--reference={fmnist_reference}"])  # fmt: skip
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert lines == [f"diffjax.evaluate: error: {text} is not an .npz archive of arrays "
                     f"(samples; np.savez writes one): NumPy cannot read it as one."]  # fmt: skip


def test_the_evaluate_cli_quotes_the_recipe_when_it_repeats_the_logged_evaluation(
    trained_28, tmp_path
):
    """With the run's own FD settings (samples, sampler, seed, EMA, features), the CLI prints
    the recipe's quoted value for that step; with any of them changed it does not."""
    import shutil

    from diffjax import evaluate
    from diffjax.training.config import settings_digest, upgrade_config
    from diffjax.training.programs import sampling_settings

    workdir = str(tmp_path / "run")
    shutil.copytree(trained_28, workdir, ignore=shutil.ignore_patterns("eval"))
    with open(os.path.join(workdir, "config.json")) as f:
        record = json.load(f)
    config = upgrade_config(record["config"])
    config["eval"]["fd_num_samples"] = 32
    step = max(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints"))
               if name.isdigit())  # fmt: skip
    config["eval"]["quoted_fd"] = {"digest": settings_digest(config), str(step): 123.4}
    record["config"] = config
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(record, f)
    result = run_cli(evaluate_command(workdir, "--num=32", "--batch=16"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "The recipe's measured fmnist Fréchet distance at this step, with these settings: "
        "123.4" in result.stderr
    ), result.stderr[-2000:]
    sampler, options = sampling_settings(config)
    same = _settings(metrics=("fd",), num_samples=32, sampler=sampler, options=options,
                     seed=config["sampling"]["seed"])  # fmt: skip
    assert evaluate._quoted(config, same, step) == 123.4
    for changes in (
        dict(num_samples=48),
        dict(seed=7),
        dict(ema=False),
        dict(options=dict(options, clip_x0=False)),
        dict(metrics=("bpd",)),
    ):
        assert evaluate._quoted(config, same._replace(**changes), step) is None, changes
    assert evaluate._quoted(config, same, step + 1) is None
