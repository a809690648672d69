"""The autoencoder codec (diffjax/training/latent_codec.py): a published diffusers folder and a
diffjax autoencoder run as the space a denoiser trains and samples in, the scale they give,
what the run records, and the one-line errors before anything compiles."""

import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_autoencoder_objective import autoencoder_config  # noqa: E402
from train_helpers import fast_compiles, make_image_folder, make_test_config  # noqa: E402

from diffjax.errors import ConfigError  # noqa: E402
from diffjax.models.autoencoder_weights import (  # noqa: E402
    DIFFUSERS_WEIGHTS_FILE,
)
from diffjax.models.pretrained import from_pretrained  # noqa: E402
from diffjax.sharding import make_mesh  # noqa: E402
from diffjax.training.latent_codec import LATENT_STATISTICS_FILE, autoencoder_codec  # noqa: E402
from diffjax.training.loop import train_and_evaluate  # noqa: E402
from diffjax.training.programs import (  # noqa: E402
    build_programs,
    make_run_generator,
    program_spec,
    validate_config,
)
from diffjax.training.trained_run import load_trained_run  # noqa: E402
from diffjax.training.workdir import load_run_record  # noqa: E402
from diffjax.weights import sha256_of_file  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "autoencoder_kl")
FIXTURE_SHA256 = sha256_of_file(os.path.join(FIXTURE, DIFFUSERS_WEIGHTS_FILE))


def test_a_diffusers_folder_is_a_codec_with_its_published_scale():
    codec = autoencoder_codec(diffusers=FIXTURE, sha256=FIXTURE_SHA256)
    assert codec.scaling_factor == 0.18215 and codec.shift_factor == 0.0 and not codec.clip
    assert codec.latent_shape((16, 16, 3)) == (8, 8, 4)
    assert codec.frozen_source() == {
        "diffusers": os.path.abspath(FIXTURE),
        "sha256": FIXTURE_SHA256,
    }
    assert jax.tree_util.tree_leaves(codec) == []  # a static value, like a process
    module, params = from_pretrained(FIXTURE)
    reference = np.load(os.path.join(FIXTURE, "outputs.npz"))
    latents = codec.encode(params, reference["images"], None)
    np.testing.assert_allclose(latents, 0.18215 * reference["mean"], atol=1e-5)
    decoded = codec.decode(params, latents)
    direct = module.apply({"params": params}, latents / 0.18215, method="decode")
    np.testing.assert_allclose(decoded, direct, atol=1e-5)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(diffusers=FIXTURE), "needs sha256"),
        (dict(), "set exactly one of workdir"),
        (dict(diffusers=FIXTURE, workdir=FIXTURE, sha256="ab"), "set exactly one of workdir"),
        (dict(diffusers="/nonexistent", sha256="ab"), "has no config.json"),
    ],
)
def test_bad_codec_options_are_errors(options, message):
    with pytest.raises(ValueError, match=message):
        autoencoder_codec(**options)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def autoencoder_run(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("autoencoder") / "run")
    config = autoencoder_config(data_dir)
    config.training.checkpoint_every_steps = 3
    with fast_compiles():
        train_and_evaluate(config, workdir)
    return workdir


def latent_config(data_dir, autoencoder_workdir):
    config = make_test_config(data_dir)
    config.codec.name = "autoencoder"
    config.codec.options.workdir = autoencoder_workdir
    config.codec.options.scaling_factor = 0.0
    return config


def test_bad_latent_runs_are_one_line_errors(data_dir, autoencoder_run, tmp_path):
    # A denoising run's record (its config.json is all the codec reads of it).
    denoiser_run = tmp_path / "pixels"
    denoiser_run.mkdir()
    record = load_run_record(autoencoder_run)
    record["config"]["objective"] = {"name": "denoising"}
    (denoiser_run / "config.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="is a 'denoising' run, not an autoencoder run"):
        validate_config(latent_config(data_dir, str(denoiser_run)))
    config = latent_config(data_dir, autoencoder_run)
    config.model.channel_mults = (1, 2, 2, 2)  # 4x4 latents cannot be halved three times
    with pytest.raises(ConfigError, match=r"config.model \(unet\) does not fit"):
        validate_config(config)
    unfinished = str(tmp_path / "unfinished")
    shutil.copytree(autoencoder_run, unfinished)
    os.remove(os.path.join(unfinished, LATENT_STATISTICS_FILE))
    with pytest.raises(ConfigError, match="latent_statistics.json"):
        validate_config(latent_config(data_dir, unfinished))


@pytest.mark.slow
def test_a_denoiser_trains_and_samples_in_an_autoencoder_runs_latent_space_cached_or_not(
    data_dir, autoencoder_run, tmp_path, monkeypatch
):
    from diffjax.data.latent_cache import LATENT_CACHE_MANIFEST
    from diffjax.training import latent_data
    from diffjax.training.frozen import load_frozen

    monkeypatch.setattr(latent_data, "SHARD_SIZE", 16)  # 64 images: four shards
    states = {}
    for name, cache in (("images", ""), ("cached", str(tmp_path / "cache"))):
        config = latent_config(data_dir, autoencoder_run)
        config.data.random_flip = False
        config.training.latent_cache = cache
        with fast_compiles():
            states[name] = train_and_evaluate(config, str(tmp_path / name))
    assert sorted(os.listdir(tmp_path / "cache")) == [
        LATENT_CACHE_MANIFEST,
        *(f"latents_{index:05d}.npz" for index in range(4)),
    ]
    # The same batches in the same order, each posterior draw made anew from the cached mean
    # and log variance with the same key: the same training, up to the rounding of encoding
    # 16 images at a time instead of 8.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), states["cached"].params,
        states["images"].params,
    )  # fmt: skip
    with open(os.path.join(autoencoder_run, LATENT_STATISTICS_FILE)) as file:
        statistics = json.load(file)
    record = load_run_record(str(tmp_path / "images"))
    assert record["frozen"]["codec"] == {
        "workdir": os.path.abspath(autoencoder_run), "step": 6, "weights": "ema",
        "params_key": "autoencoder", "scaling_factor": 1.0 / statistics["std"],
        "shift_factor": 0.0,
    }  # fmt: skip
    run = load_trained_run(str(tmp_path / "cached"))
    assert run.programs.latent_shape == (4, 4, 2)
    generate = make_run_generator(run.config, run.programs, 8, run.mesh)
    frozen, _ = load_frozen(run.config, run.programs, run.mesh)
    with fast_compiles():
        images = generate(run.state.ema_params, jax.random.key(0), frozen=frozen)
    assert images.shape == (8, 8, 8, 1) and np.all(np.isfinite(images))
    # The same cache folder for a copy of the autoencoder (another source): refused.
    other = str(tmp_path / "other_autoencoder")
    shutil.copytree(autoencoder_run, other)
    config = latent_config(data_dir, other)
    config.data.random_flip = False
    config.training.latent_cache = str(tmp_path / "cache")
    with pytest.raises(ConfigError, match="holds a latent cache of another autoencoder"):
        train_and_evaluate(config, str(tmp_path / "refused"))
    config.data.random_flip = True
    with pytest.raises(ConfigError, match="set config.data.random_flip=False"):
        validate_config(config)


def test_the_evaluate_program_measures_an_autoencoders_reconstructions_and_resumes(
    autoencoder_run, monkeypatch
):
    from diffjax.evaluation import reconstruction

    psnr = reconstruction.psnr
    calls = []

    def killed_at_the_second_batch(x, y):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return psnr(x, y)

    monkeypatch.setattr(reconstruction, "psnr", killed_at_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        reconstruction.evaluate_reconstruction(autoencoder_run, num_images=16, batch_size=8)
    resumed = reconstruction.evaluate_reconstruction(autoencoder_run, num_images=16, batch_size=8)
    assert len(calls) == 3  # the rerun measured only the second batch
    monkeypatch.setattr(reconstruction, "psnr", psnr)
    straight = reconstruction.evaluate_reconstruction(autoencoder_run, num_images=16, batch_size=8)
    assert resumed["num_images"] == straight["num_images"] == 16 and resumed["ssim"] is None
    np.testing.assert_allclose(resumed["psnr"], straight["psnr"], rtol=1e-6)
    assert os.path.exists(straight["path"]) and 0 < straight["psnr"] < 100


def test_a_frozen_autoencoder_is_split_like_the_state(data_dir):
    """Under the 'fsdp' rule the frozen networks (here a diffusers autoencoder as the codec) are
    laid out by the same rule as the trained state."""
    mesh_settings = {"sharding.mesh_axes": ("data", "fsdp"), "sharding.mesh_shape": (1, 8),
                     "sharding.rules": "fsdp"}  # fmt: skip
    config = make_test_config(data_dir, **mesh_settings)
    config.codec.name = "autoencoder"
    config.codec.options.diffusers = FIXTURE
    config.codec.options.sha256 = FIXTURE_SHA256
    values = validate_config(config, num_devices=8)
    mesh = make_mesh(axes=("data", "fsdp"), shape=(1, 8))
    programs = build_programs(
        program_spec(values, dict(image_shape=(16, 16, 3), cond_spec=[])), mesh
    )
    for tree in (programs.abstract_frozen["codec"], programs.abstract_state.params):
        specs = {leaf.sharding.spec for leaf in jax.tree.leaves(tree)}
        assert any("fsdp" in spec for spec in specs)
