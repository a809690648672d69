"""The DDPM UNet (Ho et al. 2020, arXiv:2006.11239, Appendix B), in Flax Linen.

A PixelCNN++-style UNet: ``len(channel_mults)`` resolution levels, each with ``num_res_blocks``
ResNet blocks (optionally followed by self-attention) and a stride-2 downsampling between
levels; a res-attn-res middle; a mirrored upsampling path with ``num_res_blocks + 1`` blocks per
level, each fed the matching skip activation by channel concatenation. The timestep enters every
ResNet block through a sinusoidal embedding and a 2-layer MLP; an optional class embedding is
added to it (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", arXiv:2105.05233).

The default fields are DDPM's CIFAR-10 model (35.7M parameters with 3 output channels).

It is called as every registered network is, ``unet(x, t, cond, train=...)``, with the class
in ``cond['label']`` when ``num_classes`` is set (:mod:`diffjax.models.conditioning`). Typical
use with the pure math in :mod:`diffjax` (which only ever sees a ``model_fn``)::

    model = UNet(base_channels=64, channel_mults=(1, 2, 2), attn_resolutions=(14,))
    params = model.init(key, x, t)["params"]
    model_fn = diffjax.models.make_model_fn(model, params)
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.typing import Dtype

from diffjax.models.group_norm import GroupNorm
from diffjax.models.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    TimeEmbedding,
    Upsample,
    default_kernel_init,
)
from diffjax.models.transformer import SpatialTransformer

__all__ = [
    "REMAT_POLICIES",
    "UNet",
    "check_attn_resolutions",
    "check_image_size",
    "count_params",
    "feature_map_sizes",
]

REMAT_POLICIES: tuple[str, ...] = (
    "nothing_saveable",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "everything_saveable",
)
"""The ``jax.checkpoint_policies`` a UNet's ``remat_policy`` may name: what a recomputed block
keeps from its forward pass (nothing; matrix products' outputs; those without batch
dimensions; everything, i.e. no saving)."""


class _Blocks(NamedTuple):
    """A UNet configuration's block constructors: ``res(channels, name=)`` (a ResNet block
    called as ``(h, temb, train)``), ``attention(name=)`` (``h -> h``, self-attention or a
    spatial transformer on the context) and ``has_attention(level, h)``."""

    res: Callable[..., Any]
    attention: Callable[..., Callable[[jnp.ndarray], jnp.ndarray]]
    has_attention: Callable[[int, jnp.ndarray], bool]


def check_image_size(image_size: int, channel_mults: Sequence[int]) -> None:
    """Checks that an image side survives the UNet's downsamplings exactly.

    The UNet halves the feature map ``len(channel_mults) - 1`` times and must be able to undo
    it, so each side must be a multiple of ``2 ** (len(channel_mults) - 1)``.

    Args:
      image_size: an image side length in pixels (height or width).
      channel_mults: the UNet's per-level channel multipliers.

    Raises:
      ValueError: naming the size and the required divisor if the size does not fit.
    """
    divisor = 2 ** (len(channel_mults) - 1)
    if image_size < 1 or image_size % divisor:
        raise ValueError(
            f"Image size {image_size} is not supported by channel_mults={tuple(channel_mults)}: "
            f"the UNet downsamples {len(channel_mults) - 1} times, so every image side must be a "
            f"positive multiple of 2**{len(channel_mults) - 1} = {divisor}."
        )


def feature_map_sizes(image_size: int, channel_mults: Sequence[int]) -> tuple[int, ...]:
    """Side lengths of the feature maps at each resolution level.

    Args:
      image_size: image side length in pixels.
      channel_mults: the UNet's per-level channel multipliers.

    Returns:
      ``(image_size, image_size / 2, ...)``, one entry per level.

    Raises:
      ValueError: if ``image_size`` does not pass :func:`check_image_size`.
    """
    check_image_size(image_size, channel_mults)
    return tuple(image_size // 2**level for level in range(len(channel_mults)))


def check_attn_resolutions(
    image_size: int, channel_mults: Sequence[int], attn_resolutions: Sequence[int]
) -> None:
    """Checks that every requested attention resolution occurs in the UNet.

    A resolution that never occurs would silently give a model without attention (a 28x28
    input with the CIFAR-10 default ``attn_resolutions=(16,)``, say), so it is an error.

    Args:
      image_size: image side length in pixels (the height, for non-square images).
      channel_mults: the UNet's per-level channel multipliers.
      attn_resolutions: feature-map side lengths at which to apply attention.

    Raises:
      ValueError: naming the missing resolutions and the ones that occur.
    """
    sizes = feature_map_sizes(image_size, channel_mults)
    missing = tuple(r for r in attn_resolutions if r not in sizes)
    if missing:
        raise ValueError(
            f"attn_resolutions {missing} never occur for image size {image_size} with "
            f"channel_mults={tuple(channel_mults)}; the feature-map sizes are {sizes}."
        )


def count_params(params: Any) -> int:
    """Total number of parameters in a pytree.

    Works on concrete arrays and on the ``jax.ShapeDtypeStruct`` leaves of
    ``jax.eval_shape(model.init, ...)``, so large models can be counted without allocating them.

    Args:
      params: a pytree of arrays or shape/dtype structs.

    Returns:
      The sum of the leaves' sizes.
    """
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


class UNet(nn.Module):
    """DDPM UNet predicting an image-shaped output (eps, x0 or v) from ``(x_t, t, cond)``.

    Attributes:
      base_channels: channels of the first level; also the sinusoidal embedding width, while
        the time MLP is ``4 * base_channels`` wide. Must be even and divisible by
        ``num_groups``.
      channel_mults: per-level channel multipliers; ``len - 1`` downsamplings.
      num_res_blocks: ResNet blocks per level on the way down (``+1`` on the way up).
      attn_resolutions: feature-map side lengths (pixels) at which self-attention follows each
        ResNet block; each must occur for the input size (checked when called). For non-square
        inputs the height is matched. The middle block always has attention.
      attn_levels: the levels (0 = full resolution) whose ResNet blocks are followed by
        attention, whatever the input size (diffusers' ``Attn``/``CrossAttn`` block types, so
        Stable Diffusion's UNet takes any image size); use either this or
        ``attn_resolutions``.
      dropout: dropout rate inside the ResNet blocks (active only with ``train=True``).
      out_channels: output channels; ``None`` means the input's channel count.
      num_classes: enables class conditioning on ``cond['label']``: an embedding table of
        ``num_classes + 1`` rows added to the time embedding. Label ``num_classes`` is the
        null label of classifier-free guidance (:meth:`null_cond`); dropping labels to it
        during training is the caller's job.
      guidance_embedding: also condition on ``cond['guidance']``, float ``[B]``, a
        classifier-free guidance scale w: its sinusoidal embedding of 100 w through an MLP and
        a zero-initialised projection is added to the time embedding (Meng et al. 2023,
        "On Distillation of Guided Diffusion Models", Sec. 3.1), so a network initialised
        from one without it starts as that network.
      context_dim: enables cross-attention on ``cond['context']``, float ``[B, L,
        context_dim]`` (a text encoder's tokens): every attention block (the middle one and
        those at ``attn_resolutions``) becomes SD's spatial transformer
        (:class:`~diffjax.models.transformer.SpatialTransformer`: self-attention,
        cross-attention, GEGLU). The null context of classifier-free guidance is all zeros.
      transformer_heads: the transformers' attention heads (SD 1: 8); must divide the
        channels at every attention level.
      attention_head_dim: when set, every attention block (self-attention or transformer) has
        ``channels // attention_head_dim`` heads instead (SD 2: 64); otherwise self-attention
        blocks have one head (DDPM) and transformers ``transformer_heads``.
      transformer_depth: transformer blocks per spatial transformer (SD 1/2: 1).
      linear_projection: the transformers project in and out with linear maps (SD 2) instead
        of 1x1 convolutions (SD 1).
      class_context: with ``num_classes`` and ``context_dim``, the class label is not added to
        the time embedding but becomes a learned one-token context ``[B, 1, context_dim]``
        for the cross-attention (class labels as "text" when a dataset has none).
      num_groups: GroupNorm groups.
      norm_epsilon: the ResNet blocks', self-attention blocks' and output GroupNorms' epsilon
        (DDPM: 1e-6; Stable Diffusion: 1e-5).
      flip_sin_to_cos, freq_shift: the timestep embedding's convention
        (:func:`~diffjax.models.layers.sinusoidal_embedding`; DDPM: False, 1; Stable
        Diffusion: True, 0).
      downsample_padding: 0 pads the stride-2 convolutions (0, 1) (DDPM's TensorFlow
        ``"SAME"``), 1 pads them (1, 1) (Stable Diffusion).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); the output is always float32.
      param_dtype: parameter dtype.
      remat: recompute each ResNet block's activations in the backward pass
        (``nn.remat``) to save memory at the cost of ~1 extra forward pass.
      remat_attention: recompute each attention block's (or spatial transformer's) as well.
      remat_policy: what a recomputed block keeps (:data:`REMAT_POLICIES`, a
        ``jax.checkpoint_policies`` name; default nothing).
    """

    base_channels: int = 128
    channel_mults: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    attn_levels: Sequence[int] = ()
    dropout: float = 0.1
    out_channels: int | None = None
    num_classes: int | None = None
    guidance_embedding: bool = False
    context_dim: int | None = None
    transformer_heads: int = 8
    transformer_depth: int = 1
    attention_head_dim: int | None = None
    linear_projection: bool = False
    class_context: bool = False
    num_groups: int = 32
    norm_epsilon: float = 1e-6
    flip_sin_to_cos: bool = False
    freq_shift: float = 1.0
    downsample_padding: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    remat_attention: bool = False
    remat_policy: str = "nothing_saveable"

    def __post_init__(self) -> None:
        """Validates the configuration when the module is constructed, before any tracing."""
        super().__post_init__()
        if not self.channel_mults or any(
            not isinstance(m, (int, np.integer)) or m < 1 for m in self.channel_mults
        ):
            raise ValueError(
                f"channel_mults must be a non-empty sequence of positive ints, "
                f"got {self.channel_mults!r}."
            )
        if self.base_channels < 4 or self.base_channels % 2:
            raise ValueError(
                f"base_channels must be even and >= 4 (it is the sinusoidal embedding width), "
                f"got {self.base_channels}."
            )
        if self.num_groups < 1 or self.base_channels % self.num_groups:
            raise ValueError(
                f"num_groups={self.num_groups} must divide base_channels={self.base_channels} "
                f"(every GroupNorm input is a multiple of base_channels)."
            )
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}.")
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"out_channels must be None or >= 1, got {self.out_channels}.")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1, got {self.num_classes}.")
        if self.context_dim is not None and self.context_dim < 1:
            raise ValueError(f"context_dim must be None or >= 1, got {self.context_dim}.")
        if self.transformer_heads < 1 or self.transformer_depth < 1:
            raise ValueError(
                f"transformer_heads and transformer_depth must be >= 1, got "
                f"{self.transformer_heads} and {self.transformer_depth}."
            )
        if self.attn_levels and self.attn_resolutions:
            raise ValueError(
                f"give attention either by level (attn_levels={tuple(self.attn_levels)}) or by "
                f"resolution (attn_resolutions={tuple(self.attn_resolutions)}), not both."
            )
        if any(not 0 <= level < len(self.channel_mults) for level in self.attn_levels):
            raise ValueError(
                f"attn_levels={tuple(self.attn_levels)} must lie in [0, "
                f"{len(self.channel_mults) - 1}] (one level per channel multiplier)."
            )
        if self.attention_head_dim is not None and self.attention_head_dim < 1:
            raise ValueError(
                f"attention_head_dim must be None or >= 1, got {self.attention_head_dim}."
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}."
            )
        if self.downsample_padding not in (0, 1):
            raise ValueError(f"downsample_padding must be 0 or 1, got {self.downsample_padding}.")
        if self.class_context and (self.num_classes is None or self.context_dim is None):
            raise ValueError(
                "class_context=True makes the class label a cross-attention context: it needs "
                f"num_classes and context_dim, got {self.num_classes} and {self.context_dim}."
            )

    @property
    def reads_context(self) -> bool:
        """Whether ``cond['context']`` is read (cross-attention on data, not on labels)."""
        return self.context_dim is not None and not self.class_context

    @property
    def cond_keys(self) -> tuple[str, ...]:
        """``'label'`` for a class-conditional UNet, ``'context'`` for one with cross-attention
        on data, ``'guidance'`` with a guidance embedding, in that order."""
        labels = () if self.num_classes is None else ("label",)
        context = ("context",) if self.reads_context else ()
        return labels + context + (("guidance",) if self.guidance_embedding else ())

    def null_cond(self, cond: Mapping[str, Any]) -> dict[str, jnp.ndarray]:
        """The null label ``num_classes`` for every example of ``cond['label']``, an all-zero
        context; a guidance scale is kept (it is not a condition to drop)."""
        null = {}
        if self.num_classes is not None:
            null["label"] = jnp.full_like(jnp.asarray(cond["label"]), self.num_classes)
        if self.reads_context:
            null["context"] = jnp.zeros_like(jnp.asarray(cond["context"]))
        if self.guidance_embedding:
            null["guidance"] = jnp.asarray(cond["guidance"])
        return null

    def _guidance(self, cond: Any, batch: int) -> jnp.ndarray | None:
        """``cond['guidance']`` as float32 ``[B]``, checked at trace time (None without the
        embedding)."""
        given = None if cond is None else cond.get("guidance")
        if not self.guidance_embedding:
            if given is not None:
                raise ValueError(
                    "cond['guidance'] was given but the UNet has guidance_embedding=False."
                )
            return None
        if given is None:
            raise ValueError(
                f"The UNet embeds the guidance scale (guidance_embedding=True) and needs "
                f"cond['guidance'] float [B] = [{batch}]."
            )
        given = jnp.asarray(given)
        if given.shape != (batch,) or not jnp.issubdtype(given.dtype, jnp.floating):
            raise ValueError(
                f"cond['guidance'] must be a float array of shape [B] = [{batch}], got dtype "
                f"{given.dtype} and shape {given.shape}."
            )
        return given.astype(jnp.float32)

    def _context(self, cond: Any, batch: int) -> jnp.ndarray | None:
        """``cond['context']`` checked to be float ``[B, L, context_dim]`` (None when the UNet
        reads none)."""
        given = None if cond is None else cond.get("context")
        if not self.reads_context:
            if given is not None:
                raise ValueError(
                    "cond['context'] was given but the UNet has no cross-attention on data "
                    "(context_dim=None or class_context=True)."
                )
            return None
        if given is None:
            raise ValueError(
                f"The UNet cross-attends to cond['context'] (context_dim={self.context_dim}) "
                f"and needs it as float [B, L, {self.context_dim}]."
            )
        given = jnp.asarray(given)
        if (
            given.ndim != 3
            or given.shape[0] != batch
            or given.shape[2] != self.context_dim
            or not jnp.issubdtype(given.dtype, jnp.floating)
        ):
            raise ValueError(
                f"cond['context'] must be a float array [B, L, context_dim] = [{batch}, L, "
                f"{self.context_dim}], got dtype {given.dtype} and shape {given.shape}."
            )
        return given

    def _check_inputs(
        self, x: jnp.ndarray, t: Any, cond: Any
    ) -> tuple[jnp.ndarray, jnp.ndarray | None]:
        """Validates shapes and dtypes at trace time; returns ``t`` as ``[B]`` and the labels."""
        if x.ndim != 4:
            raise ValueError(f"x must be NHWC [B, H, W, C], got shape {x.shape}.")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must be a float array (scaled images), got dtype {x.dtype}.")
        batch, height, width, _ = x.shape
        check_image_size(height, self.channel_mults)
        check_image_size(width, self.channel_mults)
        check_attn_resolutions(height, self.channel_mults, self.attn_resolutions)

        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (batch,))
        if t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape [B] = [{batch}], got {t.shape}.")

        if cond is not None and not isinstance(cond, Mapping):
            raise TypeError(
                f"cond must be a dict such as {{'label': labels}} or None, got "
                f"{type(cond).__name__}; pass class labels as cond={{'label': labels}}."
            )
        labels = None if cond is None else cond.get("label")
        if self.num_classes is None:
            if labels is not None:
                raise ValueError(
                    "cond['label'] was given but the UNet has num_classes=None (unconditional); "
                    "set num_classes to enable class conditioning."
                )
            return t, None
        if labels is None:
            raise ValueError(
                f"The UNet is class-conditional (num_classes={self.num_classes}) and needs "
                f"cond['label'] int32 [B]; pass the null label {self.num_classes} for "
                f"unconditional predictions."
            )
        labels = jnp.asarray(labels)
        if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.shape != (batch,):
            raise ValueError(
                f"cond['label'] must be an integer array of shape [B] = [{batch}], got dtype "
                f"{labels.dtype} and shape {labels.shape}."
            )
        if not isinstance(labels, jax.core.Tracer):
            values = np.asarray(labels)
            if values.size and (values.min() < 0 or values.max() > self.num_classes):
                raise ValueError(
                    f"labels must lie in [0, {self.num_classes}] (the last one is the null "
                    f"label); got values in [{values.min()}, {values.max()}]."
                )
        return t, labels

    def _encode(
        self,
        x: jnp.ndarray,
        t: Any,
        cond: Mapping[str, Any] | None,
        train: bool,
        stem_addition: jnp.ndarray | None = None,
    ) -> tuple[jnp.ndarray, list[jnp.ndarray], jnp.ndarray, _Blocks]:
        """The embeddings, the input convolution, the downsampling path and the middle block.

        Called from a compact method (:meth:`__call__`, or a ControlNet's, which copies these
        layers under the same names).

        Args:
          x, t, cond, train: as for :meth:`__call__`.
          stem_addition: ``[B, H, W, base_channels]`` added to the input convolution's output
            before the first skip (a ControlNet's condition embedding), or None.

        Returns:
          ``(h, skips, temb, blocks)``: the middle block's output ``[B, H', W', C']``, the
          skip activations in the order the decoder pops them from the end, the time
          embedding ``[B, 4 base_channels]`` and the block constructors.
        """
        t, labels = self._check_inputs(x, t, cond)
        channels = self.base_channels
        num_levels = len(self.channel_mults)
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        temb = TimeEmbedding(
            4 * channels, channels, self.flip_sin_to_cos, self.freq_shift, name="time_embedding",
            **common,
        )(t)  # fmt: skip
        guidance = self._guidance(cond, x.shape[0])
        if guidance is not None:
            gemb = TimeEmbedding(4 * channels, channels, name="guidance_embedding", **common)(
                100.0 * guidance
            )
            temb = temb + nn.Dense(
                4 * channels, kernel_init=nn.initializers.zeros, name="guidance_projection",
                **common,
            )(nn.silu(gemb))  # fmt: skip
        context = self._context(cond, x.shape[0])
        if labels is not None and self.class_context:
            context = nn.Embed(
                self.num_classes + 1, self.context_dim, name="label_context", **common
            )(labels)[:, None, :]
        elif labels is not None:
            temb = temb + nn.Embed(
                self.num_classes + 1, 4 * channels, name="label_embedding", **common
            )(labels)
        blocks = self._blocks(context)

        h = nn.Conv(
            channels,
            (3, 3),
            padding="SAME",
            kernel_init=default_kernel_init,
            name="conv_in",
            **common,
        )(x.astype(self.dtype))
        if stem_addition is not None:
            h = h + stem_addition.astype(h.dtype)
        skips = [h]
        for level, mult in enumerate(self.channel_mults):
            for block in range(self.num_res_blocks):
                h = blocks.res(channels * mult, name=f"down_{level}_res_{block}")(h, temb, train)
                if blocks.has_attention(level, h):
                    h = blocks.attention(name=f"down_{level}_attn_{block}")(h)
                skips.append(h)
            if level != num_levels - 1:
                h = Downsample(self.downsample_padding, name=f"down_{level}_downsample", **common)(
                    h
                )
                skips.append(h)

        h = blocks.res(h.shape[-1], name="mid_res_0")(h, temb, train)
        h = blocks.attention(name="mid_attn")(h)
        h = blocks.res(h.shape[-1], name="mid_res_1")(h, temb, train)
        return h, skips, temb, blocks

    def _blocks(self, context: jnp.ndarray | None) -> _Blocks:
        """The ResNet-block and attention constructors of this configuration."""
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        policy = getattr(jax.checkpoint_policies, self.remat_policy)
        # `train` (argument 3, counting self) is static: it decides whether dropout runs at all.
        remat_res_block = nn.remat(ResBlock, static_argnums=(3,), policy=policy)
        attention_block = (
            nn.remat(AttentionBlock, policy=policy) if self.remat_attention else AttentionBlock
        )
        transformer_block = (
            nn.remat(SpatialTransformer, policy=policy)
            if self.remat_attention
            else SpatialTransformer
        )
        res_block = functools.partial(
            remat_res_block if self.remat else ResBlock,
            dropout=self.dropout,
            num_groups=self.num_groups,
            norm_epsilon=self.norm_epsilon,
            **common,
        )
        default_heads = 1 if self.context_dim is None else self.transformer_heads

        def heads(h: jnp.ndarray) -> int:
            if self.attention_head_dim is None:
                return default_heads
            if h.shape[-1] % self.attention_head_dim:
                raise ValueError(
                    f"attention_head_dim={self.attention_head_dim} must divide the "
                    f"{h.shape[-1]} channels of every attention block."
                )
            return h.shape[-1] // self.attention_head_dim

        def attention(name: str) -> Any:
            if self.context_dim is None:
                return lambda h: attention_block(
                    heads(h), self.num_groups, self.norm_epsilon, name=name, **common
                )(h)
            return lambda h: transformer_block(
                heads(h), self.transformer_depth, self.linear_projection, self.num_groups,
                name=name, **common,
            )(h, context)  # fmt: skip

        def has_attention(level: int, h: jnp.ndarray) -> bool:
            if self.attn_levels:
                return level in self.attn_levels
            return h.shape[1] in self.attn_resolutions

        return _Blocks(res_block, attention, has_attention)

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        t: jnp.ndarray,
        cond: Mapping[str, Any] | None = None,
        train: bool = False,
        control_residuals: tuple[Sequence[jnp.ndarray], jnp.ndarray] | None = None,
    ) -> jnp.ndarray:
        """Runs the UNet.

        Args:
          x: noisy images ``[B, H, W, C]``, float; ``H`` and ``W`` multiples of
            ``2 ** (len(channel_mults) - 1)``.
          t: timesteps ``[B]`` (or a scalar, broadcast), int or float; embedded as given, so
            continuous time should be fed on the training scale (e.g. ``1000 * t``).
          cond: the conditioning dict; a class-conditional UNet reads ``cond['label']``, int
            ``[B]`` in ``[0, num_classes]`` (``num_classes`` = null label), one with
            cross-attention ``cond['context']``, float ``[B, L, context_dim]``, one with
            ``guidance_embedding`` also ``cond['guidance']``, float ``[B]``. None or ``{}``
            for an unconditional UNet.
          train: enables dropout; then ``apply`` needs ``rngs={'dropout': key}``.
          control_residuals: ``(skip_residuals, middle_residual)`` of a ControlNet
            (:class:`~diffjax.models.controlnet.ControlNet`), added to each skip activation
            and to the middle block's output (Zhang et al. 2023, "Adding Conditional Control
            to Text-to-Image Diffusion Models", arXiv:2302.05543, Eq. 4); None: none.

        Returns:
          ``[B, H, W, out_channels]`` float32 prediction.

        Raises:
          ValueError: for a bad image size, missing attention resolution, a mismatch
            between ``cond['label']`` and ``num_classes``, or residuals that do not match
            the skips; raised while tracing, before compiling.
          TypeError: if ``x`` is not a float array (e.g. raw uint8 images).
        """
        h, skips, temb, blocks = self._encode(x, t, cond, train)
        if control_residuals is not None:
            skips, h = _add_residuals(skips, h, control_residuals)
        channels = self.base_channels
        out_channels = x.shape[-1] if self.out_channels is None else self.out_channels
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        for level in reversed(range(len(self.channel_mults))):
            for block in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = blocks.res(
                    channels * self.channel_mults[level], name=f"up_{level}_res_{block}"
                )(h, temb, train)
                if blocks.has_attention(level, h):
                    h = blocks.attention(name=f"up_{level}_attn_{block}")(h)
            if level != 0:
                h = Upsample(name=f"up_{level}_upsample", **common)(h)

        h = nn.silu(GroupNorm(self.num_groups, self.norm_epsilon, name="norm_out", **common)(h))
        h = nn.Conv(
            out_channels,
            (3, 3),
            padding="SAME",
            kernel_init=nn.initializers.zeros,
            name="conv_out",
            **common,
        )(h)
        return h.astype(jnp.float32)


def _add_residuals(
    skips: list[jnp.ndarray],
    middle: jnp.ndarray,
    residuals: tuple[Sequence[jnp.ndarray], jnp.ndarray],
) -> tuple[list[jnp.ndarray], jnp.ndarray]:
    """The skips and the middle output plus a ControlNet's residuals, shapes checked."""
    skip_residuals, middle_residual = residuals
    shapes = [skip.shape for skip in skips]
    given = [tuple(residual.shape) for residual in skip_residuals]
    if given != shapes or tuple(middle_residual.shape) != middle.shape:
        raise ValueError(
            f"control_residuals must match the UNet's skips {shapes} and middle output "
            f"{middle.shape}; got {given} and {tuple(middle_residual.shape)}."
        )
    skips = [skip + residual.astype(skip.dtype) for skip, residual in zip(skips, skip_residuals)]
    return skips, middle + middle_residual.astype(middle.dtype)
