"""DiT (diffjax/models/dit.py, dit_weights.py) against diffusers' DiTTransformer2DModel with
random weights (fixture written by benchmarks/port_reference/make_dit_fixture.py), its
adaLN-Zero initialisation, the paper's parameter counts and the registry entry. No torch."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from diffjax.models import (
    DIT_PRESETS,
    DiT,
    build_model,
    count_params,
    default_model_config,
    make_model_fn,
    prediction_channels,
)
from diffjax.models.dit import stack_blocks, unstack_blocks
from diffjax.models.pretrained import from_pretrained, save_pretrained
from diffjax.weights import StateDictMismatchError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "dit")
WEIGHTS = "diffusion_pytorch_model.safetensors"


def test_dit_matches_diffusers():
    module, params = from_pretrained(FIXTURE)
    expected = np.load(os.path.join(FIXTURE, "outputs.npz"))
    got = module.apply({"params": params}, expected["x"], expected["t"],
                       {"label": expected["labels"]})  # fmt: skip
    # The sinusoid of t = 999 in float32 carries ~1000 * 2^-24 of angle error, which two orders
    # of the same float32 operations round differently (measured 1.5e-5 there, 1.5e-6 at t = 3).
    np.testing.assert_allclose(got, expected["out"], atol=1e-4)


def test_a_new_dit_outputs_exactly_zero():
    model = DiT(patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=3)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    cond = {"label": jnp.array([0, 3])}
    params = model.init(jax.random.key(1), x, jnp.array([5, 900]), cond)["params"]
    out = model.apply({"params": params}, x, jnp.array([5, 900]), cond)
    assert out.shape == x.shape and not np.any(np.asarray(out))


@pytest.mark.parametrize(
    "preset, millions",
    # Peebles & Xie 2023, Table 1 (patch 2, 256x256 images as 32x32x4 latents, learned sigma):
    # 33, 130, 458 and 675 M parameters; the counts here leave out the fixed position embedding.
    [("DiT-S", 33), ("DiT-B", 130), ("DiT-L", 458), ("DiT-XL", 675)],
)
def test_presets_have_the_papers_parameter_counts(preset, millions):
    model = DiT(patch_size=2, num_classes=1000, out_channels=8, **DIT_PRESETS[preset])
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 4)), 0, {"label": jnp.zeros((1,), jnp.int32)}
        )["params"]  # fmt: skip
    )
    assert round(count_params(shapes) / 1e6) == millions


def test_save_pretrained_writes_diffusers_layout_back(tmp_path):
    module, params = from_pretrained(FIXTURE)
    save_pretrained(module, params, tmp_path)
    original, written = load_file(os.path.join(FIXTURE, WEIGHTS)), load_file(tmp_path / WEIGHTS)
    assert sorted(written) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(written[key], value)
    assert from_pretrained(tmp_path)[0] == module


def test_a_pixel_space_dit_with_a_learned_variance_round_trips_a_diffusers_folder(tmp_path):
    model = DiT(patch_size=2, hidden_size=16, depth=1, num_heads=2, num_classes=3,
                in_channels=3, learn_sigma=True, sample_size=8)  # fmt: skip
    x, t, cond = jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)), {"label": jnp.zeros((1,), jnp.int32)}
    params = model.init(jax.random.key(0), x, t, cond)["params"]
    save_pretrained(model, params, tmp_path)
    loaded, loaded_params = from_pretrained(tmp_path)
    assert loaded == model
    jax.tree.map(np.testing.assert_array_equal, loaded_params, params)
    with pytest.raises(ValueError, match="C = in_channels=3"):
        loaded.apply({"params": loaded_params}, jnp.zeros((1, 8, 8, 4)), t, cond)


def test_embedder_copies_that_differ_are_refused(tmp_path):
    shutil.copy(os.path.join(FIXTURE, "config.json"), tmp_path)
    state = load_file(os.path.join(FIXTURE, WEIGHTS))
    key = "transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.bias"
    state[key] = state[key] + 1
    save_file(state, str(tmp_path / WEIGHTS))
    with pytest.raises(StateDictMismatchError, match=key.replace(".", r"\.")):
        from_pretrained(tmp_path)


def test_the_registered_dit_builds_from_the_config():
    config = default_model_config("dit")
    config.hidden_size, config.depth, config.num_heads, config.num_classes = 32, 1, 4, 10
    model = build_model(config)
    assert isinstance(model, DiT) and model.cond_keys == ("label",)
    null = model.null_cond({"label": jnp.array([1, 2])})
    np.testing.assert_array_equal(null["label"], [10, 10])


def test_a_dit_trains_and_samples_with_the_training_program(tmp_path):
    from train_helpers import fast_compiles, make_image_folder, make_test_config

    from diffjax.training import loop

    config = make_test_config(make_image_folder(tmp_path / "images"))
    model = default_model_config("dit")
    model.hidden_size, model.depth, model.num_heads = 32, 2, 4
    config.model = model
    with fast_compiles():
        state = loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert int(state.step) == config.training.num_steps
    assert os.listdir(tmp_path / "run" / "samples")
    # adaLN-Zero starts at exactly 0; training moved the output layer.
    assert np.abs(np.asarray(state.params["proj_out_2"]["kernel"])).max() > 0


def test_a_learned_sigma_dit_trains_with_the_hybrid_loss_and_samples_its_variance(tmp_path):
    from train_helpers import fast_compiles, make_image_folder, make_test_config

    from diffjax.training import loop
    from diffjax.training.run_sampling import sample_run
    from diffjax.training.trained_run import load_trained_run

    config = make_test_config(make_image_folder(tmp_path / "images"))
    model = default_model_config("dit")
    model.hidden_size, model.depth, model.num_heads, model.learn_sigma = 32, 1, 4, True
    config.model = model
    config.diffusion.vlb_weight = 1e-3
    config.sampling.sampler = "ddpm"
    config.sampling.options = {"variance": "learned_range"}
    with fast_compiles():
        state = loop.train_and_evaluate(config, str(tmp_path / "run"))
        assert os.listdir(tmp_path / "run" / "samples")
        run = load_trained_run(str(tmp_path / "run"))
        for sampler in ("ddpm", "ddim"):
            images = sample_run(run, 2, sampler=sampler, num_steps=3)
            assert images.shape == (2, 8, 8, 1) and np.all(np.isfinite(images))
    kernel = np.asarray(state.params["proj_out_2"]["kernel"])
    # Patch 2 x 2, two channels per image channel: the prediction and the variance values.
    channels = kernel.reshape(kernel.shape[0], 2, 2, 2)
    # Both halves of the output layer trained, the variance through the bound term alone.
    assert np.abs(channels[..., 0]).max() > 0 and np.abs(channels[..., 1]).max() > 0


def test_learned_sigma_and_the_loss_must_agree(tmp_path):
    from train_helpers import make_image_folder, make_test_config

    from diffjax.errors import ConfigError
    from diffjax.training import loop

    config = make_test_config(make_image_folder(tmp_path / "images"))
    model = default_model_config("dit")
    model.hidden_size, model.depth, model.num_heads, model.learn_sigma = 32, 1, 4, True
    config.model = model
    with pytest.raises((ConfigError, ValueError), match="learned variance but vlb_weight=0.0"):
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    with pytest.raises(ValueError, match="learn_sigma=True outputs 2 C channels"):
        DiT(hidden_size=32, depth=1, num_heads=4, learn_sigma=True, out_channels=8)


def test_guiding_a_learned_sigma_dit_keeps_the_conditional_variance():
    model = DiT(patch_size=2, hidden_size=32, depth=1, num_heads=4, num_classes=3,
                learn_sigma=True)  # fmt: skip
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    t, cond = jnp.array([5, 900]), {"label": jnp.array([0, 2])}
    params = model.init(jax.random.key(1), x, t, cond)["params"]
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape),
                          params)  # fmt: skip
    conditional = model.apply({"params": params}, x, t, cond)
    unconditional = model.apply({"params": params}, x, t, model.null_cond(cond))
    assert model.learned_variance and conditional.shape == (2, 4, 4, 6)
    guided = make_model_fn(model, params, cond, guidance_scale=4.0)(x, t)
    np.testing.assert_allclose(
        guided[..., :3], unconditional[..., :3] + 4.0 * (conditional - unconditional)[..., :3],
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip
    np.testing.assert_allclose(guided[..., 3:], conditional[..., 3:], rtol=1e-5, atol=1e-6)
    plain = prediction_channels(make_model_fn(model, params, cond))(x, t)
    np.testing.assert_array_equal(plain, conditional[..., :3])


def test_scanned_blocks_compute_the_unrolled_dit():
    kwargs = dict(patch_size=2, hidden_size=32, depth=3, num_heads=4, num_classes=3)
    unrolled, scanned = DiT(**kwargs), DiT(**kwargs, scan_blocks=True)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    t, cond = jnp.array([3, 900]), {"label": jnp.array([0, 3])}
    params = unrolled.init(jax.random.key(1), x, t, cond)["params"]
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = treedef.unflatten(
        [leaf + 0.1 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)]
    )
    stacked = stack_blocks(params, 3)
    expected = jax.eval_shape(lambda: scanned.init(jax.random.key(1), x, t, cond)["params"])
    assert jax.tree.map(np.shape, stacked) == jax.tree.map(lambda leaf: leaf.shape, expected)
    jax.tree.map(np.testing.assert_array_equal, unstack_blocks(stacked), params)
    # The same operations; XLA fuses the scanned loop body differently (float32
    # reassociation on O(1) outputs, measured 5e-7).
    np.testing.assert_allclose(
        scanned.apply({"params": stacked}, x, t, cond),
        unrolled.apply({"params": params}, x, t, cond),
        atol=1e-5,
    )
