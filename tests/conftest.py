"""Test-session setup: eight fake CPU devices, the CLI's XLA flags and the compilation cache.

All must happen before JAX initialises its backends, so they are done at import time here.
The in-process tests use the XLA flags that ``python -m diffjax.train`` adds, so a run of the
CLI and one in this process compute the same bits. Compiles dominate CPU test time; the cache
lives outside the repository.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402
from train_helpers import fast_compiles  # noqa: E402

from diffjax.cli import enable_fast_cpu_convolutions  # noqa: E402

enable_fast_cpu_convolutions()

_CACHE_DIR = os.environ.get(
    "DIFFJAX_TEST_COMPILATION_CACHE", os.path.expanduser("~/.cache/diffjax/jax-test-cache")
)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


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
