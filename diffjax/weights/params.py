"""Parameter pytrees as safetensors files: what a run's frozen network can be loaded from.

A nested dict of arrays is stored flat, each leaf under its path joined by ``/``
(``'down_0_res_0/conv_0/kernel'``), in the ``safetensors`` format (no pickle, readable without
JAX or torch). A file given with a SHA-256 is verified before it is read.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Mapping

import numpy as np

from diffjax.images import atomic_write
from diffjax.weights.files import verify_checksum

__all__ = ["load_params", "params_file_shapes", "save_params"]

_SEPARATOR = "/"
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": "bfloat16", "I32": np.int32,
           "I64": np.int64, "U8": np.uint8, "BOOL": np.bool_, "F64": np.float64}  # fmt: skip


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if _SEPARATOR in key:
            raise ValueError(f"parameter names may not contain {_SEPARATOR!r}: {key!r}")
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}{_SEPARATOR}"))
        else:
            flat[prefix + key] = value
    return flat


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split(_SEPARATOR)
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def save_params(path: str | os.PathLike, params: Mapping[str, Any]) -> None:
    """Writes a nested dict of arrays as a safetensors file, atomically.

    Args:
      path: the ``.safetensors`` file to write.
      params: e.g. a run's EMA parameters (on the host or on devices).
    """
    from safetensors.numpy import save

    arrays = {name: np.asarray(value) for name, value in _flatten(params).items()}
    data = save(arrays)

    def write(tmp_path: str) -> None:
        with open(tmp_path, "wb") as f:
            f.write(data)

    atomic_write(os.fspath(path), write)


def load_params(path: str | os.PathLike, sha256: str | None = None) -> dict[str, Any]:
    """Reads a file written by :func:`save_params` (or any safetensors file with ``/`` paths).

    Args:
      path: the file.
      sha256: its expected SHA-256 (hex), verified first; None skips the check.

    Returns:
      The nested dict of NumPy arrays.

    Raises:
      WeightsChecksumError: the file is not the one named by ``sha256``.
      FileNotFoundError: no file at ``path``.
    """
    from safetensors.numpy import load_file

    if sha256 is not None:
        verify_checksum(path, sha256, "parameter file")
    return _unflatten(load_file(os.fspath(path)))


def params_file_shapes(path: str | os.PathLike) -> dict[str, Any]:
    """The shapes and dtypes of a parameter file's arrays (its header alone is read).

    Returns:
      The nested dict of ``jax.ShapeDtypeStruct``.
    """
    import jax

    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return _unflatten(
        {
            name: jax.ShapeDtypeStruct(tuple(entry["shape"]), _DTYPES[entry["dtype"]])
            for name, entry in header.items()
        }
    )
