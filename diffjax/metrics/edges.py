"""Edge maps and how well a sample follows a spatial condition (ControlNet's agreement).

* :func:`sobel_magnitude`: the Sobel gradient magnitude, a 3x3 depthwise convolution
  (dm-pix has no edge filters);
* :func:`edge_map`: its thresholded map (any channel) of an image in [-1, 1], float {0, 1}
  ``[B, H, W, 1]``
  (the control image of the Fashion-MNIST edges dataset and the edges the agreement reads);
* :func:`edge_f1` and :func:`outline_iou`: agreement of two edge maps with a tolerance of a few
  pixels (the F-measure of edge detection benchmarks, Martin et al. 2004, "Learning to Detect
  Natural Image Boundaries", with a square instead of a matching tolerance; and the
  intersection over union of the thickened maps).

Every function takes and returns arrays and is jittable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["EDGE_THRESHOLD", "edge_f1", "edge_map", "outline_iou", "sobel_magnitude"]

EDGE_THRESHOLD = 0.25
"""The default threshold of :func:`edge_map` on the normalised Sobel magnitude (a step of a
quarter of the intensity range across a pixel)."""

_SOBEL_X = jnp.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4.0


def sobel_magnitude(images: jnp.ndarray) -> jnp.ndarray:
    """The Sobel gradient magnitude of each channel, as one depthwise convolution.

    ``|G| = sqrt(G_x^2 + G_y^2)`` with ``G_x = S * I``, ``G_y = S^T * I`` and ``S`` the Sobel
    kernel ``[1, 2, 1]^T [-1, 0, 1] / 4`` (normalised so that a unit step gives 1), the image
    extended by its border values (no edge at the border of a flat image).

    Args:
      images: ``[B, H, W, C]`` float.

    Returns:
      ``[B, H, W, C]`` float32 magnitudes.
    """
    images = jnp.asarray(images, jnp.float32)
    channels = images.shape[-1]
    # Kernel [3, 3, 1, 2C]: per input channel (feature_group_count=C) its x and y responses.
    pair = jnp.stack([_SOBEL_X, _SOBEL_X.T], axis=-1)[:, :, None, :]
    kernel = jnp.tile(pair, (1, 1, 1, channels))
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    gradients = jax.lax.conv_general_dilated(
        padded,
        kernel,
        window_strides=(1, 1),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )
    gx, gy = gradients[..., 0::2], gradients[..., 1::2]
    return jnp.sqrt(gx**2 + gy**2)


def edge_map(images: jnp.ndarray, threshold: float = EDGE_THRESHOLD) -> jnp.ndarray:
    """The edges of images in [-1, 1]: where any channel's Sobel magnitude exceeds a threshold.

    Args:
      images: ``[B, H, W, C]`` in [-1, 1].
      threshold: on the magnitude of the [0, 1] intensities (:func:`sobel_magnitude`).

    Returns:
      ``[B, H, W, 1]`` float32 in {0, 1}.
    """
    intensity = (jnp.asarray(images, jnp.float32) + 1) / 2
    strongest = jnp.max(sobel_magnitude(intensity), axis=-1, keepdims=True)
    return (strongest > threshold).astype(jnp.float32)


def _thicken(edges: jnp.ndarray, tolerance: int) -> jnp.ndarray:
    """Each edge pixel spread over the ``(2 tolerance + 1)`` square around it (a max pool)."""
    size = 2 * tolerance + 1
    return jax.lax.reduce_window(
        edges, -jnp.inf, jax.lax.max, (1, size, size, 1), (1, 1, 1, 1), "SAME"
    )


def _check_pair(predicted: jnp.ndarray, target: jnp.ndarray, tolerance: int) -> None:
    if predicted.shape != target.shape or predicted.ndim != 4:
        raise ValueError(
            f"edge maps must both be [B, H, W, C] of one shape, got {predicted.shape} and "
            f"{target.shape}."
        )
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}.")


def edge_f1(predicted: jnp.ndarray, target: jnp.ndarray, tolerance: int = 1) -> jnp.ndarray:
    """The F-measure of predicted edges against target edges, per image.

    Precision P: the fraction of predicted edge pixels within ``tolerance`` pixels (Chebyshev
    distance) of a target edge; recall R: the fraction of target edge pixels within
    ``tolerance`` of a predicted one; ``F1 = 2 P R / (P + R)`` (0 when both are 0; 1 for two
    empty maps).

    Args:
      predicted: ``[B, H, W, C]`` in {0, 1}.
      target: ``[B, H, W, C]`` in {0, 1}.
      tolerance: in pixels.

    Returns:
      ``[B]`` float32 in [0, 1].
    """
    _check_pair(predicted, target, tolerance)
    predicted, target = (jnp.asarray(a, jnp.float32) for a in (predicted, target))
    near_target, near_predicted = _thicken(target, tolerance), _thicken(predicted, tolerance)
    axes = (1, 2, 3)
    predicted_count, target_count = predicted.sum(axes), target.sum(axes)
    precision = (predicted * near_target).sum(axes) / jnp.maximum(predicted_count, 1)
    recall = (target * near_predicted).sum(axes) / jnp.maximum(target_count, 1)
    f1 = 2 * precision * recall / jnp.maximum(precision + recall, 1e-12)
    both_empty = (predicted_count == 0) & (target_count == 0)
    return jnp.where(both_empty, 1.0, f1)


def outline_iou(predicted: jnp.ndarray, target: jnp.ndarray, tolerance: int = 1) -> jnp.ndarray:
    """Intersection over union of two outlines thickened by ``tolerance`` pixels, per image.

    Args:
      predicted: ``[B, H, W, C]`` in {0, 1}.
      target: ``[B, H, W, C]`` in {0, 1}.
      tolerance: in pixels (each map is max-pooled over a ``2 tolerance + 1`` square).

    Returns:
      ``[B]`` float32 in [0, 1] (1 for two empty maps).
    """
    _check_pair(predicted, target, tolerance)
    thick_predicted = _thicken(jnp.asarray(predicted, jnp.float32), tolerance)
    thick_target = _thicken(jnp.asarray(target, jnp.float32), tolerance)
    axes = (1, 2, 3)
    intersection = (thick_predicted * thick_target).sum(axes)
    union = jnp.maximum(thick_predicted, thick_target).sum(axes)
    return jnp.where(union == 0, 1.0, intersection / jnp.maximum(union, 1))
