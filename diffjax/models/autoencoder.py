"""Stable Diffusion's KL autoencoder (Rombach et al. 2022, arXiv:2112.10752, Sec. 3 and App. G).

An encoder of ResNet blocks and stride-2 downsamplings, a ResNet-attention-ResNet middle, and a
mirrored decoder with nearest-neighbour upsamplings; the encoder's output is the mean and log
variance of a diagonal Gaussian posterior over latents ``[B, H/f, W/f, latent_channels]`` with
``f = 2 ** (len(channel_mults) - 1)``. The layout and the parameter names follow LDM's
``ldm/modules/diffusionmodules/model.py`` as diffusers' ``AutoencoderKL`` names them (so a
published weights file maps onto it with one key table, :mod:`diffjax.weights.autoencoder`):

* every GroupNorm has 32 groups and epsilon 1e-6;
* downsampling pads the bottom and right by one pixel and convolves 3x3 with stride 2 and no
  further padding (LDM's asymmetric ``Downsample``), so odd sides shrink as LDM's do;
* the middle's attention is single-head over all positions, with separate q, k, v and output
  projections; its softmax is float32;
* ``quant_conv`` / ``post_quant_conv`` are 1x1 convolutions on the moments and on the latents
  (SD 1/2 and SDXL have them; SD3's 16-channel autoencoder does not: ``quant_conv=False``).

Presets: SD's kl-f8 is ``AutoencoderKL(base_channels=128, channel_mults=(1, 2, 4, 4),
num_res_blocks=2, latent_channels=4)``; SD3's is the same with ``latent_channels=16,
quant_conv=False``; the Fashion-MNIST recipe's is a 4x one with 32 channels.

Compute runs in ``dtype`` (bfloat16 on accelerators) with float32 normalisation statistics and
softmax; ``force_upcast`` runs the whole autoencoder in float32 whatever ``dtype`` says. SD-family
decoders are known to overflow in float16 and occasionally in bfloat16: :meth:`decode` checks its
output and redoes a decode that came out non-finite in float32 (:func:`decode_checked`; with
``jax.lax.cond`` the float32 decode only runs when it is needed).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

from diffjax.autoencoding import quantize, sample_posterior
from diffjax.models.group_norm import GroupNorm
from diffjax.models.transformer import Attention

__all__ = [
    "AUTOENCODER_PRESETS",
    "AutoencoderKL",
    "AutoencoderVQ",
    "check_autoencoder_input",
    "decode_checked",
    "downsampling_factor",
    "latent_side",
]

NORM_EPSILON = 1e-6
"""LDM's GroupNorm epsilon in the autoencoder."""

AUTOENCODER_PRESETS: dict[str, dict[str, object]] = {
    "sd_kl_f8": dict(
        base_channels=128, channel_mults=(1, 2, 4, 4), num_res_blocks=2, latent_channels=4
    ),
    "sd3_kl_f8": dict(
        base_channels=128,
        channel_mults=(1, 2, 4, 4),
        num_res_blocks=2,
        latent_channels=16,
        quant_conv=False,
    ),
    "ldm_vq_f4": dict(
        base_channels=128,
        channel_mults=(1, 2, 4),
        num_res_blocks=2,
        latent_channels=3,
        codebook_size=8192,
    ),  # fmt: skip
    "fashion_mnist_f4": dict(
        base_channels=32,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        latent_channels=4,
        num_groups=8,
    ),  # fmt: skip
}
"""Constructor arguments of :class:`AutoencoderKL` for SD 1/2 and SDXL (``'sd_kl_f8'``), SD3
(``'sd3_kl_f8'``) and the Fashion-MNIST recipe (``'fashion_mnist_f4'``)."""


def downsampling_factor(channel_mults: Sequence[int]) -> int:
    """``f = 2 ** (len(channel_mults) - 1)``: image side over latent side (for even sides), LDM's
    downsampling factor f = H / h = 2^m (Rombach et al. 2022, Sec. 3.1)."""
    return 2 ** (len(channel_mults) - 1)


def latent_side(image_side: int, channel_mults: Sequence[int]) -> int:
    """The latent side of an image side: each downsampling maps ``s`` to ``floor((s - 2) / 2)
    + 1`` (pad one pixel at the end, 3x3 kernel, stride 2)."""
    for _ in range(len(channel_mults) - 1):
        image_side = (image_side - 2) // 2 + 1
    return image_side


def check_autoencoder_input(
    image_shape: tuple[int, ...], channel_mults: Sequence[int], image_channels: int
) -> None:
    """Checks that images of ``image_shape`` ``(H, W[, C])`` decode back to their own size.

    Raises:
      ValueError: a side that is not a multiple of the downsampling factor (the decoder's
        upsamplings could not restore it), or a channel count other than ``image_channels``.
    """
    factor = downsampling_factor(channel_mults)
    for side in image_shape[:2]:
        if side < factor or side % factor:
            raise ValueError(
                f"the autoencoder with channel_mults={tuple(channel_mults)} downsamples "
                f"{len(channel_mults) - 1} times, so every image side must be a positive "
                f"multiple of {factor}; got {side}."
            )
    if len(image_shape) == 3 and image_shape[2] != image_channels:
        raise ValueError(
            f"the autoencoder has image_channels={image_channels}, but the images have "
            f"{image_shape[2]} channels; set config.model.image_channels={image_shape[2]}."
        )


class _ResnetBlock(nn.Module):
    """LDM's ResNet block without a time embedding: ``shortcut(x) + conv2(SiLU(GN(conv1(SiLU(
    GN(x))))))``, the shortcut a 1x1 convolution when the channel count changes."""

    out_channels: int
    num_groups: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = functools.partial(nn.Conv, dtype=self.dtype, param_dtype=self.param_dtype)
        norm = functools.partial(
            GroupNorm, self.num_groups, NORM_EPSILON, self.dtype, self.param_dtype
        )
        h = conv(self.out_channels, (3, 3), padding=1, name="conv1")(nn.silu(norm(name="norm1")(x)))
        h = conv(self.out_channels, (3, 3), padding=1, name="conv2")(nn.silu(norm(name="norm2")(h)))
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, (1, 1), name="conv_shortcut")(x)
        return x + h


class _MidBlock(nn.Module):
    """ResNet, attention, ResNet at the lowest resolution."""

    channels: int
    num_groups: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        common = dict(num_groups=self.num_groups, dtype=self.dtype, param_dtype=self.param_dtype)
        x = _ResnetBlock(self.channels, name="resnets_0", **common)(x)
        # LDM's AttnBlock: single-head, residual, q, k and v with biases, after a GroupNorm.
        x = Attention(
            1, qkv_bias=True, num_groups=self.num_groups, residual=True, dtype=self.dtype,
            param_dtype=self.param_dtype, name="attentions_0",
        )(x)  # fmt: skip
        return _ResnetBlock(self.channels, name="resnets_1", **common)(x)


class _Encoder(nn.Module):
    base_channels: int
    channel_mults: tuple[int, ...]
    num_res_blocks: int
    out_channels: int
    num_groups: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        common = dict(num_groups=self.num_groups, dtype=self.dtype, param_dtype=self.param_dtype)
        conv = functools.partial(nn.Conv, dtype=self.dtype, param_dtype=self.param_dtype)
        h = conv(self.base_channels * self.channel_mults[0], (3, 3), padding=1, name="conv_in")(x)
        for level, mult in enumerate(self.channel_mults):
            for index in range(self.num_res_blocks):
                h = _ResnetBlock(
                    self.base_channels * mult, name=f"down_blocks_{level}_resnets_{index}", **common
                )(h)
            if level < len(self.channel_mults) - 1:
                h = jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))
                h = conv(
                    h.shape[-1], (3, 3), strides=(2, 2), padding="VALID",
                    name=f"down_blocks_{level}_downsamplers_0",
                )(h)  # fmt: skip
        h = _MidBlock(h.shape[-1], name="mid_block", **common)(h)
        norm = GroupNorm(
            self.num_groups, NORM_EPSILON, self.dtype, self.param_dtype, name="conv_norm_out"
        )
        return conv(self.out_channels, (3, 3), padding=1, name="conv_out")(nn.silu(norm(h)))


class _Decoder(nn.Module):
    base_channels: int
    channel_mults: tuple[int, ...]
    num_res_blocks: int
    out_channels: int
    num_groups: int
    dtype: Dtype
    param_dtype: Dtype

    def setup(self) -> None:
        common = dict(num_groups=self.num_groups, dtype=self.dtype, param_dtype=self.param_dtype)
        conv = functools.partial(nn.Conv, dtype=self.dtype, param_dtype=self.param_dtype)
        top = self.base_channels * self.channel_mults[-1]
        self.conv_in = conv(top, (3, 3), padding=1)
        self.mid_block = _MidBlock(top, **common)
        levels = list(enumerate(self.channel_mults))[::-1]
        self.up_resnets = [
            [
                _ResnetBlock(self.base_channels * mult, name=f"up_blocks_{block}_resnets_{index}", **common)
                for index in range(self.num_res_blocks + 1)
            ]
            for block, (_, mult) in enumerate(levels)
        ]  # fmt: skip
        self.upsamplers = [
            conv(self.base_channels * mult, (3, 3), padding=1, name=f"up_blocks_{block}_upsamplers_0")
            for block, (level, mult) in enumerate(levels)
            if level > 0
        ]  # fmt: skip
        self.conv_norm_out = GroupNorm(self.num_groups, NORM_EPSILON, self.dtype, self.param_dtype)
        self.conv_out = conv(self.out_channels, (3, 3), padding=1)

    def features(self, z: jnp.ndarray) -> jnp.ndarray:
        """Everything but the last convolution: ``[B, H, W, base_channels * mult_0]``."""
        h = self.mid_block(self.conv_in(z))
        for block, resnets in enumerate(self.up_resnets):
            for resnet in resnets:
                h = resnet(h)
            if block < len(self.upsamplers):
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = self.upsamplers[block](h)
        return nn.silu(self.conv_norm_out(h))

    def __call__(self, z: jnp.ndarray) -> jnp.ndarray:
        return self.conv_out(self.features(z))


class AutoencoderKL(nn.Module):
    """The KL-regularised autoencoder of latent diffusion (see the module docstring; Rombach et
    al. 2022, Sec. 3.1 and App. G).

    Attributes:
      base_channels: channels of the first level (SD: 128).
      channel_mults: per-level multipliers (SD: (1, 2, 4, 4), a factor 8 per side).
      num_res_blocks: ResNet blocks per encoder level (the decoder has one more).
      latent_channels: channels of the latent (SD 1/2, SDXL: 4; SD3: 16).
      image_channels: channels of the images.
      num_groups: GroupNorm groups (SD: 32).
      quant_conv: whether the 1x1 ``quant_conv`` / ``post_quant_conv`` exist.
      force_upcast: run in float32 whatever ``dtype`` says.
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    base_channels: int = 128
    channel_mults: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    latent_channels: int = 4
    image_channels: int = 3
    num_groups: int = 32
    quant_conv: bool = True
    force_upcast: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _compute_dtype(self) -> Dtype:
        return jnp.float32 if self.force_upcast else self.dtype

    def _moment_channels(self) -> int:
        """The encoder's output channels: a mean and a log variance per latent channel."""
        return 2 * self.latent_channels

    def setup(self) -> None:
        for channels in (self.base_channels * mult for mult in self.channel_mults):
            if channels % self.num_groups:
                raise ValueError(
                    f"AutoencoderKL: num_groups={self.num_groups} must divide every level's "
                    f"channels base_channels * channel_mults = {channels}."
                )
        common = dict(
            base_channels=self.base_channels,
            channel_mults=tuple(self.channel_mults),
            num_res_blocks=self.num_res_blocks,
            num_groups=self.num_groups,
            dtype=self._compute_dtype(),
            param_dtype=self.param_dtype,
        )
        self.encoder = _Encoder(out_channels=self._moment_channels(), **common)
        self.decoder = _Decoder(out_channels=self.image_channels, **common)
        if self.quant_conv:
            conv = functools.partial(
                nn.Conv, kernel_size=(1, 1), dtype=jnp.float32, param_dtype=self.param_dtype
            )
            self.quant = conv(self._moment_channels(), name="quant_conv")
            self.post_quant = conv(self.latent_channels, name="post_quant_conv")

    def encode(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """The posterior ``q(z | x) = N(mean, exp(logvar))`` (LDM eq. 25's encoder).

        Args:
          x: images ``[B, H, W, image_channels]`` in [-1, 1].

        Returns:
          ``(mean, logvar)``, float32 ``[B, H/f, W/f, latent_channels]``; ``logvar`` clipped
          to [-30, 20] as LDM's ``DiagonalGaussianDistribution`` does.
        """
        moments = self.encoder(x.astype(self._compute_dtype())).astype(jnp.float32)
        if self.quant_conv:
            moments = self.quant(moments)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def _latents_in(self, z: jnp.ndarray) -> jnp.ndarray:
        z = z.astype(jnp.float32)
        return self.post_quant(z) if self.quant_conv else z

    def decode_features(self, z: jnp.ndarray) -> jnp.ndarray:
        """The decoder up to its last convolution (the layer LDM's adaptive GAN weight
        differentiates against): ``[B, H, W, base_channels * channel_mults[0]]``."""
        return self.decoder.features(self._latents_in(z))

    def output_layer(self, features: jnp.ndarray) -> jnp.ndarray:
        """The decoder's last convolution: features -> images ``[B, H, W, image_channels]``."""
        return self.decoder.conv_out(features).astype(jnp.float32)

    def decode(self, z: jnp.ndarray) -> jnp.ndarray:
        """Images ``[B, H, W, image_channels]`` (about [-1, 1], float32) of latents ``z [B, h,
        w, latent_channels]`` (:func:`decode_checked` redoes a non-finite one in float32)."""
        return self.decoder(self._latents_in(z)).astype(jnp.float32)

    def latents(self, x: jnp.ndarray, key: jax.Array | None = None) -> jnp.ndarray:
        """The latents a diffusion model runs on: a posterior draw, or its mean without a key;
        ``[B, h, w, latent_channels]`` float32."""
        mean, logvar = self.encode(x)
        return mean if key is None else sample_posterior(mean, logvar, key)

    def decode_latents(self, z: jnp.ndarray) -> jnp.ndarray:
        """Images of latents (:meth:`decode`)."""
        return self.decode(z)

    def __call__(
        self, x: jnp.ndarray, key: jax.Array | None = None
    ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """Encodes, draws ``z = mean + exp(logvar / 2) eps`` (the posterior's mode without a
        key) and decodes.

        Returns:
          ``(reconstruction [B, H, W, C], mean, logvar)``, float32.
        """
        mean, logvar = self.encode(x)
        z = mean if key is None else sample_posterior(mean, logvar, key)
        return self.decode(z), mean, logvar


class AutoencoderVQ(AutoencoderKL):
    """LDM's VQ autoencoder (VQGAN's network, Esser et al. 2021; van den Oord et al. 2017): the
    same encoder and decoder, the encoder's output ``z_e`` (after ``quant_conv``) replaced by
    its nearest entry of a learned codebook ``[codebook_size, latent_channels]`` before
    ``post_quant_conv`` and the decoder. As in LDM's VQ models, a diffusion model runs on the
    continuous ``z_e`` (:meth:`latents`) and its samples are quantized before decoding
    (:meth:`decode_latents`).

    Attributes:
      codebook_size: K, the number of entries (LDM's vq-f4: 8192).
      (the others as :class:`AutoencoderKL`'s)
    """

    codebook_size: int = 8192

    def _moment_channels(self) -> int:
        return self.latent_channels

    def setup(self) -> None:
        super().setup()
        bound = 1.0 / self.codebook_size
        self.codebook = self.param(
            "codebook",
            lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound),
            (self.codebook_size, self.latent_channels),
        )

    def encode(self, x: jnp.ndarray) -> jnp.ndarray:  # type: ignore[override]
        """The encodings ``z_e`` ``[B, h, w, latent_channels]``, float32."""
        moments = self.encoder(x.astype(self._compute_dtype())).astype(jnp.float32)
        return self.quant(moments) if self.quant_conv else moments

    def quantize(self, encodings: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``(nearest entries [..., D], their indices [...])``
        (:func:`diffjax.autoencoding.quantize`)."""
        return quantize(encodings, self.codebook)

    def latents(self, x: jnp.ndarray, key: jax.Array | None = None) -> jnp.ndarray:
        """The encodings ``z_e`` (deterministic; ``key`` is unused)."""
        return self.encode(x)

    def decode_latents(self, z: jnp.ndarray) -> jnp.ndarray:
        """Images of the quantized ``z``."""
        return self.decode(self.quantize(z)[0])

    def __call__(  # type: ignore[override]
        self, x: jnp.ndarray, key: jax.Array | None = None
    ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """Encodes, quantizes and decodes.

        Returns:
          ``(reconstruction [B, H, W, C], encodings z_e, indices)``.
        """
        encodings = self.encode(x)
        quantized, indices = self.quantize(encodings)
        return self.decode(quantized), encodings, indices


def decode_checked(module: AutoencoderKL, params: Any, z: jnp.ndarray) -> jnp.ndarray:
    """``module.decode_latents(z)``, redone in float32 (``force_upcast``) when it came out
    non-finite.

    SD-family decoders overflow in float16 and occasionally in bfloat16; ``jax.lax.cond`` runs
    the float32 decode only for a batch that needs it.

    Args:
      module: the autoencoder.
      params: its parameters.
      z: latents ``[B, h, w, latent_channels]``.

    Returns:
      Images ``[B, H, W, image_channels]``, float32.
    """
    images = module.apply({"params": params}, z, method="decode_latents")
    if module.force_upcast or module.dtype == jnp.float32:
        return images
    upcast = module.clone(force_upcast=True)
    return jax.lax.cond(
        jnp.all(jnp.isfinite(images)),
        lambda: images,
        lambda: upcast.apply({"params": params}, z, method="decode_latents"),
    )
