"""Tests for diffjax.metrics.lpips against distances computed by the `lpips` package.

tests/fixtures/lpips_reference.npz comes from benchmarks/metrics_reference/make_lpips_fixture.py
(PyTorch peer venv): ``lpips.LPIPS`` v0.1 with the seeded random weights of
tests/lpips_reference.py, on uint8 image pairs stored in the fixture.
"""

import os

import jax
import jax.numpy as jnp
import lpips_reference
import numpy as np
import pytest

from diffjax.metrics import lpips as lpips_module
from diffjax.metrics.lpips import (
    LPIPS,
    load_lpips,
    lpips_distance,
    lpips_variables_from_state_dicts,
    lpips_weights_files,
)
from diffjax.weights import (
    StateDictMismatchError,
    WeightsChecksumError,
    WeightsUnavailableError,
    read_torch_state_dict,
    resolve_weights,
)

FIXTURE = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "lpips_reference.npz"))
SIZES = (32, 64)
NETS = ("alex", "vgg")

# Both sides compute in float32 but sum every convolution in their own order. Two orders of a
# K-term dot product differ by about sqrt(K) * u relative to the sum of magnitudes (u = 2^-24
# ~ 6e-8), i.e. <= 4e-6 per layer for K <= 4608 (VGG's 3x3x512); the distance averages many
# such errors of random sign, so 1e-5 bounds it with room (measured on every net and size:
# <= 1.3e-6 with the XLA flags of these tests, <= 6.5e-7 with XLA's defaults), while a wrong
# layer detail moves d far more (a scaling constant off by 0.01: 2.6e-3; a VGG max-pool of
# 3x3 instead of 2x2: 0.39).
RTOL = 1e-5


def _state_dicts(net):
    backbone = lpips_reference.random_backbone_state_dict(net, int(FIXTURE["backbone_seed"]))
    heads = lpips_reference.random_heads_state_dict(net, int(FIXTURE["heads_seed"]))
    return backbone, heads


@pytest.fixture(scope="module", params=NETS)
def net_and_variables(request):
    net = request.param
    backbone, heads = _state_dicts(net)
    # The fixture's distances are only meaningful for the weights it was made with.
    assert lpips_reference.state_dict_digest(backbone) == str(FIXTURE[f"{net}_backbone_digest"])
    assert lpips_reference.state_dict_digest(heads) == str(FIXTURE[f"{net}_heads_digest"])
    return net, lpips_variables_from_state_dicts(backbone, heads, net)


@pytest.fixture(scope="module")
def alex_variables():
    return lpips_variables_from_state_dicts(*_state_dicts("alex"), "alex")


def _pairs(size):
    pairs = lpips_reference.signed_unit_images(FIXTURE[f"images_{size}"])
    return pairs[:, 0], pairs[:, 1]


@pytest.mark.parametrize("size", SIZES)
def test_matches_lpips_package_with_random_weights(net_and_variables, size):
    net, variables = net_and_variables
    x, y = _pairs(size)
    got = lpips_distance(variables, x, y, net=net)
    assert got.shape == (x.shape[0],) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, FIXTURE[f"{net}_random_heads_{size}"], rtol=RTOL, atol=0)


@pytest.mark.parametrize("net", NETS)
def test_published_heads_match_lpips_package_when_present(net):
    """The real v0.1 heads through the .pth reader and key table (when a copy is on this machine,
    e.g. $DIFFJAX_LPIPS_ALEX_HEADS pointing at the lpips wheel's weights/v0.1/alex.pth)."""
    try:
        path = resolve_weights(lpips_weights_files(net).heads, download=False)
    except WeightsUnavailableError:
        pytest.skip(f"no local copy of the LPIPS v0.1 {net} heads")
    heads = read_torch_state_dict(path)
    assert all(np.all(value >= 0) for value in heads.values())
    backbone, _ = _state_dicts(net)
    variables = lpips_variables_from_state_dicts(backbone, heads, net)
    for size in SIZES:
        got = lpips_distance(variables, *_pairs(size), net=net)
        np.testing.assert_allclose(got, FIXTURE[f"{net}_real_heads_{size}"], rtol=RTOL, atol=0)


@pytest.mark.parametrize("net", NETS)
def test_module_parameters_are_the_key_table(net):
    variables = lpips_variables_from_state_dicts(*_state_dicts(net), net)
    image = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    abstract = jax.eval_shape(LPIPS(net).init, jax.random.key(0), image, image)
    assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(lambda a: a.shape, variables)


@pytest.mark.parametrize("size", SIZES)
def test_identity_and_symmetry_are_exact(net_and_variables, size):
    net, variables = net_and_variables
    x, y = _pairs(size)
    np.testing.assert_array_equal(lpips_distance(variables, x, x, net=net), 0.0)
    forward = lpips_distance(variables, x, y, net=net)
    assert np.all(np.asarray(forward) > 0)
    np.testing.assert_array_equal(forward, lpips_distance(variables, y, x, net=net))


def test_runs_inside_jit(alex_variables):
    x, y = _pairs(32)
    jitted = jax.jit(lpips_distance, static_argnames="net")(alex_variables, x, y, net="alex")
    np.testing.assert_allclose(jitted, lpips_distance(alex_variables, x, y), rtol=1e-6)
    np.testing.assert_array_equal(jax.jit(lpips_distance)(alex_variables, x, x), 0.0)


def test_grayscale_is_repeated_to_rgb(alex_variables):
    x, y = (image[..., :1] for image in _pairs(32))
    np.testing.assert_array_equal(
        lpips_distance(alex_variables, x, y),
        lpips_distance(alex_variables, np.repeat(x, 3, -1), np.repeat(y, 3, -1)),
    )


def test_gradient_matches_float64_central_difference(alex_variables):
    x, y = (image[:1] for image in _pairs(32))
    direction = np.random.default_rng(0).normal(size=x.shape)
    gradient = jax.grad(lambda image: lpips_distance(alex_variables, image, y)[0])(jnp.asarray(x))
    derivative = np.sum(np.asarray(gradient, np.float64) * direction)
    # In float64, because d is only piecewise smooth (ReLUs, max-pools): a float32 difference
    # needs a step so large that it crosses kinks (1e-2 is off by 50%), while in float64 a
    # 1e-5 step crosses none and leaves ~1e-10 of truncation and rounding.
    with jax.enable_x64(True):
        variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), alex_variables)
        d = jax.jit(lambda image: LPIPS("alex").apply(variables, image, y.astype(np.float64))[0])
        step = 1e-5
        difference = (d(x + step * direction) - d(x - step * direction)) / (2 * step)
    # The float32 gradient: 3072 products summed after five layers of float32 backprop
    # (measured: 2.4e-6 relative).
    np.testing.assert_allclose(derivative, difference, rtol=1e-4)


# --- key tables -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda sd: sd.pop("features.3.bias"), "features.3.bias"),
        (lambda sd: sd.update({"features.13.weight": np.zeros((1,))}), "features.13.weight"),
        (lambda sd: sd.update({"classifier.2.weight": np.zeros((1,))}), "classifier.2.weight"),
        (
            lambda sd: sd.update({"features.6.weight": np.zeros((384, 192, 5, 5), np.float32)}),
            "features.6.weight",
        ),
    ],
    ids=["missing", "unexpected", "unexpected classifier layer", "wrong shape"],
)
def test_backbone_key_table_names_the_bad_key(edit, named):
    backbone, heads = _state_dicts("alex")
    edit(backbone)
    with pytest.raises(StateDictMismatchError, match=named.replace(".", r"\.")):
        lpips_variables_from_state_dicts(backbone, heads, "alex")


def test_heads_key_table_names_the_bad_key():
    backbone, heads = _state_dicts("vgg")
    heads["lin4.model.1.weight"] = heads.pop("lin4.model.1.weight")[:, :256]
    heads["lin5.model.1.weight"] = np.zeros((1, 512, 1, 1), np.float32)
    with pytest.raises(StateDictMismatchError, match=r"lin5\.model\.1\.weight") as error:
        lpips_variables_from_state_dicts(backbone, heads, "vgg")
    assert "lin4.model.1.weight: (1, 256, 1, 1)" in str(error.value)


def test_classifier_of_a_torchvision_file_is_ignored():
    backbone, heads = _state_dicts("alex")
    # The published files hold the classifier; placeholders suffice, ignored keys are not read.
    for layer in lpips_reference.CLASSIFIER_LAYERS["alex"]:
        backbone[f"classifier.{layer}.weight"] = np.zeros((1,), np.float32)
        backbone[f"classifier.{layer}.bias"] = np.zeros((1,), np.float32)
    reference = lpips_variables_from_state_dicts(*_state_dicts("alex"), "alex")
    variables = lpips_variables_from_state_dicts(backbone, heads, "alex")
    assert jax.tree.all(jax.tree.map(np.array_equal, variables, reference))


def test_state_dicts_of_the_other_net_are_refused():
    with pytest.raises(StateDictMismatchError, match=r"missing.*features\.3\.bias.*unexpected"):
        lpips_variables_from_state_dicts(*_state_dicts("vgg"), "alex")


# --- argument checks --------------------------------------------------------------------------


@pytest.fixture
def no_tracing(monkeypatch):
    """Makes any call that reaches the jitted computation fail the test."""

    def traced(*args, **kwargs):
        raise AssertionError("the inputs reached the jitted computation")

    monkeypatch.setattr(lpips_module, "_distance", traced)


_X = np.zeros((2, 32, 32, 3), np.float32)


@pytest.mark.parametrize(
    "x, y, net, error, match",
    [
        (_X, _X[:1], "alex", ValueError, r"same shape.*\(2, 32, 32, 3\).*\(1, 32, 32, 3\)"),
        (_X, _X[..., :2], "alex", ValueError, r"y must be \[B, H, W, 3\].*\(2, 32, 32, 2\)"),
        (_X[0], _X[0], "alex", ValueError, r"x must be \[B, H, W, 3\].*\(32, 32, 3\)"),
        (_X.astype(np.uint8), _X, "alex", TypeError, "dtype uint8.*127.5"),
        (_X, _X.astype(np.int32), "alex", TypeError, "y must be a float array.*int32"),
        (_X.tolist(), _X, "alex", TypeError, "x must be an array.*list"),
        (_X, _X, "squeeze", ValueError, r"\['alex', 'vgg'\].*'squeeze'"),
        (_X[:, :30], _X[:, :30], "alex", ValueError, "30x32, too small.*at least 31"),
        (_X[:, :15, :15], _X[:, :15, :15], "vgg", ValueError, "15x15, too small.*at least 16"),
    ],
    ids=[
        "mismatched shapes",
        "two channels",
        "no batch axis",
        "uint8",
        "int32",
        "list",
        "unknown net",
        "too small for alex",
        "too small for vgg",
    ],
)
def test_bad_inputs_raise_before_tracing(alex_variables, no_tracing, x, y, net, error, match):
    with pytest.raises(error, match=match):
        lpips_distance(alex_variables, x, y, net=net)


def test_variables_of_another_net_raise_before_tracing(alex_variables, no_tracing):
    with pytest.raises(ValueError, match=r"not LPIPS 'vgg' variables.*missing"):
        lpips_distance(alex_variables, _X, _X, net="vgg")
    with pytest.raises(ValueError, match=r"not LPIPS 'alex' variables"):
        lpips_distance({"params": {}}, _X, _X, net="alex")


# --- weight files -----------------------------------------------------------------------------


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFJAX_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for net in NETS:
        for weights_file in lpips_weights_files(net):
            monkeypatch.delenv(weights_file.env_var, raising=False)
    return tmp_path


@pytest.mark.parametrize(
    "net, backbone_sha256, heads_sha256",
    [
        ("alex", "7be5be79", "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"),
        ("vgg", "397923af", "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"),
    ],
)
def test_absent_weights_name_url_checksum_and_target(
    empty_caches, net, backbone_sha256, heads_sha256
):
    with pytest.raises(WeightsUnavailableError) as error:
        load_lpips(net, download=False)
    message = str(error.value)
    backbone, heads = lpips_weights_files(net)
    assert (backbone.sha256, heads.sha256) == (backbone_sha256, heads_sha256)
    # One error names both files, each with its URL, checksum, target and variable.
    for weights_file in (backbone, heads):
        assert weights_file.url in message
        assert weights_file.sha256 in message
        assert os.path.join(str(empty_caches / "weights"), weights_file.filename) in message
        assert f"${weights_file.env_var}" in message


@pytest.mark.parametrize("net", NETS)
def test_heads_file_with_the_wrong_checksum_is_refused(empty_caches, monkeypatch, net):
    wrong = empty_caches / "heads.pth"
    wrong.write_bytes(b"not the published heads")
    with pytest.raises(WeightsChecksumError, match=lpips_weights_files(net).heads.sha256):
        load_lpips(net, heads_path=str(wrong), download=False)
    monkeypatch.setenv(lpips_weights_files(net).heads.env_var, str(wrong))
    with pytest.raises(WeightsChecksumError, match=str(wrong)):
        load_lpips(net, download=False)
