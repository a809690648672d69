"""Codecs: the identity of pixel space, the registry, and the latent-shape check
(diffjax/codecs.py). A latent codec through the training program: tests/test_objectives.py."""

import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import user_extensions  # noqa: E402

from diffjax import codecs  # noqa: E402


def test_the_identity_codec_is_pixel_space():
    codec = codecs.get_codec("identity")
    images = np.linspace(-1, 1, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
    assert codec.latent_shape((4, 4, 3)) == (4, 4, 3)
    assert codec.encode(None, images, None) is images and codec.decode(None, images) is images
    assert codec.clip and codec.frozen_source() is None and codecs.is_identity(codec)
    assert codec == codecs.IdentityCodec() and hash(codec) == hash(codecs.IdentityCodec())


def test_registered_codecs_are_found_by_name():
    assert "space_to_depth" in codecs.CODEC_NAMES
    codec = codecs.get_codec("space_to_depth")
    assert isinstance(codec, user_extensions.SpaceToDepth) and not codecs.is_identity(codec)
    assert codecs.check_latent_shape(codec, (8, 6, 1)) == (4, 3, 4)
    with pytest.raises(ValueError, match="needs even sides"):
        codecs.check_latent_shape(codec, (7, 6, 1))
    with pytest.raises(ValueError, match=r"Unknown codec 'vae'; expected one of \('identity'"):
        codecs.get_codec("vae")
    with pytest.raises(ValueError, match="'identity' is taken"):
        codecs.register_codec("identity", codecs.IdentityCodec)
    # A codec is a static value: it can be an argument of jax.jit like a process.
    assert jax.tree_util.tree_leaves(codec) == []


def test_an_exact_orthogonal_codec_reproduces_pixel_space():
    """Latent diffusion with an orthogonal linear codec z = Q x: the exact latent denoiser is
    Q D(Q^T z, t) for the exact pixel denoiser D of the data law (here a Gaussian), so the
    latent loss with noise Q eps equals the pixel loss with eps, and DDIM from Q x_T decodes
    to DDIM from x_T, up to float32 rounding."""
    import jax.numpy as jnp
    from gaussian_oracle import exact_model_fn, gaussian

    import diffjax as dj

    shape = (8,)  # eight dimensions, mixed by one rotation
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 8)))
    rotation = jnp.asarray(rotation, jnp.float32)

    def encode(x):
        return x @ rotation.T

    def decode(z):
        return z @ rotation

    schedule = dj.get_schedule("cosine", 1000)
    law = gaussian(
        np.linspace(-0.5, 0.5, 8).reshape(shape), np.linspace(0.1, 0.4, 8).reshape(shape)
    )
    for prediction in ("eps", "v"):
        pixel_fn = exact_model_fn(law, schedule, prediction)

        def latent_fn(z, t, pixel_fn=pixel_fn):
            return encode(pixel_fn(decode(z), t))

        key = jax.random.key(1)
        x0 = jnp.asarray(law.sample(np.random.default_rng(2), 64)[0], jnp.float32)
        eps = jax.random.normal(jax.random.key(3), x0.shape)
        pixel_loss, _ = dj.denoising_loss(
            pixel_fn, schedule, x0, key, prediction_type=prediction, noise=eps
        )
        latent_loss, _ = dj.denoising_loss(
            latent_fn, schedule, encode(x0), key, prediction_type=prediction, noise=encode(eps)
        )
        assert pixel_loss > 0
        np.testing.assert_allclose(latent_loss, pixel_loss, rtol=1e-5)
        x_T = jax.random.normal(jax.random.key(4), (16, *shape))
        options = dict(num_steps=20, prediction_type=prediction, clip_x0=False)
        pixels = dj.sample("ddim", pixel_fn, schedule, key, (16, *shape), x_T=x_T, **options)
        latents = dj.sample(
            "ddim", latent_fn, schedule, key, (16, *shape), x_T=encode(x_T), **options
        )
        np.testing.assert_allclose(decode(latents), pixels, atol=1e-5)
