"""The input pipeline: image datasets, preprocessed, batched, each host reading its rows, resumable.

Sources (the ``name`` argument, ``config.data.name``):

- ``"fashion_mnist"`` (the offline default): Fashion-MNIST prepared by the project's own TFDS
  builder from the original IDX files (:mod:`diffjax.data.datasets.fashion_mnist`), taken
  from ``manual_dir`` / ``$DIFFJAX_FASHION_MNIST_DIR`` / ``/usr/share/datasets/fashion-mnist``
  (``apt-get install dataset-fashion-mnist``) or downloaded when none has them.
- any other TFDS image dataset (``"mnist"``, ``"cifar10"``, ``"celeb_a"``,
  ``"oxford_flowers102"``, ``"downsampled_imagenet/64x64"``, ...) through ``as_data_source``;
  reading needs no TensorFlow, preparing one does (``pip install "diffjax[tf]"``).
- ``"folder"``: the PNG/JPEG images under ``data_dir``, optionally in class subfolders.
- ``"circles"`` and ``"fashion_mnist_edges"``: images with a control image, offline
  (:mod:`diffjax.data.datasets.control`; ControlNet's recipes).
- a dataset of in-memory arrays registered with :func:`register_dataset` (images with any
  conditioning: class labels, text embeddings, control images).

The pipeline is a ``grain.MapDataset`` over the random-access source::

    example indices -> shuffle(seed) -> repeat -> global batches of B = b * n indices
      -> this host's rows [i b, (i + 1) b) -> read them (one batched read)
      -> center crop + resize -> random flip -> uint8 to float32 in [-1, 1] -> thread prefetch

(host i of n, b examples per host). Every global batch is a pure function of its position and
of (seed, B) alone (shuffle is an index permutation, the flips are drawn for the whole global
batch from a generator seeded by its index), so the output depends neither on thread timing
nor on how many hosts share the work: n hosts together feed exactly the batches one host
would with batch B. The position of an iterator is one integer, the same on every host:
:meth:`DataIterator.get_state` returns it as a small JSON-serialisable dict, and
:meth:`DataIterator.set_state` resumes with exactly the batches an uninterrupted run would have
produced, also with another number of hosts.

Example::

    dataset = create_dataset(name="fashion_mnist", image_size=28, batch_size=64, seed=0)
    iterator = iter(dataset)
    batch = next(iterator)   # {"image": float32 [64, 28, 28, 1] in [-1, 1],
                             #  "cond": {"label": int32 [64]}}
    state = iterator.get_state()          # store in the checkpoint (JSON)
    iterator.set_state(state)             # after restoring it
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

import numpy as np

from diffjax.data.datasets import DatasetUnavailableError, control, preprocess
from diffjax.errors import ConfigError
from diffjax.sharding import process_batch_size

if TYPE_CHECKING:
    import grain

__all__ = [
    "DEFAULT_NAME",
    "FOLDER_NAME",
    "DataIterator",
    "Dataset",
    "DatasetUnavailableError",
    "DatasetInfo",
    "DATASETS",
    "array_dataset",
    "check_data_config",
    "create_dataset",
    "dataset_cond",
    "dataset_from_config",
    "get_dataset_info",
    "register_dataset",
]

DEFAULT_NAME = "fashion_mnist"
FOLDER_NAME = "folder"
_STATE_VERSION = 1
_HOST_LAYOUT_KEYS = ("batch_size", "process_index", "process_count")
"""Pipeline arguments that only say which rows this host reads: a state taken on one host
layout resumes on another with the same global batch size."""


DATASETS: dict[str, Any] = {
    "circles": control.load_circles,
    "fashion_mnist_edges": control.load_fashion_mnist_edges,
}
"""Datasets of in-memory arrays by name: the control datasets of
:mod:`diffjax.data.datasets.control` and those of :func:`register_dataset`."""


def register_dataset(name: str, load: Any) -> None:
    """Adds a dataset of in-memory arrays that configs can name (``config.data.name``).

    Args:
      name: a new name (not ``'fashion_mnist'``, ``'folder'`` or one already registered).
      load: ``load(split, image_size) -> (arrays, num_classes)`` with ``arrays`` =
        ``{'image': float32 [N, S, S, C] in [-1, 1], 'cond': {key: [N, ...]}}`` (S =
        ``image_size``) and ``num_classes`` the number of labels of ``cond['label']`` or None;
        raises ``ValueError`` for a split or size it does not have.

    Raises:
      ValueError: the name is taken or empty.
    """
    if not isinstance(name, str) or not name or name in DATASETS or name in (
        DEFAULT_NAME, FOLDER_NAME,
    ):  # fmt: skip
        raise ValueError(
            f"register_dataset needs a new, non-empty name; {name!r} is taken or empty "
            f"(registered: {sorted(DATASETS)} and {DEFAULT_NAME!r}, {FOLDER_NAME!r})."
        )
    DATASETS[name] = load


class DatasetInfo(NamedTuple):
    """What a dataset yields, known before any batch is read.

    Attributes:
      name: the dataset name as given.
      split: the split as given.
      num_examples: examples in the split over all hosts, or None when a TFDS dataset is not
        prepared yet (:func:`create_dataset` prepares it; its ``info`` always has the count).
      num_classes: number of labels, or None for an unlabelled dataset (then batches have no
        ``cond['label']``).
      class_names: label names, or None.
      image_shape: ``(H, W, C)`` of every preprocessed image: ``(image_size, image_size, C)``
        with C = 1 for grayscale, 3 for RGB.
      cond_spec: what each batch's ``'cond'`` holds: ``(key, shape, dtype)`` per entry, the
        shape without the batch axis (``(('label', (), 'int32'),)`` for a labelled image
        dataset).
    """

    name: str
    split: str
    num_examples: int | None
    num_classes: int | None
    class_names: tuple[str, ...] | None
    image_shape: tuple[int, int, int]
    cond_spec: tuple[tuple[str, tuple[int, ...], str], ...] = ()

    @property
    def cond_keys(self) -> tuple[str, ...]:
        """The keys of each batch's ``'cond'``."""
        return tuple(key for key, _, _ in self.cond_spec)

    @property
    def channels(self) -> int:
        """C, the channel count of the preprocessed images."""
        return self.image_shape[-1]


def _label_spec(num_classes: int | None) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    return () if num_classes is None else (("label", (), "int32"),)


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}.")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name} must be >= {minimum}{upper}, got {value}.")


def _check_name_and_split(name: Any, split: Any) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"name must be a non-empty str: {DEFAULT_NAME!r}, {FOLDER_NAME!r} or a TFDS dataset "
            f"name, got {name!r}."
        )
    if not isinstance(split, str) or not split:
        raise TypeError(f"split must be a non-empty str such as 'train', got {split!r}.")
    if name == FOLDER_NAME and split != "train":
        raise ValueError(
            f"The {FOLDER_NAME!r} dataset has a single split, 'train'; got split={split!r}."
        )


def _open_folder(
    split: str, image_size: int, data_dir: str | os.PathLike | None
) -> tuple[Sequence[dict[str, Any]], DatasetInfo]:
    """Lists the image folder (cheap: no image but the first is decoded) and describes it."""
    from diffjax.data.datasets import folder  # Pillow only when needed

    if data_dir is None:
        raise ValueError(
            f"The {FOLDER_NAME!r} dataset needs data_dir (config.data.data_dir): the folder of "
            f"images, got None."
        )
    source = folder.ImageFolderSource(data_dir)
    info = DatasetInfo(
        FOLDER_NAME,
        split,
        len(source),
        source.num_classes,
        source.class_names,
        (image_size, image_size, source.channels),
        _label_spec(source.num_classes),
    )
    return source, info


def _tfds_info(
    name: str, split: str, image_size: int, description: Any, num_examples: int | None
) -> DatasetInfo:
    return DatasetInfo(
        name,
        split,
        num_examples,
        description.num_classes,
        description.class_names,
        (image_size, image_size, description.channels),
        _label_spec(description.num_classes),
    )


def _open_arrays(name: str, split: str, image_size: int) -> tuple[dict[str, Any], DatasetInfo]:
    arrays, num_classes = DATASETS[name](split, image_size)
    images = np.asarray(arrays["image"])
    if images.ndim != 4 or images.shape[1:3] != (image_size, image_size):
        raise ValueError(
            f"the registered dataset {name!r} gave images of shape {images.shape}; expected "
            f"[N, {image_size}, {image_size}, C]."
        )
    cond = {key: np.asarray(value) for key, value in dict(arrays.get("cond", {})).items()}
    spec = tuple(
        (key, tuple(int(side) for side in value.shape[1:]), value.dtype.name)
        for key, value in cond.items()
    )
    info = DatasetInfo(
        name, split, int(images.shape[0]), num_classes, None, tuple(images.shape[1:]), spec
    )
    return {"image": images.astype(np.float32), "cond": cond}, info


def _describe(
    name: str, split: str, image_size: int, data_dir: str | os.PathLike | None
) -> DatasetInfo:
    """Builds the DatasetInfo of a source without preparing or reading its data."""
    if name == FOLDER_NAME:
        return _open_folder(split, image_size, data_dir)[1]
    if name in DATASETS:
        return _open_arrays(name, split, image_size)[1]
    from diffjax.data.datasets import tfds_source  # tensorflow-datasets only when needed

    builder = None
    if name == DEFAULT_NAME:
        from diffjax.data.datasets import fashion_mnist

        builder = fashion_mnist.FashionMnistIdx(data_dir=data_dir, file_format="array_record")
    description = tfds_source.describe_tfds_dataset(
        name, split=split, data_dir=data_dir, builder=builder
    )
    return _tfds_info(name, split, image_size, description, description.num_examples)


def get_dataset_info(
    *,
    name: str = DEFAULT_NAME,
    split: str = "train",
    image_size: int,
    data_dir: str | os.PathLike | None = None,
) -> DatasetInfo:
    """Describes a dataset (channels, classes, size) without preparing or iterating it.

    Cheap (no data is read or downloaded), so the training program can validate its config
    (channels and number of classes of the model) before building anything.

    Args:
      name: ``"fashion_mnist"``, ``"folder"`` or a TFDS name (``"cifar10"``,
        ``"downsampled_imagenet/32x32"``, ...).
      split: TFDS split, slicing allowed (``"train[:10%]"``); ``"train"`` for ``"folder"``.
      image_size: side S of the square images the pipeline produces.
      data_dir: TFDS data directory (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``);
        for ``"folder"``, the image folder.

    Returns:
      The :class:`DatasetInfo`; ``num_examples`` is None for a TFDS dataset not prepared yet.

    Raises:
      TypeError, ValueError: a bad argument, an unknown dataset name or split.
    """
    _check_name_and_split(name, split)
    _check_int("image_size", image_size, 1)
    return _describe(name, split, image_size, data_dir)


def _open_source(
    name: str,
    split: str,
    image_size: int,
    data_dir: str | os.PathLike | None,
    manual_dir: str | os.PathLike | None,
    download: bool,
) -> tuple[Sequence[dict[str, Any]], DatasetInfo]:
    """Opens (preparing if needed) the random-access source and describes it."""
    if name == FOLDER_NAME:
        return _open_folder(split, image_size, data_dir)
    from diffjax.data.datasets import tfds_source

    if name == DEFAULT_NAME:
        from diffjax.data.datasets import fashion_mnist

        builder = fashion_mnist.prepare_fashion_mnist(
            data_dir=data_dir, idx_dir=manual_dir, download=download
        )
        description = tfds_source.describe_tfds_dataset(
            name, split=split, data_dir=data_dir, builder=builder
        )
        source = builder.as_data_source(split=split)
    else:
        source, description = tfds_source.open_tfds_dataset(
            name, split=split, data_dir=data_dir, manual_dir=manual_dir, download=download
        )
    return source, _tfds_info(name, split, image_size, description, len(source))


class _BatchLoader:
    """Selects this host's rows of one global batch of example indices, then reads them.

    ``read(indices, flips) -> batch`` does the reading: :class:`_ImageReader` for image
    sources, :class:`_ArrayReader` for in-memory arrays (reflow pairs).
    """

    def __init__(self, read: Any, *, random_flip: bool, rows: slice, global_batch_size: int):
        self._read = read
        self._random_flip = random_flip
        self._rows = rows
        self._global_batch_size = global_batch_size

    def __call__(self, indices: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """This host's rows of one global batch of example indices, read and preprocessed."""
        indices = np.asarray(indices)
        # Drawn for the whole global batch, so that a flip does not depend on the host layout.
        flips = rng.random(indices.shape[0]) < 0.5 if self._random_flip else None
        several_hosts = self._rows.stop - self._rows.start < self._global_batch_size
        if several_hosts and indices.shape[0] < self._global_batch_size:
            # A short last batch (drop_remainder=False) is padded with its last example, so
            # that every host feeds its b rows to the global array.
            pad = self._global_batch_size - indices.shape[0]
            indices = np.concatenate([indices, np.repeat(indices[-1:], pad)])
            flips = None if flips is None else np.concatenate([flips, np.repeat(flips[-1:], pad)])
        if several_hosts:
            indices = indices[self._rows]
            flips = None if flips is None else flips[self._rows]
        return self._read(indices, flips)


class _ImageReader:
    """Reads examples ``{'image': uint8 [H, W, C], 'label': int}`` and preprocesses them.

    Reading a whole batch at once lets ArrayRecord sources fetch the records in parallel
    (``__getitems__``), about 6x faster than one random read per example.
    """

    def __init__(self, source: Sequence[dict[str, Any]], image_size: int, labelled: bool):
        self._source, self._image_size, self._labelled = source, image_size, labelled

    def __call__(self, indices: np.ndarray, flips: np.ndarray | None) -> dict[str, np.ndarray]:
        keys = [int(index) for index in indices]
        if hasattr(self._source, "__getitems__"):
            examples = self._source.__getitems__(keys)
        else:
            examples = [self._source[key] for key in keys]
        images = np.stack(
            [
                preprocess.center_crop_resize(np.asarray(example["image"]), self._image_size)
                for example in examples
            ]
        )
        if flips is not None:
            images = preprocess.flip_left_right_where(images, flips)
        cond = {}
        if self._labelled:
            cond["label"] = np.asarray([example["label"] for example in examples], np.int32)
        return {"image": preprocess.to_model_range(images), "cond": cond}


class _ArrayReader:
    """Rows of in-memory arrays ``{name: [N, ...]}`` (nested dicts allowed), unchanged."""

    def __init__(self, arrays: Mapping[str, Any]):
        self._arrays = arrays

    def __call__(self, indices: np.ndarray, flips: np.ndarray | None) -> dict[str, Any]:
        def take(value):
            if isinstance(value, Mapping):
                return {name: take(item) for name, item in value.items()}
            return value[indices]

        batch = take(self._arrays)
        if flips is not None:
            batch["image"] = preprocess.flip_left_right_where(batch["image"], flips)
        return batch


class DataIterator(Iterator[dict]):
    """An endless (or ``num_epochs``-long) iterator of host-local batches with a resumable position.

    Yields ``{"image": float32 [b, S, S, C] in [-1, 1], "cond": {"label": int32 [b]}}`` (``"label"`` only
    for labelled datasets), ``b`` the per-host batch size. Created by ``iter(dataset)``.
    """

    def __init__(self, grain_dataset: grain.IterDataset, pipeline: dict[str, Any]):
        self._iterator = iter(grain_dataset)
        self._pipeline = pipeline

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict[str, Any]:
        """The position: a small JSON-serialisable dict to store in a checkpoint.

        Returns:
          ``{"version": 1, "grain": {...}, "pipeline": {...}}``: grain's iterator state (the
          index of the next batch) and the arguments that define the batch sequence, checked
          by :meth:`set_state`.
        """
        return {
            "version": _STATE_VERSION,
            "grain": self._iterator.get_state(),
            "pipeline": dict(self._pipeline),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Moves to a position taken by :meth:`get_state`, possibly in another process.

        The next batch is the one an uninterrupted iterator would have produced after the
        state was taken. Batches prefetched for the old position are dropped.

        Args:
          state: a dict returned by :meth:`get_state` (after a JSON round trip is fine).

        The state may come from another host or another number of hosts: the position is
        that of the global batches, which depend only on the arguments compared here.

        Raises:
          ValueError: the state is malformed or was taken from a pipeline with other
            arguments (dataset, split, global batch size, seed, ...), which would make the
            resumed sequence differ.
        """
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"Not an input-pipeline state of version {_STATE_VERSION}: expected the dict "
                f"from DataIterator.get_state(), got {state!r}."
            )
        saved = dict(state.get("pipeline", {}))
        if "position" in state and "pairs" in saved:
            # A reflow run of diffjax 0.2 read its pairs with an iterator of its own, whose
            # state is the position alone; it continues from there, in this pipeline's order.
            saved = {**self._pipeline, **saved}
            state = dict(state, grain={"next_index": int(state["position"])})
        if "global_batch_size" not in saved and saved.get("process_count") == 1:
            # Written before the global batch size was recorded; one host's batch order is
            # the same.
            saved["global_batch_size"] = saved.get("batch_size")
        differences = {
            key: (saved.get(key), value)
            for key, value in self._pipeline.items()
            if key not in _HOST_LAYOUT_KEYS and saved.get(key) != value
        }
        if differences:
            detail = ", ".join(
                f"{key}={old!r} in the state but {new!r} here"
                for key, (old, new) in differences.items()
            )
            raise ValueError(
                f"The input-pipeline state was taken with other arguments ({detail}); resuming "
                f"it would not continue the same batch sequence. Use the arguments of the run "
                f"that saved it."
            )
        self._iterator.set_state(state["grain"])

    def close(self) -> None:
        """Stops the prefetch threads."""
        self._iterator.close()

    def __enter__(self) -> DataIterator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class Dataset:
    """One host's view of a dataset: its info and a factory of resumable batch iterators.

    Create with :func:`create_dataset`. Iterating twice gives two independent iterators that
    both start at the first batch.

    Attributes:
      info: the :class:`DatasetInfo` (``num_examples`` counts the whole split).
      batch_size: b, the per-host batch size.
      global_batch_size: B = b * process_count.
      process_index, process_count: this host reads rows [i b, (i + 1) b) of every global
        batch.
    """

    def __init__(
        self, info: DatasetInfo, grain_dataset: grain.IterDataset, pipeline: dict[str, Any]
    ):
        self.info = info
        self._grain_dataset = grain_dataset
        self._pipeline = pipeline
        self.batch_size: int = pipeline["batch_size"]
        self.global_batch_size: int = pipeline["global_batch_size"]
        self.process_index: int = pipeline["process_index"]
        self.process_count: int = pipeline["process_count"]

    def __iter__(self) -> DataIterator:
        return DataIterator(self._grain_dataset, self._pipeline)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.info.name!r}, split={self.info.split!r}, "
            f"image_shape={self.info.image_shape}, batch_size={self.batch_size}, "
            f"host {self.process_index} of {self.process_count}, global batch "
            f"{self.global_batch_size})"
        )


def _derived_seeds(seed: int) -> tuple[int, int]:
    """Independent uint32 seeds for the shuffle and the flips (the same on every host)."""
    shuffle_seed, flip_seed = np.random.SeedSequence([seed, 0]).generate_state(2)
    return int(shuffle_seed), int(flip_seed)


def create_dataset(
    *,
    name: str = DEFAULT_NAME,
    split: str = "train",
    image_size: int,
    batch_size: int,
    seed: int,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    download: bool = True,
    random_flip: bool = False,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 4,
    prefetch_batches: int = 4,
) -> Dataset:
    """Builds this host's input pipeline for an image dataset.

    The split is shuffled with a seed derived from ``seed`` (a new permutation every epoch),
    repeated and cut into global batches of B = b * n examples (n = process count); host i
    reads only rows ``[i b, (i + 1) b)`` of each, center-crops and resizes every image to
    ``image_size`` and optionally flips it (flips drawn per global batch). So the global batches
    depend on ``seed`` and B but not on n: two hosts with b = 32 feed the batches one host with
    b = 64 reads. Batches are prefetched by ``num_threads`` threads; their content never depends
    on thread timing.

    Args:
      name: ``"fashion_mnist"`` (default; offline), ``"folder"``, or a TFDS image dataset
        name (``"mnist"``, ``"cifar10"``, ``"celeb_a"``, ``"oxford_flowers102"``,
        ``"downsampled_imagenet/64x64"``, ...).
      split: TFDS split, slicing allowed (``"test[:2000]"``); ``"train"`` for ``"folder"``.
      image_size: side S of the square output images.
      batch_size: b, examples per batch on THIS host (the global batch is b * process count).
      seed: in ``[0, 2**32)``; fixes the order and the flips.
      data_dir: TFDS data directory where prepared datasets are cached (default
        ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``); for ``"folder"``, the image folder.
      manual_dir: folder of manually obtained source files: Fashion-MNIST's four IDX files
        (default ``$DIFFJAX_FASHION_MNIST_DIR`` or ``/usr/share/datasets/fashion-mnist``), or
        a stock TFDS dataset's manual downloads.
      download: whether missing data may be downloaded. With False nothing touches the network.
      random_flip: mirror each image left-right with probability 1/2.
      shuffle: shuffle the order (each epoch differently); False reads the slice in order.
      num_epochs: None repeats forever (training); k stops after k passes (evaluation).
      drop_remainder: with finite ``num_epochs``, drop the last incomplete global batch. If
        kept, it is short on one host; on several it is padded by repeating its last example,
        so that every host gets b rows.
      process_index: this host's index; default ``jax.process_index()``.
      process_count: number of hosts; default ``jax.process_count()``.
      num_threads: threads preparing batches ahead (at most ``prefetch_batches``); 0 makes
        every batch synchronously in the caller.
      prefetch_batches: batches prepared ahead (memory: this many batches); 0 disables
        prefetching.

    Returns:
      A :class:`Dataset`; ``iter(dataset)`` yields dicts of host-local NumPy arrays
      ``{"image": float32 [b, S, S, C] in [-1, 1], "cond": {"label": int32 [b]}}`` (no ``"label"`` for
      unlabelled data).

    Raises:
      TypeError, ValueError: a bad argument (raised before any data is touched).
      DatasetUnavailableError: the data is not here and cannot be obtained; the message names
        the install command and the config key for a local copy.
    """
    _check_name_and_split(name, split)
    _check_int("image_size", image_size, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0, 2**32 - 1)
    _check_int("num_threads", num_threads, 0)
    _check_int("prefetch_batches", prefetch_batches, 0)
    if num_epochs is not None:
        _check_int("num_epochs", num_epochs, 1)
    process_index, process_count = _resolve_hosts(process_index, process_count)

    if name in DATASETS:
        arrays, info = _open_arrays(name, split, image_size)
        read = _ArrayReader(arrays)
    else:
        source, info = _open_source(name, split, image_size, data_dir, manual_dir, download)
        read = _ImageReader(source, image_size, info.num_classes is not None)
    return _make_dataset(
        read, info,
        pipeline=dict(name=name, split=split, image_size=int(image_size)),
        batch_size=batch_size, seed=seed, random_flip=random_flip, shuffle=shuffle,
        num_epochs=num_epochs, drop_remainder=drop_remainder, process_index=process_index,
        process_count=process_count, num_threads=num_threads,
        prefetch_batches=prefetch_batches,
    )  # fmt: skip


def _resolve_hosts(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if (process_index is None) != (process_count is None):
        raise ValueError(
            f"Give both process_index and process_count or neither (then JAX's are used), got "
            f"process_index={process_index!r}, process_count={process_count!r}."
        )
    if process_index is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    _check_int("process_count", process_count, 1)
    _check_int("process_index", process_index, 0, process_count - 1)
    return process_index, process_count


def _make_dataset(
    read: Any,
    info: DatasetInfo,
    *,
    pipeline: dict[str, Any],
    batch_size: int,
    seed: int,
    random_flip: bool,
    shuffle: bool,
    num_epochs: int | None,
    drop_remainder: bool,
    process_index: int,
    process_count: int,
    num_threads: int,
    prefetch_batches: int,
) -> Dataset:
    """The grain pipeline over any random-access reader (see the module docstring)."""
    global_batch_size = batch_size * process_count
    shuffle_seed, flip_seed = _derived_seeds(seed)
    import grain  # imports orbax too: loaded only when a pipeline is built

    # The pipeline runs on example indices and reads this host's rows at the end, so every
    # batch is a pure function of its position: (shuffled) indices, then flips drawn from a
    # generator that grain seeds with (flip_seed, batch index).
    indices = grain.MapDataset.range(info.num_examples)
    if shuffle:
        indices = indices.shuffle(seed=shuffle_seed)
    if num_epochs != 1:
        indices = indices.repeat(num_epochs)
    # Batching after repeat: an endless run never meets a short batch (one may straddle two
    # epochs).
    dataset = indices.batch(global_batch_size, drop_remainder=drop_remainder).random_map(
        _BatchLoader(
            read,
            random_flip=random_flip,
            rows=slice(process_index * batch_size, (process_index + 1) * batch_size),
            global_batch_size=global_batch_size,
        ),
        seed=flip_seed,
    )
    grain_dataset = dataset.to_iter_dataset(
        grain.ReadOptions(
            num_threads=min(num_threads, prefetch_batches),
            prefetch_buffer_size=prefetch_batches if num_threads else 0,
        )
    )
    pipeline = {
        **pipeline,
        "batch_size": int(batch_size),
        "global_batch_size": int(global_batch_size),
        "seed": int(seed),
        "random_flip": bool(random_flip),
        "shuffle": bool(shuffle),
        "num_epochs": None if num_epochs is None else int(num_epochs),
        "drop_remainder": bool(drop_remainder),
        "process_index": int(process_index),
        "process_count": int(process_count),
    }
    return Dataset(info, grain_dataset, pipeline)


def array_dataset(
    arrays: Mapping[str, Any],
    info: DatasetInfo,
    *,
    pipeline: Mapping[str, Any],
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 0,
    prefetch_batches: int = 0,
) -> Dataset:
    """The same pipeline over in-memory arrays: rows ``{name: arrays[name][i]}``, unchanged.

    What reflow's (noise, sample) pairs and cached latents are read with: the batches have the
    image pipeline's order, host layout and resumable position (:meth:`DataIterator.get_state`).

    Args:
      arrays: ``{name: [N, ...]}`` (nested dicts allowed), every leaf with N rows.
      info: the description (``num_examples`` = N).
      pipeline: what identifies the data in a saved iterator state (e.g. the folder).
      batch_size: as for :func:`create_dataset`.
      seed: as for :func:`create_dataset`.
      shuffle: as for :func:`create_dataset`.
      num_epochs: as for :func:`create_dataset`.
      drop_remainder: as for :func:`create_dataset`.
      process_index: as for :func:`create_dataset`.
      process_count: as for :func:`create_dataset`.
      num_threads: as for :func:`create_dataset`.
      prefetch_batches: as for :func:`create_dataset`.

    Returns:
      A :class:`Dataset` of batches ``{name: [b, ...]}``.
    """
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0, 2**32 - 1)
    process_index, process_count = _resolve_hosts(process_index, process_count)
    return _make_dataset(
        _ArrayReader(arrays), info, pipeline=dict(pipeline), batch_size=batch_size, seed=seed,
        random_flip=False, shuffle=shuffle, num_epochs=num_epochs,
        drop_remainder=drop_remainder, process_index=process_index,
        process_count=process_count, num_threads=num_threads,
        prefetch_batches=prefetch_batches,
    )  # fmt: skip


def dataset_from_config(
    values: Mapping[str, Any], mesh: Any, split: str, batch_size: int, **kwargs: Any
) -> Dataset:
    """This host's pipeline for ``split`` of a validated config's dataset.

    Args:
      values: the validated config (its ``data`` section and ``seed``).
      mesh: the data-parallel mesh; ``batch_size`` is the global batch split over it.
      split: the split to read.
      batch_size: the global batch size.
      **kwargs: further :func:`create_dataset` arguments (``shuffle``, ``num_epochs``, ...).

    Raises:
      ConfigError: a dataset name, split or folder that does not exist.
    """
    data = values["data"]
    try:
        return create_dataset(
            name=data["name"],
            split=split,
            image_size=data["image_size"],
            batch_size=process_batch_size(batch_size, mesh),
            seed=values["seed"],
            data_dir=data["data_dir"],
            manual_dir=data["manual_dir"],
            download=data["download"],
            num_threads=data["num_threads"],
            prefetch_batches=data["prefetch_batches"],
            **kwargs,
        )
    except (ValueError, TypeError) as error:
        raise ConfigError(f"config.data ({data['name']!r}, split {split!r}): {error}") from error


def check_data_config(data: Mapping[str, Any]) -> None:
    """Checks a config's ``data`` section without opening the dataset.

    Raises:
      ConfigError: naming the key, the value and what is allowed.
    """
    try:
        _check_name_and_split(data["name"], data["split"])
        _check_int("image_size", data["image_size"], 1)
        _check_int("batch_size", data["batch_size"], 1)
        _check_int("num_threads", data["num_threads"], 0)
        _check_int("prefetch_batches", data["prefetch_batches"], 0)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config.data: {error}") from error


def dataset_cond(
    values: Mapping[str, Any], split: str, count: int, keys: Sequence[str]
) -> dict[str, np.ndarray]:
    """The conditioning of the first ``count`` examples of ``split`` (in order, repeated when
    the split is shorter; every host reads the same rows): what generation takes as the condition of sample i when the network
    reads more than class labels (a text embedding, a control image).

    Args:
      values: the validated config (its ``data`` section and ``seed``).
      split: the split.
      count: the number of conditions.
      keys: the cond keys wanted.

    Returns:
      ``{key: [count, ...]}`` host arrays.
    """
    data = values["data"]
    batch_size = min(count, 256)
    try:
        dataset = create_dataset(
            name=data["name"], split=split, image_size=data["image_size"],
            batch_size=batch_size, seed=values["seed"], data_dir=data["data_dir"],
            manual_dir=data["manual_dir"], download=data["download"], shuffle=False,
            process_index=0, process_count=1, num_threads=0, prefetch_batches=0,
        )  # fmt: skip
    except (ValueError, TypeError) as error:
        raise ConfigError(f"config.data ({data['name']!r}, split {split!r}): {error}") from error
    missing = [key for key in keys if key not in dataset.info.cond_keys]
    if missing:
        raise ConfigError(
            f"the network reads cond keys {list(keys)}, but {data['name']!r}:{split} has "
            f"{list(dataset.info.cond_keys)} (missing {missing})."
        )
    collected: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    with iter(dataset) as iterator:
        read = 0
        while read < count:
            cond = next(iterator)["cond"]
            for key in keys:
                collected[key].append(np.asarray(cond[key]))
            read += batch_size
    return {key: np.concatenate(parts)[:count] for key, parts in collected.items()}
