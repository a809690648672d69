"""Reflow's (noise, sample) pairs on disk, and the dataset that reads them back.

A pair folder holds shards ``pairs_00000.npz``, one per generated batch, each written
atomically, with arrays ``noise`` ``[b, ...]``, ``sample`` ``[b, ...]`` and, for a conditional
teacher, ``cond.<key>`` ``[b, ...]`` (the condition each sample was drawn with), beside a
manifest ``pairs.json`` of the settings that produced them. A present shard is complete, so
the shards from the first up to the first gap are the usable ones.

:func:`pair_dataset` reads a complete folder as training data through the same grain pipeline
as the images (:func:`diffjax.data.pipeline.array_dataset`): batches ``{'image': sample,
'noise': noise, 'cond': {...}}`` in a seeded order, host-invariant and resumable from one
integer.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from diffjax.data.pipeline import Dataset, DatasetInfo, array_dataset
from diffjax.images import atomic_write

__all__ = [
    "PAIRS_MANIFEST",
    "PAIRS_NAME",
    "complete_shards",
    "load_pairs",
    "pair_dataset",
    "read_manifest",
    "write_manifest",
    "write_shard",
]

PAIRS_MANIFEST = "pairs.json"
PAIRS_NAME = "reflow_pairs"
_COND_PREFIX = "cond."


def _shard_path(pairs_dir: str, index: int) -> str:
    return os.path.join(pairs_dir, f"pairs_{index:05d}.npz")


def read_manifest(pairs_dir: str | os.PathLike) -> dict[str, Any]:
    """The settings a pair folder was generated with (its ``pairs.json``).

    Raises:
      FileNotFoundError: naming the folder, when it holds no manifest.
    """
    path = os.path.join(os.fspath(pairs_dir), PAIRS_MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{pairs_dir} holds no reflow pairs ({PAIRS_MANIFEST} is missing); make them with "
            f"python -m diffjax.reflow."
        )
    with open(path) as f:
        return json.load(f)


def write_manifest(pairs_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """Writes ``pairs.json`` atomically."""

    def write(tmp_path: str) -> None:
        with open(tmp_path, "w") as f:
            json.dump(dict(manifest), f, indent=2, sort_keys=True)

    atomic_write(os.path.join(os.fspath(pairs_dir), PAIRS_MANIFEST), write)


def write_shard(
    pairs_dir: str | os.PathLike,
    index: int,
    noise: np.ndarray,
    sample: np.ndarray,
    cond: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Writes shard ``index`` atomically (``noise``, ``sample`` and ``cond.<key>`` arrays)."""
    arrays = {"noise": noise, "sample": sample}
    arrays.update({_COND_PREFIX + key: value for key, value in (cond or {}).items()})

    def write(tmp_path: str) -> None:
        with open(tmp_path, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(_shard_path(os.fspath(pairs_dir), index), write)


def complete_shards(pairs_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> int:
    """How many shards, from the first, are present (a gap ends the count)."""
    batch, total = manifest["batch_size"], manifest["num_pairs"]
    count = 0
    while count * batch < total and os.path.exists(_shard_path(os.fspath(pairs_dir), count)):
        count += 1
    return count


def load_pairs(pairs_dir: str | os.PathLike) -> dict[str, Any]:
    """All pairs of a complete folder: ``{'image': samples, 'noise': noise, 'cond': {...}}``,
    float32 ``[N, ...]`` (cond arrays keep their dtype).

    Raises:
      FileNotFoundError: no manifest; ValueError: shards are missing.
    """
    pairs_dir = os.fspath(pairs_dir)
    manifest = read_manifest(pairs_dir)
    shards = complete_shards(pairs_dir, manifest)
    expected = -(-manifest["num_pairs"] // manifest["batch_size"])
    if shards < expected:
        raise ValueError(
            f"{pairs_dir} holds {shards} of its {expected} shards of pairs; finish them with "
            f"python -m diffjax.reflow (it resumes) before training on them."
        )
    columns: dict[str, list[np.ndarray]] = {}
    for index in range(shards):
        with np.load(_shard_path(pairs_dir, index)) as shard:
            for name in shard.files:
                columns.setdefault(name, []).append(shard[name])
    arrays = {name: np.concatenate(parts) for name, parts in columns.items()}
    cond = {
        name[len(_COND_PREFIX) :]: value
        for name, value in arrays.items()
        if name.startswith(_COND_PREFIX)
    }
    return {
        "image": arrays["sample"].astype(np.float32),
        "noise": arrays["noise"].astype(np.float32),
        "cond": cond,
    }


def pair_dataset(
    pairs_dir: str | os.PathLike,
    *,
    batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Dataset:
    """The pairs of a folder as training data (held in memory: 10k Fashion-MNIST pairs are
    63 MB), read by the image pipeline's grain stages.

    Args:
      pairs_dir: a complete pair folder.
      batch_size: b, pairs per batch on this host (the global batch is b * process count).
      seed: the order's seed.
      process_index: the host layout (default JAX's).
      process_count: the host layout (default JAX's).

    Returns:
      A :class:`~diffjax.data.pipeline.Dataset` (name ``'reflow_pairs'``) of batches
      ``{'image': [b, ...], 'noise': [b, ...], 'cond': {...}}``.

    Raises:
      FileNotFoundError / ValueError: no pairs, missing shards, or a global batch larger than
        the number of pairs.
    """
    pairs_dir = os.path.abspath(os.fspath(pairs_dir))
    arrays = load_pairs(pairs_dir)
    count = int(arrays["image"].shape[0])
    manifest = read_manifest(pairs_dir)
    if process_count is None and process_index is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    global_batch = batch_size * (process_count or 1)
    if global_batch > count:
        raise ValueError(
            f"the global batch {global_batch} is larger than the {count} pairs in {pairs_dir}."
        )
    info = DatasetInfo(PAIRS_NAME, "train", count, None, None, tuple(manifest["shape"]))
    return array_dataset(
        arrays, info, pipeline=dict(pairs=pairs_dir, num_pairs=count), batch_size=batch_size,
        seed=seed, process_index=process_index, process_count=process_count,
    )  # fmt: skip
