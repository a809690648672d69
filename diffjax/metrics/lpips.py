"""LPIPS v0.1: the learned perceptual image patch similarity, on AlexNet or VGG16 features.

Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"
(arXiv:1801.03924, eq. 1), as the ``lpips`` package computes it (``lpips.LPIPS(net=...,
version='0.1')`` in eval mode, ``normalize=False``, ``spatial=False``). Both images go through
the convolutional stack of an ImageNet classifier; at each of its L = 5 taps the feature vector
z_l[h, w] is unit-normalised over channels, and the squared difference of the two images'
normalised features is weighted per channel, averaged over the tap's positions and summed
over taps:

    ŷ_l = z_l / (||z_l||_2 + 1e-10)                      (the norm over channels)
    d(x, y) = sum_l mean_{h, w} || w_l ⊙ (ŷ_l^x[h, w] - ŷ_l^y[h, w]) ||²

The published head weights are the per-channel coefficients of the squared difference, i.e.
``w_l ⊙ w_l`` in this notation: each head is a 1x1 convolution to one channel without bias,
and its weights are non-negative (lpips clamps them at zero while training). The heads'
dropout is inactive at evaluation and is left out. The 1e-10 is inside the denominator, as in
``lpips.normalize_tensor``, so an all-zero feature vector normalises to zero.

Before the network the images are moved by LPIPS's fixed scaling layer,
``(x - shift) / scale`` with ``shift = (-0.030, -0.088, -0.188)`` and ``scale = (0.458, 0.448,
0.450)`` per RGB channel (ImageNet's mean and standard deviation rewritten for inputs in
[-1, 1]). The taps are the ReLU outputs

- AlexNet: relu1 ... relu5, i.e. after each of the five convolutions (11x11 stride 4 pad 2,
  5x5 pad 2, then three 3x3 pad 1); 3x3 stride-2 max-pools follow relu1 and relu2;
- VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, the last ReLU of each of the five
  blocks of 3x3 pad-1 convolutions; a 2x2 stride-2 max-pool opens every block after the first;

with torchvision's layer semantics: symmetric zero padding, max-pools without padding that
drop a partial last window (``ceil_mode=False``). The final max-pool of each stack and the
classifier are not used.

Weights: the backbone is torchvision's ImageNet file, the heads lpips' v0.1 file; both are
read as published, verified by checksum (:func:`load_lpips`) and mapped by explicit key tables
(:func:`lpips_variables_from_state_dicts`). Arrays are NHWC. The convolutions run in float32
at full precision on every backend, because on TPU and GPU the default precision of a float32
convolution would use bfloat16 or TF32 passes and move the distance.

Usage::

    variables = load_lpips("alex")
    d = lpips_distance(variables, x, y, net="alex")  # x, y: [B, H, W, 3] in [-1, 1]; d: [B]

References:
  - Zhang, Isola, Efros, Shechtman, Wang 2018, arXiv:1801.03924;
    https://github.com/richzhang/PerceptualSimilarity (the ``lpips`` package).
  - Krizhevsky 2014, "One weird trick for parallelizing convolutional neural networks",
    arXiv:1404.5997 (torchvision's AlexNet).
  - Simonyan and Zisserman 2014, "Very Deep Convolutional Networks for Large-Scale Image
    Recognition", arXiv:1409.1556 (VGG16).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.weights import (
    KeyRule,
    WeightsFile,
    WeightsUnavailableError,
    apply_key_table,
    conv_kernel,
    read_torch_state_dict,
    resolve_weights,
)

__all__ = [
    "LPIPS",
    "LPIPS_NETS",
    "AlexNetFeatures",
    "LpipsWeightsFiles",
    "VGG16Features",
    "load_lpips",
    "lpips_distance",
    "lpips_min_image_size",
    "lpips_variable_shapes",
    "lpips_variables_from_state_dicts",
    "lpips_weights_files",
]

LPIPS_NETS = ("alex", "vgg")

# lpips' ScalingLayer: (x - shift) / scale per RGB channel.
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)
# lpips.normalize_tensor's eps, added to the channel norm.
_NORM_EPS = 1e-10
_PRECISION = jax.lax.Precision.HIGHEST


class _Conv(NamedTuple):
    """A convolution + ReLU of a backbone (torchvision ``nn.Conv2d`` arguments)."""

    name: str
    features: int
    kernel: int
    stride: int = 1
    padding: int = 1


class _Stage(NamedTuple):
    """The layers up to one LPIPS tap: an optional max-pool, then convolutions with ReLUs."""

    pool: tuple[int, int] | None  # (window, stride) of a max-pool before the convolutions
    convs: tuple[_Conv, ...]


_ALEXNET_STAGES = (
    _Stage(None, (_Conv("conv1", 64, 11, stride=4, padding=2),)),
    _Stage((3, 2), (_Conv("conv2", 192, 5, padding=2),)),
    _Stage((3, 2), (_Conv("conv3", 384, 3),)),
    _Stage(None, (_Conv("conv4", 256, 3),)),
    _Stage(None, (_Conv("conv5", 256, 3),)),
)


def _vgg_block(block: int, features: int, count: int) -> tuple[_Conv, ...]:
    return tuple(_Conv(f"conv{block}_{i}", features, 3) for i in range(1, count + 1))


_VGG16_STAGES = (
    _Stage(None, _vgg_block(1, 64, 2)),
    _Stage((2, 2), _vgg_block(2, 128, 2)),
    _Stage((2, 2), _vgg_block(3, 256, 3)),
    _Stage((2, 2), _vgg_block(4, 512, 3)),
    _Stage((2, 2), _vgg_block(5, 512, 3)),
)


def _torchvision_conv_indices(stages: tuple[_Stage, ...]) -> dict[str, int]:
    """Each convolution's index in torchvision's ``features`` (a ReLU follows every conv)."""
    indices, index = {}, 0
    for stage in stages:
        index += stage.pool is not None
        for conv in stage.convs:
            indices[conv.name] = index
            index += 2
    return indices


def _feature_stack(x: jax.Array, stages: tuple[_Stage, ...]) -> tuple[jax.Array, ...]:
    """Runs ``stages`` inside the calling compact module; returns the tap after each stage."""
    taps = []
    for stage in stages:
        if stage.pool is not None:
            window, stride = stage.pool
            # No padding, floor of the output size: torch's MaxPool2d with ceil_mode=False.
            x = nn.max_pool(x, (window, window), strides=(stride, stride), padding="VALID")
        for conv in stage.convs:
            x = nn.Conv(
                conv.features,
                (conv.kernel, conv.kernel),
                strides=(conv.stride, conv.stride),
                padding=((conv.padding, conv.padding), (conv.padding, conv.padding)),
                precision=_PRECISION,
                name=conv.name,
            )(x)
            x = nn.relu(x)
        taps.append(x)
    return tuple(taps)


class AlexNetFeatures(nn.Module):
    """torchvision's AlexNet ``features`` up to relu5, returning the five LPIPS taps (the
    single-tower AlexNet of Krizhevsky 2014, arXiv:1404.5997; Krizhevsky et al. 2012).

    Inference only. Parameters ``conv1`` ... ``conv5`` (``kernel`` [k, k, in, out], ``bias``).
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        """Runs the stack.

        Args:
          x: ``[B, H, W, 3]`` images after LPIPS's scaling layer, H, W >= 31.

        Returns:
          relu1 ... relu5, ``[B, H_l, W_l, C_l]`` with C = 64, 192, 384, 256, 256.
        """
        return _feature_stack(x, _ALEXNET_STAGES)


class VGG16Features(nn.Module):
    """torchvision's VGG16 ``features`` up to relu5_3, returning the five LPIPS taps (VGG's
    configuration D, Simonyan & Zisserman 2015, arXiv:1409.1556, Table 1).

    Inference only. Parameters ``conv1_1`` ... ``conv5_3`` (``kernel`` [3, 3, in, out], ``bias``).
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        """Runs the stack.

        Args:
          x: ``[B, H, W, 3]`` images after LPIPS's scaling layer, H, W >= 16.

        Returns:
          relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, ``[B, H_l, W_l, C_l]`` with
          C = 64, 128, 256, 512, 512 and H_l = floor(H / 2^l) for l = 0 ... 4.
        """
        return _feature_stack(x, _VGG16_STAGES)


class _Net(NamedTuple):
    backbone: type[nn.Module]
    stages: tuple[_Stage, ...]
    classifier_layers: tuple[int, ...]  # torchvision `classifier.<i>` Linear layers, unused
    backbone_file: WeightsFile
    heads_file: WeightsFile


_HEADS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1"

_NETS = {
    "alex": _Net(
        AlexNetFeatures,
        _ALEXNET_STAGES,
        (1, 4, 6),
        WeightsFile(
            description="torchvision AlexNet ImageNet (LPIPS backbone)",
            filename="alexnet-owt-7be5be79.pth",
            url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            sha256="7be5be79",
            env_var="DIFFJAX_LPIPS_ALEX_BACKBONE",
        ),
        WeightsFile(
            description="LPIPS v0.1 AlexNet linear heads",
            # Not the published `alex.pth`, which is too generic a name for a shared cache.
            filename="lpips-v0.1-alex.pth",
            url=f"{_HEADS_URL}/alex.pth",
            sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
            env_var="DIFFJAX_LPIPS_ALEX_HEADS",
        ),
    ),
    "vgg": _Net(
        VGG16Features,
        _VGG16_STAGES,
        (0, 3, 6),
        WeightsFile(
            description="torchvision VGG16 ImageNet (LPIPS backbone)",
            filename="vgg16-397923af.pth",
            url="https://download.pytorch.org/models/vgg16-397923af.pth",
            sha256="397923af",
            env_var="DIFFJAX_LPIPS_VGG_BACKBONE",
        ),
        WeightsFile(
            description="LPIPS v0.1 VGG16 linear heads",
            filename="lpips-v0.1-vgg.pth",
            url=f"{_HEADS_URL}/vgg.pth",
            sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
            env_var="DIFFJAX_LPIPS_VGG_HEADS",
        ),
    ),
}


def _net(net: Any) -> _Net:
    if not isinstance(net, str) or net not in _NETS:
        raise ValueError(f"LPIPS net must be one of {list(LPIPS_NETS)}, got {net!r}.")
    return _NETS[net]


def _scale(x: jax.Array) -> jax.Array:
    return (x - _SHIFT) / _SCALE


def _unit_normalise(z: jax.Array) -> jax.Array:
    """``z / (||z|| + eps)`` over the last axis, for ReLU outputs ``z >= 0``.

    The ``maximum(., 0)`` changes no value (z >= 0 and the factor is positive). It is there
    because XLA turns the division into a product with the reciprocal norm and fuses it into
    the subtraction of the two images' features, where the product would otherwise become a
    fused multiply-add that rounds one side and not the other: d(x, x) came out ~1e-15
    instead of 0, and d(x, y) and d(y, x) differed in the last bit.
    """
    return jnp.maximum(z / (jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True)) + _NORM_EPS), 0.0)


class LPIPS(nn.Module):
    """The LPIPS v0.1 distance (module docstring; Zhang et al. 2018, eq. 1), parameters
    ``features`` and ``lin0..lin4``.

    Attributes:
      net: ``'alex'`` or ``'vgg'``.
    """

    net: str = "alex"

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """Distances between matching images of two batches.

        Args:
          x: ``[B, H, W, 3]`` float32 RGB images in [-1, 1].
          y: the same shape as ``x``.

        Returns:
          ``[B]`` float32 distances.
        """
        features = _net(self.net).backbone(name="features")
        # The two images go through the network separately (not as one 2B batch), so that
        # d(x, x) = 0 and d(x, y) = d(y, x) hold exactly whatever the convolution's blocking.
        taps_x, taps_y = features(_scale(x)), features(_scale(y))
        distance = jnp.zeros(x.shape[0], jnp.float32)
        for k, (tap_x, tap_y) in enumerate(zip(taps_x, taps_y)):
            squared = (_unit_normalise(tap_x) - _unit_normalise(tap_y)) ** 2
            head = nn.Conv(1, (1, 1), use_bias=False, precision=_PRECISION, name=f"lin{k}")
            distance = distance + jnp.mean(head(squared), axis=(1, 2, 3))
        return distance


class LpipsWeightsFiles(NamedTuple):
    """The two published files of one LPIPS net."""

    backbone: WeightsFile
    heads: WeightsFile


def lpips_weights_files(net: str = "alex") -> LpipsWeightsFiles:
    """The published backbone and heads files of ``net`` (URL, checksum, environment variable)."""
    spec = _net(net)
    return LpipsWeightsFiles(spec.backbone_file, spec.heads_file)


def _backbone_key_table(spec: _Net) -> list[KeyRule]:
    rules = []
    in_channels = 3
    indices = _torchvision_conv_indices(spec.stages)
    for stage in spec.stages:
        for conv in stage.convs:
            prefix = f"features.{indices[conv.name]}"
            path = ("params", "features", conv.name)
            kernel_shape = (conv.kernel, conv.kernel, in_channels, conv.features)
            rules.append(KeyRule(f"{prefix}.weight", (*path, "kernel"), kernel_shape, conv_kernel))
            rules.append(KeyRule(f"{prefix}.bias", (*path, "bias"), (conv.features,)))
            in_channels = conv.features
    return rules


def _heads_key_table(spec: _Net) -> list[KeyRule]:
    # lpips' NetLinLayer is Sequential(Dropout, Conv2d): the convolution is `model.1`.
    return [
        KeyRule(
            f"lin{k}.model.1.weight",
            ("params", f"lin{k}", "kernel"),
            (1, 1, stage.convs[-1].features, 1),
            conv_kernel,
        )
        for k, stage in enumerate(spec.stages)
    ]


def _merge(backbone: dict[str, Any], heads: dict[str, Any]) -> dict[str, Any]:
    return {"params": {**backbone["params"], **heads["params"]}}


def _variables_from_state_dicts(
    backbone_state_dict: Mapping[str, np.ndarray],
    heads_state_dict: Mapping[str, np.ndarray],
    net: str,
    backbone_source: str,
    heads_source: str,
) -> dict[str, Any]:
    spec = _net(net)
    classifier = {
        f"classifier.{layer}.{name}"
        for layer in spec.classifier_layers
        for name in ("weight", "bias")
    }
    backbone = apply_key_table(
        backbone_state_dict,
        _backbone_key_table(spec),
        source=backbone_source,
        ignored=classifier.__contains__,
    )
    heads = apply_key_table(heads_state_dict, _heads_key_table(spec), source=heads_source)
    return jax.tree.map(jnp.asarray, _merge(backbone, heads))


def lpips_variables_from_state_dicts(
    backbone_state_dict: Mapping[str, np.ndarray],
    heads_state_dict: Mapping[str, np.ndarray],
    net: str = "alex",
) -> dict[str, Any]:
    """Flax variables of :class:`LPIPS` from the two PyTorch state dicts.

    Args:
      backbone_state_dict: torchvision's ``alexnet()`` / ``vgg16()`` state dict (``features.0
        .weight`` [out, in, k, k], ``features.0.bias`` [out], ...); its ``classifier.*``
        layers are allowed and ignored.
      heads_state_dict: lpips v0.1's heads, ``lin0.model.1.weight`` ... ``lin4.model.1.weight``,
        each [1, C_l, 1, 1].
      net: ``'alex'`` or ``'vgg'``.

    Returns:
      ``{'params': {'features': {...}, 'lin0': {'kernel'}, ...}}``, float32 JAX arrays.

    Raises:
      ValueError: an unknown ``net``.
      StateDictMismatchError: a missing, unexpected or mis-shaped key (all are named).
    """
    return _variables_from_state_dicts(
        backbone_state_dict,
        heads_state_dict,
        net,
        f"the LPIPS {net!r} backbone state dict",
        f"the LPIPS {net!r} heads state dict",
    )


def load_lpips(
    net: str = "alex",
    *,
    backbone_path: str | os.PathLike | None = None,
    heads_path: str | os.PathLike | None = None,
    download: bool = True,
) -> dict[str, Any]:
    """Finds, verifies and loads the published weights of an LPIPS net.

    Each file is looked for as :func:`diffjax.weights.resolve_weights` describes: the explicit
    path, then its environment variable (``DIFFJAX_LPIPS_ALEX_BACKBONE``,
    ``DIFFJAX_LPIPS_ALEX_HEADS``, ``DIFFJAX_LPIPS_VGG_*``), the diffjax weights cache, PyTorch's
    hub cache (where torchvision keeps its backbones), then a download;
    :func:`lpips_weights_files` names the files.

    Args:
      net: ``'alex'`` or ``'vgg'``.
      backbone_path: a local copy of torchvision's ImageNet file.
      heads_path: a local copy of lpips' v0.1 heads file.
      download: whether a file that is not on this machine may be downloaded.

    Returns:
      The variables for :func:`lpips_distance` (see :func:`lpips_variables_from_state_dicts`).

    Raises:
      WeightsUnavailableError: a file is absent and cannot be downloaded; one error names every
        absent file with its URL, checksum and where to put it.
      WeightsChecksumError: a file is not the published one.
    """
    spec = _net(net)
    paths, absent = [], []
    for weights_file, path in ((spec.backbone_file, backbone_path), (spec.heads_file, heads_path)):
        try:
            paths.append(resolve_weights(weights_file, path, download=download))
        except WeightsUnavailableError as error:
            absent.append(str(error))
    if absent:
        raise WeightsUnavailableError(" ".join(absent))
    backbone, heads = paths
    return _variables_from_state_dicts(
        read_torch_state_dict(backbone), read_torch_state_dict(heads), net, backbone, heads
    )


def _min_image_size(stages: tuple[_Stage, ...]) -> int:
    """The smallest side for which every tap has at least one position."""

    def last_tap_size(size: int) -> int:
        for stage in stages:
            if stage.pool is not None:
                window, stride = stage.pool
                if size < window:
                    return 0
                size = (size - window) // stride + 1
            for conv in stage.convs:
                size = (size + 2 * conv.padding - conv.kernel) // conv.stride + 1
                if size < 1:
                    return 0
        return size

    return next(size for size in range(1, 1024) if last_tap_size(size) >= 1)


@functools.cache
def _min_size(net: str) -> int:
    return _min_image_size(_NETS[net].stages)


def lpips_min_image_size(net: str) -> int:
    """The smallest image side LPIPS ``net`` takes (``'alex'``: 31, ``'vgg'``: 16).

    Raises:
      ValueError: an unknown net.
    """
    _net(net)
    return _min_size(net)


def lpips_variable_shapes(net: str) -> dict[str, Any]:
    """The variables of LPIPS ``net`` as a nested dict of float32 ``jax.ShapeDtypeStruct``
    (what :func:`load_lpips` returns, without reading a file)."""
    tree: dict[str, Any] = {}
    _net(net)
    for path, shape in _expected_shapes(net).items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jax.ShapeDtypeStruct(shape, jnp.float32)
    return tree


def _check_images(name: str, images: Any, net: str) -> None:
    shape, dtype = getattr(images, "shape", None), getattr(images, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"{name} must be an array [B, H, W, 3], got {type(images).__name__}.")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a float array in [-1, 1], got dtype {dtype}; convert uint8 images "
            f"with images / 127.5 - 1."
        )
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise ValueError(
            f"{name} must be [B, H, W, 3] RGB or [B, H, W, 1] grayscale, got shape {tuple(shape)}."
        )
    least = _min_size(net)
    if min(shape[1:3]) < least:
        raise ValueError(
            f"{name} is {shape[1]}x{shape[2]}, too small for LPIPS {net!r}: both sides must be at "
            f"least {least} pixels so that every tap has a position."
        )


def _leaf_shapes(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], tuple]:
    if isinstance(tree, Mapping):
        shapes = {}
        for key, value in tree.items():
            shapes.update(_leaf_shapes(value, (*prefix, str(key))))
        return shapes
    return {prefix: tuple(np.shape(tree))}


@functools.cache
def _expected_shapes(net: str) -> dict[tuple[str, ...], tuple]:
    spec = _NETS[net]
    rules = _backbone_key_table(spec) + _heads_key_table(spec)
    return {rule.flax_path: rule.shape for rule in rules}


def _check_variables(variables: Any, net: str) -> None:
    expected = _expected_shapes(net)
    found = _leaf_shapes(variables) if isinstance(variables, Mapping) else {}
    missing = sorted("/".join(path) for path in expected.keys() - found.keys())
    unexpected = sorted("/".join(path) for path in found.keys() - expected.keys())
    wrong = sorted(
        f"{'/'.join(path)} {found[path]} (expected {shape})"
        for path, shape in expected.items()
        if path in found and found[path] != shape
    )
    if missing or unexpected or wrong:
        found_problems = (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        problems = [f"{label}: {items[:3]}" for label, items in found_problems if items]
        raise ValueError(
            f"variables are not LPIPS {net!r} variables ({'; '.join(problems)}); make them with "
            f"load_lpips({net!r}) or lpips_variables_from_state_dicts(..., net={net!r})."
        )


@functools.partial(jax.jit, static_argnames="net")
def _distance(variables: Any, x: jax.Array, y: jax.Array, net: str) -> jax.Array:
    x, y = (jnp.broadcast_to(v, (*v.shape[:3], 3)).astype(jnp.float32) for v in (x, y))
    return LPIPS(net).apply(variables, x, y)


def lpips_distance(variables: Any, x: Any, y: Any, *, net: str = "alex") -> jax.Array:
    """LPIPS v0.1 distances between two batches of images (module docstring; Zhang et al.
    2018, eq. 1).

    Matches ``lpips.LPIPS(net=net)(x, y, normalize=False)`` in PyTorch, with images NHWC
    instead of NCHW. Computed in float32. Can be called inside ``jax.jit`` (``net`` static) and
    differentiated with respect to the images.

    Args:
      variables: from :func:`load_lpips` or :func:`lpips_variables_from_state_dicts` for ``net``.
      x: ``[B, H, W, 3]`` float RGB images in [-1, 1]; ``[B, H, W, 1]`` grayscale is repeated
        to three channels (as a gray image saved as RGB would be). H, W >= 31 for AlexNet and
        >= 16 for VGG16.
      y: the same shape as ``x``.
      net: ``'alex'`` or ``'vgg'``.

    Returns:
      ``[B]`` float32 distances, 0 for identical images, symmetric in ``x`` and ``y``.

    Raises:
      ValueError: an unknown ``net``, a wrong or mismatched shape, or variables of another net.
      TypeError: a non-float dtype (e.g. uint8 images) or a non-array argument.
    """
    _net(net)
    _check_images("x", x, net)
    _check_images("y", y, net)
    if tuple(x.shape) != tuple(y.shape):
        raise ValueError(
            f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    _check_variables(variables, net)
    return _distance(variables, x, y, net)
