"""Stock TFDS image datasets read through ``as_data_source`` (ArrayRecord, NumPy, no TensorFlow).

Reading a prepared dataset needs only tensorflow-datasets (and Pillow, which decodes the stored
PNG/JPEG images when OpenCV is absent). Preparing a stock dataset (download, extraction, image
encoding) needs TensorFlow: ``pip install "diffjax[tf]"``, which Colab already has. A dataset
prepared elsewhere can be copied into a data directory and read here without TensorFlow; it must
have been prepared with ``file_format="array_record"`` (``tfds.data_source`` does that).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from diffjax.data.datasets import DatasetUnavailableError

__all__ = ["TfdsImageDataset", "describe_tfds_dataset", "open_tfds_dataset"]

_TF_INSTALL_COMMAND = 'pip install "diffjax[tf]"'


class TfdsImageDataset(NamedTuple):
    """What the pipeline needs to know about a TFDS image dataset.

    Attributes:
      builder: the TFDS builder (prepared or not).
      channels: C of the stored ``image`` feature ``[H, W, C]``.
      num_classes: classes of the ``label`` feature, or None when there is none.
      class_names: the ``label`` names, or None.
      num_examples: examples in the requested split, or None when not prepared yet.
    """

    builder: Any
    channels: int
    num_classes: int | None
    class_names: tuple[str, ...] | None
    num_examples: int | None


def _tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def describe_tfds_dataset(
    name: str, *, split: str, data_dir: str | os.PathLike | None, builder: Any = None
) -> TfdsImageDataset:
    """Reads a TFDS dataset's metadata without preparing or reading its data.

    Args:
      name: a TFDS name, with an optional config and version (``"downsampled_imagenet/32x32"``).
      split: a TFDS split, slicing allowed (``"train[:10%]"``).
      data_dir: TFDS data directory; None uses TFDS's default.
      builder: an already created builder to describe instead of looking ``name`` up.

    Returns:
      The dataset's :class:`TfdsImageDataset`.

    Raises:
      ValueError: ``name`` is not a TFDS dataset, it has no uint8 ``image`` feature ``[H, W, C]``,
        or ``split`` is not one of its splits.
    """
    if builder is None:
        try:
            # No file_format here: a builder fixes the format of a prepared dataset from its
            # dataset_info.json, and asking for another one is an error at construction.
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as error:
            # TFDS's own message lists all its ~300 datasets; name the nearest ones instead.
            listed = re.findall(r"^\s+- (\S+)$", str(error), flags=re.MULTILINE)
            known = sorted({"fashion_mnist", "folder", *listed})
            close = difflib.get_close_matches(name.split("/")[0], known, n=3)
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            raise ValueError(
                f"data name {name!r} is neither 'fashion_mnist', 'folder', a registered dataset "
                f"nor a TFDS dataset; {hint}(TFDS's: "
                f"https://www.tensorflow.org/datasets/catalog/overview)"
            ) from None
    features = builder.info.features
    image = features["image"] if "image" in features else None
    if (
        image is None
        or np.dtype(image.np_dtype) != np.uint8
        or len(image.shape) != 3
        or image.shape[-1] is None
    ):
        raise ValueError(
            f"TFDS dataset {name!r} has features {list(features)}; diffjax needs an 'image' "
            f"feature of uint8 [H, W, C] with C known, got {image!r}."
        )
    label = features["label"] if "label" in features else None
    if not isinstance(label, tfds.features.ClassLabel):
        label = None
    num_examples = None
    if builder.is_prepared():
        try:
            num_examples = builder.info.splits[split].num_examples
        except (KeyError, ValueError) as error:
            raise ValueError(
                f"split {split!r} is not a split of {name!r}; its splits are "
                f"{list(builder.info.splits)} (TFDS slicing such as 'train[:10%]' is allowed): "
                f"{error}"
            ) from None
    return TfdsImageDataset(
        builder=builder,
        channels=int(image.shape[-1]),
        num_classes=None if label is None else int(label.num_classes),
        class_names=None if label is None else tuple(label.names),
        num_examples=num_examples,
    )


def open_tfds_dataset(
    name: str,
    *,
    split: str,
    data_dir: str | os.PathLike | None,
    manual_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> tuple[Sequence[dict[str, Any]], TfdsImageDataset]:
    """Opens a stock TFDS dataset as a random-access source, preparing it if it can.

    Args:
      name: a TFDS name, with an optional config and version.
      split: a TFDS split, slicing allowed.
      data_dir: TFDS data directory; None uses TFDS's default.
      manual_dir: folder of manually downloaded files, for datasets that need them
        (``celeb_a_hq``, ...); None uses ``<data_dir>/downloads/manual``.
      download: whether an unprepared dataset may be downloaded and prepared (needs
        TensorFlow).

    Returns:
      ``(source, description)``: ``source[i]`` is a dict of NumPy features with ``image`` uint8
      ``[H, W, C]``; ``description.num_examples`` is ``len(source)``.

    Raises:
      ValueError: see :func:`describe_tfds_dataset`.
      DatasetUnavailableError: the dataset is not prepared and cannot be prepared here; the
        message names the command that makes it possible and the config key for a local copy.
    """
    description = describe_tfds_dataset(name, split=split, data_dir=data_dir)
    builder = description.builder
    if not builder.is_prepared():
        where = f"TFDS dataset {name!r} is not prepared in {builder.data_dir_root}"
        if not download:
            raise DatasetUnavailableError(
                f"{where} and downloading is disabled (download=False). Prepare it where it "
                f"can be downloaded (with TensorFlow: {_TF_INSTALL_COMMAND}, then "
                f"tfds.data_source({name!r}, data_dir=...)) and point config.data.data_dir at that "
                f"data directory."
            )
        if not _tensorflow_installed():
            raise DatasetUnavailableError(
                f"{where}, and preparing stock TFDS datasets needs TensorFlow, which is not "
                f"installed. Install it with `{_TF_INSTALL_COMMAND}` (Colab already has it), "
                f"or prepare the dataset elsewhere with tfds.data_source({name!r}, data_dir=...) "
                f"and point config.data.data_dir at that data directory. Reading a prepared "
                f"dataset does not need TensorFlow."
            )
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
        )
        description = describe_tfds_dataset(name, split=split, data_dir=data_dir, builder=builder)
    try:
        source = builder.as_data_source(split=split)
    except NotImplementedError as error:  # TFDS's signal for "no random-access file format"
        raise DatasetUnavailableError(
            f"TFDS dataset {name!r} in {builder.data_dir_root} is stored as "
            f"{builder.info.file_format}, which has no random access; diffjax reads ArrayRecord. "
            f"Prepare it again with tfds.data_source({name!r}, data_dir=...) (TensorFlow: "
            f"{_TF_INSTALL_COMMAND}) into another config.data.data_dir. TFDS said: {error}"
        ) from None
    return source, description
