"""ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models", arXiv:2302.05543): spatial control of a frozen UNet (or DiT) through a trainable copy
of its encoder (or first blocks: :class:`DiTControlNet`, SD3's design).

:class:`ControlNet` is a UNet's configuration without the decoder: the same time, class and
guidance embeddings, input convolution, downsampling path and middle block, under the same
parameter names (so :func:`controlnet_from_base` copies them from a trained UNet), plus

* a condition encoder (``cond_embedding``): a 3x3 convolution to 16 channels, then per
  further width a 3x3 convolution and a 3x3 one to the next width (stride 2 where the control
  image is larger than the network's input), SiLU after each, and a zero-initialised 3x3
  convolution to ``base_channels``; its output is added to the input convolution's;
* a zero-initialised 1x1 convolution per skip activation (``controlnet_down_{i}``) and one for
  the middle block (``controlnet_mid``).

It returns the residuals ``(skips, middle)`` that :class:`ControlledModel` adds, times
``conditioning_scale``, to its frozen base UNet's skips and middle output (Zhang et al. 2023,
arXiv:2302.05543, eq. 2: y_c = F(x; Θ) + Z(F(x + Z(c; Θ_z1); Θ_c); Θ_z2)). With the zero
convolutions a new ControlNet's residuals are exactly zero, so training starts at the base model.

The control image is ``cond['control']``, float ``[B, H_c, W_c, C_c]`` in [0, 1] (diffusers'
convention), with ``H_c = 2**k H`` for ``k`` up to ``len(conditioning_embedding_channels) -
1`` (Stable Diffusion: a 512x512 image for 64x64 latents; a pixel-space model: ``k = 0``).
Its null condition (classifier-free guidance on the control, condition dropout) is all zeros.

Typical use::

    controlled = ControlledModel(base=unet, controlnet=ControlNet(**unet_fields))
    params = {"base": unet_params, "controlnet": controlnet_from_base(init, unet_params)}
    model_fn = diffjax.models.make_model_fn(controlled, params, {"control": edges})
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.dit import DiT
from diffjax.models.unet import UNet

__all__ = [
    "CONTROL_KEY",
    "ConditionEmbedding",
    "ControlNet",
    "ControlledModel",
    "DiTControlNet",
    "controlnet_fields",
    "controlnet_from_base",
]

CONTROL_KEY = "control"
"""The cond key of a control image, float ``[B, H_c, W_c, C_c]`` in [0, 1]."""

ControlResiduals = tuple[tuple[jnp.ndarray, ...], jnp.ndarray]
"""``(skip residuals, middle residual)``: one ``[B, h, w, c]`` per UNet skip, then the middle
block's ``[B, h', w', c']``."""


def controlnet_fields(base: UNet | DiT) -> dict[str, Any]:
    """The fields of a UNet or DiT that its :class:`ControlNet` or :class:`DiTControlNet`
    copies (all but the output's)."""
    return {
        field: getattr(base, field)
        for field in base.__dataclass_fields__
        if field not in ("parent", "name", "out_channels")
    }


class ControlNet(UNet):
    """A UNet's encoder and middle block reading ``cond['control']``; returns residuals: the
    trainable copy with zero convolutions of Zhang et al. 2023, Secs. 3.1-3.2.

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
    2**strides, out_channels]`` (the tiny network c_f = E(c_i) of Zhang et al. 2023, Sec. 3.2).

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


class DiTControlNet(DiT):
    """A DiT's embeddings and first ``control_depth`` blocks reading ``cond['control']``
    (SD3's ControlNets: Esser et al. 2024, arXiv:2403.03206; diffusers'
    ``SD3ControlNetModel``); returns one residual per block.

    The control image, float ``[B, H, W, C_c]`` at the input's size (a latent model takes the
    control encoded to its latent space, as SD3's ControlNets do), is patch-embedded by a
    zero-initialised p x p convolution (``pos_embed_input``) and added to the tokens; each
    copied block's output passes through a zero-initialised linear map
    (``controlnet_blocks_{i}``).

    Attributes (besides :class:`~diffjax.models.dit.DiT`'s, whose head is unused):
      control_depth: the blocks copied (1 to ``depth``); the base adds residual ``i // k``
        after its block i, ``k = ceil(depth / control_depth)``.
    """

    control_depth: int = 1

    def __post_init__(self) -> None:
        """Validates the configuration when the module is constructed."""
        super().__post_init__()
        if not 1 <= self.control_depth <= self.depth:
            raise ValueError(
                f"control_depth must lie in [1, depth={self.depth}], got {self.control_depth}."
            )
        if self.scan_blocks:
            raise ValueError("a DiT ControlNet needs the unrolled blocks (scan_blocks=False).")

    @property
    def cond_keys(self) -> tuple[str, ...]:
        """The base DiT's keys, then ``'control'``."""
        return super().cond_keys + (CONTROL_KEY,)

    def null_cond(self, cond: Mapping[str, Any]) -> dict[str, jnp.ndarray]:
        """The DiT's null label (if it has one) and an all-zero control image."""
        null = super().null_cond(cond) if super().cond_keys else {}
        null[CONTROL_KEY] = jnp.zeros_like(jnp.asarray(cond[CONTROL_KEY]))
        return null

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        t: jnp.ndarray,
        cond: Mapping[str, Any] | None = None,
        train: bool = False,
    ) -> tuple[jnp.ndarray, ...]:
        """The residuals of a control image for the base DiT.

        Args:
          x: noisy inputs ``[B, H, W, C]``.
          t: timesteps ``[B]`` or a scalar.
          cond: the base DiT's conditioning plus ``'control'``, float ``[B, H, W, C_c]``.
          train: unused (no dropout).

        Returns:
          ``control_depth`` float32 token arrays ``[B, N, D]``.

        Raises:
          ValueError: a missing or misshaped control image (or any DiT input error).
        """
        given = None if cond is None else cond.get(CONTROL_KEY)
        if given is None or jnp.ndim(given) != 4 or jnp.shape(given)[:3] != x.shape[:3]:
            raise ValueError(
                f"A DiT ControlNet needs cond['control'], float [B, H, W, C_c] with [B, H, W] = "
                f"{list(x.shape[:3])}, got {None if given is None else jnp.shape(given)}."
            )
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h, c = self._embed(x, t, cond)
        p = self.patch_size
        control = nn.Conv(
            self.hidden_size, (p, p), strides=(p, p), padding="VALID",
            kernel_init=nn.initializers.zeros, name="pos_embed_input", **common,
        )(jnp.asarray(given).astype(self.dtype))  # fmt: skip
        h = h + control.reshape(h.shape)
        residuals = []
        for index in range(self.control_depth):
            h = self._block(index)(h, c)
            residual = nn.Dense(
                self.hidden_size, kernel_init=nn.initializers.zeros,
                name=f"controlnet_blocks_{index}", **common,
            )(h)  # fmt: skip
            residuals.append(residual.astype(jnp.float32))
        return tuple(residuals)


_CONTROLNET_OF = ((UNet, ControlNet), (DiT, DiTControlNet))


class ControlledModel(nn.Module):
    """A frozen base network with a ControlNet's residuals added: a registered network.

    ControlNet's y_c = F(x; Theta) + Z(F(x + Z(c; Theta_z1); Theta_c); Theta_z2) (Zhang et al.
    2023, Sec. 3.1): the frozen base's skips and middle output plus the ControlNet's
    zero-convolution residuals, times ``conditioning_scale``.

    The base is a :class:`~diffjax.models.unet.UNet` with a :class:`ControlNet`
    (``'controlnet'`` in the model registry) or a :class:`~diffjax.models.dit.DiT` with a
    :class:`DiTControlNet` (``'dit_controlnet'``). Called as every network is,
    ``module(x, t, cond, train=...)``; its parameters are ``{'base': ..., 'controlnet': ...}``.

    Attributes:
      base: the base network.
      controlnet: its ControlNet (with the base's fields: :func:`controlnet_fields`).
      conditioning_scale: the residuals' weight (0: the base model exactly).
    """

    base: nn.Module
    controlnet: nn.Module
    conditioning_scale: float = 1.0

    def __post_init__(self) -> None:
        """Checks that the ControlNet copies the base's configuration."""
        super().__post_init__()
        kinds = [pair for pair in _CONTROLNET_OF if type(self.base) is pair[0]]
        if not kinds or not isinstance(self.controlnet, kinds[0][1]):
            raise TypeError(
                f"a ControlledModel pairs a UNet with a ControlNet or a DiT with a "
                f"DiTControlNet, got {type(self.base).__name__} and "
                f"{type(self.controlnet).__name__}."
            )
        mine = controlnet_fields(self.base)
        theirs = {field: getattr(self.controlnet, field) for field in mine}
        differing = sorted(field for field in mine if mine[field] != theirs[field])
        if differing:
            raise ValueError(
                f"the ControlNet must copy its base network's configuration; they differ in "
                f"{differing} (base: {[mine[f] for f in differing]}, ControlNet: "
                f"{[theirs[f] for f in differing]})."
            )

    @property
    def cond_keys(self) -> tuple[str, ...]:
        """The base's keys, then ``'control'``."""
        return self.controlnet.cond_keys

    @property
    def learned_variance(self) -> bool:
        """The base's (its output is the controlled model's)."""
        return bool(getattr(self.base, "learned_variance", False))

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
        """The base's prediction with the ControlNet's residuals (Zhang et al. 2023, eq. 2).

        Args:
          x: noisy inputs ``[B, H, W, C]``.
          t: timesteps ``[B]`` or a scalar.
          cond: the base's conditioning plus ``'control'``.
          train: enables dropout in both networks.

        Returns:
          ``[B, H, W, out_channels]`` float32, the base's output shape.
        """
        residuals = self.controlnet(x, t, cond, train)
        scale = self.conditioning_scale
        residuals = jax.tree.map(lambda residual: scale * residual, residuals)
        base_cond = {key: value for key, value in dict(cond).items() if key != CONTROL_KEY}
        return self.base(x, t, base_cond, train, control_residuals=residuals)


def controlnet_from_base(controlnet_params: Any, base_params: Mapping[str, Any]) -> Any:
    """A ControlNet's parameters with the layers it shares with its base copied from it: the
    trainable copy starts as the locked model's weights (Zhang et al. 2023, Sec. 3.1).

    Args:
      controlnet_params: a (fresh) ControlNet's or DiTControlNet's parameters.
      base_params: the trained base UNet's or DiT's parameters (same configuration).

    Returns:
      ``controlnet_params`` with every sub-tree the base also has replaced by the base's (a
      UNet's embeddings, ``conv_in``, ``down_*``, ``mid_*``; a DiT's embeddings and first
      blocks); the condition encoder and the zero layers kept.

    Raises:
      ValueError: a shared sub-tree whose shapes differ (another configuration).
    """
    copied = dict(controlnet_params)
    for name, subtree in controlnet_params.items():
        if name not in base_params:
            continue
        mine = jax.tree.map(jnp.shape, subtree)
        theirs = jax.tree.map(jnp.shape, base_params[name])
        if mine != theirs:
            raise ValueError(
                f"the base's {name!r} has shapes {theirs}, the ControlNet's {mine}: build the "
                f"ControlNet from the same configuration (controlnet_fields)."
            )
        copied[name] = base_params[name]
    return copied
