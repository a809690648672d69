"""Tests for diffjax.models.group_norm against a float64 NumPy reference and flax's GroupNorm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models.group_norm import GroupNorm, group_norm


def group_norm_reference(x, scale, bias, num_groups, epsilon=1e-6):
    """GroupNorm (Wu & He 2018) in float64 over (H, W, channels-in-group)."""
    batch, height, width, channels = x.shape
    grouped = x.reshape(batch, height, width, num_groups, channels // num_groups)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    var = grouped.var(axis=(1, 2, 4), keepdims=True)
    normed = ((grouped - mean) / np.sqrt(var + epsilon)).reshape(x.shape)
    return normed * scale + bias


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    # A per-channel offset and spread, so groups have different statistics.
    x = rng.normal(size=shape) * rng.uniform(0.5, 2.0, channels) + rng.normal(size=channels)
    return x, rng.normal(size=channels), rng.normal(size=channels)


@pytest.mark.parametrize(
    "shape, num_groups",
    [((2, 5, 3, 8), 1), ((2, 5, 3, 8), 4), ((3, 4, 4, 6), 6), ((1, 7, 7, 96), 32)],
)
def test_group_norm_matches_float64_reference(shape, num_groups):
    x, scale, bias = _inputs(shape)
    got = jax.jit(group_norm, static_argnums=(3, 4))(
        *(jnp.asarray(a, jnp.float32) for a in (x, scale, bias)), num_groups, 1e-6
    )
    assert got.shape == shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, group_norm_reference(x, scale, bias, num_groups), atol=2e-5)


@pytest.mark.parametrize("mean", [1e2, 1e3])
def test_group_norm_is_exact_on_activations_with_a_large_mean(mean):
    # Published networks' activations reach means of 1e2-1e3 at unit spread. The two-pass
    # variance then only inherits the float32 rounding of the group mean, a few ulps of `mean`
    # in units of the spread; flax's one-pass E[x^2] - E[x]^2 cancels ~7 digits (its output
    # misses by O(1) at 1e3).
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(2, 16, 16, 32)) + mean).astype(np.float32)
    scale, bias = np.ones(32, np.float32), np.zeros(32, np.float32)
    got = group_norm(jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias), 4)
    expected = group_norm_reference(x.astype(np.float64), scale, bias, 4)
    np.testing.assert_allclose(got, expected, atol=4 * float(np.spacing(np.float32(mean))))


@pytest.mark.parametrize("shape, num_groups", [((2, 5, 3, 8), 4), ((2, 6, 6, 12), 3)])
def test_group_norm_gradients_match_flax_autodiff(shape, num_groups):
    x, scale, bias = (jnp.asarray(a, jnp.float32) for a in _inputs(shape, seed=1))
    cotangent = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
    flax_norm = nn.GroupNorm(num_groups, epsilon=1e-6)

    def flax_apply(x, scale, bias):
        return flax_norm.apply({"params": {"scale": scale, "bias": bias}}, x)

    def ours(x, scale, bias):
        return group_norm(x, scale, bias, num_groups, 1e-6)

    expected_out, expected_vjp = jax.vjp(flax_apply, x, scale, bias)
    got_out, got_vjp = jax.vjp(ours, x, scale, bias)
    np.testing.assert_allclose(got_out, expected_out, atol=2e-5)
    for got, expected in zip(got_vjp(cotangent), expected_vjp(cotangent)):
        assert got.shape == expected.shape and got.dtype == expected.dtype
        largest = float(jnp.abs(expected).max())
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * largest)


@pytest.mark.parametrize("shape, num_groups", [((2, 5, 3, 8), 4), ((2, 6, 6, 12), 3)])
def test_group_norm_forward_mode_matches_flax_autodiff(shape, num_groups):
    x, scale, bias = (jnp.asarray(a, jnp.float32) for a in _inputs(shape, seed=3))
    rng = np.random.default_rng(4)
    tangents = tuple(jnp.asarray(rng.normal(size=a.shape), jnp.float32) for a in (x, scale, bias))
    flax_norm = nn.GroupNorm(num_groups, epsilon=1e-6)

    def flax_apply(x, scale, bias):
        return flax_norm.apply({"params": {"scale": scale, "bias": bias}}, x)

    expected_out, expected = jax.jvp(flax_apply, (x, scale, bias), tangents)
    got_out, got = jax.jvp(
        lambda x, scale, bias: group_norm(x, scale, bias, num_groups, 1e-6), (x, scale, bias),
        tangents,
    )  # fmt: skip
    np.testing.assert_allclose(got_out, expected_out, atol=2e-5)
    largest = float(jnp.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * largest)


def test_group_norm_gradient_is_orthogonal_to_group_shifts_and_scales():
    # GN's output does not change when a group is shifted or scaled, so dx must be orthogonal
    # to the constant and to x itself on every (example, group) slice.
    shape, num_groups = (2, 4, 4, 8), 2
    x, scale, bias = (jnp.asarray(a, jnp.float32) for a in _inputs(shape, seed=3))
    cotangent = jnp.asarray(np.random.default_rng(4).normal(size=shape), jnp.float32)
    _, vjp = jax.vjp(lambda x: group_norm(x, scale, bias, num_groups, 0.0), x)
    (dx,) = vjp(cotangent)

    def grouped(a):  # [B, H, W, C] -> [B, G, H * W, C / G]
        return np.asarray(a).reshape(2, 16, num_groups, 4).transpose(0, 2, 1, 3)

    dx_g, x_g = grouped(dx), grouped(x)
    scale_of_dx = np.abs(dx_g).sum(axis=(2, 3))
    np.testing.assert_allclose(dx_g.sum(axis=(2, 3)) / scale_of_dx, 0.0, atol=1e-5)
    np.testing.assert_allclose(
        (dx_g * x_g).sum(axis=(2, 3)) / (np.abs(dx_g * x_g).sum(axis=(2, 3))), 0.0, atol=1e-5
    )


def test_module_has_flax_groupnorm_parameters_and_output():
    x, _, _ = _inputs((2, 4, 4, 8), seed=5)
    x = jnp.asarray(x, jnp.float32)
    ours = GroupNorm(num_groups=4)
    params = ours.init(jax.random.key(0), x)
    flax_params = nn.GroupNorm(num_groups=4).init(jax.random.key(0), x)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(flax_params)
    leaves = zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(flax_params))
    for leaf, flax_leaf in leaves:
        np.testing.assert_array_equal(leaf, flax_leaf)
    params = jax.tree_util.tree_map(lambda a: a + 0.5, params)
    np.testing.assert_allclose(
        ours.apply(params, x), nn.GroupNorm(num_groups=4).apply(params, x), atol=2e-5
    )


def test_bfloat16_input_keeps_float32_statistics():
    x, scale, bias = _inputs((2, 6, 6, 8), seed=6)
    x = x + 50.0  # a large mean: bfloat16 statistics would lose most of the signal
    x_bf16 = jnp.asarray(x, jnp.bfloat16)
    module = GroupNorm(num_groups=2, dtype=jnp.bfloat16)
    params = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}}
    got = module.apply(params, x_bf16)
    assert got.dtype == jnp.bfloat16
    expected = group_norm_reference(np.asarray(x_bf16, np.float64), scale, bias, 2)
    # bfloat16 keeps 8 bits: the output rounding is about 2**-8 of |y| <= ~4.
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, atol=4 * 2.0**-8 * 4)
    dx = jax.grad(lambda x: jnp.sum(module.apply(params, x).astype(jnp.float32)))(x_bf16)
    assert dx.dtype == jnp.bfloat16


@pytest.mark.parametrize("num_groups", [0, 3, 16])
def test_rejects_groups_that_do_not_divide_channels(num_groups):
    x = jnp.zeros((1, 2, 2, 8))
    with pytest.raises(ValueError, match=f"num_groups={num_groups} must be >= 1 and divide the 8"):
        group_norm(x, jnp.ones(8), jnp.zeros(8), num_groups)


def test_rejects_non_nhwc_input():
    with pytest.raises(ValueError, match=r"expects \[B, H, W, C\] features, got shape \(4, 8\)"):
        group_norm(jnp.zeros((4, 8)), jnp.ones(8), jnp.zeros(8), 2)
