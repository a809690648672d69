"""Records what the 0.1.0 samplers, loss and train step return, as a regression fixture.

Run once at commit 1259c67 (diffjax 0.1.0, before the continuous-time reshaping) to write
``tests/fixtures/golden_0_1_0.npz``; ``tests/test_golden.py`` checks that the reshaped core
still returns the same arrays (bit for bit where the arithmetic is unchanged). Rerunning it on a
later commit only records that commit.

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
    from diffjax.xla_cpu import enable_fast_cpu_convolutions

    enable_fast_cpu_convolutions()
    arrays = golden_cases.compute_all()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "golden_0_1_0.npz")
    np.savez_compressed(path, **arrays)
    print(f"wrote {len(arrays)} arrays to {path} (jax {jax.__version__})")
