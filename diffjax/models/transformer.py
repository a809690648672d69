"""Stable Diffusion's spatial transformer: self-attention, cross-attention on a context, GEGLU.

The block LDM puts at a UNet's attention resolutions (Rombach et al. 2022, arXiv:2112.10752,
Sec. 3.3 and App. E; diffusers' ``Transformer2DModel`` with ``BasicTransformerBlock``):

    h = proj_in(GN(x))                         (a 1x1 convolution, or a linear map: SD 2)
    h = h + attn1(LN(h))                       (self-attention over the H*W positions)
    h = h + attn2(LN(h), context)              (cross-attention on cond['context'] [B, L, D])
    h = h + W2 (a * GELU(g)),  [a, g] = W1 LN(h)   (GEGLU, Shazeer 2020, inner width 4C)
    out = x + proj_out(h)                      (zero-initialised)

repeated ``depth`` times between ``proj_in`` and ``proj_out``. Attention is multi-head
``softmax(q k^T / sqrt(d)) v`` (Vaswani et al. 2017, eq. 1) with bias-free q, k, v projections
and a biased output projection; its logits and softmax are float32. The parameter names follow
diffusers' (``transformer_blocks_0/attn2/to_k``, ``ff/net_0/proj``), so a published UNet's
weights map onto it by name (:mod:`diffjax.models.diffusers_weights`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from flax.typing import Dtype

from diffjax.models.attention import dot_product_attention
from diffjax.models.group_norm import GroupNorm

__all__ = ["Attention", "SpatialTransformer", "TransformerBlock"]


class Attention(nn.Module):
    """Multi-head attention of ``x`` over ``context [B, L, D]`` (``x`` itself when None), as
    diffusers' ``Attention`` with its options: ``x`` is ``[B, N, C]``, or ``[B, H, W, C]``
    (attended over its H*W positions); returns ``x``'s shape. Scaled dot-product attention
    (Vaswani et al. 2017, eq. 1) with multiple heads (Sec. 3.2.2).

    Attributes:
      num_heads: heads; ``C`` is split into ``num_heads`` heads of ``C // num_heads``.
      qkv_bias: whether q, k and v have biases (the SD transformer's: no; the autoencoder's
        middle attention: yes).
      num_groups: a GroupNorm (epsilon 1e-6) on ``[B, H, W, C]`` inputs before the
        projections, or None.
      residual: add ``x`` to the output.
      dtype, param_dtype: compute and parameter dtypes.
    """

    num_heads: int
    qkv_bias: bool = False
    num_groups: int | None = None
    residual: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, context: jnp.ndarray | None = None) -> jnp.ndarray:
        channels = x.shape[-1]
        if channels % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide the channels {channels}.")
        h = x
        if self.num_groups is not None:
            h = GroupNorm(self.num_groups, 1e-6, self.dtype, self.param_dtype, name="group_norm")(h)
        h = h.reshape(x.shape[0], -1, channels)
        context = h if context is None else context.astype(self.dtype)
        head_dim = channels // self.num_heads

        def dense(name: str, use_bias: bool = True) -> nn.Dense:
            return nn.Dense(
                channels, use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                name=name,
            )  # fmt: skip

        def project(name: str, source: jnp.ndarray) -> jnp.ndarray:
            values = dense(name, self.qkv_bias)(source)
            return values.reshape(x.shape[0], -1, self.num_heads, head_dim).transpose(0, 2, 1, 3)

        attended = dot_product_attention(
            project("to_q", h), project("to_k", context), project("to_v", context)
        )  # [B, heads, N, head_dim]
        attended = attended.transpose(0, 2, 1, 3).reshape(h.shape)
        out = dense("to_out")(attended).reshape(x.shape)
        return x + out if self.residual else out


class _GEGLU(nn.Module):
    inner: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        hidden = nn.Dense(
            2 * self.inner, dtype=self.dtype, param_dtype=self.param_dtype, name="proj"
        )(x)
        value, gate = jnp.split(hidden, 2, axis=-1)
        return value * nn.gelu(gate, approximate=False)


class _FeedForward(nn.Module):
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        channels = x.shape[-1]
        h = _GEGLU(4 * channels, self.dtype, self.param_dtype, name="net_0")(x)
        return nn.Dense(channels, dtype=self.dtype, param_dtype=self.param_dtype, name="net_2")(h)


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention on ``context`` (self-attention again without one) and a
    GEGLU feed-forward, each pre-LayerNorm and residual, on ``x [B, N, C]``: LDM's
    cross-attention conditioning (Rombach et al. 2022, Sec. 3.3) with GEGLU (Shazeer 2020).

    Attributes:
      num_heads: attention heads.
      dtype, param_dtype: compute and parameter dtypes (LayerNorm statistics are float32).
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, context: jnp.ndarray | None) -> jnp.ndarray:
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def norm(name: str) -> nn.LayerNorm:
            return nn.LayerNorm(epsilon=1e-5, name=name, **common)

        x = x + Attention(self.num_heads, name="attn1", **common)(norm("norm1")(x))
        x = x + Attention(self.num_heads, name="attn2", **common)(norm("norm2")(x), context)
        return x + _FeedForward(name="ff", **common)(norm("norm3")(x))


class SpatialTransformer(nn.Module):
    """LDM's spatial transformer on feature maps ``x [B, H, W, C]`` with a context ``[B, L, D]``
    (module docstring; Rombach et al. 2022, Sec. 3.3); returns ``[B, H, W, C]``.

    Attributes:
      num_heads: attention heads (SD 1: 8).
      depth: transformer blocks (SD 1/2: 1).
      linear_projection: ``proj_in`` / ``proj_out`` are linear maps (SD 2) rather than 1x1
        convolutions (SD 1).
      num_groups: the input GroupNorm's groups (epsilon 1e-6).
      dtype, param_dtype: compute and parameter dtypes.
    """

    num_heads: int = 8
    depth: int = 1
    linear_projection: bool = False
    num_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, context: jnp.ndarray | None) -> jnp.ndarray:
        batch, height, width, channels = x.shape
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = GroupNorm(self.num_groups, 1e-6, name="norm", **common)(x)

        def projection(name: str, zero: bool = False) -> nn.Module:
            init = dict(kernel_init=nn.initializers.zeros) if zero else {}
            if self.linear_projection:
                return nn.Dense(channels, name=name, **init, **common)
            return nn.Conv(channels, (1, 1), name=name, **init, **common)

        if self.linear_projection:
            h = projection("proj_in")(h.reshape(batch, height * width, channels))
        else:
            h = projection("proj_in")(h).reshape(batch, height * width, channels)
        for index in range(self.depth):
            h = TransformerBlock(self.num_heads, name=f"transformer_blocks_{index}", **common)(
                h, context
            )
        if self.linear_projection:
            h = projection("proj_out", zero=True)(h).reshape(batch, height, width, channels)
        else:
            h = projection("proj_out", zero=True)(h.reshape(batch, height, width, channels))
        return x + h
