"""A folder of the user's own PNG/JPEG images as a random-access source.

Two layouts are understood:

- flat: ``root/*.png`` (or ``.jpg``/``.jpeg``), unlabelled;
- class subfolders: ``root/<class_name>/**/*.png``, labelled ``0..K-1`` by the sorted class
  names (the torchvision ``ImageFolder`` convention).

Images are 8-bit and may have any size (the pipeline center-crops and resizes them). The
channel count is taken from the first image in sorted order: a grayscale first image (Pillow
modes ``1``, ``L``, ``LA``) makes every image grayscale ``[H, W, 1]``, anything else makes every
image RGB ``[H, W, 3]`` (alpha dropped, palettes expanded).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderSource"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_GRAYSCALE_MODES = frozenset({"1", "L", "LA"})


def _is_image(filename: str) -> bool:
    return filename.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(directory: str) -> list[str]:
    paths = []
    for parent, subdirs, filenames in os.walk(directory):
        subdirs.sort()  # os.walk visits subfolders in this list's order: make it deterministic
        paths.extend(os.path.join(parent, name) for name in sorted(filenames) if _is_image(name))
    return paths


class ImageFolderSource:
    """Random access to the images of a folder: ``source[i] -> {"image", ["label"]}``.

    ``image`` is uint8 ``[H, W, C]`` with ``C`` = :attr:`channels`; ``label`` (int, only with
    class subfolders) indexes :attr:`class_names`. Files are listed once, in a sorted,
    machine-independent order, so an index names the same image on every host.
    """

    def __init__(self, directory: str | os.PathLike):
        """Lists the images of ``directory``.

        Args:
          directory: the folder, flat or with one subfolder per class.

        Raises:
          ValueError: the folder does not exist, holds no PNG/JPEG image, or mixes images at
            its top level with class subfolders.
        """
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise ValueError(
                f"data dir {directory!r} for the 'folder' dataset is not a directory; expected a "
                f"folder of {'/'.join(IMAGE_EXTENSIONS)} images, optionally in class subfolders."
            )
        entries = sorted(os.listdir(directory))
        top_images = [name for name in entries if _is_image(name)]
        class_dirs = [
            name
            for name in entries
            if os.path.isdir(os.path.join(directory, name))
            and _images_under(os.path.join(directory, name))
        ]
        if top_images and class_dirs:
            raise ValueError(
                f"{directory!r} holds both images ({top_images[0]!r}, ...) and class "
                f"subfolders ({class_dirs}); use one layout: all images at the top level "
                f"(unlabelled) or all inside one subfolder per class."
            )
        if class_dirs:
            self.class_names: tuple[str, ...] | None = tuple(class_dirs)
            self._paths = []
            labels = []
            for label, name in enumerate(class_dirs):
                paths = _images_under(os.path.join(directory, name))
                self._paths.extend(paths)
                labels.extend([label] * len(paths))
            self._labels: np.ndarray | None = np.asarray(labels, dtype=np.int32)
        else:
            self.class_names = None
            self._paths = [os.path.join(directory, name) for name in top_images]
            self._labels = None
        if not self._paths:
            raise ValueError(
                f"{directory!r} holds no image with extension {IMAGE_EXTENSIONS} (case "
                f"ignored), neither at its top level nor in class subfolders."
            )
        self.directory = directory
        with Image.open(self._paths[0]) as first:
            self._mode = "L" if first.mode in _GRAYSCALE_MODES else "RGB"

    @property
    def channels(self) -> int:
        """C of every image: 1 (grayscale) or 3 (RGB)."""
        return 1 if self._mode == "L" else 3

    @property
    def num_classes(self) -> int | None:
        """Number of class subfolders, or None for a flat folder."""
        return None if self.class_names is None else len(self.class_names)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict[str, np.ndarray | int]:
        """Decodes image ``index``.

        Args:
          index: in ``[0, len(self))``.

        Returns:
          ``{"image": uint8 [H, W, C]}`` plus ``"label": int`` for class subfolders.
        """
        with Image.open(self._paths[index]) as image:
            pixels = np.asarray(image.convert(self._mode), dtype=np.uint8)
        example: dict[str, np.ndarray | int] = {"image": pixels.reshape(*pixels.shape[:2], -1)}
        if self._labels is not None:
            example["label"] = int(self._labels[index])
        return example

    def __repr__(self) -> str:
        return f"ImageFolderSource({self.directory!r}, num_images={len(self)})"
