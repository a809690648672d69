"""The autoencoder objective through the training program
(diffjax/training/objectives/autoencoder.py): the discriminator is left alone before
``disc_start`` and then alternates with the autoencoder, a resumed run takes the same steps,
and bad configs are one-line errors before anything compiles."""

import json
import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_helpers import fast_compiles, make_image_folder, make_test_config  # noqa: E402

from diffjax.errors import ConfigError  # noqa: E402
from diffjax.models import default_model_config  # noqa: E402
from diffjax.training import default_objective_config  # noqa: E402
from diffjax.training.loop import _keys, train_and_evaluate  # noqa: E402
from diffjax.training.programs import validate_config  # noqa: E402
from diffjax.training.trained_run import load_trained_run  # noqa: E402

TINY_AUTOENCODER = dict(
    base_channels=8, channel_mults=(1, 2), num_res_blocks=1, latent_channels=2,
    image_channels=1, num_groups=4,
)  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


def autoencoder_config(data_dir, **objective):
    """configs/test.py's data and budget with a tiny autoencoder and its objective."""
    config = make_test_config(data_dir)
    config.model = default_model_config("autoencoder_kl")
    config.model.update(TINY_AUTOENCODER)
    config.objective = default_objective_config("autoencoder")
    config.objective.update(objective)
    config.eval.every_steps = 0
    config.training.checkpoint_every_steps = 1
    config.training.keep_checkpoints = 10
    return config


def _same(a, b) -> bool:
    return jax.tree.all(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b))


@pytest.mark.slow
def test_the_discriminator_waits_for_disc_start_then_alternates(data_dir, tmp_path):
    gan = dict(disc_weight=0.5, disc_start=2, disc_base_channels=8, disc_layers=1)
    config = autoencoder_config(data_dir, **gan)
    workdir = str(tmp_path / "run")
    # Each group's schedule counts its own updates; without warm-up the discriminator's first
    # update (step 3) has the full learning rate rather than a warm-up's 0.
    config.optim.warmup_steps = 0
    config.training.num_steps = 3
    with fast_compiles():
        at_3 = train_and_evaluate(config, workdir)
    init_fn = load_trained_run(workdir).programs.init_fn
    with fast_compiles():  # compiled as the run's initialisation was (the same rounding)
        initial = jax.jit(init_fn)(_keys(config.seed)[0])
    # Steps 0, 1 (before disc_start) and 2 (the autoencoder's turn) leave it as initialised.
    assert _same(at_3.params["discriminator"], initial["discriminator"])
    assert not _same(at_3.params["autoencoder"], initial["autoencoder"])
    assert int(at_3.extra["step"]) == 3
    config.training.num_steps = 4
    with fast_compiles():
        at_4 = train_and_evaluate(config, workdir)
    # Step 3 is the discriminator's: it changes and the autoencoder does not.
    assert not _same(at_4.params["discriminator"], at_3.params["discriminator"])
    assert _same(at_4.params["autoencoder"], at_3.params["autoencoder"])
    logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    active = {entry["step"]: entry["gan_active"] for entry in logged if "gan_active" in entry}
    # Logged after each step (the first, checkpoints, the end): the adversarial terms count
    # from the step that starts at disc_start = 2, the one logged as step 3.
    assert active == {1: 0.0, 2: 0.0, 3: 1.0, 4: 1.0}
    assert all("d_loss" in entry and "kl" in entry for entry in logged if "loss" in entry)
    # Four steps without a stop are the same four steps.
    straight = str(tmp_path / "straight")
    with fast_compiles():
        at_4_straight = train_and_evaluate(config, straight)
    assert _same(at_4_straight.params, at_4.params)
    assert os.path.exists(os.path.join(workdir, "latent_statistics.json"))


def test_a_vq_autoencoders_ema_codebook_is_written_from_its_statistics(data_dir, tmp_path):
    from diffjax.autoencoding import CodebookStatistics, codebook_from_statistics

    config = autoencoder_config(data_dir)
    config.model = default_model_config("autoencoder_vq")
    config.model.update(TINY_AUTOENCODER, codebook_size=16)
    config.training.num_steps = 3
    workdir = str(tmp_path / "vq")
    with fast_compiles():
        state = train_and_evaluate(config, workdir)
    expected = codebook_from_statistics(
        CodebookStatistics(state.extra["counts"], state.extra["sums"])
    )
    # The optimizer leaves the codebook alone; the step writes it, into the EMA weights too.
    np.testing.assert_array_equal(state.params["autoencoder"]["codebook"], expected)
    np.testing.assert_array_equal(state.ema_params["autoencoder"]["codebook"], expected)
    logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    first = next(entry for entry in logged if "perplexity" in entry)
    # Step 0 starts every entry that its batch did not use at one of the batch's encodings.
    assert first["restarted_codes"] > 0 and 1 <= first["perplexity"] <= 16
    assert os.path.exists(os.path.join(workdir, "latent_statistics.json"))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("objective.reconstruction", "l3", r"reconstruction must be one of \('l1', 'l2'\)"),
        ("objective.lpips_weight", 1.0, "needs images of at least 64 px"),
        ("objective.disc_layers", 3, "halves 8 px images to 1 px"),
        (
            "model.name",
            "unet",
            "config.model.name must be one of \\('autoencoder_kl', 'autoencoder_vq'\\)",
        ),
        ("objective.kl_weight", -1.0, "kl_weight must be >= 0"),
        ("objective.codebook_update", "kmeans", "codebook_update must be one of"),
    ],
)
def test_bad_autoencoder_configs_are_one_line_errors(data_dir, key, value, message):
    config = autoencoder_config(data_dir, disc_weight=0.5)
    section, name = key.split(".")
    if key == "model.name":
        config.model = make_test_config(data_dir).model  # the tests' small UNet
    else:
        config[section][name] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_the_lpips_term_counts_once_per_pixel():
    """The loss with LPIPS is the loss without it plus lpips_weight * H * W * C * mean LPIPS
    (LDM adds the perceptual distance to every pixel's error), with LPIPS's variables read
    from frozen['lpips'] (random AlexNet weights here; the published ones need a download)."""
    import jax.numpy as jnp
    import lpips_reference

    from diffjax.metrics.lpips import lpips_distance, lpips_variables_from_state_dicts
    from diffjax.models.autoencoder import AutoencoderKL
    from diffjax.training.objectives import make_autoencoder_loss

    variables = lpips_variables_from_state_dicts(
        lpips_reference.random_backbone_state_dict("alex", 0),
        lpips_reference.random_heads_state_dict("alex", 1), net="alex",
    )  # fmt: skip
    module = AutoencoderKL(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                           latent_channels=2, num_groups=4)  # fmt: skip
    images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
    params = {"autoencoder": module.init(jax.random.key(1), images)["params"]}
    extra = {"step": jnp.zeros((), jnp.int32)}
    batch, key = {"image": images}, jax.random.key(2)
    plain = make_autoencoder_loss(module, None, kl_weight=1e-6)
    perceptual = make_autoencoder_loss(
        module, None, kl_weight=1e-6, lpips_weight=0.5, lpips_net="alex"
    )
    loss, (metrics, _) = plain(params, {}, batch, key, False, extra)
    with_lpips, _ = perceptual(params, {"lpips": variables}, batch, key, False, extra)
    reconstruction = module.apply({"params": params["autoencoder"]}, images)[0]
    distance = jnp.mean(lpips_distance(variables, images, reconstruction, net="alex"))
    assert distance > 0
    np.testing.assert_allclose(with_lpips, loss + 0.5 * 32 * 32 * 3 * distance, rtol=1e-5)
