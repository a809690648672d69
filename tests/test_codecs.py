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
