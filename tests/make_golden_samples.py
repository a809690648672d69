"""Records what the 0.1.0 samplers, loss and train step return, as a regression fixture.

The fixture ``tests/fixtures/golden_0_1_0.npz`` was written with diffjax 0.1.0 (commit 1259c67,
before the continuous-time reshaping), running the calls of ``tests/golden_cases.py`` in that
version's API (its ``make_train_step(apply_fn, schedule, optimizer, ...)``);
``tests/test_golden.py`` checks that the reshaped core still returns the same arrays, bit for
bit where the arithmetic is unchanged. Rerunning this script on a later commit records that
commit instead (e.g. to start a new fixture after a deliberate change).

  .venv/bin/python tests/make_golden_samples.py
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import golden_cases  # noqa: E402

if __name__ == "__main__":
    from diffjax.cli import enable_fast_cpu_convolutions

    enable_fast_cpu_convolutions()
    arrays = golden_cases.compute_all()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "golden_0_1_0.npz")
    np.savez_compressed(path, **arrays)
    print(f"wrote {len(arrays)} arrays to {path} (jax {jax.__version__})")
