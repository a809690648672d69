"""Tests of diffjax/xla_cpu.py: the CPU convolution flag and when it is (not) added.

The flag only takes effect in a process whose JAX backend has not started, so the behavioural
tests run small fresh Python processes.
"""

import os
import subprocess
import sys
import textwrap

import pytest
from jaxlib import version as jaxlib_version

from diffjax.xla_cpu import FAST_CPU_CONVOLUTION_FLAG, with_fast_cpu_convolution_flag

MEASURED = jaxlib_version.__version__.startswith("0.10.")
needs_measured_jaxlib = pytest.mark.skipif(
    not MEASURED, reason="the flag is only added on jaxlib 0.10.x, where it was measured"
)

# Prints whether enable_fast_cpu_convolutions() added the flag and how many of the compiled
# convolution-gradient's fusions went to YNNPACK (64 channels: large enough for YNNPACK).
_CONV_PROBE = textwrap.dedent(
    """
    import os, sys
    import jax, jax.numpy as jnp
    from diffjax import enable_fast_cpu_convolutions
    if sys.argv[1] == "touch-backend-first":
        jax.devices()
    enabled = enable_fast_cpu_convolutions() if sys.argv[1] != "off" else None
    def loss(w, x):
        y = jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(y ** 2)
    hlo = jax.jit(jax.grad(loss)).lower(
        jnp.ones((3, 3, 64, 64)), jnp.ones((2, 16, 16, 64))).compile().as_text()
    print(enabled, hlo.count("__ynn_fusion"), os.environ.get("XLA_FLAGS", ""))
    """
)


def _run_probe(mode: str, xla_flags: str = "") -> tuple[str, int, str]:
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", _CONV_PROBE, mode],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    enabled, ynn_fusions, flags = result.stdout.rstrip("\n").split(" ", 2)
    return enabled, int(ynn_fusions), flags


def test_flag_is_appended_to_existing_flags():
    assert (
        with_fast_cpu_convolution_flag("--xla_force_host_platform_device_count=8", "0.10.2")
        == f"--xla_force_host_platform_device_count=8 {FAST_CPU_CONVOLUTION_FLAG}"
    )
    assert with_fast_cpu_convolution_flag("", "0.10.0") == FAST_CPU_CONVOLUTION_FLAG


def test_users_own_choice_of_the_option_is_kept():
    assert (
        with_fast_cpu_convolution_flag("--xla_cpu_experimental_ynn_fusion_type=dot", "0.10.2")
        is None
    )


@pytest.mark.parametrize("version", ["0.9.1", "0.11.0", "1.0.0"])
def test_unmeasured_jaxlib_gets_no_flag(version):
    # XLA aborts the whole process on an unknown flag, so unmeasured versions are left alone.
    assert with_fast_cpu_convolution_flag("", version) is None


@needs_measured_jaxlib
def test_flag_moves_convolution_gradients_off_ynnpack():
    enabled, ynn_default, _ = _run_probe("off")
    assert enabled == "None" and ynn_default > 0
    enabled, ynn_with_flag, flags = _run_probe("on", "--xla_force_host_platform_device_count=2")
    assert enabled == "True"
    assert ynn_with_flag == 0
    assert flags.split() == ["--xla_force_host_platform_device_count=2", FAST_CPU_CONVOLUTION_FLAG]


@needs_measured_jaxlib
def test_started_backend_is_left_alone():
    enabled, ynn_fusions, flags = _run_probe("touch-backend-first")
    assert enabled == "False"
    assert ynn_fusions > 0
    assert flags == ""


@pytest.mark.parametrize("cli", ["diffjax.train", "diffjax.sample"])
def test_importing_a_cli_does_not_start_the_backend(cli):
    # The CLIs add the flag in main(); that only works if their imports leave JAX unstarted.
    code = (
        f"import {cli}\n"
        "from jax._src import xla_bridge\n"
        "print(xla_bridge.backends_are_initialized())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "False"
