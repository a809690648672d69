"""Tests of diffjax/cli.py: the CPU convolution flag, the CPU device count, and when
each is (not) changed.

Both only take effect in a process whose JAX backend has not started, so the behavioural
tests run small fresh Python processes.
"""

import os
import subprocess
import sys
import textwrap

import pytest
from jaxlib import version as jaxlib_version

from diffjax.cli import (
    FAST_CPU_CONVOLUTION_FLAG,
    DottedOptions,
    cpu_device_count,
    cpu_devices_from_flag,
    usable_cpu_cores,
    with_fast_cpu_convolution_flag,
)

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
    from diffjax.cli import enable_fast_cpu_convolutions
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
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
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


@pytest.mark.parametrize(
    "batch_sizes, num_cores, expected",
    [
        ([64, 256], 2, 2),  # one device per core
        ([64, 256], 16, 16),
        ([64, 256], 6, 4),  # 6 does not divide 64: the largest count below that does
        ([30], 8, 6),
        ([7], 4, 1),  # a prime batch: one device
        ([64], 1, 1),
        ([], 3, 3),
    ],
)
def test_cpu_device_count_is_one_per_core_lowered_to_split_every_batch(
    batch_sizes, num_cores, expected
):
    assert cpu_device_count(batch_sizes, num_cores) == expected


def test_cpu_device_count_defaults_to_the_usable_cores():
    assert usable_cpu_cores() >= 1
    assert cpu_device_count([], None) == usable_cpu_cores()


@pytest.mark.parametrize("batch_sizes, num_cores", [([0], 2), ([64, -8], 2), ([64], 0)])
def test_cpu_device_count_rejects_bad_values(batch_sizes, num_cores):
    with pytest.raises(ValueError, match="must be >= 1"):
        cpu_device_count(batch_sizes, num_cores)


def test_cpu_devices_flag_value_wins_and_zero_means_automatic():
    assert cpu_devices_from_flag(3, [64]) == 3
    assert cpu_devices_from_flag(0, [64, 256]) == cpu_device_count([64, 256])
    # Bad sizes are left to the program's validation, which names them.
    assert cpu_devices_from_flag(0, [64, 0, None, "8"]) == cpu_device_count([64])


# Prints what use_cpu_devices(3) returned and how many CPU devices JAX then has.
_DEVICE_PROBE = textwrap.dedent(
    """
    import sys
    import jax
    from diffjax.cli import use_cpu_devices
    if sys.argv[1] == "touch-backend-first":
        jax.devices()
    print(use_cpu_devices(3), jax.device_count())
    """
)


@pytest.mark.parametrize(
    "mode, env, expected",
    [
        ("fresh", {}, "True 3"),
        ("touch-backend-first", {}, "False 1"),
        # The user's own count wins, whichever way it was given.
        ("fresh", {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, "False 2"),
        ("fresh", {"JAX_NUM_CPU_DEVICES": "2"}, "False 2"),
        ("fresh", {"JAX_NUM_CPU_DEVICES": "3"}, "True 3"),
    ],
)
def test_use_cpu_devices_only_before_the_backend_starts_and_not_over_the_user(mode, env, expected):
    clean = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    result = subprocess.run(
        [sys.executable, "-c", _DEVICE_PROBE, mode],
        env={**clean, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == expected


def test_use_cpu_devices_rejects_zero():
    from diffjax.cli import use_cpu_devices

    with pytest.raises(ValueError, match="num_devices must be >= 1, got 0"):
        use_cpu_devices(0)


def _train_without_a_device_count(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    """The training CLI on the tests' folder dataset, with no CPU device count in its env."""
    from train_helpers import REPO, make_image_folder, subprocess_env, train_command

    env = subprocess_env()
    del env["XLA_FLAGS"]
    data_dir = make_image_folder(tmp_path / "data")
    command = train_command(str(tmp_path / "run"), data_dir, **{"training.num_steps": 2})
    return subprocess.run(
        [*command, *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )


def test_train_cli_uses_one_device_per_core_by_default(tmp_path):
    result = _train_without_a_device_count(tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    # configs/test.py trains and evaluates with batches of 8.
    expected = cpu_device_count([8, 8])
    output = result.stdout + result.stderr
    assert f"diffjax: {expected} cpu device(s)" in output
    assert f"({8 // expected} per device)" in output


def test_train_cli_cpu_devices_flag_is_checked_against_the_batch(tmp_path):
    result = _train_without_a_device_count(tmp_path, "--cpu_devices=3")
    assert result.returncode == 1
    assert "data.batch_size" in result.stderr
    assert "multiple of the number of devices (3)" in result.stderr


def test_dotted_options_are_taken_out_of_the_command_line():
    options = DottedOptions("--config.sampling.options.")
    argv = ["prog", "--config=c.py", "--config.sampling.options.eta=0.5",
            "--config.training.num_steps=3", "--config.sampling.options.spacing", "trailing"]  # fmt: skip
    assert options.rewrite(argv) == ["prog", "--config=c.py", "--config.training.num_steps=3"]
    assert options.values() == {"eta": 0.5, "spacing": "trailing"}


@pytest.mark.parametrize("program", ["train", "sample", "evaluate", "reflow"])
def test_help_lists_the_shared_cpu_and_multihost_flags(program):
    """reflow runs on one host: it has the CPU flags only."""
    result = subprocess.run(
        [sys.executable, "-m", f"diffjax.{program}", "--help"], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    shared = ["--cpu_devices", "--[no]fast_cpu"]
    if program != "reflow":
        shared += ["--[no]multihost", "--coordinator_address"]
    for flag in shared:
        assert f"  {flag}" in result.stdout, (flag, result.stdout[-2000:])
