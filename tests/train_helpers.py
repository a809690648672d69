"""Shared helpers of the training-program tests (test_loop, test_faults, test_sample_cli).

The tests train ``configs/test.py`` on a tiny folder dataset generated here (64 8x8 grayscale
PNGs in two class folders), so they need neither the network nor a prepared TFDS dataset, and
read metrics and checkpoints back to check them.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import runpy
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
TEST_CONFIG = REPO / "configs" / "test.py"
PYTHON = sys.executable


def make_image_folder(root: pathlib.Path, num_per_class: int = 32, size: int = 8) -> str:
    """Writes two class folders of random grayscale PNGs (seeded) and returns the root."""
    rng = np.random.default_rng(0)
    for label in range(2):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(num_per_class):
            pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
            # Class 1 is brighter: a learnable difference between the classes.
            pixels = (pixels // 2 + 128 * label).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{index:03d}.png")
    return str(root)


def make_test_config(data_dir: str, **overrides):
    """configs/test.py on the folder dataset, with a held-out loss every 3 steps (on the
    folder's only split), and ``section.key=value`` overrides."""
    config = runpy.run_path(str(TEST_CONFIG))["get_config"]()
    config.data.name = "folder"
    config.data.data_dir = data_dir
    config.eval.every_steps = 3
    config.eval.split = "train"
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        config[section][key] = value
    return config


def cli_overrides(data_dir: str, **overrides) -> list[str]:
    """The same as :func:`make_test_config`, as ``--config.*`` flags for the CLI."""
    flags = ["--config.data.name=folder", f"--config.data.data_dir={data_dir}"]
    return flags + [f"--config.{key}={value}" for key, value in overrides.items()]


def subprocess_env(num_devices: int = 8) -> dict[str, str]:
    """Environment of a child run: fake CPU devices and the tests' compilation cache."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def train_command(workdir: str, data_dir: str, **overrides) -> list[str]:
    """``python -m diffjax.train --config configs/test.py ...`` on the folder dataset."""
    return [
        PYTHON, "-m", "diffjax.train", f"--config={TEST_CONFIG}", f"--workdir={workdir}",
        *cli_overrides(data_dir, **overrides),
    ]  # fmt: skip


def run_cli(command: list[str], timeout: float = 240, num_devices: int = 8):
    """Runs a CLI to completion; returns the CompletedProcess (text output)."""
    return subprocess.run(
        command, cwd=REPO, env=subprocess_env(num_devices), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


@contextlib.contextmanager
def fast_compiles():
    """Compiles with most XLA optimisations off (tiny models: compile time dominates).

    JAX's in-memory jit caches are not keyed by this option (jax 0.10), so they are cleared on
    the way in and out: otherwise a module-level jitted function (e.g. ``fmnist_features``)
    compiled here would be reused unoptimised by a later test, whose numbers then depend on
    the order the tests ran in (the optimised and unoptimised programs round differently).
    The persistent compilation cache is keyed by it and refills the in-memory one quickly.
    """
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
        jax.clear_caches()


def mlp_init(key: jax.Array, width: int = 128) -> list:
    """A 3-layer SiLU MLP's parameters for 2-D data and a time input: [(weight, bias)]."""
    keys = jax.random.split(key, 4)
    sizes = [(3, width), (width, width), (width, width), (width, 2)]
    return [
        (jax.random.normal(k, s) * math.sqrt(1.0 / s[0]), jnp.zeros(s[1]))
        for k, s in zip(keys, sizes)
    ]


def mlp(params: list, x: jax.Array, t_in: jax.Array) -> jax.Array:
    """``model_fn(x [B, 2], t_in [B])`` of :func:`mlp_init`'s parameters (time scaled by 1/1000)."""
    h = jnp.concatenate([x, (t_in / 1000.0)[:, None]], axis=1)
    for weight, bias in params[:-1]:
        h = jax.nn.silu(h @ weight + bias)
    weight, bias = params[-1]
    return h @ weight + bias


def state_leaves(state) -> list[np.ndarray]:
    """Host copies of every array of a train state, in tree order."""
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state)]


def assert_states_equal(actual, expected) -> None:
    """Bit-for-bit equality of two train states (same tree structure)."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for got, want in zip(state_leaves(actual), state_leaves(expected)):
        np.testing.assert_array_equal(got, want)


def restore_full(workdir: str, mesh=None):
    """The newest checkpoint of a workdir, read-only, with its whole train state (optimizer
    state included; load_trained_run reads the parameters only)."""
    from diffjax.training.checkpoint import CheckpointManager
    from diffjax.training.trained_run import load_trained_run

    run = load_trained_run(workdir, mesh)
    folder = os.path.join(os.fspath(workdir), "checkpoints")
    with CheckpointManager(folder, read_only=True) as manager:
        restored = manager.restore_latest(run.programs.abstract_state)
    return run._replace(state=restored.state, step=restored.step)
