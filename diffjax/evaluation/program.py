"""The evaluate program: a trained run's samples scored against reference data, recorded with
the protocol that makes numbers comparable.

The protocol (what every result records):

- sample i is drawn with the key ``fold_in(key(seed), i)`` (:func:`diffjax.samplers.sample_keys`)
  and, for a class-conditional run, the label i mod K, so an N-sample evaluation draws the same
  samples on 1 device or 8, with any batch size, and after a restart (up to the CPU kernels'
  rounding: ``benchmarks/RESULTS.md``);
- samples are quantized to uint8 (:func:`diffjax.images.to_uint8`'s rounding) before the
  feature network, exactly like real images;
- features stream into float64 moments (:mod:`diffjax.evaluation.features`), reference
  statistics come from a file or are built once from the run's evaluation split
  (:mod:`diffjax.evaluation.references`), bits/dim from :mod:`diffjax.evaluation.likelihood`.

Everything resumes after a kill when rerun with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from diffjax.errors import ConfigError
from diffjax.evaluation.features import (
    FeatureJob,
    compute_metrics,
    kept_outputs,
    sample_image_source,
    write_json,
)
from diffjax.evaluation.likelihood import bits_per_dim_job
from diffjax.evaluation.references import load_reference, run_reference
from diffjax.images import to_uint8
from diffjax.metrics.feature_networks import load_feature_network
from diffjax.sharding import batch_sharding, broadcast_json
from diffjax.training.console import log
from diffjax.training.workdir import EVAL_DIR
from diffjax.version import __version__

__all__ = [
    "EVAL_METRICS",
    "EvalSettings",
    "evaluate_run",
    "evaluate_samples",
    "log_table",
    "read_samples",
]

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
      classifier: the workdir of a noisy classifier guiding the samples (classifier guidance,
        sample i towards class i mod K), or None.
      classifier_scale: its guidance scale.
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
    classifier: str | None = None
    classifier_scale: float = 1.0

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

    def result_name(self, step: int) -> str:
        """The file name (without ``.json``) of this evaluation's result at ``step``:
        ``<step>-<sampler>-<num_samples>-<digest>``, the digest a SHA-256 of every setting, so
        evaluations with other settings never overwrite each other's results."""
        text = json.dumps(self.record(), sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        return f"{step}-{self.sampler}-{self.num_samples}-{digest}"


def evaluate_run(
    workdir: str | os.PathLike,
    settings: EvalSettings,
    *,
    weights_path: str | None = None,
    download: bool = True,
    mesh: Mesh | None = None,
    progress: bool = True,
    output_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Evaluates the newest good checkpoint of a run and writes its result to
    ``workdir/eval/<name>.json``, named by :meth:`EvalSettings.result_name`.

    Resumable: a rerun after a kill continues the sampling, the reference and bits/dim where
    they stopped.

    Args:
      workdir: the run's folder.
      settings: the :class:`EvalSettings`.
      weights_path: a local copy of the feature network's weights (Inception).
      download: whether the Inception weights may be downloaded.
      mesh: the devices (default all).
      progress: show progress bars.
      output_dir: where the ``eval/`` folder (results, partial jobs, a built reference) goes
        instead of ``workdir`` (to evaluate a run that must stay read-only, e.g. a teacher).

    Returns:
      The result record (also written as JSON): ``step``, ``results``, ``protocol``,
      ``seconds``, and ``path``, the file written.

    Raises:
      ConfigError: a bad setting, caught before anything is compiled; WorkdirError /
        NoUsableCheckpointError: no run or checkpoint; WeightsUnavailableError: no Inception
        weights.
    """
    from diffjax.processes import is_discrete
    from diffjax.samplers import check_sampler_options
    from diffjax.sharding import make_mesh
    from diffjax.training.frozen import load_frozen
    from diffjax.training.programs import SampleConditions, make_run_generator, sample_drawer
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
    network = None  # bits/dim alone needs no feature network (nor its weights)
    if feature_metrics:
        network = load_feature_network(
            settings.features, weights_path=weights_path, download=download
        )
        try:
            network.check_image_shape(image_shape)
        except ValueError as error:
            raise ConfigError(f"features {settings.features!r}: {error}") from error
    output = workdir if output_dir is None else os.path.abspath(os.fspath(output_dir))
    name = settings.result_name(run.step)
    folder = os.path.join(output, EVAL_DIR, f"{name}.partial")
    if jax.process_index() == 0:
        os.makedirs(folder, exist_ok=True)

    needs_reference = any(m in feature_metrics for m in ("fd", "kid", "pr"))
    needs_features = any(m in feature_metrics for m in ("kid", "pr"))
    reference_record = None
    reference = reference_features = None
    if needs_reference:
        path = settings.reference or run_reference(
            output, values, network, mesh, num=settings.num_reference,
            batch_size=settings.batch_size, progress=progress,
        )  # fmt: skip
        reference, metadata, reference_features = load_reference(path, network, needs_features)
        reference_record = dict(path=path, metadata=metadata, count=reference.count)

    results: dict[str, Any] = {}
    frozen, _ = load_frozen(values, run.programs, mesh)
    classifier = None
    if settings.classifier:
        from diffjax.training.classifier_guidance import load_run_classifier

        classifier = load_run_classifier(
            settings.classifier, values, settings.classifier_scale, mesh=mesh
        )
    if feature_metrics:
        generate = make_run_generator(
            values, run.programs, settings.batch_size, mesh, sampler=settings.sampler,
            options=settings.options, guidance_scale=settings.guidance_scale,
        )  # fmt: skip
        params = run.state.ema_params if settings.ema else run.state.params
        job = FeatureJob(
            os.path.join(folder, "samples"), settings.num_samples, network,
            keep=kept_outputs(feature_metrics), settings=dict(step=run.step, **settings.record()),
        )  # fmt: skip
        draw = sample_drawer(
            generate, params, seed=settings.seed, conditions=SampleConditions(values, run.model),
            frozen=frozen, classifier=classifier,
        )  # fmt: skip
        job.run(sample_image_source(draw, mesh), settings.batch_size, description="samples",
                progress=progress)  # fmt: skip
        if jax.process_index() == 0:  # the only process that holds a resumed job's arrays
            results.update(
                compute_metrics(
                    feature_metrics, network, job, reference, reference_features, settings.seed
                )
            )
    if "bpd" in settings.metrics:
        if is_discrete(run.process):
            results["bpd"] = bits_per_dim_job(run, settings, mesh, folder, "vlb")
        results["bpd_ode"] = bits_per_dim_job(run, settings, mesh, folder, "ode")
    results = broadcast_json(results)

    path = os.path.join(output, EVAL_DIR, f"{name}.json")
    record = dict(
        step=run.step,
        path=path,
        results=results,
        protocol=dict(
            settings.record(),
            network=None if network is None else network.record(),
            reference=reference_record,
            weights="ema" if settings.ema else "raw",
            classifier=None if classifier is None else classifier.record(),
            devices=mesh.devices.size,
            processes=jax.process_count(),
            platform=jax.devices()[0].platform,
            diffjax_version=__version__,
        ),
        seconds=time.perf_counter() - start_time,
    )
    if jax.process_index() == 0:
        write_json(path, record)
        shutil.rmtree(folder, ignore_errors=True)
    return record


def read_samples(path: str) -> np.ndarray:
    """The uint8 images ``[N, H, W, C]`` of a samples ``.npz``.

    ``samples`` must be uint8, or floats in [-1, 1] (quantized with
    :func:`diffjax.images.to_uint8`): floats outside that range (images in [0, 255], or a
    sampler's unclipped output) are refused rather than clipped into a meaningless score.

    Raises:
      ConfigError: not an ``.npz``, no ``samples``, another shape or dtype, or values out of range.
    """
    from diffjax.metrics.frechet import load_npz

    try:
        data = load_npz(path, "samples", ("samples",))
    except (OSError, ValueError) as error:
        raise ConfigError(str(error)) from error
    if "samples" not in data:
        raise ConfigError(f"{path} needs an array 'samples' [N, H, W, C].")
    samples = data["samples"]
    if samples.ndim != 4:
        raise ConfigError(f"{path}: samples must be [N, H, W, C], got {samples.shape}.")
    if samples.dtype == np.uint8:
        return samples
    if not np.issubdtype(samples.dtype, np.floating):
        raise ConfigError(
            f"{path}: samples must be uint8 or floats in [-1, 1], got dtype {samples.dtype}."
        )
    low, high = float(np.min(samples)), float(np.max(samples))
    if not (-1.0 <= low and high <= 1.0):
        raise ConfigError(
            f"{path}: float samples must lie in [-1, 1], these span [{low:.4g}, {high:.4g}]; "
            f"save images in [0, 255] as uint8, and clip a sampler's output to [-1, 1] first."
        )
    return to_uint8(samples)


def evaluate_samples(
    samples_path: str,
    reference: str,
    *,
    features: str | None = None,
    metrics: Sequence[str] = ("fd",),
    batch_size: int = 256,
    weights_path: str | None = None,
    download: bool = True,
    mesh: Mesh | None = None,
) -> dict[str, Any]:
    """Scores samples made elsewhere (another library, another script) with this protocol.

    Args:
      samples_path: an ``.npz`` whose ``samples`` are ``[N, H, W, C]`` floats in [-1, 1]
        (quantized here with :func:`diffjax.images.to_uint8`) or uint8 (:func:`read_samples`).
      reference: reference statistics (with features for KID and precision/recall).
      features: the feature network's name; None: the one the reference records, or
        'inception' for a reference that records none (pytorch-fid, clean-fid).
      metrics: a subset of ``('fd', 'kid', 'pr', 'is')``.
      batch_size: images per batch.
      weights_path: the Inception weights, as in :func:`evaluate_run`.
      download: whether the Inception weights may be downloaded, as in :func:`evaluate_run`.
      mesh: the devices.

    Returns:
      ``{'results': ..., 'protocol': ...}``; the protocol records the samples file's SHA-256.

    Raises:
      ConfigError: bad samples (:func:`read_samples`), an unreadable reference, or a network
        that does not fit them.
    """
    from diffjax.metrics import frechet
    from diffjax.sharding import make_mesh
    from diffjax.weights import sha256_of_file

    mesh = make_mesh() if mesh is None else mesh
    if "bpd" in metrics:
        raise ConfigError("bpd needs the model, not samples; evaluate the run's --workdir.")
    images = read_samples(samples_path)
    if features is None:
        try:
            _, recorded = frechet.load_statistics(reference)
        except (OSError, ValueError) as error:
            raise ConfigError(f"reference statistics: {error}") from error
        features = recorded.get("network", {}).get("name", "inception")
    network = load_feature_network(features, weights_path=weights_path, download=download)
    try:
        network.check_image_shape(images.shape[1:])
    except ValueError as error:
        raise ConfigError(str(error)) from error
    stats, metadata, reference_features = load_reference(
        reference, network, any(m in metrics for m in ("kid", "pr"))
    )
    batch_size = max(mesh.devices.size, batch_size - batch_size % mesh.devices.size)
    padded = np.concatenate([images, np.repeat(images[-1:], -len(images) % batch_size, axis=0)])

    def make_images(start: int, count: int) -> jax.Array:
        return jax.device_put(padded[start : start + count], batch_sharding(mesh))

    job = FeatureJob(None, len(images), network, keep=kept_outputs(metrics), settings={})
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
