"""Tests for diffjax.models.attention against a float64 reference and jax.nn's attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models.attention import dot_product_attention


def attention_reference(q, k, v):
    """float64 softmax(q k^T / sqrt(d)) v over ``[B, heads, N, d]`` arrays."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ v


def _qkv(seed, batch=2, heads=3, queries=5, keys=7, dim=4, value_dim=6, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    shapes = [
        (batch, heads, queries, dim),
        (batch, heads, keys, dim),
        (batch, heads, keys, value_dim),
    ]
    return tuple(jnp.asarray(rng.normal(size=shape), dtype) for shape in shapes)


def test_matches_float64_reference():
    q, k, v = _qkv(0)
    got = jax.jit(dot_product_attention)(q, k, v)
    assert got.shape == (2, 3, 5, 6) and got.dtype == jnp.float32
    # float32 sums over <= 7 keys of O(1) terms: relative error ~1e-7.
    np.testing.assert_allclose(got, attention_reference(q, k, v), rtol=1e-5, atol=1e-6)


def test_values_and_gradients_match_jax_nn():
    """jax.nn.dot_product_attention takes [B, N, heads, d]; the results agree after a swap."""
    q, k, v = _qkv(1, value_dim=4)
    cotangent = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, 5, 4)), jnp.float32)

    def ours(q, k, v):
        return jnp.sum(dot_product_attention(q, k, v) * cotangent)

    def theirs(q, k, v):
        swap = lambda a: jnp.swapaxes(a, 1, 2)  # noqa: E731
        return jnp.sum(swap(jax.nn.dot_product_attention(swap(q), swap(k), swap(v))) * cotangent)

    np.testing.assert_allclose(jax.jit(ours)(q, k, v), jax.jit(theirs)(q, k, v), rtol=1e-5)
    got = jax.jit(jax.grad(ours, argnums=(0, 1, 2)))(q, k, v)
    expected = jax.jit(jax.grad(theirs, argnums=(0, 1, 2)))(q, k, v)
    for name, a, b in zip("qkv", got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=f"d{name}")


def test_large_logits_stay_finite():
    """exp() of logits ~1e4 overflows float32; the row-max shift keeps them finite."""
    q, k, v = _qkv(3)
    got = jax.jit(dot_product_attention)(q * 300.0, k * 300.0, v)
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(got, attention_reference(q * 300.0, k * 300.0, v), atol=1e-5)


def test_bfloat16_inputs_keep_float32_softmax():
    q, k, v = _qkv(4, keys=50, dim=64, dtype=jnp.bfloat16)
    q = (q.astype(jnp.float32) * 4.0).astype(jnp.bfloat16)  # logits up to ~15
    got = jax.jit(dot_product_attention)(q, k, v)
    assert got.dtype == jnp.bfloat16
    # The reference sees the same bf16-rounded inputs. What is left is the bf16 rounding of the
    # weights before the second matmul and of outputs up to ~3 (half an ulp: 2**-7): 6e-3 here.
    # Logits rounded to bf16 before the softmax would give 1.7e-2 on these inputs.
    np.testing.assert_allclose(
        np.asarray(got, np.float32), attention_reference(q, k, v), rtol=0, atol=1e-2
    )


@pytest.mark.parametrize(
    "shapes, message",
    [
        (((2, 5, 4), (2, 5, 4), (2, 5, 4)), "4-D"),
        (((2, 3, 5, 4), (2, 1, 5, 4), (2, 1, 5, 4)), "k=\\(2, 1, 5, 4\\)"),
        (((2, 3, 5, 4), (2, 3, 7, 4), (2, 3, 6, 4)), "v=\\(2, 3, 6, 4\\)"),
        (((2, 3, 5, 4), (2, 3, 7, 8), (2, 3, 7, 4)), "k=\\(2, 3, 7, 8\\)"),
    ],
)
def test_rejects_mismatched_shapes(shapes, message):
    q, k, v = (jnp.zeros(shape) for shape in shapes)
    with pytest.raises(ValueError, match=message):
        dot_product_attention(q, k, v)
