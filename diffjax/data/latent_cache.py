"""A latent diffusion run's training set encoded once: the latent cache, on disk and as data.

With ``config.training.latent_cache = DIR`` a run whose codec is an autoencoder encodes its
training split once, in order, into shards ``latents_00000.npz`` (each written atomically:
``moments`` ``[b, h, w, c]``, the encoder's unscaled output, a KL posterior's mean and log
variance side by side or a VQ autoencoder's encodings, and ``cond.<key>`` arrays) beside a
manifest ``latent_cache.json`` naming the autoencoder (its source and step or checksum), the
dataset and the shard size. A killed encoding resumes at the first missing shard; a folder made
from another autoencoder or dataset is refused, never overwritten. Training then reads the
moments instead of the images (the step draws each posterior sample anew and scales it, so the
cache does not fix the noise or the scale), through the same grain pipeline as reflow's pairs
(:func:`diffjax.data.pipeline.array_dataset`): seeded, host-invariant, resumable.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from diffjax.data.pipeline import Dataset, DatasetInfo, array_dataset
from diffjax.images import atomic_write

__all__ = [
    "LATENT_CACHE_MANIFEST",
    "LATENT_CACHE_NAME",
    "build_latent_cache",
    "latent_cache_dataset",
    "load_latent_cache",
]

LATENT_CACHE_MANIFEST = "latent_cache.json"
LATENT_CACHE_NAME = "latent_cache"
_COND_PREFIX = "cond."


def _shard_path(cache_dir: str, index: int) -> str:
    return os.path.join(cache_dir, f"latents_{index:05d}.npz")


def _num_shards(manifest: Mapping[str, Any]) -> int:
    return -(-manifest["num_examples"] // manifest["shard_size"])


def _complete_shards(cache_dir: str, manifest: Mapping[str, Any]) -> int:
    count = 0
    while count < _num_shards(manifest) and os.path.exists(_shard_path(cache_dir, count)):
        count += 1
    return count


def _write_atomic(path: str, write: Callable[[Any], None], mode: str) -> None:
    def write_file(tmp_path: str) -> None:
        with open(tmp_path, mode) as file:
            write(file)

    atomic_write(path, write_file)


def build_latent_cache(
    cache_dir: str | os.PathLike,
    manifest: Mapping[str, Any],
    batches: Callable[[int], Iterator[tuple[np.ndarray, Mapping[str, np.ndarray]]]],
    log: Callable[[str], None] = print,
) -> None:
    """Writes (or finishes) a latent cache.

    Args:
      cache_dir: the folder.
      manifest: what the cache is of: at least ``num_examples`` and ``shard_size``, and the
        autoencoder and dataset it comes from (compared with a folder's own).
      batches: ``batches(first_shard)`` yields ``(moments [b, ...], cond {key: [b, ...]})`` for
        the shards from ``first_shard`` on, in order, ``shard_size`` examples each (fewer in
        the last).
      log: progress messages.

    Raises:
      ValueError: the folder holds a cache of something else.
    """
    cache_dir = os.fspath(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, LATENT_CACHE_MANIFEST)
    if os.path.exists(path):
        with open(path) as file:
            existing = json.load(file)
        if existing != json.loads(json.dumps(dict(manifest))):
            changed = sorted(
                key
                for key in set(existing) | set(manifest)
                if existing.get(key) != manifest.get(key)
            )
            raise ValueError(
                f"{cache_dir} holds a latent cache of another autoencoder or dataset (differing: "
                f"{changed}); choose a new config.training.latent_cache (nothing was changed)."
            )
    else:
        _write_atomic(
            path, lambda file: json.dump(dict(manifest), file, indent=2, sort_keys=True), "w"
        )
    total, first = _num_shards(manifest), _complete_shards(cache_dir, manifest)
    if first == total:
        return
    log(
        f"diffjax: encoding {manifest['num_examples']} images into {cache_dir} (shards {first}-{total - 1})"
    )
    for index, (moments, cond) in enumerate(batches(first), start=first):
        arrays = {"moments": np.asarray(moments, np.float32)}
        arrays.update({_COND_PREFIX + key: np.asarray(value) for key, value in cond.items()})
        _write_atomic(_shard_path(cache_dir, index), lambda file: np.savez(file, **arrays), "wb")
        if index + 1 == total:
            break
    if _complete_shards(cache_dir, manifest) != total:
        raise ValueError(f"the encoding of {cache_dir} ended before its {total} shards.")


def load_latent_cache(cache_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """A complete cache: ``({'moments': [N, ...], 'cond': {...}}, manifest)``.

    Raises:
      FileNotFoundError: no manifest; ValueError: missing shards.
    """
    cache_dir = os.fspath(cache_dir)
    with open(os.path.join(cache_dir, LATENT_CACHE_MANIFEST)) as file:
        manifest = json.load(file)
    shards = _complete_shards(cache_dir, manifest)
    if shards < _num_shards(manifest):
        raise ValueError(f"{cache_dir} holds {shards} of its {_num_shards(manifest)} shards.")
    columns: dict[str, list[np.ndarray]] = {}
    for index in range(shards):
        with np.load(_shard_path(cache_dir, index)) as shard:
            for name in shard.files:
                columns.setdefault(name, []).append(shard[name])
    arrays = {name: np.concatenate(parts) for name, parts in columns.items()}
    cond = {
        name[len(_COND_PREFIX) :]: value
        for name, value in arrays.items()
        if name.startswith(_COND_PREFIX)
    }
    return {"moments": arrays["moments"], "cond": cond}, manifest


def latent_cache_dataset(
    cache_dir: str | os.PathLike,
    info: DatasetInfo,
    *,
    batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
) -> Dataset:
    """A complete cache as training data: batches ``{'moments': [b, ...], 'cond': {...}}``.

    Args:
      cache_dir: the folder.
      info: the description of the images it encodes (their shape and conditioning).
      batch_size: examples per batch on this host.
      seed: the order's seed.
      process_index: the host layout.
      process_count: the host layout.
    """
    cache_dir = os.path.abspath(os.fspath(cache_dir))
    arrays, _ = load_latent_cache(cache_dir)
    count = int(arrays["moments"].shape[0])
    described = info._replace(name=LATENT_CACHE_NAME, num_examples=count)
    return array_dataset(
        arrays, described, pipeline=dict(latent_cache=cache_dir, num_examples=count),
        batch_size=batch_size, seed=seed, process_index=process_index,
        process_count=process_count,
    )  # fmt: skip
