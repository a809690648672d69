"""The patch-GAN discriminator of pix2pix (Isola et al. 2017, arXiv:1611.07004, Sec. 3.2.2), as
taming-transformers and LDM train their autoencoders with.

``num_layers`` 4x4 stride-2 convolutions (the first without normalisation), one 4x4 stride-1
convolution, and a 4x4 stride-1 convolution to one logit per patch, with LeakyReLU(0.2)
between them. Normalisation is batch normalisation with the batch's own statistics, the mode
in which the discriminator always runs (it only ever sees training batches), so there are no
running averages to carry.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from flax.typing import Dtype

__all__ = ["PatchDiscriminator"]


class _BatchNorm(nn.Module):
    """``scale * (x - mean) / sqrt(var + 1e-5) + bias`` with the batch's per-channel statistics
    (float32)."""

    dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=(0, 1, 2))
        variance = jnp.var(x32, axis=(0, 1, 2))
        return ((x32 - mean) * (scale / jnp.sqrt(variance + 1e-5)) + bias).astype(self.dtype)


class PatchDiscriminator(nn.Module):
    """Logits ``[B, h, w, 1]`` of overlapping patches of images ``[B, H, W, C]`` being real
    (pix2pix's PatchGAN, Isola et al. 2017, Sec. 3.2.2).

    Attributes:
      base_channels: channels of the first convolution (pix2pix, LDM: 64).
      num_layers: stride-2 convolutions (LDM: 3; each side must stay >= 4 through them).
      dtype: compute dtype.
    """

    base_channels: int = 64
    num_layers: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        def conv(features: int, stride: int, bias: bool = True) -> nn.Conv:
            return nn.Conv(
                features, (4, 4), strides=(stride, stride), padding=1, use_bias=bias,
                dtype=self.dtype,
            )  # fmt: skip

        h = nn.leaky_relu(conv(self.base_channels, 2)(images), 0.2)
        for layer in range(1, self.num_layers + 1):
            stride = 2 if layer < self.num_layers else 1
            features = self.base_channels * min(2**layer, 8)
            h = nn.leaky_relu(_BatchNorm(self.dtype)(conv(features, stride, bias=False)(h)), 0.2)
        return conv(1, 1)(h).astype(jnp.float32)
