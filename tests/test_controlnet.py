"""ControlNet (diffjax/models/controlnet.py): a new ControlNet (of a UNet, or of a DiT's first
blocks) leaves its base exactly as it was (bit for bit at conditioning_scale 0 and, through its zero convolutions, at scale 1),
its encoder is the base's, its residuals reach the base's skips, the control image is checked
before anything compiles, and its null condition guides on the control."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import (
    ControlledModel,
    ControlNet,
    DiT,
    DiTControlNet,
    UNet,
    build_model,
    controlnet_fields,
    controlnet_from_base,
    default_model_config,
    make_model_fn,
)
from diffjax.models.registry import controlnet_base_config, controlnet_model_config

UNET = UNet(
    base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
    num_groups=4, num_classes=3, dropout=0.0,
)  # fmt: skip
X = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
T = jnp.array([3.0, 700.0])
LABELS = jnp.array([0, 2])
CONTROL = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))


def _noisy(params, key, scale=0.05):
    """Every parameter moved off its initial value (the UNet's zero output convolution too)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    moved = [leaf + scale * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, moved)


def _controlled(scale=1.0, widths=(4, 8)):
    controlnet = ControlNet(**controlnet_fields(UNET), conditioning_embedding_channels=widths)
    return ControlledModel(UNET, controlnet, scale)


@pytest.fixture(scope="module")
def base_params():
    params = UNET.init(jax.random.key(2), X, T, {"label": LABELS})["params"]
    return _noisy(params, jax.random.key(3))


def _new_params(module, base_params):
    params = module.init(jax.random.key(4), X, T, {"label": LABELS, "control": CONTROL})
    controlnet = controlnet_from_base(params["params"]["controlnet"], base_params)
    return {"base": base_params, "controlnet": controlnet}


def test_a_new_controlnet_leaves_the_base_exact(base_params):
    base_out = UNET.apply({"params": base_params}, X, T, {"label": LABELS})
    assert float(jnp.abs(base_out).max()) > 0.01
    for scale in (0.0, 1.0):
        module = _controlled(scale)
        params = _new_params(module, base_params)
        out = module.apply({"params": params}, X, T, {"label": LABELS, "control": CONTROL})
        # The zero convolutions make every residual exactly 0: equal bit for bit.
        np.testing.assert_array_equal(np.asarray(out), np.asarray(base_out))


def test_the_encoder_is_copied_and_only_the_new_layers_are_not(base_params):
    module = _controlled()
    params = _new_params(module, base_params)["controlnet"]
    for name, subtree in params.items():
        if name in base_params:
            assert jax.tree.all(jax.tree.map(np.array_equal, subtree, base_params[name]))
        else:
            assert name == "cond_embedding" or name.startswith("controlnet_")
    # One zero convolution per skip (conv_in, 2 down blocks' outputs and 1 downsampling) and
    # one for the middle block.
    assert sorted(n for n in params if n.startswith("controlnet_")) == [
        "controlnet_down_0", "controlnet_down_1", "controlnet_down_2", "controlnet_down_3",
        "controlnet_mid",
    ]  # fmt: skip


def test_trained_residuals_follow_the_control_and_the_scale(base_params):
    module = _controlled()
    params = _new_params(module, base_params)
    params["controlnet"] = _noisy(params["controlnet"], jax.random.key(5))
    cond = {"label": LABELS, "control": CONTROL}
    out = module.apply({"params": params}, X, T, cond)
    base_out = UNET.apply({"params": base_params}, X, T, {"label": LABELS})
    assert float(jnp.abs(out - base_out).max()) > 1e-3
    other = module.apply({"params": params}, X, T, {"label": LABELS, "control": 1 - CONTROL})
    assert float(jnp.abs(out - other).max()) > 1e-4
    # conditioning_scale = 0 removes the residuals exactly, whatever the ControlNet's weights.
    silent = _controlled(0.0).apply({"params": params}, X, T, cond)
    np.testing.assert_array_equal(np.asarray(silent), np.asarray(base_out))
    # The residuals enter linearly: scale 2 doubles the residuals the base UNet receives.
    skips, middle = module.controlnet.apply({"params": params["controlnet"]}, X, T, cond)
    doubled = UNET.apply(
        {"params": base_params}, X, T, {"label": LABELS},
        control_residuals=(tuple(2 * s for s in skips), 2 * middle),
    )  # fmt: skip
    np.testing.assert_allclose(
        _controlled(2.0).apply({"params": params}, X, T, cond), doubled, atol=1e-6
    )


def test_a_larger_control_image_is_strided_down(base_params):
    module = _controlled(widths=(4, 8, 8))
    big = jax.random.uniform(jax.random.key(6), (2, 32, 32, 3))
    params = module.init(jax.random.key(7), X, T, {"label": LABELS, "control": big})["params"]
    kernel = params["controlnet"]["cond_embedding"]["conv_in"]["kernel"]
    assert kernel.shape == (3, 3, 3, 4)
    out = module.apply({"params": params}, X, T, {"label": LABELS, "control": big})
    assert out.shape == X.shape


@pytest.mark.parametrize(
    "control, message",
    [
        (None, r"needs cond\['control'\]"),
        (jnp.zeros((2, 12, 12, 1)), r"\(H_c, W_c\) one of \[\(8, 8\), \(16, 16\)\]"),
        (jnp.zeros((3, 8, 8, 1)), "B = 2"),
        (jnp.zeros((2, 8, 8, 1), jnp.int32), "float array"),
    ],
)
def test_a_bad_control_image_is_refused_while_tracing(control, message):
    module = _controlled()
    cond = {"label": LABELS} if control is None else {"label": LABELS, "control": control}
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(lambda: module.init(jax.random.key(0), X, T, cond))


def test_a_controlnet_of_another_configuration_is_refused():
    other = ControlNet(**dict(controlnet_fields(UNET), base_channels=16))
    with pytest.raises(ValueError, match=r"differ in \['base_channels'\]"):
        ControlledModel(UNET, other)


def test_the_null_condition_is_the_null_label_and_a_zero_control(base_params):
    module = _controlled()
    assert module.cond_keys == ("label", "control")
    null = module.null_cond({"label": LABELS, "control": CONTROL})
    np.testing.assert_array_equal(null["label"], [3, 3])
    np.testing.assert_array_equal(null["control"], np.zeros_like(CONTROL))
    params = _new_params(module, base_params)
    params["controlnet"] = _noisy(params["controlnet"], jax.random.key(8))
    cond = {"label": LABELS, "control": CONTROL}
    guided = make_model_fn(module, params, cond, guidance_scale=3.0)(X, T)
    conditional = make_model_fn(module, params, cond)(X, T)
    unconditional = make_model_fn(module, params, null)(X, T)
    # Classifier-free guidance on label and control together, Ho & Salimans 2022, eq. 6.
    np.testing.assert_allclose(
        guided, unconditional + 3.0 * (conditional - unconditional), atol=1e-5
    )


def test_the_registered_network_is_the_base_unet_with_a_controlnet():
    section = default_model_config("controlnet")
    section.update(base_channels=8, channel_mults=(1, 2), attn_resolutions=(4,), num_groups=4)
    section.conditioning_embedding_channels = (4, 8)
    module = build_model(section)
    assert isinstance(module, ControlledModel)
    assert module.base == build_model(controlnet_base_config(section))
    assert tuple(module.controlnet.conditioning_embedding_channels) == (4, 8)
    # The section of a ControlNet of a UNet section, and back.
    base = controlnet_base_config(section)
    assert dict(controlnet_model_config(base)) == dict(
        section, conditioning_embedding_channels=(16, 32, 96, 256)
    )
    with pytest.raises(ValueError, match="ControlNets exist for the networks"):
        controlnet_model_config(default_model_config("autoencoder_kl"))


DIT = DiT(patch_size=2, hidden_size=16, depth=4, num_heads=2, num_classes=None)


def _dit_controlled(scale=1.0, control_depth=2):
    controlnet = DiTControlNet(**controlnet_fields(DIT), control_depth=control_depth)
    return ControlledModel(DIT, controlnet, scale)


def _dit_params(module, key):
    base = _noisy(DIT.init(jax.random.key(9), X, T)["params"], key)
    fresh = module.init(jax.random.key(10), X, T, {"control": CONTROL})["params"]
    return {"base": base, "controlnet": controlnet_from_base(fresh["controlnet"], base)}


def test_a_new_dit_controlnet_copies_the_first_blocks_and_leaves_the_base_exact():
    module = _dit_controlled()
    params = _dit_params(module, jax.random.key(11))
    controlnet = params["controlnet"]
    assert sorted(n for n in controlnet if n.startswith("transformer_blocks_")) == [
        "transformer_blocks_0", "transformer_blocks_1",
    ]  # fmt: skip
    for name in ("pos_embed", "timestep_embedder", "transformer_blocks_1"):
        assert jax.tree.all(jax.tree.map(np.array_equal, controlnet[name], params["base"][name]))
    base_out = DIT.apply({"params": params["base"]}, X, T)
    assert float(jnp.abs(base_out).max()) > 0.01
    out = module.apply({"params": params}, X, T, {"control": CONTROL})
    np.testing.assert_array_equal(np.asarray(out), np.asarray(base_out))
    assert module.null_cond({"control": CONTROL}).keys() == {"control"}


def test_dit_residuals_enter_after_every_kth_block():
    """Two residuals for four blocks: residual i // 2 after block i (SD3's interval)."""
    module = _dit_controlled()
    params = _dit_params(module, jax.random.key(12))
    params["controlnet"] = _noisy(params["controlnet"], jax.random.key(13))
    cond = {"control": CONTROL}
    residuals = module.controlnet.apply({"params": params["controlnet"]}, X, T, cond)
    assert len(residuals) == 2 and residuals[0].shape == (2, 16, 16)
    out = module.apply({"params": params}, X, T, cond)
    assert float(jnp.abs(out - DIT.apply({"params": params["base"]}, X, T)).max()) > 1e-4
    # The same residual repeated four times (one per block) is the interval made explicit.
    explicit = DIT.apply(
        {"params": params["base"]}, X, T,
        control_residuals=(residuals[0], residuals[0], residuals[1], residuals[1]),
    )  # fmt: skip
    np.testing.assert_allclose(out, explicit, atol=1e-6)


def test_bad_dit_controlnets_are_refused():
    with pytest.raises(ValueError, match=r"control_depth must lie in \[1, depth=4\]"):
        DiTControlNet(**controlnet_fields(DIT), control_depth=5)
    with pytest.raises(ValueError, match="scan_blocks=False"):
        DiTControlNet(**dict(controlnet_fields(DIT), scan_blocks=True))
    with pytest.raises(TypeError, match="pairs a UNet with a ControlNet or a DiT"):
        ControlledModel(DIT, ControlNet(**controlnet_fields(UNET)))
    module = _dit_controlled()
    with pytest.raises(ValueError, match=r"\[B, H, W\] = \[2, 8, 8\]"):
        jax.eval_shape(
            lambda: module.init(jax.random.key(0), X, T, {"control": jnp.zeros((2, 16, 16, 1))})
        )


def test_the_registered_dit_network_is_the_base_dit_with_a_controlnet():
    section = default_model_config("dit_controlnet")
    section.update(hidden_size=16, depth=4, num_heads=2, control_depth=2)
    module = build_model(section)
    assert isinstance(module.controlnet, DiTControlNet)
    assert module.base == build_model(controlnet_base_config(section))
