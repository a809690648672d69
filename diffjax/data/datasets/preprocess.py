"""Per-image preprocessing on the host, in NumPy and Pillow.

The model sees images in [-1, 1] (Ho et al. 2020, Sec. 3.3: "data consisting of integers in
{0, 1, ..., 255} scaled linearly to [-1, 1]"), square, at the configured resolution.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["center_crop_resize", "flip_left_right_where", "to_model_range"]


def center_crop_resize(image: np.ndarray, image_size: int) -> np.ndarray:
    """Crops the central square of an image and resizes it to ``image_size``.

    The square side is ``min(H, W)``, so no content is stretched. Resizing uses Pillow's
    bicubic filter, which widens its kernel when shrinking (antialiased, as in the ADM data
    pipeline of Dhariwal & Nichol 2021). An image already ``image_size`` square is returned
    unchanged.

    Args:
      image: uint8 ``[H, W, C]``.
      image_size: side S of the output.

    Returns:
      uint8 ``[S, S, C]``.
    """
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top : top + side, left : left + side]
    if side == image_size:
        return square
    num_channels = square.shape[-1]
    # Pillow resamples channels independently: one "RGB" image gives the same pixels as three
    # "L" images, ~1.7x faster. Any other C is resized one "L" plane per channel.
    if num_channels == 3:
        planes = [square]
    else:
        planes = [square[..., c] for c in range(num_channels)]
    resized = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(plane)).resize(
                (image_size, image_size), Image.Resampling.BICUBIC
            )
        ).reshape(image_size, image_size, -1)
        for plane in planes
    ]
    return np.concatenate(resized, axis=-1)


def flip_left_right_where(images: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Mirrors the images of a batch left-right where ``flips`` is True.

    Args:
      images: ``[B, H, W, C]``.
      flips: bool ``[B]``; the pipeline draws them from a generator seeded by the batch's
        index, so the decisions do not depend on which thread or host reads the batch.

    Returns:
      ``[B, H, W, C]``, a new array: image i mirrored where ``flips[i]``.
    """
    return np.where(np.asarray(flips)[:, None, None, None], images[:, :, ::-1], images)


def to_model_range(images: np.ndarray) -> np.ndarray:
    """Maps uint8 pixels {0, ..., 255} linearly onto [-1, 1]: x / 127.5 - 1.

    Args:
      images: uint8 of any shape, e.g. ``[B, H, W, C]``.

    Returns:
      float32 of the same shape; 0 -> -1.0 and 255 -> 1.0 exactly.
    """
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
