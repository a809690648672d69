"""Streamed, resumable feature jobs: images in, float64 moments and feature files out.

:class:`FeatureJob` streams the features of generated samples or of real images batch by
batch into float64 moment sums (memory bounded by the batch) and, for KID, precision/recall and
IS, into ``.npy`` files on disk. It resumes after a kill: its folder keeps the moments and the
number of images done (written atomically after each batch), the feature files and the
settings; a rerun with the same settings continues where it stopped, one with other settings
starts over. Images reach it through a *source* ``make_images(start, count)`` (uint8 global
arrays): :func:`real_image_source` reads a dataset in order, :func:`sample_image_source` draws
samples ``start .. start + count - 1`` (keys ``fold_in(key(seed), i)``) and quantizes them like
real images.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffjax.images import atomic_write, to_uint8
from diffjax.metrics import frechet
from diffjax.metrics.feature_networks import FeatureNetwork
from diffjax.sharding import batch_sharding, broadcast_int, gather_to_host, host_batch_to_global

__all__ = [
    "FeatureJob",
    "compute_metrics",
    "frechet_distance_of_samples",
    "kept_outputs",
    "real_image_source",
    "sample_image_source",
    "write_json",
]


def write_json(path: str, payload: Any) -> None:
    """Writes ``payload`` as indented JSON, atomically."""

    def write(tmp_path: str) -> None:
        with open(tmp_path, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, sort_keys=True)

    atomic_write(path, write)


class FeatureJob:
    """Streams the features (and logits) of ``total`` images into moments and arrays.

    Args:
      folder: where the partial state lives (None: in memory only, not resumable).
      total: the number of images.
      network: the feature network.
      keep: which outputs to keep for every image: ``'features'`` (KID, precision/recall)
        and/or ``'logits'`` (IS); the moments are always accumulated.
      settings: what defines the images (JSON data); a folder written with other settings is
        discarded.
    """

    def __init__(
        self,
        folder: str | None,
        total: int,
        network: FeatureNetwork,
        *,
        keep: Sequence[str] = (),
        settings: Mapping[str, Any],
    ) -> None:
        self.folder, self.total, self.network = folder, total, network
        self.keep = tuple(keep)
        self.settings = json.loads(
            json.dumps(dict(settings, total=total, network=network.record(), keep=list(keep)))
        )
        self.moments = frechet.empty_moments(network.dim)
        self.done = 0
        dims = dict(features=network.dim, logits=network.logits_dim)
        if folder is None:
            self.arrays = {name: np.zeros((total, dims[name]), np.float32) for name in self.keep}
            return
        self.arrays = {}
        if jax.process_index() == 0:
            self._open(dims)

    def _path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def _open(self, dims: Mapping[str, int]) -> None:
        settings_path = self._path("settings.json")
        stored = None
        if os.path.exists(settings_path):
            with open(settings_path, encoding="utf-8") as f:
                stored = json.load(f)
        if stored != self.settings:
            shutil.rmtree(self.folder, ignore_errors=True)
            os.makedirs(self.folder)
            write_json(settings_path, self.settings)
        elif os.path.exists(self._path("progress.npz")):
            with np.load(self._path("progress.npz")) as progress:
                self.done = int(progress["done"])
                self.moments = frechet.FeatureMoments(
                    int(progress["count"]), progress["shift"], progress["total"], progress["outer"]
                )
        for name in self.keep:
            path = self._path(f"{name}.npy")
            mode = "r+" if os.path.exists(path) else "w+"
            self.arrays[name] = np.lib.format.open_memmap(
                path, mode, np.float32, (self.total, dims[name])
            )

    def _save_progress(self) -> None:
        for array in self.arrays.values():
            array.flush()

        def write(tmp_path: str) -> None:
            with open(tmp_path, "wb") as f:
                np.savez(
                    f, done=self.done, count=self.moments.count, shift=self.moments.shift,
                    total=self.moments.total, outer=self.moments.outer,
                )  # fmt: skip

        atomic_write(self._path("progress.npz"), write)

    def run(
        self,
        make_images: Callable[[int, int], jax.Array],
        batch_size: int,
        *,
        description: str = "features",
        progress: bool = True,
    ) -> None:
        """Computes the missing batches.

        Args:
          make_images: ``make_images(start, count)`` -> uint8 images ``[count, H, W, C]``
            (possibly sharded) of images ``start .. start + count - 1``; it always gets
            ``count = batch_size`` (the last batch's extra images are dropped).
          batch_size: images per call.
          description: the progress bar's label.
          progress: show a tqdm bar on process 0.
        """
        done = broadcast_int(self.done)
        bar = None
        if progress and jax.process_index() == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total, initial=done, unit="img", desc=description, leave=False)
        try:
            while done < self.total:
                outputs = self.network.apply(self.network.variables, make_images(done, batch_size))
                count = min(batch_size, self.total - done)
                keys = dict(features=self.network.feature_key, logits=self.network.logits_key)
                features = gather_to_host(outputs[self.network.feature_key])[:count]
                self.moments = frechet.accumulate_moments(self.moments, features)
                for name in self.keep:  # a gather is a collective: every process takes part
                    kept = gather_to_host(outputs[keys[name]])[:count]
                    if name in self.arrays:
                        self.arrays[name][done : done + count] = kept
                done += count
                self.done = done
                if self.folder is not None and jax.process_index() == 0:
                    self._save_progress()
                if bar is not None:
                    bar.update(count)
        finally:
            if bar is not None:
                bar.close()

    def statistics(self) -> frechet.FeatureStatistics:
        """The Gaussian fit of all ``total`` feature vectors."""
        return frechet.statistics_from_moments(self.moments)

    def remove(self) -> None:
        """Deletes the folder (after the result is written; only process 0 writes)."""
        if self.folder is not None and jax.process_index() == 0:
            shutil.rmtree(self.folder, ignore_errors=True)


def compute_metrics(
    metrics: Sequence[str],
    network: FeatureNetwork,
    samples: FeatureJob,
    reference: frechet.FeatureStatistics | None,
    reference_features: np.ndarray | None,
    seed: int,
) -> dict[str, Any]:
    """The requested metrics of the sample features against the reference.

    Returns:
      ``{name: value}``: ``fid`` or ``fd_fmnist`` (float), ``is`` and ``kid`` as
      ``{'mean', 'std'}``, ``precision`` and ``recall`` (floats).
    """
    from diffjax.metrics import inception_score, kernel_inception_distance, precision_recall

    results: dict[str, Any] = {}
    if "fd" in metrics:
        results[network.fd_name] = frechet.frechet_distance(samples.statistics(), reference)
    if "is" in metrics:
        mean, std = inception_score(np.asarray(samples.arrays["logits"]))
        results["is"] = dict(mean=mean, std=std)
    if "kid" in metrics:
        mean, std = kernel_inception_distance(
            np.asarray(samples.arrays["features"]), reference_features, seed=seed
        )
        results["kid"] = dict(mean=mean, std=std)
    if "pr" in metrics:
        precision, recall = precision_recall(
            reference_features, np.asarray(samples.arrays["features"])
        )
        results["precision"], results["recall"] = precision, recall
    return results


def kept_outputs(metrics: Sequence[str]) -> tuple[str, ...]:
    """Which per-image outputs a FeatureJob must keep for ``metrics``: 'features' (KID,
    precision/recall), 'logits' (IS)."""
    keep = []
    if "kid" in metrics or "pr" in metrics:
        keep.append("features")
    if "is" in metrics:
        keep.append("logits")
    return tuple(keep)


def real_image_source(dataset: Any, mesh: Mesh) -> Callable[[int, int], jax.Array]:
    """``make_images(start, count)`` reading a dataset once in order, as uint8 global arrays.

    The dataset is built with ``shuffle=False, num_epochs=1, drop_remainder=False`` and this
    host's share of ``count``; a short last batch is padded by repeating its last image.
    """
    iterator = iter(dataset)

    def make_images(start: int, count: int) -> jax.Array:
        images = to_uint8(np.asarray(next(iterator)["image"]))
        wanted = count * len(mesh.local_devices) // mesh.devices.size
        if images.shape[0] < wanted:
            padding = np.repeat(images[-1:], wanted - images.shape[0], axis=0)
            images = np.concatenate([images, padding])
        return host_batch_to_global({"image": images}, mesh)["image"]

    make_images.iterator = iterator
    return make_images


def sample_image_source(
    draw: Callable[[int, int], jax.Array], mesh: Mesh
) -> Callable[[int, int], jax.Array]:
    """``make_images(start, count)`` of generated samples ``start .. start + count - 1``,
    quantized to uint8 on the devices like real images.

    Args:
      draw: ``draw(start, count) -> images [count, H, W, C]`` in [-1, 1], sample i drawn from
        its own key and condition (:func:`diffjax.training.programs.sample_drawer`).
      mesh: the mesh the quantized images are split over.
    """
    quantize = jax.jit(
        lambda x: jnp.round((jnp.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8),
        out_shardings=batch_sharding(mesh),
    )

    def make_images(start: int, count: int) -> jax.Array:
        return quantize(draw(start, count))

    return make_images


def frechet_distance_of_samples(
    network: FeatureNetwork,
    draw: Callable[[int, int], jax.Array],
    reference: frechet.FeatureStatistics,
    *,
    num_samples: int,
    batch_size: int,
    mesh: Mesh,
) -> float:
    """The Fréchet distance of ``num_samples`` samples of ``draw`` (in memory, not resumable):
    what the training loop logs every ``config.eval.fd_every_steps``."""
    job = FeatureJob(None, num_samples, network, settings={})
    job.run(sample_image_source(draw, mesh), batch_size, progress=False)
    return frechet.frechet_distance(job.statistics(), reference)
