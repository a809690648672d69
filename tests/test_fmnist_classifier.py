"""The shipped FD-FMNIST classifier: its file, its accuracy, its features and its input checks."""

import os
import shutil

import jax
import numpy as np
import pytest

from diffjax.data.datasets import fashion_mnist
from diffjax.images import to_uint8
from diffjax.metrics import fmnist_classifier as fc
from diffjax.metrics import frechet
from diffjax.weights.files import WeightsChecksumError, sha256_of_file, verify_checksum

IDX_DIR = os.environ.get(fashion_mnist.IDX_DIR_ENV) or fashion_mnist.DEFAULT_IDX_DIR
IDX_PATHS = fashion_mnist.find_idx_files(IDX_DIR)
needs_idx = pytest.mark.skipif(
    IDX_PATHS is None,
    reason=f"Fashion-MNIST IDX files absent from {IDX_DIR}: "
    f"`{fashion_mnist.APT_INSTALL_COMMAND}` installs them.",
)
NUM_TEST_IMAGES = 2000
NUM_PARAMETERS = 188_234


@pytest.fixture(scope="module")
def variables():
    return fc.load_fmnist_classifier()


@pytest.fixture(scope="module")
def test_split():
    """The first NUM_TEST_IMAGES test images, uint8 [N, 28, 28, 1], and their labels [N]."""
    images = fashion_mnist.read_idx(IDX_PATHS["test_images"])[:NUM_TEST_IMAGES, :, :, None]
    labels = fashion_mnist.read_idx(IDX_PATHS["test_labels"])[:NUM_TEST_IMAGES]
    return images, labels


def _random_images(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, 28, 28, 1), dtype=np.uint8)


def test_shipped_file_matches_its_checksum_and_loads(variables):
    verify_checksum(fc.FMNIST_CLASSIFIER_FILE, fc.FMNIST_CLASSIFIER_SHA256)
    assert sha256_of_file(fc.FMNIST_CLASSIFIER_FILE) == fc.FMNIST_CLASSIFIER_SHA256
    assert os.path.getsize(fc.FMNIST_CLASSIFIER_FILE) < 1_000_000
    leaves = jax.tree.leaves(variables)
    assert all(leaf.dtype == np.float32 for leaf in leaves)
    assert sum(leaf.size for leaf in leaves) == NUM_PARAMETERS
    assert variables["params"]["feature"]["kernel"].shape == (4 * 4 * 64, fc.FEATURE_DIM)


@needs_idx
def test_accuracy_on_the_first_2000_test_images(variables, test_split):
    images, labels = test_split
    logits = fc.fmnist_features(variables, images)["logits"]
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == labels))
    # Binomial standard error at p = 0.92 on n = 2000: sqrt(p (1 - p) / n) = 0.006, so 0.90 sits
    # 3.3 standard errors below the full test accuracy (0.9197); this subset measures 0.9285.
    assert accuracy >= 0.90


def test_features_have_the_documented_shape_and_dtype_and_come_from_uint8(variables):
    samples = np.random.default_rng(1).uniform(-1.2, 1.2, (4, 28, 28, 1)).astype(np.float32)
    out = fc.fmnist_features(variables, to_uint8(samples))
    assert out["features"].shape == (4, fc.FEATURE_DIM)
    assert out["logits"].shape == (4, fc.NUM_CLASSES)
    assert out["features"].dtype == np.float32 and out["logits"].dtype == np.float32
    assert np.all(np.isfinite(out["features"]))


def test_features_are_identical_under_jit_and_independent_of_the_batch(variables):
    images = _random_images(64)
    direct = fc.fmnist_features(variables, images)
    jitted = jax.jit(fc.fmnist_features)(variables, images)
    np.testing.assert_array_equal(jitted["features"], direct["features"])
    np.testing.assert_array_equal(jitted["logits"], direct["logits"])
    halves = [fc.fmnist_features(variables, part) for part in (images[:32], images[32:])]
    # XLA's CPU convolutions and dots choose their kernels by batch size: the two halves agree
    # bit for bit at this size here, but some sizes (2, 4, 16) differ by an ulp or two (< 1e-5)
    # and other CPUs may choose differently. Any coupling between images would show as O(1).
    for key in ("features", "logits"):
        together = np.concatenate([half[key] for half in halves])
        np.testing.assert_allclose(together, direct[key], rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_non_uint8_images_are_refused_while_tracing(variables, dtype):
    images = np.zeros((2, 28, 28, 1), dtype)
    # eval_shape only traces: the error comes before anything is compiled.
    with pytest.raises(TypeError, match=r"uint8.*diffjax\.images\.to_uint8"):
        jax.eval_shape(fc.fmnist_features, variables, images)
    with pytest.raises(TypeError, match=np.dtype(dtype).name):
        fc.fmnist_features(variables, images)


@pytest.mark.parametrize(
    "shape", [(2, 28, 28), (2, 32, 32, 1), (2, 28, 28, 3), (2, 1, 28, 28), (0, 28, 28, 1)]
)
def test_badly_shaped_images_are_refused_while_tracing(variables, shape):
    images = np.zeros(shape, np.uint8)
    with pytest.raises(ValueError) as raised:
        jax.eval_shape(fc.fmnist_features, variables, images)
    assert "[B, 28, 28, 1]" in str(raised.value) and f"got shape {shape}" in str(raised.value)


def test_a_tampered_copy_of_the_weights_is_refused(tmp_path):
    tampered = tmp_path / "fmnist_classifier.safetensors"
    shutil.copyfile(fc.FMNIST_CLASSIFIER_FILE, tampered)
    with open(tampered, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0x01]))
    with pytest.raises(WeightsChecksumError, match=fc.FMNIST_CLASSIFIER_SHA256):
        fc.load_fmnist_classifier(tampered)


def test_a_file_with_other_tensors_is_refused(variables, tmp_path):
    path = tmp_path / "other.safetensors"
    fc.save_fmnist_classifier({"params": {"feature": variables["params"]["feature"]}}, path)
    with pytest.raises(ValueError, match="params/conv1/kernel"):
        fc.load_fmnist_classifier(path, sha256_of_file(path))


@needs_idx
def test_fd_fmnist_separates_real_images_from_noise(variables, test_split):
    images = test_split[0]
    first, second = images[: NUM_TEST_IMAGES // 2], images[NUM_TEST_IMAGES // 2 :]
    noise = _random_images(NUM_TEST_IMAGES // 2, seed=2)
    stats = {
        name: frechet.statistics_from_features(fc.fmnist_features(variables, batch)["features"])
        for name, batch in (("first", first), ("second", second), ("noise", noise))
    }
    real_to_real = frechet.frechet_distance(stats["first"], stats["second"])
    real_to_noise = frechet.frechet_distance(stats["first"], stats["noise"])
    assert real_to_real * 20 < real_to_noise
