"""The FID Inception-v3 port against torch-fidelity (tests/fixtures/inception_reference.npz).

The fixture is written by benchmarks/metrics_reference/make_inception_fixture.py from
torch-fidelity 0.4.0's ``FeatureExtractorInceptionV3`` loaded with the seeded random weights of
tests/inception_reference.py; here the same weights go through diffjax's key table, so the test
covers names, layouts, the architecture's TF patches, the resize and the input protocol. The
real weight file is not needed (and not downloaded).
"""

from __future__ import annotations

import os

import inception_reference as reference
import jax
import numpy as np
import pytest

from diffjax.metrics import inception
from diffjax.weights import (
    StateDictMismatchError,
    WeightsChecksumError,
    WeightsUnavailableError,
    conv_kernel,
    linear_kernel,
)

FIXTURE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "fixtures", "inception_reference.npz"
)
FEATURES = ("pool3", "logits_unbiased", "logits")

# float32 unit roundoff.
U = 2.0**-24
# Resize: every output is a convex combination of inputs of magnitude < 256 made in six float32
# operations (sub, mul, add along W, then along H), each rounded by at most half an ulp of 256,
# 2^-17, and passed on with a coefficient of at most 2. Two implementations that order or fuse
# those operations differently (an FMA, say) differ by at most 2 * 6 * 2 * 2^-17 = 12 * 2^-16.
RESIZE_ATOL = 12 * 2.0**-16
# Network: a float32 dot product of length K summed in another order differs by about
# u * sqrt(K) relative, with high probability (Higham & Mary 2019, "A New Approach to
# Probabilistic Rounding Error Analysis"). The deepest path has L = 48 such layers (47
# convolutions and fc, each roughly norm-preserving, with 1-Lipschitz ReLUs and pools between),
# the longest dot product K = 3 * 3 * 448 = 4032 (Mixed_7b/c branch3x3dbl_2), and errors of
# independent layers and of the two implementations add in quadrature:
# u * sqrt(2 * L * K) = 3.7e-5, relative to each feature vector's largest entry.
FEATURE_RTOL = U * np.sqrt(2 * 48 * 4032)


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max_i |a_i - b_i| / max_i |b_i|`` per row, the largest over the rows."""
    scale = np.abs(expected).max(axis=-1)
    return float((np.abs(actual - expected).max(axis=-1) / scale).max())


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return dict(data)


@pytest.fixture(scope="module")
def state_dict(fixture) -> dict[str, np.ndarray]:
    state_dict = reference.random_inception_state_dict(int(fixture["weights_seed"]))
    assert reference.state_dict_fingerprint(state_dict) == str(fixture["weights_fingerprint"]), (
        "NumPy's generator gives other weights than when the fixture was made; run "
        "benchmarks/metrics_reference/make_inception_fixture.py again"
    )
    return state_dict


@pytest.fixture(scope="module")
def variables(state_dict) -> dict:
    return inception.inception_variables_from_state_dict(state_dict, source="random weights")


# ------------------------------------------------------------------------------ key table


def test_key_table_matches_the_independent_shape_table():
    rules = inception.inception_key_table()
    torch_shapes = reference.torch_shapes()
    assert sorted(rule.torch_key for rule in rules) == sorted(torch_shapes)
    for rule in rules:
        moved = rule.transform(np.zeros(torch_shapes[rule.torch_key], np.float32))
        assert moved.shape == rule.shape, rule.torch_key
    by_key = {rule.torch_key: rule for rule in rules}
    conv = by_key["Mixed_5b.branch1x1.conv.weight"]
    assert conv.flax_path == ("params", "Mixed_5b", "branch1x1", "conv", "kernel")
    assert conv.transform is conv_kernel and conv.shape == (1, 1, 192, 64)
    assert by_key["Mixed_7c.branch_pool.bn.running_var"].flax_path == (
        "batch_stats",
        "Mixed_7c",
        "branch_pool",
        "bn",
        "var",
    )
    assert by_key["Conv2d_1a_3x3.bn.weight"].flax_path[-1] == "scale"
    assert by_key["fc.weight"].transform is linear_kernel
    assert by_key["fc.weight"].shape == (2048, 1008)


def test_a_missing_key_is_named(state_dict):
    broken = dict(state_dict)
    del broken["Mixed_6c.branch7x7dbl_4.bn.running_mean"]
    match = r"missing key.*Mixed_6c\.branch7x7dbl_4\.bn\.running_mean"
    with pytest.raises(StateDictMismatchError, match=match):
        inception.inception_variables_from_state_dict(broken, source="broken")


def test_an_unexpected_key_is_named(state_dict):
    # torchvision's auxiliary classifier; only the network's own BatchNorm counters are ignored.
    broken = dict(state_dict)
    broken["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
    broken["AuxLogits.conv0.bn.num_batches_tracked"] = np.array(0, np.int64)
    match = r"2 unexpected key.*AuxLogits\.conv0\.bn\.num_batches_tracked.*AuxLogits\.fc\.weight"
    with pytest.raises(StateDictMismatchError, match=match):
        inception.inception_variables_from_state_dict(broken, source="broken")


def test_a_wrong_shape_is_named(state_dict):
    # The 1x3 kernel given the 3x1 shape of its sibling branch3x3_2b.
    broken = dict(state_dict)
    broken["Mixed_7b.branch3x3_2a.conv.weight"] = np.zeros((384, 384, 3, 1), np.float32)
    match = r"wrong shape.*Mixed_7b\.branch3x3_2a\.conv\.weight"
    with pytest.raises(StateDictMismatchError, match=match):
        inception.inception_variables_from_state_dict(broken, source="broken")


# --------------------------------------------------------------------------------- resize


RESIZE_CASES = (
    "up_8x8_to_13x13",
    "down_37x23_to_11x17",
    "fractional_8x8_to_13x13",
    "32x32_to_299",
    "64x80_to_299",
)


@pytest.mark.parametrize("case", RESIZE_CASES)
def test_resize_matches_torch_fidelity(fixture, case):
    inputs, size, rows, cols, expected = (
        fixture[f"resize_{case}_{part}"] for part in ("input", "size", "rows", "cols", "output")
    )
    out = np.asarray(inception.resize_bilinear_tf1(inputs, tuple(int(side) for side in size)))
    assert out.shape == (inputs.shape[0], *size, inputs.shape[-1]) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, rows][:, :, cols], expected, rtol=0, atol=RESIZE_ATOL)


def test_resize_to_the_same_size_is_the_identity():
    images = np.random.default_rng(0).uniform(0, 255, (1, 5, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(inception.resize_bilinear_tf1(images, (5, 7))), images)


def test_grayscale_is_repeated_to_rgb():
    gray = np.random.default_rng(0).integers(0, 256, (2, 9, 11, 1), dtype=np.uint8)
    x = np.asarray(inception.preprocess_inception_input(gray))
    assert x.shape == (2, 299, 299, 3) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() < 1.0
    rgb = np.repeat(gray, 3, axis=-1)
    np.testing.assert_array_equal(x, np.asarray(inception.preprocess_inception_input(rgb)))


# -------------------------------------------------------------------------------- network


def test_features_match_torch_fidelity(fixture, variables):
    # Both groups are batches of 3 and share the one compiled network.
    for group in ("small", "large"):
        outputs = inception.inception_features(variables, fixture[f"{group}_images"])
        assert {name: outputs[name].shape for name in FEATURES} == {
            "pool3": (3, 2048),
            "logits_unbiased": (3, 1008),
            "logits": (3, 1008),
        }
        pool3 = np.asarray(outputs["pool3"])
        # The random weights keep activations O(1): pooled ReLU outputs, most of them alive.
        assert np.isfinite(pool3).all() and pool3.min() >= 0.0
        assert 1.0 < pool3.max() < 20.0 and (pool3 > 0).mean() > 0.5
        for name in FEATURES:
            actual = np.asarray(outputs[name])
            assert actual.dtype == np.float32
            for dtype in ("float32", "float64"):
                error = _relative_error(actual, fixture[f"{group}_{name}_{dtype}"])
                assert error <= FEATURE_RTOL, (group, name, dtype, error)
        np.testing.assert_allclose(
            np.asarray(outputs["logits"]) - np.asarray(outputs["logits_unbiased"]),
            np.broadcast_to(np.asarray(variables["params"]["fc"]["bias"]), (3, 1008)),
            rtol=0,
            atol=1e-5,
        )


@pytest.mark.parametrize(
    "images, error, message",
    [
        (np.zeros((2, 32, 32, 3), np.float32), TypeError, r"uint8.*float32.*images\.to_uint8"),
        (np.zeros((2, 32, 32, 3), np.int32), TypeError, r"uint8.*int32"),
        (np.zeros((2, 32, 32, 4), np.uint8), ValueError, r"\(2, 32, 32, 4\)"),
        (np.zeros((32, 32, 3), np.uint8), ValueError, r"\(32, 32, 3\)"),
        (np.zeros((2, 3, 32, 32), np.uint8), ValueError, r"\(2, 3, 32, 32\)"),
    ],
)
def test_bad_images_raise_before_anything_is_traced(monkeypatch, images, error, message):
    def traced(*args):
        raise AssertionError("the input reached a compiled function")

    monkeypatch.setattr(inception, "_preprocess", traced)
    monkeypatch.setattr(inception, "_network", traced)
    with pytest.raises(error, match=message):
        inception.inception_features(None, images)
    with pytest.raises(error, match=message):  # the same check on a tracer inside a caller's jit
        jax.jit(lambda x: inception.inception_features(None, x))(images)


# -------------------------------------------------------------------------------- weights


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.delenv(inception.INCEPTION_WEIGHTS.env_var, raising=False)
    monkeypatch.setenv("DIFFJAX_WEIGHTS_DIR", str(tmp_path / "diffjax"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def test_a_file_with_another_checksum_is_refused(empty_caches):
    fake = empty_caches / "fake.pth"
    fake.write_bytes(b"not the inception weights")
    with pytest.raises(WeightsChecksumError, match="6726825d"):
        inception.load_inception(fake, download=False)
    # torch-fidelity's copy in torch's hub cache is found under its own name, and checked too.
    hub = empty_caches / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "weights-inception-2015-12-05-6726825d.pth").write_bytes(b"not them either")
    with pytest.raises(WeightsChecksumError, match="weights-inception-2015-12-05"):
        inception.load_inception(download=False)


def test_no_file_and_no_download_names_url_checksum_and_target(empty_caches):
    with pytest.raises(WeightsUnavailableError) as raised:
        inception.load_inception(download=False)
    message = str(raised.value)
    assert inception.INCEPTION_WEIGHTS.url in message
    assert "6726825d" in message
    assert str(empty_caches / "diffjax" / "pt_inception-2015-12-05-6726825d.pth") in message
