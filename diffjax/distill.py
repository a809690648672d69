r"""Progressive distillation of a trained model: ``python -m diffjax.distill --config CONFIG
--teacher DIR --workdir NEW``.

Example::

  python -m diffjax.train --config configs/fashion_mnist_modern.py --workdir runs/fmnist_modern
  python -m diffjax.distill --config configs/fashion_mnist_distill.py \
      --teacher runs/fmnist_modern --workdir runs/fmnist_pd
  python -m diffjax.sample --workdir runs/fmnist_pd        # the newest student, its N steps

Salimans & Ho 2022 (arXiv:2202.00512, Algorithm 2): rounds of students, each taking one DDIM
step where its teacher takes two, from ``config.start_steps`` down to ``config.end_steps``
(:mod:`diffjax.pipelines.distillation`). Each round is a training run in its own sub-folder of
``--workdir`` (checkpoints, metrics.jsonl, TensorBoard, a sample grid), followed by FD of the
student at N steps beside the teacher's DDIM and DPM-Solver++ with N network calls;
``distill.json`` collects them. Rerunning the same command after a kill resumes where it
stopped. Any config value can be overridden with ``--config.<key>=<value>``, the students'
training settings with ``--config.student.<section>.<key>=<value>`` (e.g.
``--config.student.optim.learning_rate=1e-4``).

The teacher must be a trained diffjax run whose prediction defines x at t = 1 (a v- or
x-prediction, or eps without zero terminal SNR); configs/fashion_mnist_modern.py trains the
recommended kind. On CPU the program sets the convolution flag and one JAX device per core,
like ``python -m diffjax.train``.
"""

from __future__ import annotations

import json

from absl import flags
from ml_collections import config_flags

from diffjax import cli
from diffjax.cli import (
    DEFAULT_COMPILATION_CACHE,
    cpu_devices_from_flag,
    define_cpu_devices_flag,
    define_fast_cpu_convolutions_flag,
    load_config_flag,
    main_runner,
    run_program,
)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Distillation config file (configs/*_distill.py).", lock_config=True
)
_TEACHER = flags.DEFINE_string("teacher", None, "The trained teacher's workdir (read only).")
_WORKDIR = flags.DEFINE_string("workdir", None, "The distillation's folder (one per round).")
_FAST_CPU_CONVOLUTIONS = define_fast_cpu_convolutions_flag()
_CPU_DEVICES = define_cpu_devices_flag()
flags.mark_flags_as_required(["config", "teacher", "workdir"])

# The shared flags (CPU devices, the CPU convolution flag, multi-host) belong in --help too.
flags.adopt_module_key_flags(cli)


def distill_main() -> dict:
    """Runs every round; prints and returns the report."""
    from diffjax.pipelines.distillation import REPORT_FILE, distill

    report = distill(load_config_flag(_CONFIG), _TEACHER.value, _WORKDIR.value)
    rows = [
        dict(steps=entry["steps"], fd=entry["fd"], train_minutes=entry["train_seconds"] / 60)
        for entry in report["rounds"]
    ]
    print(json.dumps(rows, indent=2), flush=True)
    print(f"diffjax.distill: wrote {_WORKDIR.value}/{REPORT_FILE}", flush=True)
    return report


def _batch_sizes() -> list:
    """The global batch sizes the CPU devices must divide: the FD batch and, when the config
    overrides it, the students' training batch (else the teacher's, checked later)."""
    config = load_config_flag(_CONFIG)
    student_data = config.get("student", {}).get("data", {})
    return [config.get("fd_batch_size"), student_data.get("batch_size")]


def main(argv: list[str]) -> None:
    """absl entry point; expected failures print one line."""
    run_program(
        "diffjax.distill",
        argv,
        distill_main,
        fast_cpu_convolutions=_FAST_CPU_CONVOLUTIONS.value,
        cpu_devices=lambda: cpu_devices_from_flag(_CPU_DEVICES.value, _batch_sizes()),
        compilation_cache=DEFAULT_COMPILATION_CACHE,
    )


if __name__ == "__main__":
    main_runner("diffjax.distill", main)
