"""Tests for diffjax.models.layers against float64 NumPy references and DDPM's init identities."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention import attention_reference
from test_group_norm import group_norm_reference

from diffjax.models import layers

pytestmark = pytest.mark.usefixtures("unoptimized_module")


def _perturb(params, seed, scale=0.3):
    """Adds Gaussian noise to every leaf so zero-initialised layers do something (NumPy noise:
    compiling a jax.random call per leaf would cost more than the tests)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda leaf: leaf + scale * rng.standard_normal(leaf.shape).astype(leaf.dtype), params
    )


@pytest.mark.parametrize("dim", [4, 16, 128])
def test_sinusoidal_embedding_matches_ddpm_formula(dim):
    t = np.array([0, 1, 17, 999, 2.5, 123.25])  # fractional t: continuous time
    half = dim // 2
    frequencies = np.exp(-math.log(10000.0) * np.arange(half) / (half - 1))
    angles = t[:, None] * frequencies[None, :]
    expected = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    got = layers.sinusoidal_embedding(jnp.asarray(t, jnp.float32), dim)
    assert got.dtype == jnp.float32 and got.shape == (len(t), dim)
    # float32 angles up to ~1000 carry an absolute error of ~1000 * 2**-24 ~ 6e-5 in sin/cos.
    np.testing.assert_allclose(got, expected, atol=2e-4)
    # Integer and float timesteps embed identically.
    np.testing.assert_array_equal(
        layers.sinusoidal_embedding(jnp.array([3, 900]), dim),
        layers.sinusoidal_embedding(jnp.array([3.0, 900.0]), dim),
    )


def test_sinusoidal_embedding_with_stable_diffusions_convention():
    """diffusers' Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0): cosines first,
    frequencies 10000^(-k / half)."""
    t, dim = np.array([0.0, 1.0, 981.0]), 8
    half = dim // 2
    angles = t[:, None] * np.exp(-math.log(10000.0) * np.arange(half) / half)[None, :]
    got = layers.sinusoidal_embedding(jnp.asarray(t), dim, flip_sin_to_cos=True, freq_shift=0)
    # float32 angles up to ~1000: ~1000 * 2**-24 ~ 6e-5 absolute error in sin/cos.
    np.testing.assert_allclose(got, np.concatenate([np.cos(angles), np.sin(angles)], 1), atol=2e-4)


@pytest.mark.parametrize("dim", [3, 2, 7])
def test_sinusoidal_embedding_rejects_bad_dim(dim):
    with pytest.raises(ValueError, match=f"even and >= 4, got {dim}"):
        layers.sinusoidal_embedding(jnp.zeros((2,)), dim)


@pytest.mark.parametrize("num_heads", [1, 2])
def test_attention_block_matches_numpy_reference(num_heads):
    batch, height, width, channels, groups = 2, 4, 3, 8, 4
    x = np.random.default_rng(0).normal(size=(batch, height, width, channels))
    block = layers.AttentionBlock(num_heads=num_heads, num_groups=groups)
    params = block.init(jax.random.key(0), jnp.asarray(x, jnp.float32))["params"]
    params = _perturb(params, seed=1)
    got = jax.jit(block.apply)({"params": params}, jnp.asarray(x, jnp.float32))

    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    h = group_norm_reference(x, p["norm"]["scale"], p["norm"]["bias"], groups)
    qkv = h.reshape(batch, height * width, channels) @ p["qkv"]["kernel"] + p["qkv"]["bias"]
    # Columns are q, k, v, each head-major: [B, N, 3C] -> 3 x [B, heads, N, head_dim].
    head_dim = channels // num_heads
    q, k, v = qkv.reshape(batch, height * width, 3, num_heads, head_dim).transpose(2, 0, 3, 1, 4)
    attended = attention_reference(q, k, v).transpose(0, 2, 1, 3).reshape(batch, -1, channels)
    out = attended @ p["proj_out"]["kernel"] + p["proj_out"]["bias"]
    expected = x + out.reshape(x.shape)
    # float32 matmuls over <= 12 positions x 24 features: relative error ~1e-6.
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_attention_block_is_identity_at_init():
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    block = layers.AttentionBlock(num_groups=4)
    params = block.init(jax.random.key(1), x)
    np.testing.assert_array_equal(jax.jit(block.apply)(params, x), x)


def test_res_block_init_is_shortcut():
    """DDPM zero-initialises the second conv, so a fresh block is its shortcut."""
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    temb = jax.random.normal(jax.random.key(1), (2, 32))
    same = layers.ResBlock(out_channels=8, num_groups=4)
    variables = same.init(jax.random.key(2), x, temb)
    np.testing.assert_array_equal(jax.jit(same.apply)(variables, x, temb), x)

    wider = layers.ResBlock(out_channels=16, num_groups=4)
    params = wider.init(jax.random.key(2), x, temb)["params"]
    shortcut = x @ params["shortcut"]["kernel"] + params["shortcut"]["bias"]
    got = jax.jit(wider.apply)({"params": params}, x, temb)
    chex.assert_trees_all_close(got, shortcut, atol=1e-6)


def test_res_block_uses_time_embedding():
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    temb = jax.random.normal(jax.random.key(1), (2, 32))
    block = layers.ResBlock(out_channels=8, num_groups=4)
    params = _perturb(block.init(jax.random.key(2), x, temb)["params"], seed=3)
    out = jax.jit(block.apply)({"params": params}, x, temb)
    out_other_t = jax.jit(block.apply)({"params": params}, x, temb.at[1].set(0.0))
    np.testing.assert_array_equal(out[0], out_other_t[0])  # per-example: no batch mixing
    assert np.abs(out[1] - out_other_t[1]).max() > 1e-3


def _identity_center_kernel(channels):
    kernel = np.zeros((3, 3, channels, channels), np.float32)
    kernel[1, 1] = np.eye(channels)
    return jnp.asarray(kernel)


def test_downsample_pads_like_tensorflow_same():
    """TF 'SAME' with stride 2 pads (0, 1): the centre tap of output i reads input 2i + 1."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 6, 3))
    block = layers.Downsample()
    params = {"conv": {"kernel": _identity_center_kernel(3), "bias": jnp.zeros(3)}}
    got = jax.jit(block.apply)({"params": params}, x)
    np.testing.assert_array_equal(got, x[:, 1::2, 1::2, :])


def test_downsample_with_padding_one_pads_both_sides():
    """Stable Diffusion's padding=1: the centre tap of output i reads input 2i."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 6, 3))
    params = {"conv": {"kernel": _identity_center_kernel(3), "bias": jnp.zeros(3)}}
    got = layers.Downsample(padding=1).apply({"params": params}, x)
    np.testing.assert_array_equal(got, x[:, 0::2, 0::2, :])


def test_upsample_is_nearest_neighbour_then_conv():
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 4))
    block = layers.Upsample()
    params = {"conv": {"kernel": _identity_center_kernel(4), "bias": jnp.zeros(4)}}
    got = jax.jit(block.apply)({"params": params}, x)
    expected = np.repeat(np.repeat(np.asarray(x), 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(got, expected)
