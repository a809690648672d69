"""Reconstruction metrics on diffjax's image convention (NHWC floats in [-1, 1]).

SSIM (Wang et al. 2004, "Image Quality Assessment: From Error Visibility to Structural
Similarity", eq. 13) and PSNR are dm-pix's implementations (``dm_pix.ssim`` with
``tf.image.ssim``'s defaults: an 11x11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03;
``dm_pix.psnr``); these wrappers only map [-1, 1] to dm-pix's [0, 1] range and check shapes.
LPIPS lives in :mod:`diffjax.metrics.lpips`.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["psnr", "ssim"]


def _to_unit_range(x: jnp.ndarray, y: jnp.ndarray, name: str) -> tuple[jnp.ndarray, jnp.ndarray]:
    for label, value in (("x", x), ("y", y)):
        if not hasattr(value, "dtype") or not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(
                f"{name}: {label} must be a float array in [-1, 1] (NHWC), got "
                f"{getattr(value, 'dtype', type(value).__name__)}."
            )
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"{name}: x and y must both be [B, H, W, C], got {x.shape} and {y.shape}.")
    return (x.astype(jnp.float32) + 1.0) / 2.0, (y.astype(jnp.float32) + 1.0) / 2.0


def ssim(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Structural similarity per image (Wang et al. 2004) through ``dm_pix.ssim``.

    Args:
      x: float ``[B, H, W, C]`` in [-1, 1]; H and W at least 11 (the window size).
      y: float ``[B, H, W, C]`` in [-1, 1]; H and W at least 11 (the window size).

    Returns:
      float32 ``[B]``, 1 for identical images.
    """
    x, y = _to_unit_range(x, y, "ssim")
    if min(x.shape[1:3]) < 11:
        raise ValueError(f"ssim needs images of at least 11x11 (its window), got {x.shape[1:3]}.")
    import dm_pix  # imports chex; loaded only when a metric is computed

    return dm_pix.ssim(x, y, max_val=1.0)


def psnr(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Peak signal-to-noise ratio per image in dB, -10 log10(MSE) on the [0, 1] scale, through
    ``dm_pix.psnr`` (the MSE-based measure SSIM is compared with, Wang et al. 2004, Sec. I).

    Args:
      x: float ``[B, H, W, C]`` in [-1, 1].
      y: float ``[B, H, W, C]`` in [-1, 1].

    Returns:
      float32 ``[B]`` (infinite for identical images).
    """
    x, y = _to_unit_range(x, y, "psnr")
    import dm_pix

    return dm_pix.psnr(x, y)
