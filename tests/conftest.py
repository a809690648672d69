"""Test-session setup: eight fake CPU devices and the persistent compilation cache.

Both must happen before JAX initialises its backends, so they are done at import time here.
Compiles dominate CPU test time; the cache lives outside the repository.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

_CACHE_DIR = os.environ.get(
    "DIFFJAX_TEST_COMPILATION_CACHE", os.path.expanduser("~/.cache/diffjax/jax-test-cache")
)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
