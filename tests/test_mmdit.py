"""MMDiT (diffjax/models/mmdit.py, mmdit_weights.py) against diffusers' SD3Transformer2DModel
with random weights (fixture written by benchmarks/port_reference/make_mmdit_fixture.py: QK
RMSNorm, SD3.5's dual attention, a context_pre_only last block, cropped positions, a
non-square input), its adaLN-Zero initialisation, its checks and a rectified-flow training
step. No torch."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import load_file

import diffjax as dj
from diffjax.models import MMDiT, make_model_fn
from diffjax.models.mmdit import sd3_positions
from diffjax.models.mmdit_weights import POSITION_BUFFER, mmdit_from_diffusers_config
from diffjax.models.pretrained import from_pretrained, save_pretrained

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "mmdit")
WEIGHTS = "diffusion_pytorch_model.safetensors"
SMALL = dict(
    patch_size=2, hidden_size=16, depth=2, num_heads=2, in_channels=4, joint_attention_dim=12,
    pooled_projection_dim=10, sample_size=8, pos_embed_max_size=6, qk_norm="rms_norm",
    dual_attention_layers=(0,),
)  # fmt: skip


def _inputs(batch: int = 2, height: int = 8, width: int = 12) -> tuple:
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (batch, height, width, 4))
    cond = dict(
        context=jax.random.normal(keys[1], (batch, 5, 12)),
        pooled=jax.random.normal(keys[2], (batch, 10)),
    )
    return x, jnp.linspace(3.5, 999.0, batch), cond


def _perturbed(params, scale: float = 0.1):
    """Every parameter plus Gaussian noise (moves the zero-initialised modulations off 0)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    return treedef.unflatten(
        [leaf + scale * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)]
    )


def test_mmdit_matches_diffusers():
    module, params = from_pretrained(FIXTURE)
    assert module.dual_attention_layers == (0,) and module.qk_norm == "rms_norm"
    expected = np.load(os.path.join(FIXTURE, "outputs.npz"))
    cond = {"context": expected["context"], "pooled": expected["pooled"]}
    got = module.apply({"params": params}, expected["x"], expected["t"], cond)
    assert got.dtype == jnp.float32
    # The sinusoid of t = 999 in float32 carries ~1000 * 2^-24 of angle error, which two orders
    # of the same float32 operations round differently (measured 7.1e-6 there, 1.7e-6 at
    # t = 3.5, on outputs up to 4.3).
    np.testing.assert_allclose(got, expected["out"], atol=1e-4)


def test_position_table_is_diffusers_buffer():
    buffer = load_file(os.path.join(FIXTURE, WEIGHTS))[POSITION_BUFFER]
    # 8 x 8 grid trained on 3 x 3 patches: positions i / (8 / 3), rounded as diffusers does.
    np.testing.assert_array_equal(buffer[0], sd3_positions(16, 8, 3))


def test_save_pretrained_writes_diffusers_layout_back(tmp_path):
    module, params = from_pretrained(FIXTURE)
    save_pretrained(module, params, tmp_path)
    original, written = load_file(os.path.join(FIXTURE, WEIGHTS)), load_file(tmp_path / WEIGHTS)
    # Every tensor, the position buffer (computed from the config) included, as diffusers wrote.
    assert sorted(written) == sorted(original)
    for key, value in written.items():
        np.testing.assert_array_equal(value, original[key])
    with open(os.path.join(FIXTURE, "config.json")) as file:
        published = json.load(file)
    with open(tmp_path / "config.json") as file:
        config = json.load(file)
    assert {key: value for key, value in published.items() if key in config} == config
    assert from_pretrained(tmp_path)[0] == module


def test_a_new_mmdit_outputs_exactly_zero():
    model = MMDiT(**SMALL, out_channels=8)
    x, t, cond = _inputs()
    params = model.init(jax.random.key(1), x, t, cond)["params"]
    out = model.apply({"params": params}, x, t, cond)
    assert out.shape == (2, 8, 12, 8) and out.dtype == jnp.float32 and not np.any(np.asarray(out))


def test_in_channels_none_takes_the_input_channels_and_saves_them(tmp_path):
    model = MMDiT(**{**SMALL, "in_channels": None})
    x, t, cond = _inputs()
    params = _perturbed(model.init(jax.random.key(1), x, t, cond)["params"])
    assert model.apply({"params": params}, x, t, cond).shape == x.shape
    save_pretrained(model, params, tmp_path)
    loaded, loaded_params = from_pretrained(tmp_path)
    assert loaded.in_channels == 4 and loaded.out_channels == 4
    np.testing.assert_array_equal(
        loaded.apply({"params": loaded_params}, x, t, cond),
        model.apply({"params": params}, x, t, cond),
    )


def test_remat_computes_the_same_outputs_and_gradients():
    x, t, cond = _inputs()
    plain, remat = MMDiT(**SMALL), MMDiT(**SMALL, remat=True)
    params = _perturbed(plain.init(jax.random.key(1), x, t, cond)["params"])

    def loss(module, params):
        return jnp.mean(jnp.square(module.apply({"params": params}, x, t, cond)))

    expected, expected_grads = jax.value_and_grad(lambda p: loss(plain, p))(params)
    got, grads = jax.value_and_grad(lambda p: loss(remat, p))(params)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, expected_grads)


def test_bfloat16_keeps_the_float32_result_close():
    module, params = from_pretrained(FIXTURE, dtype="bfloat16")
    expected = np.load(os.path.join(FIXTURE, "outputs.npz"))
    cond = {"context": expected["context"], "pooled": expected["pooled"]}
    got = module.apply({"params": params}, expected["x"], expected["t"], cond)
    assert got.dtype == jnp.float32 and np.all(np.isfinite(got))
    # bfloat16 rounds to 2^-9 relative at every layer of the 3 blocks (measured 0.043 on
    # outputs up to 4.3); the float32 softmax keeps the attention from doing worse.
    assert np.abs(got - expected["out"]).max() < 0.03 * np.abs(expected["out"]).max()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(hidden_size=18), "hidden_size=18 must be a multiple of 4 and of num_heads=2"),
        (dict(num_heads=3), "hidden_size=16 must be a multiple of 4 and of num_heads=3"),
        (dict(qk_norm="layer_norm"), "qk_norm must be one of .* got 'layer_norm'"),
        (dict(dual_attention_layers=(2,)), r"dual_attention_layers .* depth=2\), got \(2,\)"),
        (dict(dual_attention_layers=[0]), r"must be a tuple .* got \[0\]"),
        (dict(pos_embed_max_size=0), "'pos_embed_max_size': 0"),
        (dict(depth=0), "'depth': 0"),
        (dict(sample_size=1), "sample_size=1 must be at least patch_size=2"),
        (dict(out_channels=0), "out_channels must be None or >= 1, got 0"),
    ],
)
def test_bad_configs_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        MMDiT(**{**SMALL, **change})


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(caption_projection_dim=24), "caption_projection_dim=24 is not supported"),
        (dict(qk_norm="rms_norm_across_heads"), "qk_norm='rms_norm_across_heads' is not"),
        (dict(pos_embed_max_size=None), "pos_embed_max_size=None"),
    ],
)
def test_diffusers_options_diffjax_cannot_express_are_refused(tmp_path, change, message):
    with open(os.path.join(FIXTURE, "config.json")) as file:
        config = {**json.load(file), **change}
    with pytest.raises(ValueError, match=message):
        mmdit_from_diffusers_config(config)
    shutil.copy(os.path.join(FIXTURE, WEIGHTS), tmp_path)
    with open(tmp_path / "config.json", "w") as file:
        json.dump(config, file)
    with pytest.raises(ValueError, match=message):
        from_pretrained(tmp_path)


def test_another_class_config_is_refused():
    with pytest.raises(ValueError, match="expected an SD3Transformer2DModel config, got 'DiT"):
        mmdit_from_diffusers_config({"_class_name": "DiTTransformer2DModel"})


@pytest.mark.parametrize(
    "shape, cond_change, message",
    [
        ((2, 8, 12, 3), {}, r"in_channels=4\] .* got shape \(2, 8, 12, 3\)"),
        ((2, 7, 12, 4), {}, r"multiples of patch_size=2, got shape \(2, 7, 12, 4\)"),
        ((2, 8, 14, 4), {}, "the patch grid 4x7 exceeds pos_embed_max_size=6"),
        ((2, 8, 12, 4), dict(context=jnp.zeros((2, 5, 7))), r"\[2, L, 12\], got shape \(2, 5, 7\)"),
        ((2, 8, 12, 4), dict(pooled=jnp.zeros((1, 10))), r"\[2, 10\], got shape \(1, 10\)"),
    ],
)
def test_bad_inputs_are_refused(shape, cond_change, message):
    model = MMDiT(**SMALL)
    _, t, cond = _inputs()
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(
            lambda: model.init(jax.random.key(0), jnp.zeros(shape), t, {**cond, **cond_change})
        )


def test_a_missing_cond_key_is_named():
    model = MMDiT(**SMALL)
    x, t, cond = _inputs()
    with pytest.raises(ValueError, match=r"missing \['pooled'\] \(the conditioning holds"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, {"context": cond["context"]}))
    with pytest.raises(ValueError, match=r"missing \['context'\]"):
        make_model_fn(model, {}, {"pooled": cond["pooled"], "label": jnp.zeros(2)})


def test_null_cond_is_zeros_of_the_same_shapes():
    model = MMDiT(**SMALL)
    _, _, cond = _inputs()
    assert model.cond_keys == ("context", "pooled")
    null = model.null_cond(cond)
    for key in model.cond_keys:
        assert null[key].shape == cond[key].shape and not np.any(np.asarray(null[key]))


def test_rectified_flow_training_lowers_the_loss():
    model = MMDiT(**SMALL)
    x0, _, cond = _inputs()
    params = model.init(jax.random.key(1), x0, jnp.zeros(2), cond)["params"]
    process, sampler = dj.RectifiedFlow(), dj.logit_normal_times()
    optimizer = optax.adam(1e-2)

    def loss_fn(params):
        model_fn = make_model_fn(model, params, cond)
        loss, _ = dj.denoising_loss(
            model_fn, process, x0, jax.random.key(3), prediction_type="flow",
            time_sampler=sampler,
        )  # fmt: skip
        return loss

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    opt_state = optimizer.init(params)
    losses = []
    for _ in range(6):
        params, opt_state, loss, grads = step(params, opt_state)
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(grads))
        losses.append(float(loss))
    # The velocity target eps - x0 has variance 2 and a new MMDiT predicts 0: the loss starts
    # near 2 and the fixed batch (same t and noise every step) is fitted.
    assert 1.0 < losses[0] < 3.0 and losses[-1] < 0.9 * losses[0], losses
    assert np.abs(np.asarray(params["transformer_blocks_0"]["norm1"]["linear"]["kernel"])).max() > 0


def _text_arrays(split: str, image_size: int) -> tuple[dict, None]:
    """32 images whose brightness is the context's mean, with their text-like embeddings."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    count = 32
    context = rng.normal(size=(count, 3, 12)).astype(np.float32)
    pooled = context.mean(axis=1)[:, :10]
    images = np.tanh(context.mean(axis=(1, 2)))[:, None, None, None]
    images = images + 0.1 * rng.normal(size=(count, image_size, image_size, 1))
    return {
        "image": images.astype(np.float32),
        "cond": {"context": context, "pooled": pooled},
    }, None


def test_the_registered_mmdit_trains_and_samples_with_the_training_program(tmp_path):
    """A rectified flow on a dataset of (image, context, pooled) through the program, sampled
    with classifier-free guidance on both keys."""
    from train_helpers import fast_compiles, make_test_config

    from diffjax.data import pipeline
    from diffjax.models import default_model_config
    from diffjax.training import loop
    from diffjax.training.run_sampling import sample_run
    from diffjax.training.trained_run import load_trained_run

    pipeline.register_dataset("mmdit_text_toy", _text_arrays)
    config = make_test_config(None)
    config.data.name, config.eval.split = "mmdit_text_toy", "test"
    config.model = default_model_config("mmdit")
    model = config.model
    model.hidden_size, model.depth, model.num_heads = 16, 2, 2
    model.joint_attention_dim, model.pooled_projection_dim = 12, 10
    model.sample_size, model.pos_embed_max_size, model.qk_norm = 8, 4, "rms_norm"
    config.diffusion.process, config.diffusion.prediction_type = "rectified_flow", "flow"
    config.diffusion.time_sampler = "logit_normal"
    config.sampling.sampler, config.training.cond_dropout = "flow_euler", 0.2
    with fast_compiles():
        state = loop.train_and_evaluate(config, str(tmp_path / "run"))
        run = load_trained_run(str(tmp_path / "run"))
        images = sample_run(run, 2, num_steps=3, guidance_scale=2.0)
    assert isinstance(run.model, MMDiT) and run.model.cond_keys == ("context", "pooled")
    assert images.shape == (2, 8, 8, 1) and np.all(np.isfinite(images))
    # Zero-initialised output layer: training moved it.
    assert np.abs(np.asarray(state.params["proj_out"]["kernel"])).max() > 0


def test_the_registry_refuses_class_labels_and_too_large_images():
    from diffjax.errors import ConfigError
    from diffjax.models import build_model, default_model_config

    config = default_model_config("mmdit")
    config.num_classes = 10
    with pytest.raises(ValueError, match="conditioned on text .* num_classes=10"):
        build_model(config)
    from diffjax.models.registry import model_entry

    config.num_classes = None
    with pytest.raises((ValueError, ConfigError), match="at most pos_embed_max_size"):
        model_entry("mmdit").check_input_shape(build_model(config), (128, 128, 4))
