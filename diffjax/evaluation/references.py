"""Reference statistics: the feature moments (and features) of a dataset split, built once.

A reference is a ``.npz`` in the pytorch-fid / clean-fid layout (``mu``, ``sigma``, optionally
``features``) plus metadata naming the feature network and its checksum. A run's reference of
its ``config.eval.split`` is built on first use and cached in ``workdir/eval/``; building
resumes after a kill (a :class:`~diffjax.evaluation.features.FeatureJob`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from diffjax.errors import ConfigError
from diffjax.evaluation.features import FeatureJob, real_image_source
from diffjax.metrics import frechet
from diffjax.metrics.feature_networks import FeatureNetwork
from diffjax.sharding import broadcast_int, sync_processes
from diffjax.training.console import log
from diffjax.training.workdir import EVAL_DIR

__all__ = ["build_reference", "load_reference", "reference_path", "run_reference"]


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
    from diffjax.data.pipeline import dataset_from_config

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
        skip = broadcast_int(job.done)
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
    sync_processes(f"reference-{os.path.basename(path)}")
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
    if not broadcast_int(int(os.path.exists(path))):
        log(f"diffjax: reference statistics of {values['data']['name']}:{split} -> {path}")
        build_reference(
            values, network, mesh, path, split=split, num=num, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip
    return path


def load_reference(path: str, network: FeatureNetwork, needs_features: bool):
    """(statistics, metadata, features or None) of a reference file, checked against
    ``network`` (dimension and weights checksum).

    Raises:
      ConfigError: an unreadable file, another network's statistics, or no features where
        ``needs_features``.
    """
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
