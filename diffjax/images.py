"""Image files for people to look at: sample grids (Pillow) and the loss curve (matplotlib).

Every file is written to a temporary name in the same folder and then renamed over the target
(``os.replace``), so a process killed while writing never leaves a half-written PNG behind. The
file gets the permissions of a plain ``open`` (0666 minus the umask), not ``mkstemp``'s 0600.
Pillow and matplotlib are imported inside the functions that use them; importing this module
costs nothing.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Callable, Sequence

import numpy as np

# The process's umask, read once at import (reading it means setting it, which is not
# thread-safe later): atomic writes give their files the permissions a plain open() would.
_UMASK = os.umask(0o022)
os.umask(_UMASK)

__all__ = [
    "atomic_write",
    "make_grid",
    "save_image_grid",
    "save_loss_curve",
    "to_uint8",
]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> str:
    """Writes a file through ``write(temporary_path)`` and renames it onto ``path``.

    The rename is atomic on POSIX file systems, so readers (and a resumed run) see either the
    old file or the complete new one, never a truncated one.

    Args:
      path: the destination file.
      write: called with a temporary path in the destination folder; must create that file.

    Returns:
      ``path`` as a string.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    handle, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(handle)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    return path


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Maps model-space images in [-1, 1] to displayable bytes: round(127.5 * (x + 1)).

    Values outside [-1, 1] (samplers without x0 clipping overshoot) are clipped; NaN becomes 0.

    Args:
      images: float ``[..., H, W, C]`` in [-1, 1].

    Returns:
      uint8 array of the same shape.
    """
    images = np.nan_to_num(np.asarray(images, dtype=np.float32), nan=-1.0)
    return np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def make_grid(images: np.ndarray, num_rows: int | None = None, padding: int = 2) -> np.ndarray:
    """Tiles a batch of images into one picture, row by row, with a white border.

    Args:
      images: ``[B, H, W, C]`` with C in {1, 3}, float in [-1, 1] or uint8.
      num_rows: rows of the grid; default ``round(sqrt(B))`` (so 64 images give 8 x 8).
      padding: pixels of white between and around the tiles, >= 0.

    Returns:
      uint8 ``[rows * (H + padding) + padding, cols * (W + padding) + padding, C]``; empty
      cells (when B is not rows * cols) stay white.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] < 1:
        raise ValueError(
            f"images must be [B, H, W, C] with B >= 1 and C in (1, 3), got shape {images.shape}."
        )
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}.")
    if images.dtype != np.uint8:
        images = to_uint8(images)
    batch, height, width, channels = images.shape
    if num_rows is None:
        num_rows = max(1, round(math.sqrt(batch)))
    if not 1 <= num_rows <= batch:
        raise ValueError(f"num_rows must lie in [1, {batch}] for {batch} images, got {num_rows}.")
    num_cols = math.ceil(batch / num_rows)
    grid = np.full(
        (num_rows * (height + padding) + padding, num_cols * (width + padding) + padding, channels),
        255,
        dtype=np.uint8,
    )
    for index in range(batch):
        row, col = divmod(index, num_cols)
        top = padding + row * (height + padding)
        left = padding + col * (width + padding)
        grid[top : top + height, left : left + width] = images[index]
    return grid


def save_image_grid(
    images: np.ndarray,
    path: str | os.PathLike,
    num_rows: int | None = None,
    padding: int = 2,
    scale: int = 1,
) -> str:
    """Saves :func:`make_grid` of ``images`` as a PNG, atomically.

    Args:
      images: ``[B, H, W, C]``, float in [-1, 1] or uint8.
      path: the ``.png`` file to write (folders are created).
      num_rows: grid rows; default ``round(sqrt(B))``.
      padding: border pixels between tiles.
      scale: integer nearest-neighbour upscaling, so that 28x28 tiles are visible.

    Returns:
      ``path`` as a string.
    """
    from PIL import Image  # Pillow is needed only when a picture is written.

    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an int >= 1, got {scale!r}.")
    grid = make_grid(images, num_rows=num_rows, padding=padding)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    return atomic_write(path, lambda tmp_path: picture.save(tmp_path, format="PNG"))


def save_loss_curve(
    steps: Sequence[int],
    losses: Sequence[float],
    path: str | os.PathLike,
    smoothed: Sequence[float] | None = None,
    title: str = "training loss",
    held_out: tuple[Sequence[int], Sequence[float]] | None = None,
) -> str:
    """Plots the loss against the step (log-scaled loss axis) into a PNG, atomically.

    Uses matplotlib's object API with the Agg canvas, never ``pyplot``, so it neither needs a
    display nor changes the backend of a notebook that imports diffjax.

    Args:
      steps: the x values, one per logged interval.
      losses: the mean loss of each interval.
      path: the ``.png`` file to write.
      smoothed: an optional smoothed curve (e.g. the EMA of the loss) drawn on top.
      title: the plot title.
      held_out: optional ``(steps, losses)`` of the held-out loss, drawn as points.

    Returns:
      ``path`` as a string.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(steps) != len(losses) or (smoothed is not None and len(smoothed) != len(steps)):
        raise ValueError(
            f"steps, losses and smoothed must have equal lengths, got {len(steps)}, "
            f"{len(losses)} and {None if smoothed is None else len(smoothed)}."
        )
    figure = Figure(figsize=(6.0, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(
        steps,
        losses,
        color="tab:blue",
        alpha=0.4 if smoothed is not None else 1.0,
        linewidth=1.0,
        label="training loss (mean of each logging interval)",
    )
    if smoothed is not None:
        axes.plot(
            steps,
            smoothed,
            color="tab:blue",
            linewidth=2.0,
            label="training loss, smoothed (EMA over ~100 steps)",
        )
    if held_out is not None and len(held_out[0]):
        axes.plot(
            *held_out,
            color="tab:orange",
            marker="o",
            linestyle="--",
            label="held-out loss of the EMA weights",
        )
    if smoothed is not None or held_out is not None:
        axes.legend(fontsize=8)
    if len(losses) and min(losses) > 0:
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    return atomic_write(path, lambda tmp_path: figure.savefig(tmp_path, format="png"))
