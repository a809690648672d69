"""Test-session setup: eight fake CPU devices, the CLI's XLA flags and the compilation cache.

All must happen before JAX initialises its backends, so they are done at import time here.
The in-process tests use the XLA flags that ``python -m diffjax.train`` adds, so a run of the
CLI and one in this process compute the same bits. Compiles dominate CPU test time; the cache
lives outside the repository.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402
import socket  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402
from notebook_support import DEBIAN_IDX_DIR, NUM_TEST_IMAGES, NUM_TRAIN_IMAGES, write_idx  # noqa: E402
from train_helpers import fast_compiles  # noqa: E402

from diffjax.cli import enable_fast_cpu_convolutions  # noqa: E402
from diffjax.data.datasets.fashion_mnist import IDX_FILES, read_idx  # noqa: E402

enable_fast_cpu_convolutions()

_CACHE_DIR = os.environ.get(
    "DIFFJAX_TEST_COMPILATION_CACHE", os.path.expanduser("~/.cache/diffjax/jax-test-cache")
)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# The modules that take longest on a cold compilation cache (measured on 2 cores), run first:
# with --dist loadfile a worker takes a whole module, so a long one started last would keep
# one worker busy while the other idles.
LONGEST_MODULES = (
    "test_notebook_flows_and_few_step.py",
    "test_notebook_latent_and_control.py",
    "test_notebooks.py",
    "test_notebook_multi_device_training.py",
    "test_faults.py",
    "test_controlnet_objective.py",
    "test_golden.py",
    "test_objectives.py",
    "test_loop.py",
    "test_reflow.py",
)


def pytest_collection_modifyitems(items):
    """Runs :data:`LONGEST_MODULES` first, in that order; the others keep their order. CI passes
    --no-loadscope-reorder: otherwise xdist sorts the modules by their number of tests."""
    rank = {name: position for position, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture
def unoptimized():
    """Most XLA optimisations off for one test: for tiny arrays and short loops, compile time is
    all that matters. (Not for long loops over many samples, which run slower without them.)"""
    with fast_compiles():
        yield


@pytest.fixture(scope="module")
def unoptimized_module():
    """:func:`unoptimized` for a whole module (``pytestmark = usefixtures(...)``)."""
    with fast_compiles():
        yield


@pytest.fixture(scope="module")
def fashion_mnist_slice(tmp_path_factory) -> pathlib.Path:
    """The first images of each split, so preparing takes a fraction of a second, not 10 s."""
    if not all((DEBIAN_IDX_DIR / name).is_file() for name in IDX_FILES.values()):
        pytest.skip(f"needs {DEBIAN_IDX_DIR}: apt-get install dataset-fashion-mnist")
    idx_dir = tmp_path_factory.mktemp("fashion_mnist_idx")
    sizes = {"train": NUM_TRAIN_IMAGES, "test": NUM_TEST_IMAGES}
    for role, name in IDX_FILES.items():
        split = role.split("_")[0]
        write_idx(idx_dir / name, read_idx(DEBIAN_IDX_DIR / name)[: sizes[split]])
    return idx_dir


@pytest.fixture
def notebook_env(tmp_path, monkeypatch, fashion_mnist_slice):
    """Small setting, offline data, a temporary cwd, a non-interactive plot backend, no network."""
    monkeypatch.setenv("DIFFJAX_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("DIFFJAX_FASHION_MNIST_DIR", str(fashion_mnist_slice))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError(f"the notebook tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)

    import matplotlib

    matplotlib.use("Agg")
    yield tmp_path
    import matplotlib.pyplot as plt

    plt.close("all")
