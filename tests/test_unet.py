"""Tests for the DDPM UNet: shapes, parameter count, conditioning, dropout, dtypes, remat, errors.

Everything runs on a tiny configuration; the CIFAR-10 model is only ever shape-evaluated.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import UNet, check_attn_resolutions, check_image_size, count_params

NUM_CLASSES = 3
# 16x16 input -> feature maps 16, 8; attention at 8 and in the middle.
TINY = dict(
    base_channels=16,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(8,),
    num_groups=8,
    dropout=0.1,
)


pytestmark = pytest.mark.usefixtures("unoptimized_module")


def _perturb(params, seed, scale=0.05):
    """Adds Gaussian noise to every leaf: DDPM zero-initialises the last layer of every residual
    branch and the output conv, so an untouched model outputs exactly zero. NumPy noise, because
    compiling a jax.random call per leaf costs seconds."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda leaf: leaf + scale * rng.standard_normal(leaf.shape).astype(leaf.dtype), params
    )


def _inputs(batch=2, size=16, channels=3):
    x = jax.random.normal(jax.random.key(10), (batch, size, size, channels))
    t = jnp.array([3, 900][:batch] + [0] * max(batch - 2, 0), jnp.int32)
    return x, t


def _abstract_init(model, x_shape, labels=None):
    """Parameter shapes via jax.eval_shape: traced, never compiled or allocated."""
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    t = jax.ShapeDtypeStruct(x_shape[:1], jnp.int32)
    cond = None if labels is None else {"label": labels}
    return jax.eval_shape(model.init, jax.random.key(0), x, t, cond)["params"]


@functools.lru_cache(maxsize=None)
def _conditional_model_and_params():
    """The tiny class-conditional UNet, its fresh parameters and perturbed (non-trivial) ones.

    Cached, and every forward pass below goes through the one jitted :func:`_apply`, so the
    tests share compilations.
    """
    model = UNet(**TINY, num_classes=NUM_CLASSES)
    x, t = _inputs()
    params = jax.jit(model.init)(jax.random.key(0), x, t, {"label": jnp.zeros((2,), jnp.int32)})[
        "params"
    ]
    return model, params, _perturb(params, seed=1)


@functools.partial(jax.jit, static_argnames=("model", "train"))
def _apply(model, params, x, t, labels, train=False, dropout_key=None):
    rngs = None if dropout_key is None else {"dropout": dropout_key}
    cond = None if labels is None else {"label": labels}
    return model.apply({"params": params}, x, t, cond, train=train, rngs=rngs)


def test_cifar10_config_has_ddpm_parameter_count():
    """Ho et al. 2020 report 35.7M parameters; their diffusion_tf CIFAR-10 model has 35,746,307."""
    model = UNet(
        base_channels=128,
        channel_mults=(1, 2, 2, 2),
        num_res_blocks=2,
        attn_resolutions=(16,),
        dropout=0.1,
    )
    assert model == UNet()  # the defaults are the CIFAR-10 model
    params = _abstract_init(model, (1, 32, 32, 3))
    assert count_params(params) == 35_746_307
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize("size", [8, 16, 28, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_equals_input_shape(size, channels):
    model = UNet(**{**TINY, "channel_mults": (1, 2, 2), "attn_resolutions": (size // 2,)})
    params = _abstract_init(model, (2, size, size, channels))
    x = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
    t = jax.ShapeDtypeStruct((2,), jnp.float32)  # float t: continuous time
    out = jax.eval_shape(lambda p, x, t: model.apply({"params": p}, x, t), params, x, t)
    assert out.shape == (2, size, size, channels) and out.dtype == jnp.float32


def test_out_channels_override_changes_only_the_output_conv():
    x_shape = (2, 16, 16, 3)
    default = _abstract_init(UNet(**TINY), x_shape)
    doubled_model = UNet(**TINY, out_channels=6)  # e.g. eps and a learned variance
    doubled = _abstract_init(doubled_model, x_shape)
    out = jax.eval_shape(
        lambda p, x: doubled_model.apply({"params": p}, x, jnp.zeros((2,), jnp.int32)),
        doubled,
        jax.ShapeDtypeStruct(x_shape, jnp.float32),
    )
    assert out.shape == (2, 16, 16, 6)
    assert doubled.pop("conv_out")["kernel"].shape == (3, 3, 16, 6)
    assert default.pop("conv_out")["kernel"].shape == (3, 3, 16, 3)
    chex.assert_trees_all_equal_shapes_and_dtypes(doubled, default)


def test_output_is_zero_at_init():
    """DDPM zero-initialises conv_out, so a fresh model predicts exactly 0 for any input."""
    model, fresh_params, _ = _conditional_model_and_params()
    x, t = _inputs()
    out = _apply(model, fresh_params, x, t, jnp.array([0, NUM_CLASSES], jnp.int32))
    np.testing.assert_array_equal(out, np.zeros(x.shape, np.float32))


def test_class_conditioning_changes_output_per_example_and_null_label_works():
    model, fresh_params, params = _conditional_model_and_params()
    assert fresh_params["label_embedding"]["embedding"].shape == (NUM_CLASSES + 1, 4 * 16)
    x, t = _inputs()
    base = _apply(model, params, x, t, jnp.array([0, 1], jnp.int32))
    relabelled = _apply(model, params, x, t, jnp.array([2, 1], jnp.int32))
    null = _apply(model, params, x, t, jnp.array([NUM_CLASSES, 1], jnp.int32))  # null label
    # Only example 0's label changed; GroupNorm is per example, so example 1 is bit-identical.
    np.testing.assert_array_equal(base[1], relabelled[1])
    np.testing.assert_array_equal(base[1], null[1])
    scale = float(jnp.std(base))
    assert np.abs(base[0] - relabelled[0]).max() > 1e-2 * scale
    assert np.abs(base[0] - null[0]).max() > 1e-2 * scale
    assert np.all(np.isfinite(null))


def test_dropout_only_in_train_mode():
    model, _, params = _conditional_model_and_params()
    x, t = _inputs()
    labels = jnp.array([0, 1], jnp.int32)
    key_a, key_b = jax.random.key(0), jax.random.key(1)

    eval_out = _apply(model, params, x, t, labels)
    # Deterministic: a dropout key is ignored when train=False.
    np.testing.assert_array_equal(_apply(model, params, x, t, labels, dropout_key=key_a), eval_out)
    train_a = _apply(model, params, x, t, labels, train=True, dropout_key=key_a)
    train_a_again = _apply(model, params, x, t, labels, train=True, dropout_key=key_a)
    train_b = _apply(model, params, x, t, labels, train=True, dropout_key=key_b)
    np.testing.assert_array_equal(train_a, train_a_again)  # the mask follows the key
    scale = float(jnp.std(eval_out))
    assert np.abs(train_a - train_b).max() > 1e-3 * scale
    assert np.abs(train_a - eval_out).max() > 1e-3 * scale
    # With rate 0, training mode is the evaluation function: dropout is the only difference.
    no_dropout = UNet(**{**TINY, "dropout": 0.0}, num_classes=NUM_CLASSES)
    out = _apply(no_dropout, params, x, t, labels, train=True, dropout_key=key_a)
    chex.assert_trees_all_close(out, eval_out, rtol=1e-6, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_output():
    model, _, params = _conditional_model_and_params()
    bf16_model = UNet(**TINY, num_classes=NUM_CLASSES, dtype=jnp.bfloat16)
    x, t = _inputs()
    labels = jnp.array([0, 1], jnp.int32)
    bf16_params = _abstract_init(bf16_model, x.shape, labels)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(bf16_params))
    chex.assert_trees_all_equal_shapes_and_dtypes(bf16_params, params)

    reference = _apply(model, params, x, t, labels)
    out = _apply(bf16_model, params, x, t, labels)
    assert out.dtype == jnp.float32
    # bfloat16 keeps 8 significant bits: unit roundoff u = 2**-8. Errors of the ~16 rounding
    # stages on the deepest path (convs, dense layers, norms, residual adds) add like a random
    # walk, giving a relative RMS error of about u * sqrt(16) = 0.016; allow 3x for correlated
    # stages. A float32-only path would give ~1e-6 and a broken one O(1).
    relative_rms = float(jnp.sqrt(jnp.mean((out - reference) ** 2)) / jnp.std(reference))
    assert 1e-4 < relative_rms < 3 * 2**-8 * 4


@pytest.mark.parametrize(
    "remat",
    [
        dict(remat=True),
        dict(remat=True, remat_attention=True, remat_policy="dots_saveable"),
    ],
)
def test_remat_gives_same_output_and_gradient(remat):
    # A one-level model (no resampling, attention only in the middle) keeps the two gradient
    # compilations cheap; remat wraps the ResNet blocks and, with remat_attention, the middle
    # attention.
    config = {**TINY, "channel_mults": (1,), "attn_resolutions": ()}
    model, remat_model = UNet(**config), UNet(**config, **remat)
    x, t = _inputs(size=8)
    zeros = jax.tree_util.tree_map(
        lambda leaf: np.zeros(leaf.shape, leaf.dtype), _abstract_init(model, x.shape)
    )
    params = _perturb(zeros, seed=2, scale=0.3)

    def loss(params, module):
        # train=True: the recomputed forward pass must redraw the same dropout mask.
        out = module.apply(
            {"params": params}, x, t, train=True, rngs={"dropout": jax.random.key(5)}
        )
        return jnp.mean(out**2), out

    grad_fn = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    grads, out = grad_fn(params, model)
    remat_grads, remat_out = grad_fn(params, remat_model)
    # Same operations in the same order; only XLA's fusion may differ: float32 reassociation.
    chex.assert_trees_all_close(remat_out, out, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(remat_grads, grads, rtol=1e-4, atol=1e-7)
    assert float(jnp.abs(grads["conv_in"]["kernel"]).max()) > 0


def test_check_image_size_names_size_and_divisor():
    check_image_size(32, (1, 2, 2, 2))
    check_image_size(28, (1, 2, 2))
    with pytest.raises(ValueError, match=r"Image size 28 .* multiple of 2\*\*3 = 8"):
        check_image_size(28, (1, 2, 2, 2))
    with pytest.raises(ValueError, match="attn_resolutions \\(16,\\) never occur.*\\(28, 14, 7\\)"):
        check_attn_resolutions(28, (1, 2, 2), (16,))


def test_bad_input_raises_at_trace_time_before_compiling():
    model = UNet(**TINY)  # divisor 2
    # jax.eval_shape traces without compiling, so these errors come before any compilation.
    with pytest.raises(ValueError, match=r"Image size 15 .* 2\*\*1 = 2"):
        _abstract_init(model, (2, 15, 16, 3))
    with pytest.raises(ValueError, match=r"Image size 9 .* 2\*\*1 = 2"):
        _abstract_init(model, (2, 16, 9, 3))
    with pytest.raises(ValueError, match="attn_resolutions \\(8,\\) never occur"):
        _abstract_init(model, (2, 12, 12, 3))
    with pytest.raises(ValueError, match="NHWC"):
        _abstract_init(model, (2, 16, 16))


def test_labels_must_match_num_classes():
    x_shape = (2, 16, 16, 3)
    labels = jax.ShapeDtypeStruct((2,), jnp.int32)
    with pytest.raises(ValueError, match="num_classes=None"):
        _abstract_init(UNet(**TINY), x_shape, labels)
    conditional = UNet(**TINY, num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="null label"):
        _abstract_init(conditional, x_shape)
    with pytest.raises(ValueError, match="integer array of shape"):
        _abstract_init(conditional, x_shape, jax.ShapeDtypeStruct((2,), jnp.float32))
    x, t = _inputs()
    _, params, _ = _conditional_model_and_params()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        conditional.apply({"params": params}, x, t, {"label": jnp.array([0, 4], jnp.int32)})
    # Labels are the 'label' entry of the cond dict; a bare array gets the fix in the message.
    with pytest.raises(TypeError, match=r"cond=\{'label': labels\}"):
        conditional.apply({"params": params}, x, t, jnp.array([0, 1], jnp.int32))
    assert conditional.cond_keys == ("label",) and UNet(**TINY).cond_keys == ()
    null = conditional.null_cond({"label": jnp.array([0, 2])})
    np.testing.assert_array_equal(null["label"], [NUM_CLASSES, NUM_CLASSES])


def test_t_shape_and_x_dtype_are_checked():
    model = UNet(**TINY)
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \[B\] = \[2\]"):
        jax.eval_shape(model.init, jax.random.key(0), x, jax.ShapeDtypeStruct((3,), jnp.int32))
    with pytest.raises(TypeError, match="float array"):
        jax.eval_shape(
            model.init,
            jax.random.key(0),
            jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.uint8),
            jnp.zeros((2,), jnp.int32),
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_groups": 32}, "num_groups=32 must divide base_channels=16"),
        ({"base_channels": 15, "num_groups": 5}, "even and >= 4"),
        ({"channel_mults": ()}, "non-empty sequence"),
        ({"channel_mults": (1, 0)}, "non-empty sequence"),
        ({"num_res_blocks": 0}, "num_res_blocks must be >= 1"),
        ({"dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
        ({"num_classes": 0}, "num_classes must be None or >= 1"),
        ({"attn_levels": (1,)}, r"either by level \(attn_levels=\(1,\)\) or by resolution"),
        ({"attn_levels": (5,), "attn_resolutions": ()}, r"attn_levels=\(5,\) must lie in"),
        ({"downsample_padding": 2}, "downsample_padding must be 0 or 1"),
        ({"attention_head_dim": 0}, "attention_head_dim must be None or >= 1"),
        ({"remat_policy": "all"}, "remat_policy='all'; expected one of"),
    ],
)
def test_bad_config_raises_on_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        UNet(**{**TINY, **overrides})


def test_count_params_counts_concrete_and_abstract_leaves():
    tree = {"a": jnp.zeros((3, 4)), "b": [jnp.zeros((5,)), jax.ShapeDtypeStruct((2, 2), jnp.int8)]}
    assert count_params(tree) == 12 + 5 + 4


def _perturbed(params, scale=0.1):
    """The parameters plus noise, so that zero-initialised projections pass signal."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    return treedef.unflatten(
        [leaf + scale * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)]
    )


def test_cross_attention_reads_the_context_and_its_null_is_zeros():
    model = UNet(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                 num_groups=4, context_dim=6, transformer_heads=2)  # fmt: skip
    assert model.cond_keys == ("context",)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    t = jnp.array([10, 500])
    context = jax.random.normal(jax.random.key(1), (2, 3, 6))
    params = model.init(jax.random.key(2), x, t, {"context": context})["params"]
    # SD's spatial transformers at the attention levels and in the middle.
    assert {"down_1_attn_0", "mid_attn", "up_1_attn_1"} <= set(params)
    assert "attn2" in params["mid_attn"]["transformer_blocks_0"]
    params = _perturbed(params)
    out = model.apply({"params": params}, x, t, {"context": context})
    other = model.apply({"params": params}, x, t, {"context": context.at[1].add(1.0)})
    np.testing.assert_array_equal(out[0], other[0])
    assert not np.allclose(out[1], other[1])
    null = model.null_cond({"context": context})
    np.testing.assert_array_equal(null["context"], np.zeros((2, 3, 6)))
    with pytest.raises(ValueError, match=r"cond\['context'\] must be a float array \[B, L, "):
        model.apply({"params": params}, x, t, {"context": context[..., :5]})
    with pytest.raises(ValueError, match="needs it as float"):
        model.apply({"params": params}, x, t, {})


def test_class_labels_can_be_a_learned_context():
    model = UNet(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                 num_groups=4, num_classes=3, context_dim=6, transformer_heads=2,
                 class_context=True)  # fmt: skip
    assert model.cond_keys == ("label",)
    x = jnp.zeros((2, 8, 8, 1))
    params = model.init(
        jax.random.key(0), x, jnp.zeros((2,), jnp.int32), {"label": jnp.array([0, 3])}
    )["params"]
    assert params["label_context"]["embedding"].shape == (4, 6)
    assert "label_embedding" not in params
    with pytest.raises(ValueError, match="class_context=True .* needs num_classes and context_dim"):
        UNet(context_dim=6, class_context=True)


def test_attention_by_level_holds_at_any_image_size():
    model = UNet(**{**TINY, "attn_resolutions": (), "attn_levels": (1,), "attention_head_dim": 4})
    for side in (8, 16):
        params = model.init(jax.random.key(0), jnp.zeros((1, side, side, 1)), 0)["params"]
        assert {name for name in params if "attn" in name} == {
            "down_1_attn_0", "up_1_attn_0", "up_1_attn_1", "mid_attn"
        }  # fmt: skip
