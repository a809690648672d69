"""Image sources behind :mod:`diffjax.data.pipeline`.

Each submodule turns one kind of storage into a random-access source of examples
``{"image": uint8 [H, W, C], "label": int}`` that the grain pipeline in
:mod:`diffjax.data.pipeline` shards, shuffles, preprocesses and batches:

- :mod:`~diffjax.data.datasets.fashion_mnist`: the offline default, a TFDS builder of the
  project's own that reads the original IDX files without TensorFlow.
- :mod:`~diffjax.data.datasets.tfds_source`: any stock TFDS dataset through
  ``tfds.data_source`` (ArrayRecord files, NumPy decoding).
- :mod:`~diffjax.data.datasets.folder`: a directory of the user's PNG/JPEG images.

Submodules import tensorflow-datasets or Pillow at module level, so this package imports none of
them; :mod:`diffjax.data.pipeline` loads the one it needs.
"""


class DatasetUnavailableError(FileNotFoundError):
    """The requested dataset is neither prepared nor obtainable here.

    The message always names the command that installs or prepares the data and the config key
    (or keyword argument) that points at a local copy.
    """
