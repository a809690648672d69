"""A reader for PyTorch ``.pth`` weight files that accepts tensors and nothing else.

``torch.load`` unpickles arbitrary objects, so a weight file from the internet can run code.
This reader parses the same two formats without torch and without executing anything:

- the zip format of ``torch.save`` since PyTorch 1.6 (``<archive>/data.pkl`` plus one raw
  record ``<archive>/data/<key>`` per storage);
- the legacy format before it (a magic number, a protocol number, a system-info dict, the
  pickled object, the list of storage keys, then each storage as an int64 element count and
  its raw bytes).

The pickle may name only the globals a state dict needs (``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` and the typed storage classes such
as ``torch.FloatStorage``); any other global is refused with an error naming it. Tensors come
back as NumPy arrays (bfloat16 through ``ml_dtypes``), dicts as plain dicts.

This is why diffjax reads the published files directly instead of converting them once to
safetensors: the checksum that pytorch-fid, torch-fidelity and torchvision publish is of the
``.pth`` file itself, so the file a user downloads is verified as it is, with no second copy.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from typing import Any, BinaryIO, Mapping, NamedTuple

import ml_dtypes
import numpy as np

__all__ = [
    "UnsupportedCheckpointError",
    "load_torch_checkpoint",
    "read_torch_state_dict",
]

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class UnsupportedCheckpointError(ValueError):
    """The file is not a PyTorch checkpoint of plain tensors, or names a refused global."""


class _StorageType(NamedTuple):
    dtype: np.dtype


class _Storage(NamedTuple):
    key: str
    dtype: np.dtype
    numel: int


class _PendingTensor(NamedTuple):
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused) -> _PendingTensor:
    if not isinstance(storage, _Storage):
        raise UnsupportedCheckpointError(
            f"a tensor refers to {type(storage).__name__}, not a storage."
        )
    return _PendingTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_unused) -> _PendingTensor:
    return data


class _StateDict(dict):
    """``collections.OrderedDict`` stand-in: ``Module.state_dict()`` pickles a ``_metadata``
    attribute onto its OrderedDict (a BUILD step), which a plain dict cannot take."""


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): _StateDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, source: str):
        super().__init__(file, encoding="utf-8")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise UnsupportedCheckpointError(
            f"{self.source} asks to load the Python object {module}.{name}; diffjax reads "
            f"only tensors and dicts of tensors from .pth files, so it was not loaded. Save "
            f"a plain state dict (model.state_dict()) instead."
        )

    def persistent_load(self, saved_id: Any) -> _Storage:
        if not isinstance(saved_id, tuple) or not saved_id or saved_id[0] != "storage":
            raise UnsupportedCheckpointError(
                f"{self.source} holds a persistent object {saved_id!r:.80}, not a tensor storage."
            )
        storage_type, key, _location, numel = saved_id[1:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsupportedCheckpointError(
                f"{self.source}: unknown storage type {storage_type!r}."
            )
        if len(saved_id) > 5 and saved_id[5] is not None:
            raise UnsupportedCheckpointError(
                f"{self.source} uses storage views (a pre-1.0 PyTorch format); re-save it with "
                f"a current torch.save."
            )
        return _Storage(str(key), storage_type.dtype, int(numel))


def _materialise(obj: Any, storages: Mapping[str, np.ndarray], source: str) -> Any:
    """Replaces every pending tensor by a NumPy array cut from its storage (bounds checked)."""
    if isinstance(obj, _PendingTensor):
        flat = storages[obj.storage.key]
        if obj.shape and min(obj.shape) == 0:
            return np.zeros(obj.shape, flat.dtype)
        last = obj.offset + sum((size - 1) * stride for size, stride in zip(obj.shape, obj.strides))
        if obj.offset < 0 or min(obj.strides, default=0) < 0 or last >= flat.size:
            raise UnsupportedCheckpointError(
                f"{source}: a tensor of shape {obj.shape} reaches past the end of its storage "
                f"({flat.size} elements); the file is damaged."
            )
        view = np.lib.stride_tricks.as_strided(
            flat[obj.offset :],
            shape=obj.shape,
            strides=tuple(stride * flat.itemsize for stride in obj.strides),
            writeable=False,
        )
        return np.array(view)
    if isinstance(obj, dict):
        return {key: _materialise(value, storages, source) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(value, storages, source) for value in obj)
    return obj


def _storages_in(obj: Any) -> dict[str, _Storage]:
    found: dict[str, _Storage] = {}

    def walk(value: Any) -> None:
        if isinstance(value, _PendingTensor):
            found[value.storage.key] = value.storage
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(obj)
    return found


def _read_storage(raw: bytes, storage: _Storage, byteorder: str, source: str) -> np.ndarray:
    expected = storage.numel * storage.dtype.itemsize
    if len(raw) < expected:
        raise UnsupportedCheckpointError(
            f"{source}: storage {storage.key} holds {len(raw)} bytes, {expected} expected; the "
            f"file is truncated or damaged."
        )
    dtype = storage.dtype if byteorder == "little" else storage.dtype.newbyteorder(">")
    return np.frombuffer(raw[:expected], dtype=dtype).astype(storage.dtype, copy=False)


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [name for name in names if name.endswith("/data.pkl") or name == "data.pkl"]
        if len(pickles) != 1:
            raise UnsupportedCheckpointError(
                f"{path} is a zip file but not a torch.save archive (no single data.pkl)."
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode("ascii").strip()
        obj = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path).load()
        storages = {}
        for key, storage in _storages_in(obj).items():
            record = f"{prefix}data/{key}"
            if record not in names:
                raise UnsupportedCheckpointError(f"{path} lacks the storage record {record}.")
            storages[key] = _read_storage(archive.read(record), storage, byteorder, path)
    return _materialise(obj, storages, path)


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        try:
            magic = _RestrictedUnpickler(f, path).load()
            protocol = _RestrictedUnpickler(f, path).load()
            sys_info = _RestrictedUnpickler(f, path).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            raise UnsupportedCheckpointError(
                f"{path} is neither a zip nor a legacy torch.save file ({error})."
            ) from error
        if magic != _LEGACY_MAGIC_NUMBER or protocol != _LEGACY_PROTOCOL_VERSION:
            raise UnsupportedCheckpointError(f"{path} is not a torch.save file (bad magic number).")
        byteorder = "little" if sys_info.get("little_endian", True) else "big"
        obj = _RestrictedUnpickler(f, path).load()
        keys = _RestrictedUnpickler(f, path).load()
        pending = _storages_in(obj)
        storages = {}
        for key in keys:
            header = f.read(8)
            if len(header) != 8:
                raise UnsupportedCheckpointError(f"{path} is truncated (storage {key}).")
            numel = int.from_bytes(header, byteorder)
            storage = pending.get(str(key))
            if storage is None:
                raise UnsupportedCheckpointError(f"{path} stores an unreferenced storage {key}.")
            storage = storage._replace(numel=numel)
            raw = f.read(numel * storage.dtype.itemsize)
            storages[str(key)] = _read_storage(raw, storage, byteorder, path)
    missing = sorted(set(pending) - set(storages))
    if missing:
        raise UnsupportedCheckpointError(f"{path} lacks the data of storages {missing[:3]}.")
    return _materialise(obj, storages, path)


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """Reads a ``torch.save`` file of tensors (zip or legacy format) without torch.

    Args:
      path: the ``.pth`` / ``.pt`` / ``.bin`` file.

    Returns:
      The saved object with every tensor as a NumPy array (its torch dtype and shape) and
      every ``OrderedDict`` as a ``dict``; lists, tuples, numbers and strings as saved.

    Raises:
      FileNotFoundError: no such file.
      UnsupportedCheckpointError: not a torch.save file, damaged, or holding anything but
        tensors and containers (the refused global is named).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No weight file at {path}.")
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict (``{name: tensor}``) as ``{name: np.ndarray}``.

    Args:
      path: a file written by ``torch.save(module.state_dict(), path)``.

    Returns:
      A flat dict from parameter names (``'Conv2d_1a_3x3.conv.weight'``) to arrays.

    Raises:
      UnsupportedCheckpointError: the file holds something other than a flat mapping of
        names to tensors.
    """
    obj = load_torch_checkpoint(path)
    if not isinstance(obj, dict) or not all(
        isinstance(key, str) and isinstance(value, np.ndarray) for key, value in obj.items()
    ):
        raise UnsupportedCheckpointError(
            f"{os.fspath(path)} does not hold a state dict (a flat mapping of names to tensors)."
        )
    return obj
