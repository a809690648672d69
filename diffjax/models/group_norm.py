"""Group normalisation (Wu & He 2018) for NHWC feature maps, with a hand-written derivative.

``GroupNorm`` is a drop-in replacement for ``flax.linen.GroupNorm`` on ``[B, H, W, C]`` inputs:
same parameters (``scale`` and ``bias``, shape ``[C]``), same epsilon, float32 statistics. The
variance is two-pass, ``E[(x - E[x])^2]``, as PyTorch's: flax's one-pass ``E[x^2] - E[x]^2``
loses every digit of a unit variance on activations of mean ~1e3 (float32 keeps ~7), and a
published network's activations reach that. Only the way XLA is asked
to compute it differs, because the straightforward formulation is slow on XLA's CPU backend:

- Reducing ``x.reshape(B, H, W, G, C // G)`` over ``(H, W, C // G)`` reduces over part of the
  minor dimension, which does not vectorise. Here every reduction is per channel, over
  ``(H, W)`` only, and the ``[B, C]`` sums are then added up per group: ``[B, C] -> [B, G]``.
- Broadcasting per-group values ``[B, G]`` back to channels with a reshape makes XLA fuse the
  reshape into the ``[B, H, W, C]`` elementwise loop, with integer index arithmetic on every
  element. Here the ``[B, G] <-> [B, C]`` moves are tiny matmuls with a one-hot ``[G, C]``
  matrix (exact: each output is one product with 1.0), so the big loops only see a ``[B, C]``
  operand broadcast over ``(H, W)``.
- The Jacobian-vector product is written out (``jax.custom_jvp``) in the same per-channel
  form; JAX transposes it for the gradient. (A ``custom_vjp`` would make the layer, and every
  network using it, reverse-mode only; the ODE likelihood uses forward mode.)

The timings, against flax's GroupNorm and the earlier ``custom_vjp`` form, are in
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

__all__ = ["GroupNorm", "group_norm"]


def _group_membership(num_groups: int, channels: int) -> jnp.ndarray:
    """``[G, C]`` float32 one-hot matrix: 1 where channel ``c`` belongs to group ``g``."""
    group_of_channel = jnp.arange(channels) // (channels // num_groups)
    return (group_of_channel[None, :] == jnp.arange(num_groups)[:, None]).astype(jnp.float32)


def _sum_per_group(per_channel: jnp.ndarray, num_groups: int) -> jnp.ndarray:
    """``[B, C] -> [B, G]``: sums the channels of each group."""
    membership = _group_membership(num_groups, per_channel.shape[-1])
    return jnp.dot(per_channel, membership.T, precision=jax.lax.Precision.HIGHEST)


def _per_channel(per_group: jnp.ndarray, channels: int) -> jnp.ndarray:
    """``[B, G] -> [B, C]``: gives every channel its group's value."""
    membership = _group_membership(per_group.shape[-1], channels)
    return jnp.dot(per_group, membership, precision=jax.lax.Precision.HIGHEST)


def _statistics(
    x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray, num_groups: int, epsilon: float
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Returns ``mean [B, G]``, ``inv_std [B, G]`` and the affine map ``multiplier, offset [B, C]``
    with ``y = x * multiplier + offset``, all float32."""
    _, height, width, channels = x.shape
    group_size = height * width * (channels // num_groups)
    x = x.astype(jnp.float32)
    mean = _sum_per_group(jnp.sum(x, axis=(1, 2)), num_groups) / group_size
    centered = x - _per_channel(mean, channels)[:, None, None, :]
    variance = _sum_per_group(jnp.sum(jnp.square(centered), axis=(1, 2)), num_groups) / group_size
    inv_std = jax.lax.rsqrt(variance + epsilon)
    multiplier = _per_channel(inv_std, channels) * scale.astype(jnp.float32)
    offset = bias.astype(jnp.float32) - _per_channel(mean, channels) * multiplier
    return mean, inv_std, multiplier, offset


def _check_groups(x: jnp.ndarray, num_groups: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"group_norm expects [B, H, W, C] features, got shape {x.shape}.")
    if num_groups < 1 or x.shape[-1] % num_groups:
        raise ValueError(
            f"group_norm: num_groups={num_groups} must be >= 1 and divide the "
            f"{x.shape[-1]} channels of input shape {x.shape}."
        )


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def group_norm(
    x: jnp.ndarray,
    scale: jnp.ndarray,
    bias: jnp.ndarray,
    num_groups: int,
    epsilon: float = 1e-6,
) -> jnp.ndarray:
    """Group normalisation of NHWC features (Wu & He 2018, Eq. 1-3 with GN's group sets).

    ``y[b, h, w, c] = (x[b, h, w, c] - mu[b, g]) / sqrt(var[b, g] + epsilon) * scale[c] + bias[c]``
    where ``g`` is the group of channel ``c`` (channels split into ``num_groups`` contiguous
    groups) and ``mu``, ``var`` are the mean and (biased) variance over ``(h, w)`` and the
    channels of group ``g``. Statistics are float32 whatever the input dtype; the variance is
    two-pass, ``E[(x - mu)^2]``, and so is its tangent ``2 E[(x - mu) dx]``.

    Differentiable in ``x``, ``scale`` and ``bias`` in forward and reverse mode: the
    Jacobian-vector product is written out (``jax.custom_jvp``) in the per-channel form,
    ``dy = dx m + x dm + do`` for ``y = x m + o`` with ``m = inv_std scale``, ``o = bias - mu m``,
    and JAX transposes it for the gradient, which is then the closed form
    ``dx = inv_std * (dxhat - mean_g(dxhat) - xhat * mean_g(dxhat * xhat))`` with
    ``dxhat = dy * scale``.

    Args:
      x: ``[B, H, W, C]`` features.
      scale: ``[C]`` per-channel gain.
      bias: ``[C]`` per-channel offset.
      num_groups: number of groups ``G``; must divide ``C``.
      epsilon: added to the variance.

    Returns:
      ``[B, H, W, C]`` in ``x.dtype``.
    """
    _check_groups(x, num_groups)
    _, _, multiplier, offset = _statistics(x, scale, bias, num_groups, epsilon)
    return _affine(x, multiplier, offset)


def _affine(x: jnp.ndarray, multiplier: jnp.ndarray, offset: jnp.ndarray) -> jnp.ndarray:
    """``x * multiplier + offset`` with ``[B, C]`` coefficients, in float32, cast to x.dtype."""
    y = x.astype(jnp.float32) * multiplier[:, None, None, :] + offset[:, None, None, :]
    return y.astype(x.dtype)


@group_norm.defjvp
def _group_norm_jvp(num_groups, epsilon, primals, tangents):
    x, scale, bias = primals
    dx, dscale, dbias = tangents
    _check_groups(x, num_groups)
    _, height, width, channels = x.shape
    group_size = height * width * (channels // num_groups)
    mean, inv_std, multiplier, offset = _statistics(x, scale, bias, num_groups, epsilon)
    x32, dx32 = x.astype(jnp.float32), dx.astype(jnp.float32)
    # Tangents of the group statistics, from per-channel sums over (H, W).
    dmean = _sum_per_group(jnp.sum(dx32, axis=(1, 2)), num_groups) / group_size
    centered = x32 - _per_channel(mean, channels)[:, None, None, :]
    dvariance = _sum_per_group(jnp.sum(centered * dx32, axis=(1, 2)), num_groups) * (
        2.0 / group_size
    )
    dinv_std = -0.5 * inv_std**3 * dvariance
    scale32 = scale.astype(jnp.float32)
    dmultiplier = _per_channel(dinv_std, channels) * scale32 + _per_channel(
        inv_std, channels
    ) * dscale.astype(jnp.float32)
    doffset = (
        dbias.astype(jnp.float32)
        - _per_channel(dmean, channels) * multiplier
        - _per_channel(mean, channels) * dmultiplier
    )
    dy = (
        dx32 * multiplier[:, None, None, :]
        + x32 * dmultiplier[:, None, None, :]
        + doffset[:, None, None, :]
    )
    return _affine(x, multiplier, offset), dy.astype(x.dtype)


class GroupNorm(nn.Module):
    """Flax wrapper of :func:`group_norm` with ``flax.linen.GroupNorm``'s parameters (Wu & He
    2018, Eq. 1-3 with GN's group sets).

    Attributes:
      num_groups: number of groups; must divide the channel count.
      epsilon: added to the variance.
      dtype: output dtype (statistics are float32 regardless).
      param_dtype: dtype of ``scale`` (initialised to 1) and ``bias`` (initialised to 0).
    """

    num_groups: int = 32
    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Normalises ``x [B, H, W, C]``; returns ``[B, H, W, C]`` in ``dtype``."""
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
        return group_norm(x, scale, bias, self.num_groups, self.epsilon).astype(self.dtype)
