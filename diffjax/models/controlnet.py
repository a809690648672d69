"""ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models", arXiv:2302.05543): spatial control of a frozen UNet through a trainable copy of its
encoder.

:class:`ControlNet` is a UNet's configuration without the decoder: the same time, class and
guidance embeddings, input convolution, downsampling path and middle block, under the same
parameter names (so :func:`controlnet_from_unet` copies them from a trained UNet), plus

* a condition encoder (``cond_embedding``): a 3x3 convolution to 16 channels, then per
  further width a 3x3 convolution and a 3x3 one to the next width (stride 2 where the control
  image is larger than the network's input), SiLU after each, and a zero-initialised 3x3
  convolution to ``base_channels``; its output is added to the input convolution's;
* a zero-initialised 1x1 convolution per skip activation (``controlnet_down_{i}``) and one for
  the middle block (``controlnet_mid``).

It returns the residuals ``(skips, middle)`` that :class:`ControlledUNet` adds, times
``conditioning_scale``, to its frozen base UNet's skips and middle output (Eq. 4 of the
paper: y_c = F(x; Θ) + Z(F(x + Z(c; Θ_z1); Θ_c); Θ_z2)). With the zero convolutions a new
ControlNet's residuals are exactly zero, so training starts at the base model.

The control image is ``cond['control']``, float ``[B, H_c, W_c, C_c]`` in [0, 1] (diffusers'
convention), with ``H_c = 2**k H`` for ``k`` up to ``len(conditioning_embedding_channels) -
1`` (Stable Diffusion: a 512x512 image for 64x64 latents; a pixel-space model: ``k = 0``).
Its null condition (classifier-free guidance on the control, condition dropout) is all zeros.

Typical use::

    controlled = ControlledUNet(base=unet, controlnet=ControlNet(**unet_fields))
    params = {"base": unet_params, "controlnet": controlnet_from_unet(init, unet_params)}
    model_fn = diffjax.models.make_model_fn(controlled, params, {"control": edges})
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.unet import UNet

__all__ = [
    "CONTROL_KEY",
    "ConditionEmbedding",
    "ControlNet",
    "ControlledUNet",
    "controlnet_fields",
    "controlnet_from_unet",
]

CONTROL_KEY = "control"
"""The cond key of a control image, float ``[B, H_c, W_c, C_c]`` in [0, 1]."""

ControlResiduals = tuple[tuple[jnp.ndarray, ...], jnp.ndarray]
"""``(skip residuals, middle residual)``: one ``[B, h, w, c]`` per UNet skip, then the middle
block's ``[B, h', w', c']``."""


def controlnet_fields(unet: UNet) -> dict[str, Any]:
    """The fields of ``unet`` a :class:`ControlNet` copies (all but the decoder's)."""
    return {
        field: getattr(unet, field)
        for field in unet.__dataclass_fields__
        if field not in ("parent", "name", "out_channels")
    }


class ControlNet(UNet):
    """A UNet's encoder and middle block reading ``cond['control']``; returns residuals.

    Attributes (besides :class:`~diffjax.models.unet.UNet`'s, whose decoder fields are
    unused):
      conditioning_embedding_channels: the condition encoder's widths (diffusers' default
        ``(16, 32, 96, 256)``); up to ``len - 1`` stride-2 steps.
    """

    conditioning_embedding_channels: Sequence[int] = (16, 32, 96, 256)

    def __post_init__(self) -> None:
        """Validates the configuration when the module is constructed."""
        super().__post_init__()
        widths = tuple(self.conditioning_embedding_channels)
        if not widths or any(width < 1 for width in widths):
            raise ValueError(
                f"conditioning_embedding_channels must be a non-empty sequence of positive "
                f"ints, got {widths!r}."
            )

    @property
    def cond_keys(self) -> tuple[str, ...]:
        """The base UNet's keys, then ``'control'``."""
        return super().cond_keys + (CONTROL_KEY,)

    def null_cond(self, cond: Mapping[str, Any]) -> dict[str, jnp.ndarray]:
        """The UNet's null condition and an all-zero control image."""
        null = super().null_cond(cond)
        null[CONTROL_KEY] = jnp.zeros_like(jnp.asarray(cond[CONTROL_KEY]))
        return null

    def _control(self, cond: Any, x: jnp.ndarray) -> tuple[jnp.ndarray, int]:
        """``cond['control']`` checked, and the number of stride-2 steps that bring it to
        ``x``'s size."""
        given = None if cond is None else cond.get(CONTROL_KEY)
        if given is None:
            raise ValueError(
                "A ControlNet needs cond['control'], float [B, H_c, W_c, C_c] in [0, 1] (the "
                "control image)."
            )
        given = jnp.asarray(given)
        batch, height, width = x.shape[:3]
        steps = len(self.conditioning_embedding_channels) - 1
        allowed = [(height * 2**k, width * 2**k) for k in range(steps + 1)]
        if (
            given.ndim != 4
            or given.shape[0] != batch
            or tuple(given.shape[1:3]) not in allowed
            or not jnp.issubdtype(given.dtype, jnp.floating)
        ):
            raise ValueError(
                f"cond['control'] must be a float array [B, H_c, W_c, C_c] with B = {batch} "
                f"and (H_c, W_c) one of {allowed} (the input's size times 2**k, k <= "
                f"{steps}); got dtype {given.dtype} and shape {given.shape}."
            )
        return given, int(math.log2(given.shape[1] // height))

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        t: jnp.ndarray,
        cond: Mapping[str, Any] | None = None,
        train: bool = False,
    ) -> ControlResiduals:
        """The residuals of a control image for the base UNet.

        Args:
          x: noisy inputs ``[B, H, W, C]`` (as the base UNet takes them).
          t: timesteps ``[B]`` or a scalar, as the base UNet takes them.
          cond: the base UNet's conditioning plus ``'control'``, float ``[B, 2**k H, 2**k W,
            C_c]`` in [0, 1].
          train: enables dropout (``rngs={'dropout': key}``).

        Returns:
          ``(skip_residuals, middle_residual)``: one ``[B, h, w, c]`` per skip activation of
          the UNet (its input convolution, each down block, each downsampling), then the
          middle block's; float32.

        Raises:
          ValueError: a missing or misshaped control image (or any UNet input error), while
            tracing.
        """
        control, strides = self._control(cond, x)
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        embedding = ConditionEmbedding(
            tuple(self.conditioning_embedding_channels), self.base_channels, strides,
            name="cond_embedding", **common,
        )(control)  # fmt: skip
        h, skips, _, _ = self._encode(x, t, cond, train, embedding)
        zero_conv = dict(kernel_size=(1, 1), kernel_init=nn.initializers.zeros, **common)
        residuals = tuple(
            nn.Conv(skip.shape[-1], name=f"controlnet_down_{index}", **zero_conv)(skip).astype(
                jnp.float32
            )
            for index, skip in enumerate(skips)
        )
        middle = nn.Conv(h.shape[-1], name="controlnet_mid", **zero_conv)(h)
        return residuals, middle.astype(jnp.float32)


class ConditionEmbedding(nn.Module):
    """ControlNet's condition encoder: ``[B, H_c, W_c, C_c] -> [B, H_c / 2**strides, W_c /
    2**strides, out_channels]``.

    A 3x3 convolution to ``channels[0]``; per further width a 3x3 convolution keeping the
    width and a 3x3 one to the next width (stride 2 in the last ``strides`` of them); SiLU
    after each; a zero-initialised 3x3 convolution to ``out_channels``. Paddings are (1, 1),
    as in diffusers' ``ControlNetConditioningEmbedding``.

    Attributes:
      channels: the widths (16, 32, 96, 256 in diffusers).
      out_channels: the UNet's ``base_channels``.
      strides: how many width changes halve the size (``<= len(channels) - 1``).
      dtype, param_dtype: compute and parameter dtypes.
    """

    channels: Sequence[int]
    out_channels: int
    strides: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, control: jnp.ndarray) -> jnp.ndarray:
        common = dict(padding=((1, 1), (1, 1)), dtype=self.dtype, param_dtype=self.param_dtype)
        widths = tuple(self.channels)
        h = nn.silu(
            nn.Conv(widths[0], (3, 3), name="conv_in", **common)(control.astype(self.dtype))
        )
        first_strided = len(widths) - 1 - self.strides
        for index, (width, next_width) in enumerate(zip(widths[:-1], widths[1:])):
            h = nn.silu(nn.Conv(width, (3, 3), name=f"blocks_{2 * index}", **common)(h))
            stride = 2 if index >= first_strided else 1
            h = nn.Conv(next_width, (3, 3), stride, name=f"blocks_{2 * index + 1}", **common)(h)
            h = nn.silu(h)
        return nn.Conv(
            self.out_channels, (3, 3), kernel_init=nn.initializers.zeros, name="conv_out",
            **common,
        )(h)  # fmt: skip


class ControlledUNet(nn.Module):
    """A frozen base UNet with a ControlNet's residuals added: a registered network.

    Called as every network is, ``module(x, t, cond, train=...)``; its parameters are
    ``{'base': UNet params, 'controlnet': ControlNet params}``.

    Attributes:
      base: the base UNet.
      controlnet: the ControlNet (with the base's fields: :func:`controlnet_fields`).
      conditioning_scale: the residuals' weight (0: the base model exactly).
    """

    base: UNet
    controlnet: ControlNet
    conditioning_scale: float = 1.0

    def __post_init__(self) -> None:
        """Checks that the ControlNet copies the base's encoder."""
        super().__post_init__()
        mine = controlnet_fields(self.base)
        theirs = {field: getattr(self.controlnet, field) for field in mine}
        differing = sorted(field for field in mine if mine[field] != theirs[field])
        if differing:
            raise ValueError(
                f"the ControlNet must copy its base UNet's configuration; they differ in "
                f"{differing} (UNet: {[mine[f] for f in differing]}, ControlNet: "
                f"{[theirs[f] for f in differing]})."
            )

    @property
    def cond_keys(self) -> tuple[str, ...]:
        """The base UNet's keys, then ``'control'``."""
        return self.controlnet.cond_keys

    def null_cond(self, cond: Mapping[str, Any]) -> dict[str, jnp.ndarray]:
        """The base's null condition and an all-zero control image."""
        return self.controlnet.null_cond(cond)

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        t: jnp.ndarray,
        cond: Mapping[str, Any] | None = None,
        train: bool = False,
    ) -> jnp.ndarray:
        """The base UNet's prediction with the ControlNet's residuals (Eq. 4 of the paper).

        Args:
          x: noisy inputs ``[B, H, W, C]``.
          t: timesteps ``[B]`` or a scalar.
          cond: the base's conditioning plus ``'control'`` (see :class:`ControlNet`).
          train: enables dropout in both networks.

        Returns:
          ``[B, H, W, out_channels]`` float32, the base's output shape.
        """
        skips, middle = self.controlnet(x, t, cond, train)
        scale = self.conditioning_scale
        residuals = (tuple(scale * skip for skip in skips), scale * middle)
        base_cond = {key: value for key, value in dict(cond).items() if key != CONTROL_KEY}
        return self.base(x, t, base_cond, train, control_residuals=residuals)


def controlnet_from_unet(controlnet_params: Any, unet_params: Mapping[str, Any]) -> Any:
    """A ControlNet's parameters with its encoder and middle block copied from a UNet.

    Args:
      controlnet_params: a (fresh) ControlNet's parameters.
      unet_params: the trained base UNet's parameters (same configuration).

    Returns:
      ``controlnet_params`` with every sub-tree the UNet also has (embeddings, ``conv_in``,
      ``down_*``, ``mid_*``) replaced by the UNet's; the condition encoder and the zero
      convolutions kept.

    Raises:
      ValueError: a shared sub-tree whose shapes differ (another configuration).
    """
    copied = dict(controlnet_params)
    for name, subtree in controlnet_params.items():
        if name not in unet_params:
            continue
        mine = jax.tree.map(jnp.shape, subtree)
        theirs = jax.tree.map(jnp.shape, unet_params[name])
        if mine != theirs:
            raise ValueError(
                f"the UNet's {name!r} has shapes {theirs}, the ControlNet's {mine}: build the "
                f"ControlNet from the same UNet configuration (controlnet_fields)."
            )
        copied[name] = unet_params[name]
    return copied
