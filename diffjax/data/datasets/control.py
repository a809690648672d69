"""Offline datasets of images with a control image (ControlNet's training data).

Both are in-memory array datasets (:func:`diffjax.data.pipeline.register_dataset`) whose
batches hold ``cond['control']``, float ``[B, S, S, 1]`` in {0, 1}:

* ``'circles'``: procedurally drawn, in the spirit of ControlNet's fill50k (Zhang et al.
  2023, arXiv:2302.05543, the "fill50k" tutorial data): a filled circle of one random colour on
  a background of another, RGB in [-1, 1]; the control is the circle's outline, a ring of
  pixels within 0.7 pixel of the circle. Splits ``'train'`` (20,000) and ``'test'`` (2,000),
  each a fixed function of its seed; any ``image_size >= 16``.
* ``'fashion_mnist_edges'``: Fashion-MNIST (28x28, with its labels) and the Sobel edge map of
  each image (:func:`diffjax.metrics.edges.edge_map`, a depthwise convolution), read from the
  original IDX files (``$DIFFJAX_FASHION_MNIST_DIR`` or ``/usr/share/datasets/fashion-mnist``:
  ``apt-get install dataset-fashion-mnist``). Splits ``'train'`` and ``'test'``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from diffjax.data.datasets import DatasetUnavailableError

__all__ = ["CIRCLES_SIZES", "draw_circles", "load_circles", "load_fashion_mnist_edges"]

CIRCLES_SIZES = {"train": 20_000, "test": 2_000}
"""Examples per split of ``'circles'``."""

_CIRCLES_SEEDS = {"train": 0, "test": 1}
_RING_HALF_WIDTH = 0.7
_EDGES_CHUNK = 10_000


def _check_split(name: str, split: str, splits: Any) -> None:
    if split not in splits:
        raise ValueError(
            f"the {name!r} dataset has the splits {sorted(splits)} (no sub-split syntax); got "
            f"split={split!r}."
        )


def draw_circles(
    rng: np.random.Generator, count: int, image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draws filled circles and their outlines.

    Args:
      rng: the generator (its state advances).
      count: number of examples.
      image_size: side S in pixels.

    Returns:
      ``(images, outlines)``: float32 ``[count, S, S, 3]`` in [-1, 1] (a circle of radius in
      [0.15 S, 0.35 S] filled with one uniform colour on a background of another, centred
      where it fits) and float32 ``[count, S, S, 1]`` in {0, 1} (the pixels whose centre is
      within 0.7 pixel of the circle).
    """
    radius = rng.uniform(0.15, 0.35, count) * image_size
    centre = rng.uniform(radius[:, None], image_size - radius[:, None], (count, 2))
    fill, background = rng.uniform(-1, 1, (2, count, 1, 1, 3)).astype(np.float32)
    coordinates = np.arange(image_size, dtype=np.float32) + 0.5
    rows = coordinates[None, :, None] - centre[:, 0, None, None]
    columns = coordinates[None, None, :] - centre[:, 1, None, None]
    distance = np.sqrt(rows**2 + columns**2)[..., None]
    images = np.where(distance < radius[:, None, None, None], fill, background)
    outlines = np.abs(distance - radius[:, None, None, None]) < _RING_HALF_WIDTH
    return images.astype(np.float32), outlines.astype(np.float32)


@functools.lru_cache(maxsize=4)
def load_circles(split: str, image_size: int) -> tuple[dict[str, Any], None]:
    """The ``'circles'`` split at ``image_size`` (a registered dataset's loader).

    Returns:
      ``({'image': [N, S, S, 3], 'cond': {'control': [N, S, S, 1]}}, None)`` (no labels).

    Raises:
      ValueError: an unknown split or a side below 16.
    """
    _check_split("circles", split, CIRCLES_SIZES)
    if image_size < 16:
        raise ValueError(f"the 'circles' dataset needs image_size >= 16, got {image_size}.")
    rng = np.random.default_rng(_CIRCLES_SEEDS[split])
    images, outlines = draw_circles(rng, CIRCLES_SIZES[split], image_size)
    return {"image": images, "cond": {"control": outlines}}, None


@functools.lru_cache(maxsize=2)
def load_fashion_mnist_edges(split: str, image_size: int) -> tuple[dict[str, Any], int]:
    """The ``'fashion_mnist_edges'`` split (a registered dataset's loader).

    Returns:
      ``({'image': [N, 28, 28, 1] in [-1, 1], 'cond': {'label': int32 [N], 'control':
      [N, 28, 28, 1]}}, 10)``.

    Raises:
      ValueError: an unknown split or a size other than 28.
      DatasetUnavailableError: the IDX files are not installed.
    """
    import jax

    from diffjax.data.datasets.fashion_mnist import (
        APT_INSTALL_COMMAND,
        DEFAULT_IDX_DIR,
        IDX_DIR_ENV,
        find_idx_files,
        read_idx,
    )
    from diffjax.metrics.edges import edge_map

    _check_split("fashion_mnist_edges", split, ("train", "test"))
    if image_size != 28:
        raise ValueError(
            f"the 'fashion_mnist_edges' dataset has 28x28 images; got image_size={image_size}."
        )
    folder = os.environ.get(IDX_DIR_ENV) or DEFAULT_IDX_DIR
    paths = find_idx_files(folder)
    if paths is None:
        raise DatasetUnavailableError(
            f"'fashion_mnist_edges' reads Fashion-MNIST's IDX files from {folder} (set "
            f"${IDX_DIR_ENV} to another folder), which lacks them: {APT_INSTALL_COMMAND}."
        )
    raw = read_idx(paths[f"{split}_images"])[..., None]
    labels = read_idx(paths[f"{split}_labels"]).astype(np.int32)
    images = raw.astype(np.float32) / 127.5 - 1.0
    edges = jax.jit(edge_map)
    controls = np.concatenate(
        [
            np.asarray(edges(images[i : i + _EDGES_CHUNK]))
            for i in range(0, len(images), _EDGES_CHUNK)
        ]
    )
    return {"image": images, "cond": {"label": labels, "control": controls}}, 10
