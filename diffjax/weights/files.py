"""Finding, downloading and verifying published weight files.

A :class:`WeightsFile` names a published file, its URL and its SHA-256 (the full digest, or
the prefix that torch.hub-style file names carry, e.g. ``6726825d`` in
``pt_inception-2015-12-05-6726825d.pth``). :func:`resolve_weights` finds a copy, in order:

1. the path the caller passes (an argument or a config key);
2. the file named by the spec's environment variable;
3. the diffjax weights cache, ``$DIFFJAX_WEIGHTS_DIR`` or ``~/.cache/diffjax/weights``;
4. PyTorch's hub cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/
   checkpoints``), where pytorch-fid, torch-fidelity and torchvision keep their downloads;
5. a download into the diffjax cache, when allowed and the host answers within seconds.

Every copy is verified against the checksum before it is used, and a download is written to a
temporary name and renamed only once verified. With no copy and no network the error names the
URL, the checksum and the places to put the file.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import urllib.parse
import urllib.request
from typing import NamedTuple

__all__ = [
    "WEIGHTS_DIR_ENV",
    "WeightsChecksumError",
    "WeightsFile",
    "WeightsUnavailableError",
    "default_weights_dir",
    "host_reachable",
    "resolve_weights",
    "sha256_of_file",
    "verify_checksum",
]

WEIGHTS_DIR_ENV = "DIFFJAX_WEIGHTS_DIR"
_PROBE_TIMEOUT_S = 3.0
_CHUNK_BYTES = 1 << 20


class WeightsUnavailableError(FileNotFoundError):
    """No copy of a weight file is present and none could be downloaded."""


class WeightsChecksumError(ValueError):
    """A weight file's SHA-256 differs from the published one."""


class WeightsFile(NamedTuple):
    """A published weight file.

    Attributes:
      description: what the file is, for messages (``"FID Inception-v3"``).
      filename: its published file name.
      url: where it is published.
      sha256: its SHA-256 in hex, in full or as a published prefix (at least 8 digits).
      env_var: the environment variable that may name a local copy.
      aliases: other published names of the same file (e.g. torch-fidelity's copy).
    """

    description: str
    filename: str
    url: str
    sha256: str
    env_var: str
    aliases: tuple[str, ...] = ()


def host_reachable(host: str, port: int = 443, timeout_s: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout_s`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def default_weights_dir() -> str:
    """The diffjax weights cache: ``$DIFFJAX_WEIGHTS_DIR`` or ``~/.cache/diffjax/weights``."""
    return os.environ.get(WEIGHTS_DIR_ENV) or os.path.expanduser(
        os.path.join("~", ".cache", "diffjax", "weights")
    )


def _torch_hub_dir() -> str:
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser(os.path.join("~", ".cache")),
        "torch",
    )
    return os.path.join(torch_home, "hub", "checkpoints")


def sha256_of_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, in lowercase hex (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: str | os.PathLike, sha256: str, description: str = "weight file") -> None:
    """Raises :class:`WeightsChecksumError` unless the file's SHA-256 starts with ``sha256``.

    Args:
      path: the file.
      sha256: the published digest, in full or as a prefix of at least 8 hex digits.
      description: what the file is, for the message.
    """
    expected = sha256.lower()
    if len(expected) < 8:
        raise ValueError(f"a checksum needs at least 8 hex digits, got {sha256!r}.")
    actual = sha256_of_file(path)
    if not actual.startswith(expected):
        raise WeightsChecksumError(
            f"{os.fspath(path)} is not the published {description}: its SHA-256 is "
            f"{actual}, expected {'a digest starting with ' if len(expected) < 64 else ''}"
            f"{expected}. Delete it and download the file again."
        )


def _checksum_text(sha256: str) -> str:
    return f"SHA-256 {sha256}" if len(sha256) == 64 else f"SHA-256 starting with {sha256}"


def _download(spec: WeightsFile, target: str) -> None:
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(prefix=".download-", dir=folder)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(spec.url, timeout=60) as src:
            for chunk in iter(lambda: src.read(_CHUNK_BYTES), b""):
                out.write(chunk)
        verify_checksum(tmp_path, spec.sha256, spec.description)
        os.replace(tmp_path, target)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def resolve_weights(
    spec: WeightsFile,
    path: str | os.PathLike | None = None,
    *,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> str:
    """The path of a verified local copy of ``spec`` (see the module docstring for the order).

    Args:
      spec: the published file.
      path: an explicit local copy; when given, it is the only place looked at.
      download: whether to download the file when no local copy exists.
      cache_dir: the download cache; default :func:`default_weights_dir`.

    Returns:
      The path of the verified file.

    Raises:
      WeightsUnavailableError: no copy exists and none could be downloaded; the message names
        the URL, the checksum and where to put the file.
      WeightsChecksumError: a copy exists but is not the published file.
    """
    if path is None and os.environ.get(spec.env_var):
        path = os.environ[spec.env_var]
    if path is not None:
        path = os.path.expanduser(os.fspath(path))
        if not os.path.isfile(path):
            raise WeightsUnavailableError(
                f"The {spec.description} weights were asked for at {path}, but no file is "
                f"there. Download {spec.url} ({_checksum_text(spec.sha256)}) to that path."
            )
        verify_checksum(path, spec.sha256, spec.description)
        return path
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else default_weights_dir()
    for folder in (cache_dir, _torch_hub_dir()):
        for name in (spec.filename, *spec.aliases):
            candidate = os.path.join(folder, name)
            if os.path.isfile(candidate):
                verify_checksum(candidate, spec.sha256, spec.description)
                return candidate
    target = os.path.join(cache_dir, spec.filename)
    url = urllib.parse.urlparse(spec.url)
    host = url.hostname or ""
    if download and host_reachable(host, url.port or (80 if url.scheme == "http" else 443)):
        _download(spec, target)
        return target
    reason = "downloading is disabled" if not download else f"{host} cannot be reached"
    raise WeightsUnavailableError(
        f"The {spec.description} weights are not on this machine and {reason}. Download "
        f"{spec.url} ({_checksum_text(spec.sha256)}) on a machine with internet and either put "
        f"it at {target}, or set ${spec.env_var} to its path, or pass its path explicitly."
    )
