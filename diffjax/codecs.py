"""Codecs: the map between images and the space a diffusion model runs in.

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", arXiv:2112.10752, Sec. 3) trains and samples the denoiser on ``z = encode(x)`` and
turns its samples back into images with ``decode(z)``; pixel-space diffusion is the identity
codec. A codec tells the rest of diffjax everything it needs about that space:

==========================  ==================================================================
``latent_shape(shape)``     the model-space shape of one example of image ``shape`` (H, W, C)
``encode(params, x, key)``  images ``[B, H, W, C]`` in [-1, 1] -> model-space ``[B, ...]``,
                            with its scale and shift applied (z = scale (e - shift); the key
                            draws a posterior sample where the encoder has one)
``decode(params, z)``       model space -> images in about [-1, 1] (undoing scale and shift)
``clip``                    whether an x0-prediction may be clipped to [-1, 1] (pixels: yes;
                            latents: no, their range is not [-1, 1])
``frozen_source(...)``      where its parameters come from (a workdir or a weights file), if it
                            has any; they reach :meth:`encode` and :meth:`decode` as the
                            training step's ``frozen['codec']`` (DESIGN rule 10)
==========================  ==================================================================

Codecs are registered by name (``config.codec.name``, :func:`register_codec`); a codec is a
hashable value (a frozen dataclass registered as a static pytree), so it can be an argument of
``jax.jit`` like a process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp

from diffjax.names import RegistryNames

__all__ = [
    "CODECS",
    "CODEC_NAMES",
    "Codec",
    "IdentityCodec",
    "check_latent_shape",
    "get_codec",
    "is_identity",
    "register_codec",
]


class Codec(Protocol):
    """What a codec provides (see the module docstring): latent diffusion's z = E(x) and
    x~ = D(z) (Rombach et al. 2022, Sec. 3.1), with a scale and shift on z."""

    name: str
    clip: bool

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]: ...

    def encode(self, params: Any, images: jnp.ndarray, key: jax.Array | None) -> jnp.ndarray: ...

    def decode(self, params: Any, latents: jnp.ndarray) -> jnp.ndarray: ...

    def frozen_source(self) -> Any: ...


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class IdentityCodec:
    """Pixel space: the model runs on the images themselves (no parameters)."""

    name = "identity"
    clip = True

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``image_shape`` itself."""
        return tuple(image_shape)

    def encode(self, params: Any, images: jnp.ndarray, key: jax.Array | None) -> jnp.ndarray:
        """The images, unchanged."""
        return images

    def decode(self, params: Any, latents: jnp.ndarray) -> jnp.ndarray:
        """The samples, unchanged."""
        return latents

    def frozen_source(self) -> None:
        """None: no parameters."""
        return None


CODECS: dict[str, Callable[..., Any]] = {"identity": IdentityCodec}
"""Codec factories by name: ``CODECS[name](**options) -> codec``."""

CODEC_NAMES: Sequence[str] = RegistryNames(CODECS)
"""The names of the registered codecs (a live view)."""


def register_codec(name: str, factory: Callable[..., Any]) -> None:
    """Adds a codec that configs can name (``config.codec.name``, options in
    ``config.codec.options``).

    Args:
      name: a new name.
      factory: ``factory(**options) -> codec`` following :class:`Codec`; raises
        ``TypeError`` / ``ValueError`` for bad options.

    Raises:
      ValueError: the name is taken or empty.
    """
    if not isinstance(name, str) or not name or name in CODECS:
        raise ValueError(
            f"register_codec needs a new, non-empty name; {name!r} is taken or empty "
            f"(registered: {tuple(CODECS)})."
        )
    CODECS[name] = factory


def get_codec(name: str, **options: Any) -> Any:
    """The codec called ``name`` built with ``options``.

    Raises:
      ValueError: an unknown name; the factory's own errors for bad options.
    """
    if name not in CODECS:
        raise ValueError(f"Unknown codec {name!r}; expected one of {tuple(CODECS)}.")
    return CODECS[name](**options)


def is_identity(codec: Any) -> bool:
    """Whether ``codec`` is pixel space (nothing to encode or decode)."""
    return isinstance(codec, IdentityCodec)


def check_latent_shape(codec: Any, image_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The codec's latent shape of ``image_shape``, checked to be a tuple of positive ints.

    Raises:
      ValueError: the codec cannot take images of this shape.
    """
    shape = tuple(codec.latent_shape(tuple(image_shape)))
    if not shape or not all(isinstance(side, int) and side > 0 for side in shape):
        raise ValueError(
            f"codec {codec.name!r} gives the latent shape {shape} for images {image_shape}; "
            f"expected positive ints."
        )
    return shape
