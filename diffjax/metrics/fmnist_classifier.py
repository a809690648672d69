"""FD-FMNIST: a Fréchet distance on the features of a small Fashion-MNIST classifier shipped
with diffjax, so sample quality on the default dataset can be measured offline.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
Nash Equilibrium", arXiv:1706.08500, eq. 6) needs the Inception-v3 weights, a 100 MB download,
and judges 28x28 grayscale clothing with a network trained on 299x299 ImageNet photographs.
FD-FMNIST keeps the formula and changes the network: :class:`FashionMnistClassifier`, a CNN of
about 188k parameters trained by ``tools/train_fmnist_classifier.py`` on the 60,000 training
images of Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747), whose weights
(:data:`FMNIST_CLASSIFIER_FILE`, about 0.75 MB) are installed with the package. Nothing is
downloaded.

FD-FMNIST is computed like FID: fit a Gaussian N(mu, Sigma) to the :data:`FEATURE_DIM`-d
penultimate-layer features (:func:`fmnist_features`, ``"features"``) of each image set and take

    d^2 = ||mu_1 - mu_2||^2 + tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^{1/2})

with :func:`diffjax.metrics.frechet.frechet_distance`, the statistics coming from
:func:`~diffjax.metrics.frechet.statistics_from_features` or, streamed batch by batch, from
:func:`~diffjax.metrics.frechet.accumulate_moments` and
:func:`~diffjax.metrics.frechet.statistics_from_moments`. It is **not comparable with Inception
FID**, neither in value nor in scale: another network, another feature space, another
dimension. Compare FD-FMNIST only with FD-FMNIST computed with the same weights
(:data:`FMNIST_CLASSIFIER_SHA256`) and the same number of samples (the estimate is biased
upwards for small sample sizes, as FID is).

Images enter as the dataset stores them: uint8 ``[B, 28, 28, 1]``. Generated samples in
[-1, 1] must be quantized with :func:`diffjax.images.to_uint8` first, so that real and generated
images reach the network through the same bytes; floats are refused rather than guessed at.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import traverse_util

from diffjax.weights.files import verify_checksum

__all__ = [
    "FEATURE_DIM",
    "FMNIST_CLASSIFIER_FILE",
    "FMNIST_CLASSIFIER_SHA256",
    "FMNIST_CLASSIFIER_TEST_ACCURACY",
    "IMAGE_SHAPE",
    "NUM_CLASSES",
    "TRAINING_BATCH_SIZE",
    "TRAINING_EPOCHS",
    "TRAINING_LEARNING_RATE",
    "TRAINING_SEED",
    "FashionMnistClassifier",
    "check_images",
    "fmnist_features",
    "load_fmnist_classifier",
    "save_fmnist_classifier",
]

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
FEATURE_DIM = 128

# The recipe of `tools/train_fmnist_classifier.py` that produced the shipped weights.
TRAINING_SEED = 0
TRAINING_EPOCHS = 8
TRAINING_BATCH_SIZE = 128
TRAINING_LEARNING_RATE = 2e-3

FMNIST_CLASSIFIER_FILE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "assets", "fmnist_classifier.safetensors"
)
"""The shipped weights: float32 parameters of :class:`FashionMnistClassifier` in safetensors
format, keyed by their flattened Flax paths (``"params/conv1/kernel"``, ...).

Written by ``tools/train_fmnist_classifier.py`` with the ``TRAINING_*`` recipe above (seed
:data:`TRAINING_SEED`, :data:`TRAINING_EPOCHS` epochs of batches of
:data:`TRAINING_BATCH_SIZE` over the 60,000 training images, Adam with a one-epoch warm-up to
:data:`TRAINING_LEARNING_RATE` then cosine decay, no augmentation); its accuracy on the 10,000
test images is :data:`FMNIST_CLASSIFIER_TEST_ACCURACY` (0.9285 on the first 2,000). Three runs of
the script with jaxlib 0.10.2 on the same x86 CPU wrote identical files. 753,776 bytes.

On the 10,000 test images, 18 of the 128 ``feature`` units are zero after the ReLU for every
image, which is why the features are taken before it; there the covariance has eigenvalues
between 0.04 and 232 and the FD-FMNIST between the two halves of the test split (5,000 images
each) is 1.9, against 40.8 between the test split and a copy with Gaussian noise of standard
deviation 20 (in bytes) added.
"""
FMNIST_CLASSIFIER_SHA256 = "9d6788dee053249425c4f3694008d00d1118cd582ca4021c496cf4798cb7a320"
FMNIST_CLASSIFIER_TEST_ACCURACY = 0.9197
"""Accuracy of the shipped weights on the 10,000 Fashion-MNIST test images, as printed by
``tools/train_fmnist_classifier.py``."""


def check_images(images: Any) -> None:
    """Raises unless ``images`` are uint8 ``[B, 28, 28, 1]`` with B >= 1.

    Only the dtype and the shape are read, so it works on NumPy arrays, JAX arrays and tracers
    alike, before anything is compiled.

    Args:
      images: the batch to check.

    Raises:
      TypeError: the dtype is not uint8 (e.g. float samples that were not quantized).
      ValueError: the shape is not ``[B, 28, 28, 1]``.
    """
    if not hasattr(images, "dtype") or not hasattr(images, "shape"):
        raise TypeError(
            f"images must be a uint8 array [B, 28, 28, 1], got a {type(images).__name__}."
        )
    dtype = np.dtype(images.dtype)
    if dtype != np.uint8:
        raise TypeError(
            f"images must be uint8 bytes in [0, 255], as the dataset stores them, got dtype "
            f"{dtype}. Quantize generated samples in [-1, 1] with diffjax.images.to_uint8 first."
        )
    if len(images.shape) != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE or images.shape[0] < 1:
        raise ValueError(
            f"images must be [B, 28, 28, 1] (B >= 1 Fashion-MNIST images of 28x28x1), got shape "
            f"{tuple(images.shape)}."
        )


class FashionMnistClassifier(nn.Module):
    """A small CNN for Fashion-MNIST whose penultimate layer gives the FD-FMNIST features.

    Three 3x3 convolutions of stride 2 with "SAME" padding, each followed by ReLU (28 -> 14 ->
    7 -> 4 pixels, 32 -> 64 -> 64 channels), the ``4 * 4 * 64 = 1024`` values flattened, a dense
    layer ``feature`` of :data:`FEATURE_DIM` units, ReLU, and a dense layer ``logits`` of
    :data:`NUM_CLASSES` classes: 188,234 parameters. No normalisation layers, so the variables
    hold parameters only and every image is processed independently of the rest of its batch.

    The features are the output of ``feature`` before its ReLU: after it, units that never fire
    on the images at hand would make the feature covariance singular (see
    :data:`FMNIST_CLASSIFIER_FILE` for the shipped weights).
    """

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """Features and logits of a batch.

        Args:
          images: uint8 ``[B, 28, 28, 1]``; mapped to ``x / 127.5 - 1`` in [-1, 1].

        Returns:
          ``{"features": float32 [B, FEATURE_DIM], "logits": float32 [B, NUM_CLASSES]}``.

        Raises:
          TypeError, ValueError: see :func:`check_images`.
        """
        check_images(images)
        x = images.astype(jnp.float32) / 127.5 - 1.0
        for index, channels in enumerate((32, 64, 64), start=1):
            conv = nn.Conv(channels, (3, 3), strides=2, padding="SAME", name=f"conv{index}")
            x = nn.relu(conv(x))
        x = x.reshape(x.shape[0], -1)
        features = nn.Dense(FEATURE_DIM, name="feature")(x)
        logits = nn.Dense(NUM_CLASSES, name="logits")(nn.relu(features))
        return {"features": features, "logits": logits}


@jax.jit
def fmnist_features(variables: Any, images: Any) -> dict[str, jnp.ndarray]:
    """The FD-FMNIST features and the class logits of a batch of images (jitted).

    Args:
      variables: the classifier's variables, from :func:`load_fmnist_classifier`.
      images: uint8 ``[B, 28, 28, 1]``, as the dataset stores them; quantize generated samples
        with :func:`diffjax.images.to_uint8` first.

    Returns:
      ``{"features": float32 [B, FEATURE_DIM], "logits": float32 [B, NUM_CLASSES]}``; feed
      ``"features"`` to :func:`diffjax.metrics.frechet.accumulate_moments`.

    Raises:
      TypeError, ValueError: see :func:`check_images`; raised while tracing, before compiling.
    """
    return FashionMnistClassifier().apply(variables, images)


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    """``{flattened name: shape}`` of the classifier's variables."""
    shapes = jax.eval_shape(
        FashionMnistClassifier().init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, *IMAGE_SHAPE), jnp.uint8),
    )
    return {
        name: tuple(leaf.shape)
        for name, leaf in traverse_util.flatten_dict(shapes, sep="/").items()
    }


def load_fmnist_classifier(
    path: str | os.PathLike = FMNIST_CLASSIFIER_FILE,
    sha256: str = FMNIST_CLASSIFIER_SHA256,
) -> dict[str, Any]:
    """Loads the shipped classifier weights after verifying their SHA-256.

    Args:
      path: the safetensors file; default the shipped :data:`FMNIST_CLASSIFIER_FILE`.
      sha256: the digest ``path`` must have; default :data:`FMNIST_CLASSIFIER_SHA256`.

    Returns:
      The variables of :class:`FashionMnistClassifier` (``{"params": ...}``, NumPy float32
      arrays), for :func:`fmnist_features`.

    Raises:
      diffjax.weights.WeightsChecksumError: the file is not the one recorded.
      ValueError: the file's tensors do not match the classifier's variables.
    """
    verify_checksum(path, sha256, "FD-FMNIST classifier")
    tensors = safetensors.numpy.load_file(os.fspath(path))
    expected = _expected_shapes()
    found = {name: tuple(array.shape) for name, array in tensors.items()}
    if found != expected:
        raise ValueError(
            f"{os.fspath(path)} holds tensors {found}, but FashionMnistClassifier needs {expected}."
        )
    return traverse_util.unflatten_dict(tensors, sep="/")


def save_fmnist_classifier(variables: Any, path: str | os.PathLike) -> None:
    """Writes classifier variables as float32 safetensors keyed by flattened Flax paths.

    Args:
      variables: ``{"params": ...}`` of :class:`FashionMnistClassifier`.
      path: the file to write.
    """
    flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
    safetensors.numpy.save_file(
        {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in flat.items()},
        os.fspath(path),
    )
