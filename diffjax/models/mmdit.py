"""MMDiT: Stable Diffusion 3's multimodal diffusion transformer (Esser et al. 2024, "Scaling
Rectified Flow Transformers for High-Resolution Image Synthesis", arXiv:2403.03206, Sec. 4 and
Fig. 2), in Flax Linen.

    h = patchify(x) + pos                      (a p x p stride-p convolution; fixed 2-D sin-cos
                                                positions cropped from the centre of a
                                                pos_embed_max_size^2 grid)
    e = W_ctx context                          (the text tokens, [B, L, joint_attention_dim])
    y = MLP(sinusoid(t)) + MLP(pooled)         (timestep and pooled text, Fig. 2)
    per block, the two streams h and e with their own weights (Fig. 2), adaLN-Zero on y:
      (shift1, scale1, gate1, shift2, scale2, gate2) = W silu(y)    (per stream, W zero-init)
      q, k, v = [W_x u_h; W_e u_e],  u = LN(.) (1 + scale1) + shift1       (per stream)
      (with qk_norm='rms_norm', q and k RMS-normalised per head first)
      [a_h; a_e] = softmax(q k^T / sqrt(d)) v        (joint attention over the N + L tokens)
      h = h + gate1 * W_o a_h,                e = e + gate1_e * W_o' a_e
      h = h + gate2 * MLP(LN(h) (1 + scale2) + shift2)   (and e; GELU, tanh approximation)
    out = unpatchify(W_out (LN(h) (1 + scale) + shift)),  (scale, shift) = W_f silu(y)

The last block is ``context_pre_only``: its text stream only gives keys and values (its adaLN
is diffusers' ``AdaLayerNormContinuous``, ``(scale, shift)`` without gates, and it has no
text output projection or MLP). SD3.5's ``dual_attention_layers`` add, in those blocks, a second
self-attention ``attn2`` on the image tokens with its own modulation (diffusers'
``SD35AdaLayerNormZeroX``: 9 instead of 6 vectors):
``h = h + gate3 * attn2(LN(h_in) (1 + scale3) + shift3)`` after the joint attention, ``h_in``
the block's input.

The LayerNorms have no affine parameters (epsilon 1e-6); the modulations and the output
projection are zero-initialised, so a new MMDiT outputs exactly 0 (adaLN-Zero, as diffjax's
:class:`~diffjax.models.DiT`). Attention logits and softmax are float32 whatever the compute
dtype (:func:`~diffjax.models.attention.dot_product_attention`). Parameter names follow
diffusers' ``SD3Transformer2DModel`` (``transformer_blocks_0/attn/add_q_proj``,
``norm1_context/linear``), so published weights map onto it by name
(:mod:`diffjax.models.mmdit_weights`).

It is called as every registered network is, ``mmdit(x, t, cond, train=...)``, with the text
in ``cond['context']`` and ``cond['pooled']`` (:mod:`diffjax.models.conditioning`). SD3's
pipeline passes ``t = 1000 sigma`` (:class:`~diffjax.processes.RectifiedFlow`'s
``model_time``).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax.typing import Dtype

from diffjax.models.attention import dot_product_attention
from diffjax.models.dit import _FeedForward, _Linear, _Mlp, _PatchEmbed
from diffjax.models.layers import sinusoidal_embedding

__all__ = ["MMDiT", "QK_NORMS", "sd3_positions"]

QK_NORMS: tuple[str | None, ...] = (None, "rms_norm")
"""The query-key normalisations :class:`MMDiT` has: none (SD3) or per-head RMSNorm (SD3.5)."""

_TIME_FEATURES = 256
_EPSILON = 1e-6


def sd3_positions(dim: int, max_size: int, base_size: int) -> np.ndarray:
    """SD3's fixed 2-D sin-cos position table ``[max_size^2, dim]`` (diffusers' ``PatchEmbed``
    buffer ``pos_embed.pos_embed``), row-major over a ``max_size x max_size`` patch grid.

    Half the channels encode the column, half the row, each as ``[sin(p w_k), cos(p w_k)]``
    with ``w_k = 10000^(-k / (dim / 4))`` and ``p = i / (max_size / base_size)`` (MAE's
    embedding as :func:`~diffjax.models.dit.sincos_positions`: per axis the sinusoid of Vaswani
    et al. 2017, Sec. 3.5, as in DiT, Peebles & Xie 2023, Sec. 3.2). Unlike that function the
    positions are rounded to float32 before the float64 angles, as diffusers computes them, so
    the table equals diffusers' bit for bit.

    Args:
      dim: the embedding width, a multiple of 4.
      max_size: the grid side (``pos_embed_max_size``).
      base_size: the training grid's side (``sample_size // patch_size``).
    """
    if dim % 4:
        raise ValueError(f"the position embedding width {dim} must be a multiple of 4.")
    axis = np.arange(max_size, dtype=np.float32) / np.float32(max_size / base_size)
    column_grid, row_grid = np.meshgrid(axis, axis)
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))

    def one_axis(positions: np.ndarray) -> np.ndarray:
        angles = positions.reshape(-1).astype(np.float64)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([one_axis(column_grid), one_axis(row_grid)], axis=1).astype(np.float32)


class _TimeTextEmbedding(nn.Module):
    """``y = MLP(sinusoid(t)) + MLP(pooled)``: ``t [B]`` and ``pooled [B, P]`` -> ``[B, D]``
    (diffusers' ``CombinedTimestepTextProjEmbeddings``: the 256-wide cosine-first sinusoid,
    frequency shift 0)."""

    features: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, t: jnp.ndarray, pooled: jnp.ndarray) -> jnp.ndarray:
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        emb = sinusoidal_embedding(t, _TIME_FEATURES, flip_sin_to_cos=True, freq_shift=0.0)
        time = _Mlp(self.features, name="timestep_embedder", **common)(emb)
        return time + _Mlp(self.features, name="text_embedder", **common)(pooled)


class _JointAttention(nn.Module):
    """Multi-head attention of the image tokens ``x [B, N, D]`` and the text tokens
    ``context [B, L, D]`` together (diffusers' ``Attention`` with ``JointAttnProcessor2_0``):
    each stream has its own q, k, v and output projections (the text's ``add_*_proj`` and
    ``to_add_out``), and every token attends to all ``N + L``. Without a context it is plain
    self-attention on ``x`` (SD3.5's ``attn2``).

    Returns ``(x_out [B, N, D], context_out [B, L, D])``; ``context_out`` is None without a
    context or with ``context_pre_only`` (the last block, which has no ``to_add_out``).

    Attributes:
      num_heads: heads; ``D`` is split into ``num_heads`` heads of ``D // num_heads``.
      qk_norm: None, or ``'rms_norm'``: RMSNorm (epsilon 1e-6, a learned scale) of every
        head's queries and keys.
      context_pre_only: the text stream has no output projection.
      dtype, param_dtype: compute and parameter dtypes.
    """

    num_heads: int
    qk_norm: str | None
    context_pre_only: bool
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, context: jnp.ndarray | None = None
    ) -> tuple[jnp.ndarray, jnp.ndarray | None]:
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        batch, tokens, width = x.shape
        head_dim = width // self.num_heads

        def heads(name: str, source: jnp.ndarray, norm: str | None = None) -> jnp.ndarray:
            values = nn.Dense(width, name=name, **common)(source)
            values = values.reshape(batch, -1, self.num_heads, head_dim)
            if norm is not None and self.qk_norm is not None:
                values = nn.RMSNorm(epsilon=_EPSILON, name=norm, **common)(values)
            return values.transpose(0, 2, 1, 3)  # [B, heads, tokens, head_dim]

        q, k, v = heads("to_q", x, "norm_q"), heads("to_k", x, "norm_k"), heads("to_v", x)
        if context is not None:
            q = jnp.concatenate([q, heads("add_q_proj", context, "norm_added_q")], axis=2)
            k = jnp.concatenate([k, heads("add_k_proj", context, "norm_added_k")], axis=2)
            v = jnp.concatenate([v, heads("add_v_proj", context)], axis=2)
        attended = dot_product_attention(q, k, v).transpose(0, 2, 1, 3).reshape(batch, -1, width)
        out = nn.Dense(width, name="to_out", **common)(attended[:, :tokens])
        if context is None or self.context_pre_only:
            return out, None
        return out, nn.Dense(width, name="to_add_out", **common)(attended[:, tokens:])


class _JointBlock(nn.Module):
    """One MMDiT block (module docstring; diffusers' ``JointTransformerBlock``) on image tokens
    ``h [B, N, D]`` and text tokens ``context [B, L, D]`` conditioned on ``y [B, D]``.

    Returns ``(h, context)``, ``context`` None when ``context_pre_only``.
    """

    num_heads: int
    qk_norm: str | None
    context_pre_only: bool
    dual_attention: bool
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(
        self, h: jnp.ndarray, context: jnp.ndarray, y: jnp.ndarray
    ) -> tuple[jnp.ndarray, jnp.ndarray | None]:
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = h.shape[-1]
        norm = functools.partial(
            nn.LayerNorm, epsilon=_EPSILON, use_bias=False, use_scale=False, **common
        )
        attention = functools.partial(_JointAttention, self.num_heads, self.qk_norm, **common)
        y = nn.silu(y)

        def modulation(name: str, count: int) -> list[jnp.ndarray]:
            return jnp.split(_Linear(count * width, name=name, **common)(y)[:, None], count, -1)

        vectors = modulation("norm1", 9 if self.dual_attention else 6)
        shift1, scale1, gate1, shift2, scale2, gate2 = vectors[:6]
        normed = norm()(h)
        if self.context_pre_only:
            context_scale1, context_shift1 = modulation("norm1_context", 2)
        else:
            context_vectors = modulation("norm1_context", 6)
            context_shift1, context_scale1, context_gate1 = context_vectors[:3]
            context_shift2, context_scale2, context_gate2 = context_vectors[3:]
        attended, context_attended = attention(self.context_pre_only, name="attn")(
            normed * (1 + scale1) + shift1,
            norm()(context) * (1 + context_scale1) + context_shift1,
        )
        h = h + gate1 * attended
        if self.dual_attention:
            shift3, scale3, gate3 = vectors[6:]
            h = h + gate3 * attention(False, name="attn2")(normed * (1 + scale3) + shift3)[0]
        h = h + gate2 * _FeedForward(4.0, name="ff", **common)(norm()(h) * (1 + scale2) + shift2)
        if self.context_pre_only:
            return h, None
        context = context + context_gate1 * context_attended
        normed_context = norm()(context) * (1 + context_scale2) + context_shift2
        context_mlp = _FeedForward(4.0, name="ff_context", **common)(normed_context)
        return h, context + context_gate2 * context_mlp


class MMDiT(nn.Module):
    """SD3's multimodal diffusion transformer (module docstring), predicting an image-shaped
    output from ``(x_t, t, cond)``: two token streams with joint attention (Esser et al. 2024,
    Sec. 4 and Fig. 2).

    The defaults are SD3 medium's (``stabilityai/stable-diffusion-3-medium-diffusers``'
    ``transformer/config.json``).

    Attributes:
      patch_size: p; image sides must be multiples of it.
      hidden_size: token width D of both streams (a multiple of 4 and of ``num_heads``).
      depth: joint blocks; the last is ``context_pre_only``.
      num_heads: attention heads.
      in_channels: the input's channels C, checked against ``x``; None: any (a published
        config sets it).
      out_channels: output channels; None: the input's.
      joint_attention_dim: the width of the text tokens ``cond['context']``.
      pooled_projection_dim: the width of the pooled text ``cond['pooled']``.
      sample_size: the training image side; the position grid is scaled so that
        ``sample_size // patch_size`` patches span the unit range of MAE's embedding.
      pos_embed_max_size: the side of the position grid; an input's ``H/p x W/p`` patch grid
        takes its centre crop, so H/p and W/p must be at most this.
      qk_norm: None, or ``'rms_norm'`` (SD3.5): RMSNorm of every head's queries and keys.
      dual_attention_layers: the blocks with SD3.5's second self-attention on the image
        tokens (indices in ``[0, depth)``).
      dtype, param_dtype: compute and parameter dtypes (attention logits, LayerNorm and
        RMSNorm statistics stay float32; the output is float32).
      remat: recompute each block's activations in the backward pass.
    """

    patch_size: int = 2
    hidden_size: int = 1536
    depth: int = 24
    num_heads: int = 24
    in_channels: int | None = 16
    out_channels: int | None = None
    joint_attention_dim: int = 4096
    pooled_projection_dim: int = 2048
    sample_size: int = 128
    pos_embed_max_size: int = 192
    qk_norm: str | None = None
    dual_attention_layers: tuple[int, ...] = ()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False

    def __post_init__(self) -> None:
        """Validates the configuration at construction, before any tracing."""
        super().__post_init__()
        sizes = dict(
            patch_size=self.patch_size, depth=self.depth, num_heads=self.num_heads,
            joint_attention_dim=self.joint_attention_dim,
            pooled_projection_dim=self.pooled_projection_dim,
            pos_embed_max_size=self.pos_embed_max_size,
        )  # fmt: skip
        if self.in_channels is not None:
            sizes["in_channels"] = self.in_channels
        small = {name: value for name, value in sizes.items() if value < 1}
        if small:
            raise ValueError(f"these MMDiT sizes must be >= 1: {small}.")
        if self.hidden_size % 4 or self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be a multiple of 4 and of "
                f"num_heads={self.num_heads}."
            )
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"out_channels must be None or >= 1, got {self.out_channels}.")
        if self.sample_size < self.patch_size:
            raise ValueError(
                f"sample_size={self.sample_size} must be at least patch_size={self.patch_size}."
            )
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}.")
        if not isinstance(self.dual_attention_layers, tuple) or any(
            not 0 <= index < self.depth for index in self.dual_attention_layers
        ):
            raise ValueError(
                f"dual_attention_layers must be a tuple of block indices in [0, depth="
                f"{self.depth}), got {self.dual_attention_layers!r}."
            )

    @property
    def cond_keys(self) -> tuple[str, ...]:
        """``('context', 'pooled')``: the text tokens and the pooled text embedding."""
        return ("context", "pooled")

    def null_cond(self, cond: Mapping[str, Any]) -> dict[str, jnp.ndarray]:
        """All-zero ``context`` and ``pooled`` of the same shapes: diffjax's null text, as the
        UNet's null context. (diffusers' SD3 pipeline instead encodes the empty prompt; pass
        that as ``make_model_fn(..., null=...)`` to guide as it does.)"""
        return {key: jnp.zeros_like(jnp.asarray(cond[key])) for key in self.cond_keys}

    def positions(self, grid_height: int, grid_width: int) -> np.ndarray:
        """The position embeddings ``[grid_height * grid_width, hidden_size]`` of a patch
        grid: the centre crop of :func:`sd3_positions` (diffusers' ``cropped_pos_embed``)."""
        size = self.pos_embed_max_size
        if grid_height > size or grid_width > size:
            raise ValueError(
                f"the patch grid {grid_height}x{grid_width} exceeds pos_embed_max_size={size}."
            )
        table = sd3_positions(self.hidden_size, size, self.sample_size // self.patch_size)
        top, left = (size - grid_height) // 2, (size - grid_width) // 2
        table = table.reshape(size, size, self.hidden_size)
        return table[top : top + grid_height, left : left + grid_width].reshape(
            -1, self.hidden_size
        )

    def _text(self, cond: Any, batch: int) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``(context [B, L, joint_attention_dim], pooled [B, pooled_projection_dim])``, checked."""
        cond = {} if cond is None else cond
        missing = [key for key in self.cond_keys if key not in cond]
        if missing:
            raise ValueError(
                f"The MMDiT needs cond['context'] float [B, L, {self.joint_attention_dim}] and "
                f"cond['pooled'] float [B, {self.pooled_projection_dim}]; missing {missing} "
                f"(the conditioning holds {sorted(cond)})."
            )
        context, pooled = jnp.asarray(cond["context"]), jnp.asarray(cond["pooled"])
        if (
            context.ndim != 3
            or context.shape[0] != batch
            or context.shape[2] != self.joint_attention_dim
        ):
            raise ValueError(
                f"cond['context'] must be [B, L, joint_attention_dim] = [{batch}, L, "
                f"{self.joint_attention_dim}], got shape {context.shape}."
            )
        if pooled.shape != (batch, self.pooled_projection_dim):
            raise ValueError(
                f"cond['pooled'] must be [B, pooled_projection_dim] = [{batch}, "
                f"{self.pooled_projection_dim}], got shape {pooled.shape}."
            )
        return context, pooled

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        t: jnp.ndarray,
        cond: Mapping[str, Any] | None = None,
        train: bool = False,
    ) -> jnp.ndarray:
        """Runs the MMDiT.

        Args:
          x: ``[B, H, W, C]`` float (``C = in_channels`` when set), ``H`` and ``W`` multiples
            of ``patch_size`` and at most ``pos_embed_max_size * patch_size``.
          t: timesteps ``[B]`` (or a scalar), embedded as given (SD3: ``1000 sigma``).
          cond: ``{'context': float [B, L, joint_attention_dim], 'pooled': float [B,
            pooled_projection_dim]}``.
          train: unused (no dropout); accepted as every registered network's argument.

        Returns:
          ``[B, H, W, out_channels]`` float32.

        Raises:
          ValueError: at trace time, for a bad image shape or a missing or misshapen
            condition.
        """
        p = self.patch_size
        channels = self.in_channels or x.shape[-1]
        if x.ndim != 4 or x.shape[1] % p or x.shape[2] % p or x.shape[3] != channels:
            raise ValueError(
                f"x must be [B, H, W, in_channels={self.in_channels}] with H and W multiples "
                f"of patch_size={p}, got shape {x.shape}."
            )
        batch, height, width, channels = x.shape
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        context, pooled = self._text(cond, batch)
        positions = self.positions(height // p, width // p)
        t = jnp.broadcast_to(jnp.asarray(t), (batch,))
        h = _PatchEmbed(self.hidden_size, p, name="pos_embed", **common)(x.astype(self.dtype))
        h = h + positions.astype(h.dtype)
        y = _TimeTextEmbedding(self.hidden_size, name="time_text_embed", **common)(
            t, pooled.astype(self.dtype)
        )
        context = nn.Dense(self.hidden_size, name="context_embedder", **common)(
            context.astype(self.dtype)
        )
        block = nn.remat(_JointBlock) if self.remat else _JointBlock
        for index in range(self.depth):
            h, context = block(
                self.num_heads, self.qk_norm, index == self.depth - 1,
                index in self.dual_attention_layers, name=f"transformer_blocks_{index}",
                **common,
            )(h, context, y)  # fmt: skip
        scale, shift = jnp.split(
            _Linear(2 * self.hidden_size, name="norm_out", **common)(nn.silu(y))[:, None], 2, -1
        )
        h = nn.LayerNorm(epsilon=_EPSILON, use_bias=False, use_scale=False, **common)(h)
        out_channels = self.out_channels or channels
        h = nn.Dense(p * p * out_channels, kernel_init=nn.initializers.zeros, name="proj_out",
                     **common)(h * (1 + scale) + shift)  # fmt: skip
        grid_h, grid_w = height // p, width // p
        h = h.reshape(batch, grid_h, grid_w, p, p, out_channels)
        h = jnp.transpose(h, (0, 1, 3, 2, 4, 5)).reshape(batch, height, width, out_channels)
        return h.astype(jnp.float32)
