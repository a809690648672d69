"""Evaluating a trained run: sample, quantize, extract features, compare with reference data.

The protocol (what every result records, so that numbers can be compared):

- sample i is drawn with the key ``fold_in(key(seed), i)`` (:func:`diffjax.samplers.sample_keys`)
  and, for a class-conditional run, the label i mod K, so an N-sample evaluation draws the same
  samples on 1 device or 8, with any batch size, and after a restart (up to the CPU kernels'
  rounding: ``benchmarks/RESULTS.md``);
- samples are quantized to uint8 (:func:`diffjax.images.to_uint8`'s rounding) before the
  feature network, exactly like real images;
- features stream batch by batch into float64 moment sums (memory bounded by the batch) and,
  for KID, precision/recall and IS, into ``.npy`` files on disk;
- reference statistics come from a file (pytorch-fid / clean-fid ``.npz`` layout) or are built
  once from the run's evaluation split and cached in ``workdir/eval/``.

:class:`FeatureJob` does the streaming for both samples and reference data and resumes after a
kill: its folder keeps the moments and the number of images done (written atomically after each
batch), the feature files and the settings; a rerun with the same settings continues where it
stopped, one with other settings starts over.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffjax.images import atomic_write, to_uint8
from diffjax.metrics import frechet
from diffjax.metrics.feature_networks import FeatureNetwork, load_feature_network
from diffjax.training.config_validation import ConfigError
from diffjax.training.console import log
from diffjax.training.sharding import batch_sharding, host_batch_to_global
from diffjax.version import __version__

__all__ = [
    "EVAL_DIR",
    "EVAL_METRICS",
    "EvalSettings",
    "FeatureJob",
    "build_reference",
    "compute_metrics",
    "evaluate_run",
    "evaluate_samples",
    "gather_to_host",
    "reference_path",
    "run_reference",
]

EVAL_DIR = "eval"
EVAL_METRICS: tuple[str, ...] = ("fd", "is", "kid", "pr", "bpd")
"""``fd``: the Fréchet distance of the feature network (FID for 'inception', FD-FMNIST for
'fmnist'); ``is``: Inception Score; ``kid``: KID; ``pr``: precision and recall; ``bpd``: bits/dim on the
evaluation split, through the probability-flow ODE (``bpd_ode``, every process: uniformly
dequantized, :func:`diffjax.likelihood.ode_likelihood`) and, for a discrete schedule, also the
variational bound (``bpd``, :func:`diffjax.likelihood.bits_per_dim`)."""


class EvalSettings(NamedTuple):
    """What an evaluation does; all of it is recorded with the result.

    Attributes:
      metrics: a subset of :data:`EVAL_METRICS`.
      num_samples: N generated samples.
      batch_size: samples per compiled call (a multiple of the device count).
      sampler: a name of :data:`diffjax.samplers.SAMPLER_NAMES`.
      options: the sampler's keyword arguments (``num_steps``, ``prediction_type``, ...).
      guidance_scale: classifier-free guidance weight (1: none).
      ema: sample with the EMA weights (else the raw ones).
      seed: the samples' seed.
      features: the feature network's name.
      reference: a reference-statistics ``.npz``, or None to build it from the run's data.
      num_reference: images of the evaluation split in a built reference (0: all of it).
      bpd_num: evaluation images for bits/dim.
      bpd_timesteps: timesteps per image for the discrete bound (None: all T terms).
      bpd_rtol: rtol = atol of the ODE likelihood's solve.
      bpd_divergence: the ODE likelihood's divergence, ``'rademacher' | 'gaussian' | 'exact'``.
      bpd_autodiff: its Jacobian products, ``'forward' | 'reverse'`` (for a network with a
        ``custom_vjp``).
    """

    metrics: tuple[str, ...]
    num_samples: int
    batch_size: int
    sampler: str
    options: dict[str, Any]
    guidance_scale: float
    ema: bool
    seed: int
    features: str
    reference: str | None = None
    num_reference: int = 0
    bpd_num: int = 256
    bpd_timesteps: int | None = 100
    bpd_rtol: float = 1e-5
    bpd_divergence: str = "rademacher"
    bpd_autodiff: str = "forward"

    def check(self, num_devices: int) -> None:
        """Raises :class:`ConfigError` for a bad setting, before anything is compiled."""
        unknown = sorted(set(self.metrics) - set(EVAL_METRICS))
        if unknown or not self.metrics:
            raise ConfigError(f"metrics: unknown {unknown}; choose from {list(EVAL_METRICS)}.")
        if self.num_samples < 2 or self.batch_size < 1:
            raise ConfigError(
                f"the number of samples must be >= 2 and the batch >= 1, got "
                f"{self.num_samples} and {self.batch_size}."
            )
        if self.batch_size % num_devices:
            raise ConfigError(
                f"the batch size {self.batch_size} must be a multiple of the {num_devices} devices."
            )
        if "kid" in self.metrics and self.num_samples < 1000:
            raise ConfigError(
                f"KID uses subsets of 1000 samples; {self.num_samples} samples are too few "
                f"(use >= 1000, or leave kid out)."
            )
        from diffjax.likelihood import AUTODIFF_MODES, DIVERGENCE_METHODS

        if self.bpd_divergence not in DIVERGENCE_METHODS or not 0 < self.bpd_rtol < 1:
            raise ConfigError(
                f"bpd_divergence must be one of {list(DIVERGENCE_METHODS)} and 0 < bpd_rtol < 1, "
                f"got {self.bpd_divergence!r} and {self.bpd_rtol}."
            )
        if self.bpd_autodiff not in AUTODIFF_MODES:
            raise ConfigError(
                f"bpd_autodiff must be one of {list(AUTODIFF_MODES)}, got {self.bpd_autodiff!r}."
            )
        if self.bpd_num < 1 or self.num_reference < 0:
            raise ConfigError(
                f"bpd_num must be >= 1 and num_reference >= 0, got {self.bpd_num} and "
                f"{self.num_reference}."
            )

    def record(self) -> dict[str, Any]:
        """The settings as JSON data."""
        return json.loads(json.dumps(self._asdict()))


def gather_to_host(array: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-host) sharded array as NumPy, on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(jax.device_get(array))


def _broadcast_int(value: int) -> int:
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def _broadcast_json(value: Any) -> Any:
    """Process 0's JSON-serialisable ``value``, on every process."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    text = np.frombuffer(json.dumps(value).encode(), np.uint8)
    size = _broadcast_int(text.size)
    buffer = np.zeros(size, np.uint8)
    if jax.process_index() == 0:
        buffer[:] = text
    return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))).decode())


def _sync_processes(name: str) -> None:
    """Waits until every process gets here (after process 0 wrote a file the others read)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"diffjax-{name}")


def _write_json(path: str, payload: Any) -> None:
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
            _write_json(settings_path, self.settings)
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
        done = _broadcast_int(self.done)
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


def _keep(metrics: Sequence[str]) -> tuple[str, ...]:
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
    sample_fn: Callable, params: Any, seed: int, num_classes: int | None, mesh: Mesh
) -> Callable[[int, int], jax.Array]:
    """``make_images(start, count)`` of generated samples ``start .. start + count - 1`` (keys
    ``fold_in(key(seed), i)``, labels i mod K), quantized to uint8 on the devices."""
    from diffjax.samplers import sample_keys

    quantize = jax.jit(
        lambda x: jnp.round((jnp.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8),
        out_shardings=batch_sharding(mesh),
    )

    def make_images(start: int, count: int) -> jax.Array:
        labels = None
        if num_classes is not None:
            labels = jnp.asarray(np.arange(start, start + count) % num_classes, jnp.int32)
        return quantize(sample_fn(params, sample_keys(seed, start, count), labels))

    return make_images


def reference_path(
    workdir: str, network: FeatureNetwork, dataset: str, split: str, num: int
) -> str:
    """Where a run's built reference statistics are cached."""
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{dataset}_{split}")
    return os.path.join(workdir, EVAL_DIR, f"reference_{network.name}_{name}_{num or 'all'}.npz")


def build_reference(
    values: Mapping[str, Any],
    network: FeatureNetwork,
    mesh: Mesh,
    path: str,
    *,
    split: str,
    num: int = 0,
    batch_size: int = 256,
    progress: bool = True,
) -> str:
    """Reference statistics (and features) of a dataset split, written to ``path``; resumable.

    Args:
      values: a validated config (its ``data`` section names the dataset).
      network: the feature network.
      mesh: the devices.
      path: the ``.npz`` to write.
      split: the split to read (e.g. ``'test'``, ``'train[:10000]'``).
      num: the first ``num`` images of the split (0: all).
      batch_size: images per batch (a multiple of the device count).
      progress: show a progress bar.

    Returns:
      ``path``.
    """
    from diffjax.training.data import dataset_from_config

    batch_size = max(mesh.devices.size, batch_size - batch_size % mesh.devices.size)
    dataset = dataset_from_config(
        values, mesh, split, batch_size, shuffle=False, num_epochs=1, drop_remainder=False
    )
    info = dataset.info
    network.check_image_shape(info.image_shape)
    total = info.num_examples if not num else min(num, info.num_examples)
    settings = dict(dataset=values["data"]["name"], split=split, image_size=info.image_shape)
    job = FeatureJob(path + ".partial", total, network, keep=("features",), settings=settings)
    source = real_image_source(dataset, mesh)
    try:
        skip = _broadcast_int(job.done)
        for _ in range(skip // batch_size):
            next(source.iterator)
        job.run(source, batch_size, description=f"reference {split}", progress=progress)
    finally:
        source.iterator.close()
    if jax.process_index() == 0:
        frechet.save_statistics(
            path, job.statistics(), features=np.asarray(job.arrays["features"]),
            network=network.record(), dataset=values["data"]["name"], split=split, count=total,
            image_shape=list(info.image_shape),
        )  # fmt: skip
    _sync_processes(f"reference-{os.path.basename(path)}")
    job.remove()
    return path


def run_reference(
    workdir: str,
    values: Mapping[str, Any],
    network: FeatureNetwork,
    mesh: Mesh,
    *,
    num: int = 0,
    batch_size: int = 256,
    progress: bool = True,
) -> str:
    """The path of a run's reference statistics of its ``config.eval.split``, built (and
    cached in ``workdir/eval/``) the first time they are asked for."""
    split = values["eval"]["split"]
    path = reference_path(workdir, network, values["data"]["name"], split, num)
    if not _broadcast_int(int(os.path.exists(path))):
        log(f"diffjax: reference statistics of {values['data']['name']}:{split} -> {path}")
        build_reference(
            values, network, mesh, path, split=split, num=num, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip
    return path


def _load_reference(path: str, network: FeatureNetwork, needs_features: bool):
    try:
        stats, metadata = frechet.load_statistics(path, expected_dim=network.dim)
    except (OSError, ValueError) as error:
        raise ConfigError(f"reference statistics: {error}") from error
    recorded = metadata.get("network", {}).get("sha256")
    if recorded is not None and recorded != network.sha256:
        raise ConfigError(
            f"{path} was built with other {network.name!r} weights (sha256 {recorded[:12]}..., "
            f"this network's are {network.sha256[:12]}...); rebuild it."
        )
    features = frechet.load_features(path) if needs_features else None
    if needs_features and features is None:
        raise ConfigError(
            f"{path} holds only mu and sigma; KID and precision/recall need the reference "
            f"features too (build them with python -m diffjax.evaluate --make_reference_stats)."
        )
    return stats, metadata, features


def _save_array(path: str, array: np.ndarray) -> None:
    def write(tmp_path: str) -> None:
        with open(tmp_path, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def _bits_per_dim(
    run: Any, settings: EvalSettings, mesh: Mesh, folder: str, method: str
) -> dict[str, Any]:
    """Mean bits/dim on the first ``bpd_num`` evaluation images, resumably (per-image values
    are saved after each batch).

    ``method`` 'vlb' is the discrete variational bound (``bpd_timesteps`` timesteps per image),
    'ode' the probability-flow ODE likelihood with uniform dequantization; image i draws its
    randomness from ``fold_in(seed, i)``.
    """
    from diffjax.likelihood import bits_per_dim, ode_likelihood
    from diffjax.samplers import sample_keys
    from diffjax.training.data import dataset_from_config

    values = run.config
    batch_size = settings.batch_size
    dataset = dataset_from_config(
        values, mesh, values["eval"]["split"], batch_size, shuffle=False, num_epochs=1,
        drop_remainder=False,
    )  # fmt: skip
    total = min(settings.bpd_num, dataset.info.num_examples)
    model, process = run.model, run.process
    params = run.state.ema_params if settings.ema else run.state.params
    prediction_type = values["diffusion"]["prediction_type"]
    conditional = model.num_classes is not None

    @jax.jit
    def batch_bpd(params, images, labels, keys):
        def model_fn(x_t, t):
            return model.apply(
                {"params": params}, x_t, t, labels if conditional else None, train=False
            )

        if method == "vlb":
            bound = bits_per_dim(
                model_fn, process, images, keys[0], prediction_type=prediction_type,
                num_timesteps=settings.bpd_timesteps,
            )  # fmt: skip
            return bound.bpd, jnp.zeros((), jnp.int32)
        result = ode_likelihood(
            model_fn, process, images, keys, prediction_type=prediction_type,
            divergence=settings.bpd_divergence, autodiff=settings.bpd_autodiff,
            rtol=settings.bpd_rtol, atol=settings.bpd_rtol,
        )  # fmt: skip
        return result.bpd, result.stats.num_function_evals

    name = "bpd" if method == "vlb" else "bpd_ode"
    path = os.path.join(folder, f"{name}.npy")
    values_done = (
        np.load(path) if os.path.exists(path) and jax.process_index() == 0 else np.zeros(0)
    )
    done = _broadcast_int(values_done.size)
    evaluations = []
    start = time.perf_counter()
    iterator = iter(dataset)
    try:
        for _ in range(done // batch_size):
            next(iterator)
        collected = [values_done]
        while done < total:
            batch = next(iterator)
            images = np.asarray(batch["image"])
            labels = np.asarray(batch.get("label", np.zeros(images.shape[0], np.int32)))
            wanted = batch_size * len(mesh.local_devices) // mesh.devices.size
            if images.shape[0] < wanted:
                images = np.concatenate(
                    [images, np.repeat(images[-1:], wanted - images.shape[0], 0)]
                )
                labels = np.concatenate([labels, np.repeat(labels[-1:], wanted - labels.shape[0])])
            batch = host_batch_to_global({"image": images, "label": labels.astype(np.int32)}, mesh)
            if method == "vlb":
                keys = jax.random.fold_in(jax.random.key(settings.seed), done)[None]
            else:
                keys = sample_keys(settings.seed, done, batch_size)
            bpd, nfe = batch_bpd(params, batch["image"], batch["label"], keys)
            result = gather_to_host(bpd)
            evaluations.append(int(nfe))
            count = min(batch_size, total - done)
            collected.append(result[:count])
            done += count
            if jax.process_index() == 0:
                _save_array(path, np.concatenate(collected))
    finally:
        iterator.close()
    bpd = np.concatenate(collected)
    summary = dict(
        mean=float(bpd.mean()), std_error=float(bpd.std(ddof=1) / math.sqrt(bpd.size)),
        num_images=int(bpd.size), seconds=round(time.perf_counter() - start, 2),
    )  # fmt: skip
    if method == "vlb":
        return dict(summary, timesteps=settings.bpd_timesteps or "all")
    return dict(
        summary, rtol=settings.bpd_rtol, divergence=settings.bpd_divergence,
        autodiff=settings.bpd_autodiff, dequantized=True,
        mean_function_evals=float(np.mean(evaluations)) if evaluations else None,
    )  # fmt: skip


def evaluate_run(
    workdir: str | os.PathLike,
    settings: EvalSettings,
    *,
    weights_path: str | None = None,
    download: bool = True,
    mesh: Mesh | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluates the newest good checkpoint of a run and writes ``workdir/eval/<step>.json``.

    Resumable: a rerun after a kill continues the sampling, the reference and bits/dim where
    they stopped.

    Args:
      workdir: the run's folder.
      settings: the :class:`EvalSettings`.
      weights_path: a local copy of the feature network's weights (Inception).
      download: whether the Inception weights may be downloaded.
      mesh: the devices (default all).
      progress: show progress bars.

    Returns:
      The result record (also written as JSON): ``step``, ``results``, ``protocol``,
      ``seconds``.

    Raises:
      ConfigError: a bad setting, caught before anything is compiled; WorkdirError /
        NoUsableCheckpointError: no run or checkpoint; WeightsUnavailableError: no Inception
        weights.
    """
    from diffjax.processes import is_discrete
    from diffjax.samplers import check_sampler_options
    from diffjax.training.sampling import make_sample_fn
    from diffjax.training.sharding import make_mesh
    from diffjax.training.trained_run import load_trained_run

    start_time = time.perf_counter()
    workdir = os.path.abspath(os.fspath(workdir))
    mesh = make_mesh() if mesh is None else mesh
    settings.check(mesh.devices.size)
    run = load_trained_run(workdir, mesh)
    values = run.config
    image_shape = tuple(run.dataset["image_shape"])
    try:
        check_sampler_options(settings.sampler, run.process, settings.options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"sampler {settings.sampler!r}: {error}") from error
    feature_metrics = [m for m in settings.metrics if m != "bpd"]
    network = load_feature_network(settings.features, weights_path=weights_path, download=download)
    try:
        network.check_image_shape(image_shape)
    except ValueError as error:
        raise ConfigError(f"features {settings.features!r}: {error}") from error
    folder = os.path.join(workdir, EVAL_DIR, f"{run.step}.partial")
    if jax.process_index() == 0:
        os.makedirs(folder, exist_ok=True)

    needs_reference = any(m in feature_metrics for m in ("fd", "kid", "pr"))
    needs_features = any(m in feature_metrics for m in ("kid", "pr"))
    reference_record = None
    reference = reference_features = None
    if needs_reference:
        path = settings.reference or run_reference(
            workdir, values, network, mesh, num=settings.num_reference,
            batch_size=settings.batch_size, progress=progress,
        )  # fmt: skip
        reference, metadata, reference_features = _load_reference(path, network, needs_features)
        reference_record = dict(path=path, metadata=metadata, count=reference.count)

    results: dict[str, Any] = {}
    if feature_metrics:
        sample_fn = make_sample_fn(
            run.model, run.process, image_shape=image_shape, num_samples=settings.batch_size,
            sampler=settings.sampler, options=settings.options,
            guidance_scale=settings.guidance_scale, clip_x0=values["sampling"]["clip_x0"],
            mesh=mesh,
        )  # fmt: skip
        params = run.state.ema_params if settings.ema else run.state.params
        job = FeatureJob(
            os.path.join(folder, "samples"), settings.num_samples, network,
            keep=_keep(feature_metrics), settings=dict(step=run.step, **settings.record()),
        )  # fmt: skip
        source = sample_image_source(sample_fn, params, settings.seed, run.model.num_classes, mesh)
        job.run(source, settings.batch_size, description="samples", progress=progress)
        if jax.process_index() == 0:  # the only process that holds a resumed job's arrays
            results.update(
                compute_metrics(
                    feature_metrics, network, job, reference, reference_features, settings.seed
                )
            )
    if "bpd" in settings.metrics:
        if is_discrete(run.process):
            results["bpd"] = _bits_per_dim(run, settings, mesh, folder, "vlb")
        results["bpd_ode"] = _bits_per_dim(run, settings, mesh, folder, "ode")
    results = _broadcast_json(results)

    record = dict(
        step=run.step,
        results=results,
        protocol=dict(
            settings.record(),
            network=network.record(),
            reference=reference_record,
            weights="ema" if settings.ema else "raw",
            devices=mesh.devices.size,
            processes=jax.process_count(),
            platform=jax.devices()[0].platform,
            diffjax_version=__version__,
        ),
        seconds=time.perf_counter() - start_time,
    )
    if jax.process_index() == 0:
        _write_json(os.path.join(workdir, EVAL_DIR, f"{run.step}.json"), record)
        shutil.rmtree(folder, ignore_errors=True)
    return record


def evaluate_samples(
    samples_path: str,
    reference: str,
    *,
    features: str,
    metrics: Sequence[str] = ("fd",),
    batch_size: int = 256,
    weights_path: str | None = None,
    download: bool = True,
    mesh: Mesh | None = None,
) -> dict[str, Any]:
    """Scores samples made elsewhere (another library, another script) with this protocol.

    Args:
      samples_path: an ``.npz`` whose ``samples`` are ``[N, H, W, C]`` floats in [-1, 1]
        (quantized here with :func:`diffjax.images.to_uint8`) or uint8.
      reference: reference statistics (with features for KID and precision/recall).
      features: the feature network's name.
      metrics: a subset of ``('fd', 'kid', 'pr', 'is')``.
      batch_size: images per batch.
      weights_path, download: the Inception weights, as in :func:`evaluate_run`.
      mesh: the devices.

    Returns:
      ``{'results': ..., 'protocol': ...}``; the protocol records the samples file's SHA-256.
    """
    from diffjax.training.sharding import make_mesh
    from diffjax.weights import sha256_of_file

    mesh = make_mesh() if mesh is None else mesh
    if "bpd" in metrics:
        raise ConfigError("bpd needs the model, not samples; evaluate the run's --workdir.")
    with np.load(samples_path, allow_pickle=False) as data:
        if "samples" not in data:
            raise ConfigError(f"{samples_path} needs an array 'samples' [N, H, W, C].")
        samples = np.asarray(data["samples"])
    if samples.ndim != 4:
        raise ConfigError(f"{samples_path}: samples must be [N, H, W, C], got {samples.shape}.")
    images = samples if samples.dtype == np.uint8 else to_uint8(samples)
    network = load_feature_network(features, weights_path=weights_path, download=download)
    try:
        network.check_image_shape(images.shape[1:])
    except ValueError as error:
        raise ConfigError(str(error)) from error
    stats, metadata, reference_features = _load_reference(
        reference, network, any(m in metrics for m in ("kid", "pr"))
    )
    batch_size = max(mesh.devices.size, batch_size - batch_size % mesh.devices.size)
    padded = np.concatenate([images, np.repeat(images[-1:], -len(images) % batch_size, axis=0)])

    def make_images(start: int, count: int) -> jax.Array:
        return jax.device_put(padded[start : start + count], batch_sharding(mesh))

    job = FeatureJob(None, len(images), network, keep=_keep(metrics), settings={})
    job.run(make_images, batch_size, description="samples")
    results = compute_metrics(metrics, network, job, stats, reference_features, seed=0)
    protocol = dict(
        samples=dict(path=os.path.abspath(samples_path), sha256=sha256_of_file(samples_path),
                     num_samples=len(images)),
        network=network.record(),
        reference=dict(path=reference, metadata=metadata, count=stats.count),
        diffjax_version=__version__,
    )  # fmt: skip
    return dict(results=results, protocol=protocol)


def fd_during_training(
    network: FeatureNetwork,
    sample_fn: Callable,
    params: Any,
    reference: frechet.FeatureStatistics,
    *,
    num_samples: int,
    batch_size: int,
    seed: int,
    num_classes: int | None,
    mesh: Mesh,
) -> float:
    """The Fréchet distance of ``num_samples`` samples (in memory, not resumable): what the
    training loop logs every ``config.eval.fd_every_steps``."""
    job = FeatureJob(None, num_samples, network, settings={})
    job.run(
        sample_image_source(sample_fn, params, seed, num_classes, mesh), batch_size, progress=False
    )
    return frechet.frechet_distance(job.statistics(), reference)


def log_table(record: Mapping[str, Any]) -> None:
    """Prints a result's metrics as a small table through :func:`~diffjax.training.console.log`."""
    for name, value in record["results"].items():
        if isinstance(value, dict) and "mean" in value and "std" in value:
            text = f"{value['mean']:.6g} +- {value['std']:.3g}"
        elif isinstance(value, dict):
            text = f"{value['mean']:.6g} +- {value['std_error']:.3g} (standard error)"
            if value.get("mean_function_evals"):
                text += f", {value['mean_function_evals']:.0f} NFE per batch"
            if "seconds" in value:
                text += f", {value['seconds']:.0f} s"
        else:
            text = f"{value:.6g}"
        log(f"  {name:<12} {text}")
