"""The Inception-v3 feature network of FID, IS and KID, ported to Flax.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", arXiv:1706.08500), the Inception Score and KID are defined with the features of
one particular network: the TensorFlow graph ``inception-2015-12-05`` that the TTUR code loads,
an Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer
Vision", arXiv:1512.00567) trained on ImageNet with 1008 output classes. That graph differs
from the paper and from torchvision's Inception-v3 in ways that change the features:

- the 3 x 3 average pools inside the A, C and first E blocks divide by the number of pixels
  inside the image, not by 9 (PyTorch's ``count_include_pad=False``);
- the last E block (``Mixed_7c``) max-pools its pool branch instead of average-pooling it;
- images are resized to 299 x 299 with TensorFlow 1.x's bilinear resize and scaled to [-1, 1)
  by ``(x - 128) / 128``, not ``x / 127.5 - 1``.

pytorch-fid ported the graph and its weights to PyTorch (``pt_inception-2015-12-05-6726825d.pth``)
and torch-fidelity (``FeatureExtractorInceptionV3``) documents the protocol and its numerical
precision (https://torch-fidelity.readthedocs.io/en/latest/precision.html: pool3 features
within a relative error of 1e-4 of TensorFlow's). :class:`FIDInceptionV3` is the same
architecture with the same parameter names, in NHWC, for inference only: every BatchNorm
normalises with its stored statistics. Convolutions and the final matmul run at
``Precision.HIGHEST``, so that on GPU (TF32) and TPU (bfloat16 passes) the features keep
float32 accuracy too; on CPU this changes nothing.

The input protocol (:func:`inception_features`):

1. uint8 images ``[B, H, W, 3]`` of any size; grayscale ``[B, H, W, 1]`` is repeated to three
   channels, which is what the image loaders of pytorch-fid and torch-fidelity do to grayscale
   files (PIL's ``convert("RGB")``); torch-fidelity's extractor itself accepts only RGB;
2. cast to float32 and resized to 299 x 299 by :func:`resize_bilinear_tf1`;
3. normalised to ``(x - 128) / 128``;
4. the network; ``pool3`` is the 2048-d global average of ``Mixed_7c`` (FID, KID, precision
   and recall), ``logits_unbiased`` the 1008 class logits without the final bias (what
   torch-fidelity feeds the Inception Score), ``logits`` with it.

The weights are the published pytorch-fid file, read without torch
(:func:`load_inception`); its parameter names map one to one onto this module's variables
through an explicit key table (:func:`inception_key_table`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.weights import (
    KeyRule,
    WeightsFile,
    apply_key_table,
    conv_kernel,
    linear_kernel,
    read_torch_state_dict,
    resolve_weights,
)

__all__ = [
    "FIDInceptionV3",
    "INCEPTION_INPUT_SIZE",
    "INCEPTION_WEIGHTS",
    "inception_features",
    "inception_key_table",
    "inception_variables_from_state_dict",
    "load_inception",
    "preprocess_inception_input",
    "resize_bilinear_tf1",
]

INCEPTION_INPUT_SIZE = 299
POOL3_FEATURES = 2048
NUM_CLASSES = 1008
_BATCH_NORM_EPSILON = 1e-3
_PRECISION = jax.lax.Precision.HIGHEST

INCEPTION_WEIGHTS = WeightsFile(
    description="FID Inception-v3 (TensorFlow inception-2015-12-05, pytorch-fid's port)",
    filename="pt_inception-2015-12-05-6726825d.pth",
    url=(
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth"
    ),
    sha256="6726825d",
    env_var="DIFFJAX_INCEPTION_WEIGHTS",
    aliases=("weights-inception-2015-12-05-6726825d.pth",),
)

Padding = tuple[tuple[int, int], tuple[int, int]]


# ------------------------------------------------------------------------------ the network


class ConvBNReLU(nn.Module):
    """Convolution without bias, inference BatchNorm (eps 1e-3), ReLU (pytorch-fid's
    ``BasicConv2d``). Variables: ``conv/kernel`` ``[kh, kw, in, out]``, ``bn/scale``,
    ``bn/bias`` and the batch statistics ``bn/mean``, ``bn/var``, each ``[out]``.

    Attributes:
      features: output channels.
      kernel_size: ``(kh, kw)``.
      strides: ``(sh, sw)``.
      padding: zero padding ``((top, bottom), (left, right))``.
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Padding = ((0, 0), (0, 0))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, H, W, C]`` -> ``[B, H', W', features]``."""
        x = nn.Conv(
            self.features,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            use_bias=False,
            precision=_PRECISION,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=_BATCH_NORM_EPSILON, name="bn")(x)
        return nn.relu(x)


def _same(kh: int, kw: int) -> Padding:
    """The padding that keeps the size for an odd ``kh x kw`` kernel at stride 1."""
    return ((kh // 2, kh // 2), (kw // 2, kw // 2))


def _avg_pool_3x3_inside(x: jax.Array) -> jax.Array:
    """3 x 3 stride-1 average over the pixels inside the image (TF's SAME avg pool)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=_same(3, 3), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
    """3 x 3 max pool: unpadded at stride 2, size-keeping (pads never win) at stride 1."""
    padding = "VALID" if stride == 2 else _same(3, 3)
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class InceptionA(nn.Module):
    """35 x 35 block (``Mixed_5b/c/d``): 1x1, 5x5, double 3x3 and avg-pool branches,
    ``[B, 35, 35, C] -> [B, 35, 35, 224 + pool_features]``.

    Attributes:
      pool_features: output channels of the pool branch.
    """

    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch1x1 = ConvBNReLU(64, (1, 1), name="branch1x1")(x)
        branch5x5 = ConvBNReLU(48, (1, 1), name="branch5x5_1")(x)
        branch5x5 = ConvBNReLU(64, (5, 5), padding=_same(5, 5), name="branch5x5_2")(branch5x5)
        branch3x3dbl = ConvBNReLU(64, (1, 1), name="branch3x3dbl_1")(x)
        branch3x3dbl = ConvBNReLU(96, (3, 3), padding=_same(3, 3), name="branch3x3dbl_2")(
            branch3x3dbl
        )
        branch3x3dbl = ConvBNReLU(96, (3, 3), padding=_same(3, 3), name="branch3x3dbl_3")(
            branch3x3dbl
        )
        branch_pool = ConvBNReLU(self.pool_features, (1, 1), name="branch_pool")(
            _avg_pool_3x3_inside(x)
        )
        return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (``Mixed_6a``): strided 3x3, double 3x3 and max-pool branches,
    ``[B, 35, 35, C] -> [B, 17, 17, 480 + C]``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch3x3 = ConvBNReLU(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
        branch3x3dbl = ConvBNReLU(64, (1, 1), name="branch3x3dbl_1")(x)
        branch3x3dbl = ConvBNReLU(96, (3, 3), padding=_same(3, 3), name="branch3x3dbl_2")(
            branch3x3dbl
        )
        branch3x3dbl = ConvBNReLU(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(branch3x3dbl)
        branch_pool = _max_pool_3x3(x, stride=2)
        return jnp.concatenate([branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionC(nn.Module):
    """17 x 17 block (``Mixed_6b..e``) with factorised 7x7 convolutions,
    ``[B, 17, 17, 768] -> [B, 17, 17, 768]``.

    Attributes:
      channels_7x7: width inside the 1x7 / 7x1 chains.
    """

    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        branch1x1 = ConvBNReLU(192, (1, 1), name="branch1x1")(x)
        branch7x7 = ConvBNReLU(c7, (1, 1), name="branch7x7_1")(x)
        branch7x7 = ConvBNReLU(c7, (1, 7), padding=_same(1, 7), name="branch7x7_2")(branch7x7)
        branch7x7 = ConvBNReLU(192, (7, 1), padding=_same(7, 1), name="branch7x7_3")(branch7x7)
        dbl = ConvBNReLU(c7, (1, 1), name="branch7x7dbl_1")(x)
        dbl = ConvBNReLU(c7, (7, 1), padding=_same(7, 1), name="branch7x7dbl_2")(dbl)
        dbl = ConvBNReLU(c7, (1, 7), padding=_same(1, 7), name="branch7x7dbl_3")(dbl)
        dbl = ConvBNReLU(c7, (7, 1), padding=_same(7, 1), name="branch7x7dbl_4")(dbl)
        dbl = ConvBNReLU(192, (1, 7), padding=_same(1, 7), name="branch7x7dbl_5")(dbl)
        branch_pool = ConvBNReLU(192, (1, 1), name="branch_pool")(_avg_pool_3x3_inside(x))
        return jnp.concatenate([branch1x1, branch7x7, dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (``Mixed_7a``), ``[B, 17, 17, 768] -> [B, 8, 8, 1280]``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch3x3 = ConvBNReLU(192, (1, 1), name="branch3x3_1")(x)
        branch3x3 = ConvBNReLU(320, (3, 3), strides=(2, 2), name="branch3x3_2")(branch3x3)
        branch7x7x3 = ConvBNReLU(192, (1, 1), name="branch7x7x3_1")(x)
        branch7x7x3 = ConvBNReLU(192, (1, 7), padding=_same(1, 7), name="branch7x7x3_2")(
            branch7x7x3
        )
        branch7x7x3 = ConvBNReLU(192, (7, 1), padding=_same(7, 1), name="branch7x7x3_3")(
            branch7x7x3
        )
        branch7x7x3 = ConvBNReLU(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(branch7x7x3)
        branch_pool = _max_pool_3x3(x, stride=2)
        return jnp.concatenate([branch3x3, branch7x7x3, branch_pool], axis=-1)


class InceptionE(nn.Module):
    """8 x 8 block (``Mixed_7b``, ``Mixed_7c``) with split 1x3 / 3x1 convolutions,
    ``[B, 8, 8, C] -> [B, 8, 8, 2048]``.

    Attributes:
      pool: ``"avg"`` (``Mixed_7b``: average over the pixels inside the image) or ``"max"``
        (``Mixed_7c``: the TF graph max-pools here).
    """

    pool: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch1x1 = ConvBNReLU(320, (1, 1), name="branch1x1")(x)
        branch3x3 = ConvBNReLU(384, (1, 1), name="branch3x3_1")(x)
        branch3x3 = jnp.concatenate(
            [
                ConvBNReLU(384, (1, 3), padding=_same(1, 3), name="branch3x3_2a")(branch3x3),
                ConvBNReLU(384, (3, 1), padding=_same(3, 1), name="branch3x3_2b")(branch3x3),
            ],
            axis=-1,
        )
        dbl = ConvBNReLU(448, (1, 1), name="branch3x3dbl_1")(x)
        dbl = ConvBNReLU(384, (3, 3), padding=_same(3, 3), name="branch3x3dbl_2")(dbl)
        dbl = jnp.concatenate(
            [
                ConvBNReLU(384, (1, 3), padding=_same(1, 3), name="branch3x3dbl_3a")(dbl),
                ConvBNReLU(384, (3, 1), padding=_same(3, 1), name="branch3x3dbl_3b")(dbl),
            ],
            axis=-1,
        )
        if self.pool == "avg":
            pooled = _avg_pool_3x3_inside(x)
        elif self.pool == "max":
            pooled = _max_pool_3x3(x, stride=1)
        else:
            raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}.")
        branch_pool = ConvBNReLU(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([branch1x1, branch3x3, dbl, branch_pool], axis=-1)


class FIDLogits(nn.Module):
    """The final 2048 -> 1008 linear layer, returning the logits without and with its bias.

    Variables: ``kernel`` ``[2048, 1008]``, ``bias`` ``[1008]``.
    """

    @nn.compact
    def __call__(self, pool3: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``[B, 2048]`` -> ``(logits_unbiased, logits)``, each ``[B, 1008]``."""
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (pool3.shape[-1], NUM_CLASSES)
        )
        bias = self.param("bias", nn.initializers.zeros, (NUM_CLASSES,))
        unbiased = jnp.matmul(pool3, kernel, precision=_PRECISION)
        return unbiased, unbiased + bias


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 (TF ``inception-2015-12-05``), inference only, NHWC: Szegedy et al.
    2016's architecture, the feature network of FID (Heusel et al. 2017).

    Submodules are named as pytorch-fid / torch-fidelity name them (``Conv2d_1a_3x3``,
    ``Mixed_5b/branch1x1/conv``, ..., ``fc``), so each variable has one PyTorch counterpart
    (:func:`inception_key_table`).
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        """Features of normalised images.

        Args:
          x: float32 ``[B, 299, 299, 3]`` in [-1, 1) (:func:`preprocess_inception_input`).

        Returns:
          ``{'pool3': [B, 2048], 'logits_unbiased': [B, 1008], 'logits': [B, 1008]}``,
          float32.
        """
        x = ConvBNReLU(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)  # 149 x 149
        x = ConvBNReLU(32, (3, 3), name="Conv2d_2a_3x3")(x)  # 147 x 147
        x = ConvBNReLU(64, (3, 3), padding=_same(3, 3), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3(x, stride=2)  # 73 x 73
        x = ConvBNReLU(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = ConvBNReLU(192, (3, 3), name="Conv2d_4a_3x3")(x)  # 71 x 71
        x = _max_pool_3x3(x, stride=2)  # 35 x 35
        x = InceptionA(pool_features=32, name="Mixed_5b")(x)  # 256
        x = InceptionA(pool_features=64, name="Mixed_5c")(x)  # 288
        x = InceptionA(pool_features=64, name="Mixed_5d")(x)  # 288
        x = InceptionB(name="Mixed_6a")(x)  # 17 x 17 x 768
        x = InceptionC(channels_7x7=128, name="Mixed_6b")(x)
        x = InceptionC(channels_7x7=160, name="Mixed_6c")(x)
        x = InceptionC(channels_7x7=160, name="Mixed_6d")(x)
        x = InceptionC(channels_7x7=192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)  # 8 x 8 x 1280
        x = InceptionE(pool="avg", name="Mixed_7b")(x)  # 2048
        x = InceptionE(pool="max", name="Mixed_7c")(x)  # 2048
        pool3 = jnp.mean(x, axis=(1, 2))
        logits_unbiased, logits = FIDLogits(name="fc")(pool3)
        return {"pool3": pool3, "logits_unbiased": logits_unbiased, "logits": logits}


# ------------------------------------------------------------------------- input protocol


def _tf1_sampling(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF 1.x's half-pixel-less bilinear sampling along one axis (align_corners=False).

    Output pixel i reads the input at ``c_i = i * s`` with ``s = in_size / out_size`` rounded
    to float32 and the product in float32, exactly as TF 1.x's ``resize_bilinear`` does:
    between ``lo_i = floor(c_i)`` and ``hi_i = min(lo_i + 1, in_size - 1)`` with weight
    ``frac_i = c_i - lo_i`` on ``hi_i``.

    Returns:
      ``(lo, hi, frac)``: int32, int32 and float32 arrays ``[out_size]``.
    """
    scale = np.float32(in_size / out_size)
    coords = np.arange(out_size, dtype=np.float32) * scale
    lo = np.floor(coords).astype(np.int32)
    hi = np.minimum(lo + 1, in_size - 1).astype(np.int32)
    return lo, hi, coords - lo.astype(np.float32)


def resize_bilinear_tf1(
    images: jax.Array, size: int | Sequence[int] = INCEPTION_INPUT_SIZE
) -> jax.Array:
    """TensorFlow 1.x bilinear resize (``tf.image.resize_bilinear``, align_corners=False).

    TF 1.x samples output pixel ``(i, j)`` at input coordinates ``(i * H / H', j * W / W')``,
    without the half-pixel offset of ``jax.image.resize`` or PIL, and clamps at the last row
    and column. With ``(y0, y1, fy)`` and ``(x0, x1, fx)`` from that rule::

        top    = a[y0, x0] + (a[y0, x1] - a[y0, x0]) * fx
        bottom = a[y1, x0] + (a[y1, x1] - a[y1, x0]) * fx
        out    = top + (bottom - top) * fy

    in float32, in this order (that of TF and torch-fidelity's
    ``interpolate_bilinear_2d_like_tensorflow1x``).

    Args:
      images: float ``[B, H, W, C]``.
      size: the output side ``S`` (square) or ``(H', W')``.

    Returns:
      ``[B, H', W', C]`` in the dtype of ``images``.
    """
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}.")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(f"resize_bilinear_tf1 takes float images, got dtype {images.dtype}.")
    sides = (size, size) if np.ndim(size) == 0 else tuple(size)
    if len(sides) != 2 or min(sides) < 1:
        raise ValueError(f"size must be a positive side or (height, width), got {size!r}.")
    out_h, out_w = (int(side) for side in sides)
    _, in_h, in_w, _ = images.shape
    y0, y1, fy = _tf1_sampling(in_h, out_h)
    x0, x1, fx = _tf1_sampling(in_w, out_w)
    fx = jnp.asarray(fx, images.dtype)[None, None, :, None]
    fy = jnp.asarray(fy, images.dtype)[None, :, None, None]
    # Interpolating along W once for every input row, then along H, gives the same values as
    # interpolating the two rows of each output pixel separately, in H * W' + H' * W' lerps
    # instead of 2 * H' * W': fewer whenever H < H' (upsampling, the usual case for FID).
    left = jnp.take(images, x0, axis=2)
    rows = left + (jnp.take(images, x1, axis=2) - left) * fx  # [B, H, W', C]
    top = jnp.take(rows, y0, axis=1)
    return top + (jnp.take(rows, y1, axis=1) - top) * fy


def _check_images(images: Any) -> None:
    """Raises unless ``images`` is uint8 ``[B, H, W, 1 or 3]`` (arrays or tracers)."""
    dtype = getattr(images, "dtype", None)
    shape = getattr(images, "shape", None)
    if dtype is None or shape is None:
        raise TypeError(f"images must be a uint8 array [B, H, W, 3], got {type(images).__name__}.")
    if np.dtype(dtype) != np.uint8:
        hint = (
            "quantize float images first, e.g. diffjax.images.to_uint8(x) for x in [-1, 1] "
            "(round(127.5 * (x + 1)))"
            if jnp.issubdtype(dtype, jnp.floating)
            else "clip to [0, 255] and cast with .astype(np.uint8)"
        )
        raise TypeError(
            f"The FID Inception network takes uint8 images (0..255), as TF, pytorch-fid and "
            f"torch-fidelity do; got dtype {np.dtype(dtype)}: {hint}."
        )
    if len(shape) != 4 or shape[-1] not in (1, 3) or min(shape[1:3], default=0) < 1:
        raise ValueError(
            f"images must be [B, H, W, 3] (RGB) or [B, H, W, 1] (grayscale) with H, W >= 1, "
            f"got shape {tuple(shape)}."
        )


@jax.jit
def _preprocess(images: jax.Array) -> jax.Array:
    if images.shape[-1] == 1:
        images = jnp.repeat(images, 3, axis=-1)
    x = resize_bilinear_tf1(images.astype(jnp.float32), INCEPTION_INPUT_SIZE)
    return (x - 128.0) / 128.0


def preprocess_inception_input(images: jax.Array) -> jax.Array:
    """The protocol's input steps: uint8 -> float32, TF1 resize to 299, ``(x - 128) / 128``.

    Args:
      images: uint8 ``[B, H, W, 3]``, or ``[B, H, W, 1]`` (repeated to three channels).

    Returns:
      float32 ``[B, 299, 299, 3]`` in [-1, 1).

    Raises:
      TypeError: ``images`` is not uint8 (the message says how to quantize floats).
      ValueError: ``images`` is not ``[B, H, W, 1 or 3]``.
    """
    _check_images(images)
    return _preprocess(images)


@jax.jit
def _network(variables: Any, x: jax.Array) -> dict[str, jax.Array]:
    return FIDInceptionV3().apply(variables, x)


def inception_features(variables: Any, images: jax.Array) -> dict[str, jax.Array]:
    """FID Inception-v3 features of uint8 images, following the TF protocol: the pool3
    features of FID (Heusel et al. 2017) and KID, the logits of the Inception Score (Salimans
    et al. 2016, Sec. 4).

    The input is checked before anything is traced. The resize and the network are compiled
    separately, so images of every size share one compiled network per batch size; the
    function may also be called inside a caller's ``jax.jit``.

    Args:
      variables: from :func:`load_inception` (``{'params': ..., 'batch_stats': ...}``).
      images: uint8 ``[B, H, W, 3]`` of any size, or grayscale ``[B, H, W, 1]`` (repeated to
        three channels).

    Returns:
      ``{'pool3': [B, 2048], 'logits_unbiased': [B, 1008], 'logits': [B, 1008]}``, float32.

    Raises:
      TypeError: ``images`` is not uint8; float images in [-1, 1] can be quantized with
        ``diffjax.images.to_uint8``.
      ValueError: ``images`` is not ``[B, H, W, 1 or 3]``.
    """
    return _network(variables, preprocess_inception_input(images))


# ---------------------------------------------------------------------------------- weights

# (collection, variable name, rank) -> (PyTorch parameter name, layout change).
_VARIABLE_TO_TORCH = {
    ("params", "kernel", 4): ("weight", conv_kernel),
    ("params", "kernel", 2): ("weight", linear_kernel),
    ("params", "scale", 1): ("weight", None),
    ("params", "bias", 1): ("bias", None),
    ("batch_stats", "mean", 1): ("running_mean", None),
    ("batch_stats", "var", 1): ("running_var", None),
}


@functools.lru_cache(maxsize=1)
def _variable_shapes() -> dict[str, Any]:
    dummy = jax.ShapeDtypeStruct((1, INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE, 3), jnp.float32)
    return jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), dummy)


def inception_key_table() -> list[KeyRule]:
    """One :class:`~diffjax.weights.KeyRule` per variable of :class:`FIDInceptionV3`.

    Derived from the module's variable shapes (``jax.eval_shape`` of ``init``, nothing is
    computed): ``('params', *modules, 'kernel')`` of a convolution comes from
    ``'<modules joined by .>.weight'`` through ``conv_kernel`` (``[O, I, kh, kw]`` ->
    ``[kh, kw, I, O]``), ``fc/kernel`` from ``fc.weight`` through ``linear_kernel``; BatchNorm
    ``scale``, ``bias``, ``mean`` and ``var`` from ``bn.weight``, ``bn.bias``,
    ``bn.running_mean`` and ``bn.running_var``.

    Returns:
      472 rules (five per convolution for its 94 ``ConvBNReLU`` blocks, plus ``fc.weight`` and
      ``fc.bias``), sorted by Flax path.
    """
    rules = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(_variable_shapes()):
        names = tuple(entry.key for entry in path)
        collection, modules, variable = names[0], names[1:-1], names[-1]
        torch_name, transform = _VARIABLE_TO_TORCH[(collection, variable, len(leaf.shape))]
        rule = KeyRule(".".join((*modules, torch_name)), names, tuple(leaf.shape))
        rules.append(rule if transform is None else rule._replace(transform=transform))
    return rules


def inception_variables_from_state_dict(
    state_dict: dict[str, np.ndarray], *, source: str = "the state dict"
) -> dict[str, Any]:
    """Flax variables of :class:`FIDInceptionV3` from a pytorch-fid / torch-fidelity state dict.

    Args:
      state_dict: ``{PyTorch name: array}`` in PyTorch layouts
        (:func:`~diffjax.weights.read_torch_state_dict`); the ``num_batches_tracked``
        counters of its BatchNorms are allowed and ignored.
      source: what the state dict is (a path), for error messages.

    Returns:
      ``{'params': ..., 'batch_stats': ...}`` of float32 device arrays.

    Raises:
      StateDictMismatchError: a key is missing or unexpected, or an array has the wrong shape;
        the message names them.
    """
    rules = inception_key_table()
    # torch.nn.BatchNorm2d saves a `num_batches_tracked` counter next to its statistics.
    batch_counters = {
        rule.torch_key.removesuffix("running_var") + "num_batches_tracked"
        for rule in rules
        if rule.torch_key.endswith(".running_var")
    }
    variables = apply_key_table(
        state_dict, rules, source=source, ignored=batch_counters.__contains__
    )
    return jax.tree.map(jnp.asarray, variables)


def load_inception(
    path: str | os.PathLike | None = None, *, download: bool = True
) -> dict[str, Any]:
    """The published FID Inception weights as Flax variables, verified by their checksum.

    Finds the file as :func:`~diffjax.weights.resolve_weights` does (``path``, then
    ``$DIFFJAX_INCEPTION_WEIGHTS``, the diffjax cache, torch's hub cache under either the
    pytorch-fid or the torch-fidelity name, then a download), checks its SHA-256 prefix
    ``6726825d`` and reads it without torch.

    Args:
      path: a local copy of ``pt_inception-2015-12-05-6726825d.pth``.
      download: whether to download the file when no copy is found.

    Returns:
      ``{'params': ..., 'batch_stats': ...}`` for :func:`inception_features`.

    Raises:
      WeightsUnavailableError: no copy and no download; the message names the URL, the
        checksum and where to put the file.
      WeightsChecksumError: the file found is not the published one.
    """
    weights_path = resolve_weights(INCEPTION_WEIGHTS, path, download=download)
    return inception_variables_from_state_dict(
        read_torch_state_dict(weights_path), source=weights_path
    )
