"""The noise-conditional classifier of classifier guidance: the UNet's encoder half and a
pooling head (guided-diffusion's ``EncoderUNetModel`` with ``pool='adaptive'``; Dhariwal &
Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", arXiv:2105.05233, Sec. 4).

It reads the noisy image x_t and the network time t (as the UNet does: the same time
embedding, ResNet blocks, attention and downsampling), and returns class logits
``[B, num_classes]`` after a GroupNorm, SiLU, global average pool and a zero-initialised dense
layer (so a new classifier predicts the uniform distribution). The ``'classifier'`` objective
of the training program (:mod:`diffjax.training.objectives.classifier`) trains it on noised
data; :func:`diffjax.classifier_log_prob` and :func:`diffjax.gradient_guidance` guide a sampler
with it.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from diffjax.models.group_norm import GroupNorm
from diffjax.models.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    TimeEmbedding,
    default_kernel_init,
)

__all__ = ["NoisyClassifier"]

Dtype = Any


class NoisyClassifier(nn.Module):
    """Class logits of a noisy image: ``module(x_t, t) -> [B, num_classes]``, the classifier
    p_phi(y | x_t, t) of classifier guidance (Dhariwal & Nichol 2021, Sec. 4).

    Attributes:
      num_classes: K, the classes it predicts (>= 2).
      base_channels: channels of the first level (even, divisible by ``num_groups``).
      channel_mults: per-level channel multipliers; ``len - 1`` downsamplings.
      num_res_blocks: ResNet blocks per level.
      attn_resolutions: feature-map sides (pixels) whose ResNet blocks are followed by
        self-attention; the middle block always has attention.
      dropout: dropout rate inside the ResNet blocks (with ``train=True``).
      num_groups: GroupNorm groups.
      dtype: compute dtype; the logits are float32.
      param_dtype: parameter dtype.
    """

    num_classes: int
    base_channels: int = 32
    channel_mults: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: Sequence[int] = ()
    dropout: float = 0.0
    num_groups: int = 8
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        """Validates the configuration when the module is constructed."""
        super().__post_init__()
        if isinstance(self.num_classes, bool) or not isinstance(
            self.num_classes, (int, np.integer)
        ) or self.num_classes < 2:  # fmt: skip
            raise ValueError(
                f"num_classes must be an int >= 2 (the classes the classifier predicts), got "
                f"{self.num_classes!r}."
            )
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise ValueError(
                f"channel_mults must be a non-empty sequence of positive ints, got "
                f"{self.channel_mults!r}."
            )
        if self.base_channels < 4 or self.base_channels % 2:
            raise ValueError(f"base_channels must be even and >= 4, got {self.base_channels}.")
        if self.num_groups < 1 or self.base_channels % self.num_groups:
            raise ValueError(
                f"num_groups={self.num_groups} must divide base_channels={self.base_channels}."
            )
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}.")

    @property
    def cond_keys(self) -> tuple[str, ...]:
        """None: the classifier reads only x_t and t (the label is its target)."""
        return ()

    def null_cond(self, cond: Mapping[str, Any]) -> dict[str, jnp.ndarray]:
        """Nothing to drop."""
        return {}

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        t: jnp.ndarray,
        cond: Mapping[str, Any] | None = None,
        train: bool = False,
    ) -> jnp.ndarray:
        """Class logits.

        Args:
          x: noisy images ``[B, H, W, C]``, float; sides divisible by
            ``2 ** (len(channel_mults) - 1)``.
          t: network times ``[B]`` (or a scalar), int or float, as the UNet takes them.
          cond: unused (None or ``{}``).
          train: enables dropout; then ``apply`` needs ``rngs={'dropout': key}``.

        Returns:
          ``[B, num_classes]`` float32 logits.
        """
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must be a float array [B, H, W, C], got dtype {x.dtype}.")
        factor = 2 ** (len(self.channel_mults) - 1)
        if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"x must be [B, H, W, C] with H and W divisible by {factor} "
                f"(channel_mults={tuple(self.channel_mults)}), got shape {x.shape}."
            )
        t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        channels = self.base_channels
        temb = TimeEmbedding(4 * channels, channels, name="time_embedding", **common)(t)
        res_block = functools.partial(
            ResBlock, dropout=self.dropout, num_groups=self.num_groups, **common
        )
        h = nn.Conv(
            channels, (3, 3), padding="SAME", kernel_init=default_kernel_init, name="conv_in",
            **common,
        )(x.astype(self.dtype))  # fmt: skip
        for level, mult in enumerate(self.channel_mults):
            for block in range(self.num_res_blocks):
                h = res_block(channels * mult, name=f"down_{level}_res_{block}")(h, temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = AttentionBlock(
                        1, self.num_groups, name=f"down_{level}_attn_{block}", **common
                    )(h)
            if level != len(self.channel_mults) - 1:
                h = Downsample(name=f"down_{level}_downsample", **common)(h)
        h = res_block(h.shape[-1], name="mid_res_0")(h, temb, train)
        h = AttentionBlock(1, self.num_groups, name="mid_attn", **common)(h)
        h = res_block(h.shape[-1], name="mid_res_1")(h, temb, train)
        h = nn.silu(GroupNorm(self.num_groups, name="norm_out", **common)(h))
        pooled = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
        logits = nn.Dense(
            self.num_classes, kernel_init=nn.initializers.zeros, name="head",
            param_dtype=self.param_dtype,
        )(pooled)  # fmt: skip
        return logits.astype(jnp.float32)
