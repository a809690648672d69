r"""Trains a diffusion model: ``python -m diffjax.train --config CONFIG --workdir DIR``.

Example::

  python -m diffjax.train --config configs/fashion_mnist.py --workdir runs/fmnist \
      --config.training.num_steps=2000

Any config value can be overridden with ``--config.<section>.<key>=<value>``, a sampler's own
options too (``--config.sampling.options.eta=0.5``, checked against the sampler). On CPU it adds
:data:`diffjax.cli.FAST_CPU_CONVOLUTION_FLAG` to ``$XLA_FLAGS`` before JAX starts (faster
convolution gradients; ``--nofast_cpu_convolutions`` turns that off) and trains data-parallel
on one JAX device per core (``--cpu_devices=N`` chooses the count; see
:func:`diffjax.cli.cpu_devices_from_flag`). Running the same command again in the same workdir
resumes from the newest good checkpoint. The work is done by
:func:`diffjax.training.loop.train_and_evaluate`; this file only parses flags.

An expected failure prints one line, ``diffjax.train: error: ...``, and exits with status 2
for a command line that cannot be parsed (an unknown flag, a config file that cannot be loaded,
an override naming no key) or 1 for anything else (a config that fails validation, an
unwritable workdir, a missing dataset, an incompatible resume, a non-finite loss); run with
``--verbosity=1`` to see its traceback.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from diffjax import cli
from diffjax.cli import (
    DEFAULT_COMPILATION_CACHE,
    DottedOptions,
    cpu_devices_from_flag,
    define_cpu_devices_flag,
    define_fast_cpu_convolutions_flag,
    define_multihost_flags,
    load_config_flag,
    main_runner,
    run_program,
)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and samples.")
# A sampler's own options, which the config file does not list: --config.sampling.options.eta=0.5.
_SAMPLER_OPTIONS = DottedOptions("--config.sampling.options.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache",
    DEFAULT_COMPILATION_CACHE,
    "Persistent XLA compilation cache, so that a resumed run does not compile again; empty "
    "disables it. $JAX_COMPILATION_CACHE_DIR takes precedence.",
)
_FAST_CPU_CONVOLUTIONS = define_fast_cpu_convolutions_flag()
_CPU_DEVICES = define_cpu_devices_flag()
_MULTIHOST = define_multihost_flags()
flags.mark_flags_as_required(["config", "workdir"])


# The shared flags (CPU devices, the CPU convolution flag, multi-host) belong in --help too.
flags.adopt_module_key_flags(cli)


def _batch_sizes(config) -> list:
    """The global batch sizes the CPU devices must divide (the FD batch only when FD is on)."""
    evaluation = config.get("eval", {})
    sizes = [config.get("data", {}).get("batch_size"), evaluation.get("batch_size")]
    if evaluation.get("fd_every_steps"):
        sizes.append(evaluation.get("fd_batch_size"))
    return sizes


def _config():
    """The config file's config, with the overrides and ``--config.sampling.options.*``."""
    config = load_config_flag(_CONFIG)
    options = _SAMPLER_OPTIONS.values()
    if options:
        with config.unlocked():
            config.sampling.options.update(options)
    return config


def main(argv: list[str]) -> None:
    """absl entry point: runs :func:`train_and_evaluate`; expected failures print one line."""
    from diffjax.training.loop import train_and_evaluate

    run_program(
        "diffjax.train",
        argv,
        lambda: train_and_evaluate(_config(), _WORKDIR.value),
        fast_cpu_convolutions=_FAST_CPU_CONVOLUTIONS.value,
        multihost=_MULTIHOST,
        cpu_devices=lambda: cpu_devices_from_flag(
            _CPU_DEVICES.value, _batch_sizes(load_config_flag(_CONFIG))
        ),
        compilation_cache=_COMPILATION_CACHE.value,
    )


if __name__ == "__main__":
    main_runner("diffjax.train", main, _SAMPLER_OPTIONS.rewrite)
