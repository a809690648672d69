"""SSIM and PSNR wrappers: the [-1, 1] mapping, known values and input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.metrics import image_quality


def test_identical_images_have_ssim_one():
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1.0, maxval=1.0)
    np.testing.assert_allclose(image_quality.ssim(x, x), 1.0, rtol=1e-6)


def test_psnr_uses_the_unit_range():
    # A constant offset of 0.2 on [-1, 1] is 0.1 on [0, 1]: MSE 0.01, PSNR 20 dB.
    x = jnp.zeros((3, 8, 8, 1))
    np.testing.assert_allclose(image_quality.psnr(x, x + 0.2), 20.0, rtol=1e-5)


def test_ssim_falls_with_noise():
    x = jax.random.uniform(jax.random.key(1), (1, 32, 32, 1), minval=-1.0, maxval=1.0)
    noise = jax.random.normal(jax.random.key(2), x.shape)
    values = [
        float(image_quality.ssim(x, jnp.clip(x + scale * noise, -1, 1))[0])
        for scale in (0.05, 0.2, 0.5)
    ]
    assert values[0] > values[1] > values[2]


def test_bad_inputs_name_the_problem():
    with pytest.raises(TypeError, match=r"float array in \[-1, 1\]"):
        image_quality.psnr(jnp.zeros((1, 8, 8, 1), jnp.uint8), jnp.zeros((1, 8, 8, 1), jnp.uint8))
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        image_quality.psnr(jnp.zeros((8, 8, 1)), jnp.zeros((8, 8, 1)))
    with pytest.raises(ValueError, match="at least 11x11"):
        image_quality.ssim(jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8, 8, 1)))
