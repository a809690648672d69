"""Sample-quality and likelihood metrics, in JAX and NumPy, with no training imports.

=====================================  =======================================================
:func:`frechet_distance`               FID / FD-FMNIST from streamed float64 moments
                                       (:mod:`~diffjax.metrics.frechet`)
:func:`kernel_inception_distance`      KID: unbiased MMD^2, cubic kernel, subsets
:func:`inception_score`                IS over 10 splits
:func:`precision_recall`               improved precision and recall, k = 3
:func:`ssim`, :func:`psnr`             reconstructions, through dm-pix
:func:`lpips_distance`                 LPIPS v0.1 (:mod:`~diffjax.metrics.lpips`)
:func:`load_feature_network`           the Inception and Fashion-MNIST feature networks
:func:`straightness`                   straightness of ODE paths (rectified flow, eq. 9)
=====================================  =======================================================

Bits/dim (the discrete bound and the probability-flow ODE) are in :mod:`diffjax.likelihood`.
The submodules that define networks (``inception``, ``lpips``, ``fmnist_classifier``) import
Flax and are loaded on first use.
"""

from diffjax.metrics.feature_networks import FEATURE_NETWORKS, FeatureNetwork, load_feature_network
from diffjax.metrics.frechet import (
    FeatureMoments,
    FeatureStatistics,
    accumulate_moments,
    empty_moments,
    frechet_distance,
    load_features,
    load_statistics,
    save_statistics,
    statistics_from_features,
    statistics_from_moments,
)
from diffjax.metrics.image_quality import psnr, ssim
from diffjax.metrics.inception_score import inception_score
from diffjax.metrics.kid import kernel_inception_distance, polynomial_mmd2
from diffjax.metrics.precision_recall import precision_recall
from diffjax.metrics.straightness import straightness

__all__ = [
    "FEATURE_NETWORKS",
    "FeatureMoments",
    "FeatureNetwork",
    "FeatureStatistics",
    "accumulate_moments",
    "empty_moments",
    "frechet_distance",
    "inception_score",
    "kernel_inception_distance",
    "load_feature_network",
    "load_features",
    "load_statistics",
    "lpips_distance",
    "polynomial_mmd2",
    "precision_recall",
    "psnr",
    "save_statistics",
    "ssim",
    "statistics_from_features",
    "statistics_from_moments",
    "straightness",
]


def __getattr__(name: str):
    if name == "lpips_distance":
        from diffjax.metrics.lpips import lpips_distance

        return lpips_distance
    raise AttributeError(f"module 'diffjax.metrics' has no attribute {name!r}")
