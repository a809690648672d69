"""Building blocks of the DDPM UNet: time embedding, ResNet block, self-attention, resampling.

The structure follows Ho et al. 2020, "Denoising Diffusion Probabilistic Models"
(arXiv:2006.11239, Appendix B; their ``diffusion_tf/models/unet.py``). All arrays are NHWC.

Every module computes in ``dtype`` and stores its parameters in ``param_dtype``. The parts whose
precision matters run in float32 regardless: the sinusoidal embedding (``sin`` of arguments up to
~1000 in bfloat16 would be mostly rounding error), GroupNorm statistics (``group_norm.py``) and
the attention softmax (``attention.py``).

Initialisation follows DDPM: ``variance_scaling(1, "fan_avg", "uniform")`` for every kernel and
zero for the last layer of each residual branch, so that every block starts as the identity
(DDPM uses a 1e-10 scale there; zero is the same thing in practice and exact).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax.numpy as jnp
from flax.typing import Dtype

from diffjax.models.attention import dot_product_attention
from diffjax.models.group_norm import GroupNorm

__all__ = [
    "AttentionBlock",
    "Downsample",
    "ResBlock",
    "TimeEmbedding",
    "Upsample",
    "default_kernel_init",
    "sinusoidal_embedding",
]

# DDPM's `default_init(scale=1.0)`: Glorot-uniform, i.e. uniform with variance 1 / fan_avg.
default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def sinusoidal_embedding(
    t: jnp.ndarray,
    dim: int,
    max_period: float = 10000.0,
    flip_sin_to_cos: bool = False,
    freq_shift: float = 1.0,
) -> jnp.ndarray:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    Vaswani et al. 2017 positional encoding as used by DDPM (``get_timestep_embedding``):
    ``emb[b, k] = sin(t_b * w_k)`` and ``emb[b, half + k] = cos(t_b * w_k)`` with
    ``w_k = max_period ** (-k / (half - freq_shift))``, ``half = dim // 2``,
    ``k = 0 .. half - 1``. DDPM has ``freq_shift = 1``; Stable Diffusion has ``freq_shift = 0``
    and the cosines first (``flip_sin_to_cos``), diffusers' ``Timesteps`` options. ``t`` is
    taken as float, so continuous time works: feed it on the same scale the model was trained
    on (e.g. ``1000 * t`` for ``t`` in ``[0, 1]``).

    Args:
      t: timesteps ``[B]``, integer or float.
      dim: embedding width; even and at least 4.
      max_period: the slowest wavelength, in units of ``t``.
      flip_sin_to_cos: put the cosines before the sines.
      freq_shift: the frequency exponent's denominator is ``half - freq_shift``.

    Returns:
      ``[B, dim]`` float32 embedding.
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"Embedding dim must be even and >= 4, got {dim}.")
    half = dim // 2
    exponents = jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    frequencies = jnp.exp(-math.log(max_period) * exponents)
    angles = t.astype(jnp.float32)[:, None] * frequencies[None, :]
    waves = (
        [jnp.cos(angles), jnp.sin(angles)]
        if flip_sin_to_cos
        else [jnp.sin(angles), jnp.cos(angles)]
    )
    return jnp.concatenate(waves, axis=-1)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of ``t`` followed by DDPM's 2-layer MLP (Dense, SiLU, Dense): the
    Transformer position embedding (Vaswani et al. 2017, Sec. 3.5) of Ho et al. 2020, App. B.

    Attributes:
      features: MLP width (DDPM: 4 x base channels).
      sinusoidal_dim: width of the sinusoidal embedding (DDPM: base channels).
      flip_sin_to_cos, freq_shift: :func:`sinusoidal_embedding`'s convention (DDPM: False,
        1; Stable Diffusion: True, 0).
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    features: int
    sinusoidal_dim: int
    flip_sin_to_cos: bool = False
    freq_shift: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jnp.ndarray) -> jnp.ndarray:
        """Embeds timesteps.

        Args:
          t: ``[B]`` integer or float timesteps.

        Returns:
          ``[B, features]`` embedding in ``dtype`` (before any nonlinearity: each ResBlock
          applies its own SiLU, as in DDPM).
        """
        dense = functools.partial(
            nn.Dense,
            self.features,
            kernel_init=default_kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        emb = sinusoidal_embedding(
            t, self.sinusoidal_dim, flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift
        )
        emb = nn.silu(dense(name="dense_0")(emb))
        return dense(name="dense_1")(emb)


def _pointwise_dense(x: jnp.ndarray, dense: nn.Dense) -> jnp.ndarray:
    """Applies ``dense`` to the last axis of ``x [..., C]`` as one ``[N, C]`` matmul.

    Same parameters and result as ``dense(x)``. The flattening matters on XLA's CPU backend: the
    kernel gradient of a 4-D ``nn.Dense`` contracts over three axes, and XLA then writes the
    incoming gradient out transposed; flattened, a ``[64, 28, 28, 96] -> 32`` projection's
    forward and backward took 10 ms instead of 17 on one core.
    """
    flat = dense(x.reshape(-1, x.shape[-1]))
    return flat.reshape(*x.shape[:-1], flat.shape[-1])


class ResBlock(nn.Module):
    """DDPM ResNet block with a time-embedding projection (Ho et al. 2020, App. B).

    ``h = conv(SiLU(GN(x))) + Dense(SiLU(temb))``;
    ``h = conv(dropout(SiLU(GN(h))))`` (zero-initialised);
    returns ``shortcut(x) + h`` where ``shortcut`` is a 1x1 projection (DDPM's ``nin``) when the
    channel count changes and the identity otherwise.

    Attributes:
      out_channels: output channels.
      dropout: dropout rate before the second convolution.
      num_groups: GroupNorm groups; must divide both the input and output channel counts.
      norm_epsilon: the GroupNorms' epsilon (DDPM: 1e-6, Stable Diffusion: 1e-5).
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    out_channels: int
    dropout: float = 0.0
    num_groups: int = 32
    norm_epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, temb: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Applies the block.

        ``train`` is positional so that ``nn.remat(ResBlock, static_argnums=(3,))`` can treat
        it as static.

        Args:
          x: ``[B, H, W, C_in]`` features.
          temb: ``[B, D]`` time (and class) embedding.
          train: enables dropout (needs a ``'dropout'`` rng).

        Returns:
          ``[B, H, W, out_channels]`` in ``dtype``.
        """
        conv = functools.partial(
            nn.Conv,
            self.out_channels,
            (3, 3),
            padding="SAME",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        norm = functools.partial(
            GroupNorm, self.num_groups, self.norm_epsilon, self.dtype, self.param_dtype
        )
        h = conv(kernel_init=default_kernel_init, name="conv_0")(nn.silu(norm(name="norm_0")(x)))
        time_projection = nn.Dense(
            self.out_channels,
            kernel_init=default_kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="time_projection",
        )(nn.silu(temb))
        h = h + time_projection[:, None, None, :]
        h = nn.silu(norm(name="norm_1")(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv(kernel_init=nn.initializers.zeros, name="conv_1")(h)
        if x.shape[-1] != self.out_channels:
            x = _pointwise_dense(
                x,
                nn.Dense(
                    self.out_channels,
                    kernel_init=default_kernel_init,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name="shortcut",
                ),
            )
        return x + h


class _QKVProjection(nn.Module):
    """One fused 1x1 projection to q, k and v, laid out ``[3, B, heads, N, head_dim]``.

    The parameters are those of ``nn.Dense(3 * C)`` (``kernel [C, 3C]``, ``bias [3C]``, the
    columns ordered q, k, v and within each head-major), but the output puts the q/k/v axis
    first. Slicing q, k and v is then contiguous, and so is the backward pass's re-assembly of
    their gradients; with the q/k/v axis last, XLA on CPU spends ~10% of a Fashion-MNIST
    training step transposing that gradient for the kernel's gradient matmul. The heads axis
    comes before the positions, the layout that ``dot_product_attention`` takes.
    """

    num_heads: int
    head_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Projects ``x [B, N, C]`` to ``[3, B, heads, N, head_dim]`` in ``dtype``."""
        channels = x.shape[-1]
        width = self.num_heads * self.head_dim
        kernel = self.param("kernel", default_kernel_init, (channels, 3 * width), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (3 * width,), self.param_dtype)
        kernel = kernel.reshape(channels, 3, self.num_heads, self.head_dim).astype(self.dtype)
        bias = bias.reshape(3, 1, self.num_heads, 1, self.head_dim).astype(self.dtype)
        return jnp.einsum("bnc,cthd->tbhnd", x.astype(self.dtype), kernel) + bias


class AttentionBlock(nn.Module):
    """Residual self-attention over all spatial positions (DDPM ``attn_block``; Ho et al.
    2020, App. B, with the attention of Vaswani et al. 2017, eq. 1).

    ``x + proj(softmax(q k^T / sqrt(d)) v)`` with ``q, k, v`` 1x1 projections of ``GN(x)``;
    the output projection is zero-initialised. DDPM uses a single head.

    Attributes:
      num_heads: attention heads; must divide the channel count.
      num_groups: GroupNorm groups.
      norm_epsilon: the GroupNorm's epsilon.
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    num_heads: int = 1
    num_groups: int = 32
    norm_epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Applies the block.

        Args:
          x: ``[B, H, W, C]`` features.

        Returns:
          ``[B, H, W, C]`` in ``dtype``.
        """
        batch, height, width, channels = x.shape
        if channels % self.num_heads:
            raise ValueError(
                f"AttentionBlock: num_heads={self.num_heads} must divide channels={channels}."
            )
        h = GroupNorm(
            self.num_groups, self.norm_epsilon, self.dtype, self.param_dtype, name="norm"
        )(x)
        heads, head_dim = self.num_heads, channels // self.num_heads
        qkv = _QKVProjection(
            heads, head_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="qkv"
        )(h.reshape(batch, height * width, channels))
        h = dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, heads, N, head_dim]
        # With one head (DDPM) the swap only relabels a size-1 axis: no data moves.
        h = jnp.swapaxes(h, 1, 2).reshape(batch, height, width, channels)
        h = _pointwise_dense(
            h,
            nn.Dense(
                channels,
                kernel_init=nn.initializers.zeros,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="proj_out",
            ),
        )
        return x + h


class Downsample(nn.Module):
    """Halves the spatial size with a stride-2 3x3 convolution (DDPM ``downsample``; the UNet
    of Ho et al. 2020, App. B).

    ``padding=0`` pads (0, 1) on even sizes, exactly as TensorFlow's ``"SAME"`` did in DDPM;
    ``padding=1`` pads (1, 1), as Stable Diffusion does (diffusers' ``downsample_padding``).

    Attributes:
      padding: 0 or 1, as above.
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    padding: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Downsamples.

        Args:
          x: ``[B, H, W, C]`` with even ``H`` and ``W``.

        Returns:
          ``[B, H/2, W/2, C]`` in ``dtype``.
        """
        return nn.Conv(
            x.shape[-1],
            (3, 3),
            strides=(2, 2),
            padding="SAME" if self.padding == 0 else ((1, 1), (1, 1)),
            kernel_init=default_kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)


class Upsample(nn.Module):
    """Doubles the spatial size: nearest-neighbour repeat, then a 3x3 convolution (DDPM
    ``upsample``; the UNet of Ho et al. 2020, App. B).

    Attributes:
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Upsamples.

        Args:
          x: ``[B, H, W, C]``.

        Returns:
          ``[B, 2H, 2W, C]`` in ``dtype``.
        """
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return nn.Conv(
            x.shape[-1],
            (3, 3),
            padding="SAME",
            kernel_init=default_kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)
