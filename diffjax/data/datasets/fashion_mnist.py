"""Fashion-MNIST, prepared offline by a TFDS builder of the project's own.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747): 70,000 grayscale 28x28 images
of clothing in 10 classes, 60,000 for ``train`` and 10,000 for ``test``.

TFDS's stock ``fashion_mnist`` builder cannot be used here: preparing it needs TensorFlow (its
``Image`` feature encodes PNGs with TF) and its registered checksums reject the Debian copies of
the files (same data, different gzip headers). :class:`FashionMnistIdx` reads the four original
IDX files with NumPy, stores images as ``uint8`` tensors in ArrayRecord files, and so prepares and
reads without TensorFlow while going through TFDS's own machinery (splits, sub-split syntax such
as ``"test[:2000]"``, ``as_data_source``).

The IDX files are taken, in order, from the ``idx_dir`` argument, ``$DIFFJAX_FASHION_MNIST_DIR``,
or ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``); when none
has them they are downloaded from Zalando's repository, after a short reachability probe so an
offline machine fails in seconds instead of TFDS's minutes of retries.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import socket
import struct
import time

import numpy as np
import tensorflow_datasets as tfds

from diffjax.data.datasets import DatasetUnavailableError
from diffjax.training.console import log

__all__ = [
    "APT_INSTALL_COMMAND",
    "CLASS_NAMES",
    "DEFAULT_IDX_DIR",
    "DOWNLOAD_URL",
    "IDX_DIR_ENV",
    "IDX_FILES",
    "FashionMnistIdx",
    "find_idx_files",
    "prepare_fashion_mnist",
    "read_idx",
]

DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"
IDX_DIR_ENV = "DIFFJAX_FASHION_MNIST_DIR"
APT_INSTALL_COMMAND = "sudo apt-get install dataset-fashion-mnist"
DOWNLOAD_URL = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
)
_DOWNLOAD_HOST = "raw.githubusercontent.com"
_PROBE_TIMEOUT_S = 3.0

# The four files of the original release, keyed by their role in `_split_generators`.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IMAGE_SHAPE = (28, 28, 1)
# IDX magic numbers: two zero bytes, the element type (0x08 = uint8), the number of dimensions.
_IDX_UINT8_TYPE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"

_CITATION = """\
@article{xiao2017fashionmnist,
  author  = {Han Xiao and Kashif Rasul and Roland Vollgraf},
  title   = {Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms},
  journal = {arXiv preprint arXiv:1708.07747},
  year    = {2017},
}"""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (gzip-compressed or not) into a NumPy array.

    The IDX format (LeCun et al., the MNIST distribution format): a big-endian header of two zero
    bytes, an element-type byte, a dimension count, then one uint32 size per dimension, followed
    by the raw elements in C order.

    Args:
      path: an ``*-idx1-ubyte`` (labels) or ``*-idx3-ubyte`` (images) file, gzip-compressed
        or not (recognised by its content).

    Returns:
      uint8 array: ``[N]`` for a label file, ``[N, 28, 28]`` for an image file.

    Raises:
      ValueError: the file is not a uint8 IDX file or is truncated.
    """
    with open(path, "rb") as f:
        data = f.read()
    # Decide by content, not name: TFDS's download cache renames the files it fetches.
    if data[:2] == _GZIP_MAGIC:
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UINT8_TYPE:
        raise ValueError(
            f"{path} is not a uint8 IDX file: its header is {data[:4]!r}, expected "
            f"b'\\x00\\x00\\x08' followed by the number of dimensions."
        )
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(shape)):
        raise ValueError(
            f"{path} holds {payload.size} bytes of data, but its header announces shape {shape} "
            f"({int(np.prod(shape))} bytes): the file is truncated or corrupt."
        )
    return payload.reshape(shape)


def find_idx_files(idx_dir: str | os.PathLike | None) -> dict[str, str] | None:
    """Returns the paths of the four IDX files in ``idx_dir``, or None if any is missing.

    Args:
      idx_dir: a folder that may hold the files named in :data:`IDX_FILES`; None means "no
        folder", giving None.

    Returns:
      ``{role: path}`` for every role of :data:`IDX_FILES`, or None.
    """
    if idx_dir is None:
        return None
    paths = {role: os.path.join(idx_dir, name) for role, name in IDX_FILES.items()}
    if all(os.path.isfile(path) for path in paths.values()):
        return paths
    return None


class FashionMnistIdx(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder for Fashion-MNIST from the original IDX files, without TensorFlow.

    Features: ``image`` uint8 ``[28, 28, 1]`` and ``label`` (10 classes). Splits: ``train``
    (60,000) and ``test`` (10,000). Prepare with
    ``download_and_prepare(file_format="array_record")`` and read with ``as_data_source``.
    Not registered with TFDS, so the stock ``fashion_mnist`` name stays untouched; it is
    stored under ``<data_dir>/diffjax_fashion_mnist/``.
    """

    name = "diffjax_fashion_mnist"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Original IDX files decoded with NumPy; images as uint8 tensors."}

    def __init__(self, *, idx_dir: str | os.PathLike | None = None, **kwargs):
        """Creates the builder.

        Args:
          idx_dir: folder holding the four IDX files; None downloads them from
            :data:`DOWNLOAD_URL` when the dataset is prepared.
          **kwargs: passed to ``tfds.core.GeneratorBasedBuilder`` (``data_dir``,
            ``file_format``, ...).
        """
        self._idx_dir = idx_dir
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # `DatasetInfo(builder=self)`: `dataset_info_from_configs` only works for builders that
        # live inside the TFDS package.
        return tfds.core.DatasetInfo(
            builder=self,
            description="Fashion-MNIST: 28x28 grayscale images of 10 clothing classes.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=_IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        paths = find_idx_files(self._idx_dir)
        if paths is None:
            paths = dl_manager.download(
                {role: DOWNLOAD_URL + name for role, name in IDX_FILES.items()}
            )
        return {
            "train": self._generate_examples(paths["train_images"], paths["train_labels"]),
            "test": self._generate_examples(paths["test_images"], paths["test_labels"]),
        }

    def _generate_examples(self, images_path, labels_path):
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if images.ndim != 3 or images.shape[1:] != _IMAGE_SHAPE[:2] or labels.ndim != 1:
            raise ValueError(
                f"Expected images [N, 28, 28] and labels [N], got {images.shape} from "
                f"{images_path} and {labels.shape} from {labels_path}."
            )
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                f"{labels.shape[0]} labels."
            )
        for index in range(images.shape[0]):
            yield index, {"image": images[index, :, :, None], "label": int(labels[index])}


def _host_reachable(host: str, port: int = 443, timeout_s: float = _PROBE_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _resolve_idx_dir(idx_dir: str | os.PathLike | None) -> str:
    if idx_dir is not None:
        return os.fspath(idx_dir)
    return os.environ.get(IDX_DIR_ENV) or DEFAULT_IDX_DIR


def prepare_fashion_mnist(
    *,
    data_dir: str | os.PathLike | None = None,
    idx_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> FashionMnistIdx:
    """Returns the Fashion-MNIST builder, preparing its ArrayRecord files first if needed.

    Preparation (about 6 s for all 70,000 images) runs once per ``data_dir``; later calls find
    the prepared files and return at once. The IDX files are looked up in ``idx_dir``, else
    ``$DIFFJAX_FASHION_MNIST_DIR``, else :data:`DEFAULT_IDX_DIR`; when absent and ``download``
    is True they are downloaded from :data:`DOWNLOAD_URL`.

    Args:
      data_dir: TFDS data directory; None uses TFDS's default (``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      idx_dir: folder with the four original IDX ``.gz`` files.
      download: whether the files may be downloaded when no local copy exists.

    Returns:
      A prepared :class:`FashionMnistIdx` builder; call ``as_data_source(split)`` on it.

    Raises:
      DatasetUnavailableError: not prepared, no local files, and no download possible. Raised
        within about 3 s; the message names the install command and the config key.
    """
    idx_dir = _resolve_idx_dir(idx_dir)
    local_paths = find_idx_files(idx_dir)
    with _quiet_tfds():
        builder = FashionMnistIdx(
            idx_dir=idx_dir if local_paths else None, data_dir=data_dir, file_format="array_record"
        )
        prepared = builder.is_prepared()
    if prepared:
        return builder
    if local_paths is None:
        # TFDS retries an unreachable URL for minutes: find out first, in seconds.
        if not download:
            reason = "downloading is disabled (download=False)"
        elif not _host_reachable(_DOWNLOAD_HOST):
            reason = f"{_DOWNLOAD_HOST} cannot be reached (no network?)"
        else:
            reason = None
        if reason is not None:
            raise DatasetUnavailableError(
                f"Fashion-MNIST is not prepared in {builder.data_dir_root}, its four IDX files "
                f"({', '.join(IDX_FILES.values())}) are not in {idx_dir}, and {reason}. "
                f"Install them with `{APT_INSTALL_COMMAND}` (Debian/Ubuntu; they land in "
                f"{DEFAULT_IDX_DIR}), or copy them into a folder and point "
                f"config.data.manual_dir (create_dataset(manual_dir=...)) or "
                f"${IDX_DIR_ENV} at it."
            )
    source = f"the IDX files in {idx_dir}" if local_paths else f"files from {_DOWNLOAD_HOST}"
    with _quiet_tfds():
        target = builder.data_dir
    log(f"diffjax: preparing Fashion-MNIST once, from {source}, into {target} (about a minute "
        f"on 2 cores)")  # fmt: skip
    start = time.perf_counter()
    with _quiet_tfds():
        builder.download_and_prepare(file_format="array_record")
    seconds = time.perf_counter() - start
    log(f"diffjax: Fashion-MNIST prepared in {seconds:.0f} s; later runs read it from there")
    return builder


@contextlib.contextmanager
def _quiet_tfds():
    """Silences TFDS while it builds or prepares this dataset: its "Downloading ... Unknown size"
    banner, its progress bars and absl's note that a new folder has no dataset_info.json would
    read as if the run went online; :func:`prepare_fashion_mnist` says what happens instead."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(True)
        absl_logger.setLevel(level)
