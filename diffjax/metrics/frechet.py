"""The Fréchet distance between Gaussian fits of two feature sets, from streamed moments.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
Nash Equilibrium", arXiv:1706.08500, eq. 6) fits a Gaussian N(mu, Sigma) to each set of
features and reports

    d^2 = ||mu_1 - mu_2||^2 + tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^{1/2}).

The moments are accumulated in float64 batch by batch (:func:`accumulate_moments`), so 50k
samples never sit in memory: only the sum and the sum of outer products of ``features - shift``
are kept, with ``shift`` the mean of the first batch, which keeps the covariance free of the
cancellation that raw sums of large-mean features suffer. The covariance is the unbiased
(N - 1) estimate, as ``numpy.cov`` gives it to pytorch-fid and clean-fid. The matrix square
root is scipy's (``scipy.linalg.sqrtm``); when the product is singular enough that the root is
not finite, both covariances get ``eps * I`` added, as pytorch-fid does, and a root whose
imaginary part is not negligible is an error rather than a silently dropped number.

Reference statistics are ``.npz`` files with ``mu`` [D] and ``sigma`` [D, D], the layout
pytorch-fid, clean-fid and TTUR use, so published statistics can be used as they are.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any, NamedTuple

import numpy as np
import scipy.linalg

__all__ = [
    "FeatureMoments",
    "FeatureStatistics",
    "accumulate_moments",
    "empty_moments",
    "frechet_distance",
    "load_features",
    "load_npz",
    "load_statistics",
    "save_statistics",
    "statistics_from_features",
    "statistics_from_moments",
]

_IMAGINARY_TOLERANCE = 1e-3
_SINGULAR_OFFSET = 1e-6


class FeatureMoments(NamedTuple):
    """Running float64 sums over the features seen so far (host NumPy, a pytree of arrays).

    Attributes:
      count: number of feature vectors N.
      shift: float64 ``[D]``, subtracted before summing (the first batch's mean).
      total: float64 ``[D]``, sum of ``x - shift``.
      outer: float64 ``[D, D]``, sum of ``(x - shift)(x - shift)^T``.
    """

    count: int
    shift: np.ndarray
    total: np.ndarray
    outer: np.ndarray


class FeatureStatistics(NamedTuple):
    """A Gaussian fit of features: ``mu`` float64 ``[D]``, ``sigma`` float64 ``[D, D]``, and the
    number of feature vectors it was fitted to (0 when unknown, e.g. published statistics): the
    (m, C) of FID (Heusel et al. 2017, eq. 6)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int


def empty_moments(dim: int) -> FeatureMoments:
    """Moments of no features of dimension ``dim``."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"feature dimension must be an int >= 1, got {dim!r}.")
    return FeatureMoments(0, np.zeros(dim), np.zeros(dim), np.zeros((dim, dim)))


def accumulate_moments(moments: FeatureMoments, features: Any) -> FeatureMoments:
    """Adds a batch of features to the running sums, in float64.

    Args:
      moments: the sums so far (:func:`empty_moments` to start).
      features: ``[B, D]`` float array (NumPy or JAX; copied to the host).

    Returns:
      The updated :class:`FeatureMoments`.
    """
    features = np.asarray(features, dtype=np.float64)
    dim = moments.total.shape[0]
    if features.ndim != 2 or features.shape[1] != dim:
        raise ValueError(f"features must have shape [B, {dim}], got {features.shape}.")
    if not np.all(np.isfinite(features)):
        raise ValueError(
            "features contain NaN or Inf; the images or the feature network are broken."
        )
    if features.shape[0] == 0:
        return moments
    shift = features.mean(axis=0) if moments.count == 0 else moments.shift
    centred = features - shift
    return FeatureMoments(
        moments.count + features.shape[0],
        shift,
        moments.total + centred.sum(axis=0),
        moments.outer + centred.T @ centred,
    )


def statistics_from_moments(moments: FeatureMoments) -> FeatureStatistics:
    """mu = shift + total / N and the unbiased covariance (outer - N m m^T) / (N - 1): FID's
    Gaussian fit of the features (Heusel et al. 2017, eq. 6's (m, C)).

    Raises:
      ValueError: fewer than 2 feature vectors.
    """
    count = moments.count
    if count < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {count}.")
    mean_centred = moments.total / count
    sigma = (moments.outer - count * np.outer(mean_centred, mean_centred)) / (count - 1)
    return FeatureStatistics(moments.shift + mean_centred, (sigma + sigma.T) / 2, count)


def statistics_from_features(features: Any) -> FeatureStatistics:
    """The Gaussian fit of a ``[N, D]`` feature array (one batch of :func:`accumulate_moments`),
    the (m, C) of Heusel et al. 2017, eq. 6."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must have shape [N, D], got {features.shape}.")
    return statistics_from_moments(accumulate_moments(empty_moments(features.shape[1]), features))


def _check_pair(first: FeatureStatistics, second: FeatureStatistics) -> None:
    for name, stats in (("first", first), ("second", second)):
        dim = stats.mu.shape[0] if stats.mu.ndim == 1 else None
        if dim is None or stats.sigma.shape != (dim, dim):
            raise ValueError(
                f"the {name} statistics need mu [D] and sigma [D, D], got {stats.mu.shape} and "
                f"{stats.sigma.shape}."
            )
    if first.mu.shape != second.mu.shape:
        raise ValueError(
            f"the two statistics have feature dimensions {first.mu.shape[0]} and "
            f"{second.mu.shape[0]}; they must come from the same feature network and layer."
        )


def frechet_distance(first: FeatureStatistics, second: FeatureStatistics) -> float:
    """d^2 = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})  (Heusel et al. 2017, eq. 6).

    Args:
      first: the Gaussian fit of one feature set, of dimension D.
      second: the Gaussian fit of the other, of the same dimension D.

    Returns:
      The squared Fréchet distance, a float >= 0 up to rounding.

    Raises:
      ValueError: mismatched dimensions, or a square root with a non-negligible imaginary part.
    """
    _check_pair(first, second)
    mu_1, mu_2 = np.asarray(first.mu, np.float64), np.asarray(second.mu, np.float64)
    sigma_1, sigma_2 = np.asarray(first.sigma, np.float64), np.asarray(second.sigma, np.float64)
    root = scipy.linalg.sqrtm(sigma_1 @ sigma_2)
    if not np.all(np.isfinite(root)):
        offset = _SINGULAR_OFFSET * np.eye(mu_1.shape[0])
        root = scipy.linalg.sqrtm((sigma_1 + offset) @ (sigma_2 + offset))
    if np.iscomplexobj(root):
        largest = np.max(np.abs(root.imag))
        if largest > _IMAGINARY_TOLERANCE * max(1.0, np.max(np.abs(root.real))):
            raise ValueError(
                f"the matrix square root has an imaginary part of {largest:.3g}: the covariances "
                f"are too ill-conditioned (too few samples for the feature dimension?)."
            )
        root = root.real
    difference = mu_1 - mu_2
    return float(
        difference @ difference + np.trace(sigma_1) + np.trace(sigma_2) - 2 * np.trace(root)
    )


def save_statistics(
    path: str | os.PathLike,
    stats: FeatureStatistics,
    features: np.ndarray | None = None,
    **metadata: Any,
) -> str:
    """Writes ``mu``, ``sigma`` (float64) and ``count`` to an ``.npz``, optionally the feature
    vectors themselves (``features`` float32 ``[N, D]``, which KID and precision/recall need),
    plus JSON ``metadata`` (the feature network, its checksum, the dataset split), atomically.

    Returns:
      The path written.
    """
    from diffjax.images import atomic_write

    arrays = dict(mu=stats.mu, sigma=stats.sigma, count=np.int64(stats.count))
    if features is not None:
        arrays["features"] = np.asarray(features, np.float32)

    def write(tmp_path: str) -> None:
        with open(tmp_path, "wb") as f:
            np.savez(f, metadata=np.asarray(json.dumps(metadata, sort_keys=True)), **arrays)

    return atomic_write(path, write)


def load_npz(
    path: str | os.PathLike, what: str, names: tuple[str, ...] | None = None
) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file (``names`` of them, or all), read without pickle.

    Args:
      path: the file.
      what: what the file should hold, for the error message (e.g. ``"reference statistics"``).
      names: the arrays to read (those the file lacks are left out); None: all.

    Raises:
      FileNotFoundError: no such file.
      ValueError: a file NumPy cannot read as an ``.npz`` of plain arrays (a text file, a
        pickle, a lone ``.npy`` array, a damaged archive), in one line naming it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {what} at {path}: no such file.")
    expected = f"{path} is not an .npz archive of arrays ({what}; np.savez writes one)"
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{expected}: NumPy cannot read it as one.") from error
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{expected}: it holds a single {data.shape} array (.npy).")
    with data:
        try:
            return {
                name: np.asarray(data[name])
                for name in data.files
                if names is None or name in names
            }
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{expected}: it is damaged or holds objects ({error}).") from error


def load_features(path: str | os.PathLike) -> np.ndarray | None:
    """The feature vectors stored in a statistics ``.npz`` (float32 ``[N, D]``), or None."""
    return load_npz(path, "reference statistics", ("features",)).get("features")


def load_statistics(
    path: str | os.PathLike, expected_dim: int | None = None
) -> tuple[FeatureStatistics, dict[str, Any]]:
    """Reads an ``.npz`` with ``mu`` and ``sigma`` (pytorch-fid / clean-fid / diffjax layout).

    Args:
      path: the file.
      expected_dim: if given, the feature dimension the statistics must have.

    Returns:
      ``(statistics, metadata)``; metadata is empty for files not written by diffjax.

    Raises:
      FileNotFoundError: no such file.
      ValueError: no ``mu``/``sigma``, inconsistent shapes, or not ``expected_dim``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No reference statistics at {path}; build them with `python -m diffjax.evaluate "
            f"--make_reference_stats` or pass a pytorch-fid/clean-fid .npz."
        )
    data = load_npz(path, "reference statistics", ("mu", "sigma", "count", "metadata"))
    if "mu" not in data or "sigma" not in data:
        raise ValueError(
            f"{path} needs arrays 'mu' and 'sigma' (the pytorch-fid / clean-fid layout); it has "
            f"{sorted(data) or 'neither'}."
        )
    mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
    count = int(data["count"]) if "count" in data else 0
    metadata = json.loads(str(data["metadata"])) if "metadata" in data else {}
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not [D] and [D, D].")
    if expected_dim is not None and mu.shape[0] != expected_dim:
        raise ValueError(
            f"{path} holds {mu.shape[0]}-d statistics, but the feature network gives "
            f"{expected_dim}-d features: they come from another network or layer."
        )
    return FeatureStatistics(mu, sigma, count), metadata
