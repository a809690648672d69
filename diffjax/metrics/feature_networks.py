"""The feature networks of the sample-quality metrics, by name, with what a result must record.

==============  =====================================  ===================================
name            network                                features (dimension), logits
==============  =====================================  ===================================
``inception``   the FID Inception-v3 (TF 2015-12-05,   ``pool3`` (2048): FID, KID, P/R;
                :mod:`diffjax.metrics.inception`)      ``logits_unbiased``: IS
``fmnist``      the shipped Fashion-MNIST classifier   ``features`` (128): FD-FMNIST, KID,
                (:mod:`diffjax.metrics.fmnist_classifier`)  P/R; ``logits``: an IS analogue
==============  =====================================  ===================================

A :class:`FeatureNetwork` carries the network's variables, its input requirements and the
SHA-256 of the weights it was loaded from, which every result records next to the number (a
Fréchet distance means nothing without its network). Both networks take uint8 images: generated
samples are quantized with :func:`diffjax.images.to_uint8` first, exactly like real data.
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

__all__ = ["FEATURE_NETWORKS", "FeatureNetwork", "load_feature_network"]

FEATURE_NETWORKS: tuple[str, ...] = ("inception", "fmnist")


class FeatureNetwork(NamedTuple):
    """A loaded feature network.

    Attributes:
      name: ``'inception' | 'fmnist'``.
      apply: ``apply(variables, images uint8 [B, H, W, C]) -> {name: float32 [B, ...]}``.
      variables: the network's variables.
      feature_key: the entry of ``apply``'s output that the Fréchet distance, KID and
        precision/recall use.
      logits_key: the entry that the Inception Score uses.
      fd_name: the name of its Fréchet distance in results (``'fid'`` or ``'fd_fmnist'``).
      dim: the feature dimension.
      logits_dim: the number of classes of ``logits_key``.
      sha256: the SHA-256 of the weight file the variables came from.
      image_shape: the one input shape the network takes, or None for any size.
    """

    name: str
    apply: Callable[[Any, Any], dict[str, jax.Array]]
    variables: Any
    feature_key: str
    logits_key: str
    fd_name: str
    dim: int
    logits_dim: int
    sha256: str
    image_shape: tuple[int, int, int] | None

    def record(self) -> dict[str, Any]:
        """What a result records about the network."""
        return dict(name=self.name, feature=self.feature_key, dim=self.dim, sha256=self.sha256)

    def check_image_shape(self, image_shape: tuple[int, ...]) -> None:
        """Raises ``ValueError`` if the network cannot take images of ``image_shape``."""
        if self.image_shape is not None and tuple(image_shape) != self.image_shape:
            raise ValueError(
                f"the {self.name!r} feature network takes {self.image_shape} images (it is the "
                f"Fashion-MNIST classifier), got {tuple(image_shape)}; use 'inception' for other "
                f"datasets."
            )
        if self.image_shape is None and image_shape[-1] not in (1, 3):
            raise ValueError(
                f"the Inception network takes RGB or grayscale images, got {image_shape[-1]} "
                f"channels."
            )


def load_feature_network(
    name: str, *, weights_path: str | os.PathLike | None = None, download: bool = True
) -> FeatureNetwork:
    """Loads the feature network ``name``, verifying its weights.

    Args:
      name: one of :data:`FEATURE_NETWORKS`.
      weights_path: for ``'inception'``, a local copy of the published weights (else the
        lookup of :func:`~diffjax.weights.resolve_weights`); for ``'fmnist'``, another copy of
        the shipped file (its checksum must still match).
      download: whether the Inception weights may be downloaded.

    Raises:
      ValueError: an unknown name.
      WeightsUnavailableError, WeightsChecksumError: the weights are missing or not the
        published ones.
    """
    from diffjax.weights import read_torch_state_dict, resolve_weights, sha256_of_file

    if name == "inception":
        import diffjax.metrics.inception as inception

        path = resolve_weights(inception.INCEPTION_WEIGHTS, weights_path, download=download)
        variables = inception.inception_variables_from_state_dict(
            read_torch_state_dict(path), source=path
        )
        return FeatureNetwork(
            "inception", inception.inception_features, variables, "pool3", "logits_unbiased",
            "fid", 2048, inception.NUM_CLASSES, sha256_of_file(path), None,
        )  # fmt: skip
    if name == "fmnist":
        import diffjax.metrics.fmnist_classifier as fmnist

        path = fmnist.FMNIST_CLASSIFIER_FILE if weights_path is None else weights_path
        variables = jax.tree.map(np.asarray, fmnist.load_fmnist_classifier(path))
        return FeatureNetwork(
            "fmnist", fmnist.fmnist_features, variables, "features", "logits", "fd_fmnist",
            fmnist.FEATURE_DIM, fmnist.NUM_CLASSES, fmnist.FMNIST_CLASSIFIER_SHA256,
            fmnist.IMAGE_SHAPE,
        )  # fmt: skip
    raise ValueError(f"Unknown feature network {name!r}; expected one of {FEATURE_NETWORKS}.")
