"""The weight-file utilities: the restricted .pth reader, checksums, lookup order, key tables."""

import functools
import hashlib
import http.server
import io
import pickle
import threading
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from diffjax import weights

FIXTURES = Path(__file__).parent / "fixtures" / "torch_checkpoints"


@pytest.mark.parametrize("name", ["state_zip.pth", "state_legacy.pth"])
def test_both_torch_formats_read_to_the_saved_arrays(name):
    state = weights.read_torch_state_dict(FIXTURES / name)
    expected = np.load(FIXTURES / "expected.npz")
    assert sorted(state) == sorted(expected.files)
    for key in expected.files:
        value = state[key]
        if key == "bf16":
            assert value.dtype == ml_dtypes.bfloat16
            value = value.astype(np.float32)
        assert value.dtype == expected[key].dtype and value.shape == expected[key].shape, key
        np.testing.assert_array_equal(value, expected[key], err_msg=key)


@pytest.mark.parametrize("name", ["module_state_dict.pth", "module_state_dict_legacy.pth"])
def test_a_module_state_dict_with_its_metadata_attribute_reads(name):
    state = weights.read_torch_state_dict(FIXTURES / name)
    expected = np.load(FIXTURES / "module_expected.npz")
    assert type(state) is dict and sorted(state) == sorted(expected.files)
    for key in expected.files:
        np.testing.assert_array_equal(state[key], expected[key], err_msg=key)


def _zip_checkpoint(path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_a_pickle_that_would_run_code_is_refused_in_both_formats(tmp_path):
    payload = pickle.dumps({"weight": _RunsCode()}, protocol=2)
    _zip_checkpoint(tmp_path / "evil_zip.pth", payload)
    with pytest.raises(weights.UnsupportedCheckpointError, match=r"posix\.system|os\.system"):
        weights.load_torch_checkpoint(tmp_path / "evil_zip.pth")
    legacy = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(header, legacy, protocol=2)
    legacy.write(payload)
    (tmp_path / "evil_legacy.pth").write_bytes(legacy.getvalue())
    with pytest.raises(weights.UnsupportedCheckpointError, match="only tensors"):
        weights.load_torch_checkpoint(tmp_path / "evil_legacy.pth")


def test_damaged_files_are_reported(tmp_path):
    data = (FIXTURES / "state_legacy.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[:-20])
    with pytest.raises(weights.UnsupportedCheckpointError, match="truncated|damaged"):
        weights.read_torch_state_dict(tmp_path / "truncated.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(weights.UnsupportedCheckpointError, match="not a torch.save file|neither"):
        weights.read_torch_state_dict(tmp_path / "garbage.pth")
    with pytest.raises(FileNotFoundError, match="No weight file"):
        weights.read_torch_state_dict(tmp_path / "missing.pth")
    _zip_checkpoint(tmp_path / "not_a_dict.pth", pickle.dumps([1, 2], protocol=2))
    with pytest.raises(weights.UnsupportedCheckpointError, match="does not hold a state dict"):
        weights.read_torch_state_dict(tmp_path / "not_a_dict.pth")


def _spec(url: str, sha256: str) -> weights.WeightsFile:
    return weights.WeightsFile("test net", "net-1234.pth", url, sha256, "DIFFJAX_TEST_WEIGHTS")


@pytest.fixture
def isolated_caches(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("DIFFJAX_TEST_WEIGHTS", raising=False)
    return tmp_path


def test_lookup_order_and_checksums(isolated_caches, monkeypatch):
    tmp_path = isolated_caches
    payload = b"weights"
    digest = hashlib.sha256(payload).hexdigest()
    spec = _spec("https://example.invalid/net-1234.pth", digest[:8])
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "net-1234.pth").write_bytes(payload)
    assert weights.resolve_weights(spec, download=False) == str(hub / "net-1234.pth")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "net-1234.pth").write_bytes(payload)
    assert weights.resolve_weights(spec, download=False) == str(cache / "net-1234.pth")
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(payload)
    monkeypatch.setenv("DIFFJAX_TEST_WEIGHTS", str(explicit))
    assert weights.resolve_weights(spec, download=False) == str(explicit)
    explicit.write_bytes(b"tampered")
    with pytest.raises(
        weights.WeightsChecksumError, match=f"expected a digest starting with {digest[:8]}"
    ):
        weights.resolve_weights(spec, download=False)
    with pytest.raises(weights.WeightsUnavailableError, match="no file is there"):
        weights.resolve_weights(spec, tmp_path / "absent.pth")


def test_no_copy_and_no_download_names_url_checksum_and_target(isolated_caches):
    spec = _spec("https://example.invalid/net-1234.pth", "ab" * 32)
    with pytest.raises(weights.WeightsUnavailableError) as error:
        weights.resolve_weights(spec, download=False)
    message = str(error.value)
    assert "https://example.invalid/net-1234.pth" in message and "ab" * 32 in message
    assert (
        str(isolated_caches / "cache" / "net-1234.pth") in message
        and "DIFFJAX_TEST_WEIGHTS" in message
    )


def test_download_over_loopback_is_verified_before_it_lands(isolated_caches):
    root = isolated_caches / "served"
    root.mkdir()
    (root / "net-1234.pth").write_bytes(b"served weights")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/net-1234.pth"
        good = _spec(url, hashlib.sha256(b"served weights").hexdigest())
        path = weights.resolve_weights(good)
        assert Path(path).read_bytes() == b"served weights"
        Path(path).unlink()
        with pytest.raises(weights.WeightsChecksumError):
            weights.resolve_weights(_spec(url, "0" * 64))
        assert not any((isolated_caches / "cache").iterdir())  # nothing unverified was kept
    finally:
        server.shutdown()


def test_key_table_builds_flax_layouts_and_names_every_mismatch():
    state = {
        "conv.weight": np.zeros((4, 3, 3, 3)),
        "fc.weight": np.zeros((5, 4)),
        "bn.num_batches_tracked": np.zeros(()),
    }
    rules = [
        weights.KeyRule(
            "conv.weight", ("params", "conv", "kernel"), (3, 3, 3, 4), weights.conv_kernel
        ),
        weights.KeyRule("fc.weight", ("params", "fc", "kernel"), (4, 5), weights.linear_kernel),
    ]

    def ignored(key):
        return key.endswith("num_batches_tracked")

    variables = weights.apply_key_table(state, rules, source="test", ignored=ignored)
    assert variables["params"]["conv"]["kernel"].shape == (3, 3, 3, 4)
    assert variables["params"]["fc"]["kernel"].dtype == np.float32
    with pytest.raises(weights.StateDictMismatchError, match=r"missing key\(s\): \['fc.weight'\]"):
        weights.apply_key_table({"conv.weight": state["conv.weight"]}, rules, source="test")
    with pytest.raises(weights.StateDictMismatchError, match=r"unexpected key\(s\): \['extra'\]"):
        weights.apply_key_table(
            {**state, "extra": np.zeros(1)}, rules, source="test", ignored=ignored
        )
    with pytest.raises(
        weights.StateDictMismatchError,
        match=r"fc.weight: \(4, 5\) in the file \(Flax layout \(5, 4\)\), Flax layout \(4, 5\)",
    ):
        weights.apply_key_table(
            {**state, "fc.weight": np.zeros((4, 5))}, rules, source="test", ignored=ignored
        )
