r"""Reflow a trained rectified flow: ``python -m diffjax.reflow --teacher DIR --workdir NEW``.

Example::

  python -m diffjax.train --config configs/fashion_mnist.py --workdir runs/flow
  python -m diffjax.reflow --teacher runs/flow --workdir runs/flow_2rf --num_pairs 10000 \
      --sampler flow_euler --steps 20 --train_steps 1000

Liu et al. 2022 ("Flow Straight and Fast", arXiv:2209.03003, Algorithm 1), in three resumable
stages:

1. **Pairs**: ``--num_pairs`` noises z_i (from ``fold_in(key(--seed), i)``) and the teacher's
   EMA samples x_i = ODE(z_i) with a deterministic ``--sampler`` (``flow_euler``,
   ``flow_heun``, ``ode``, ...), written to ``NEW/pairs/`` in shards of ``--pair_batch``
   (:mod:`diffjax.pipelines.reflow`). Rerunning skips the shards already written.
2. **Training**: the teacher's config with ``training.init_from`` = the teacher (its EMA
   weights start the student) and ``training.pairs_dir`` = the pairs, for ``--train_steps``
   steps: ``python -m diffjax.train``'s loop, with its checkpoints, FD-FMNIST during training
   (against the real data) and resumption. ``--config_override key=value`` (repeatable)
   changes other keys, e.g. ``optim.learning_rate=2e-4``.
3. **Report**: the straightness of teacher and student along ``--straightness_steps``-step Euler
   paths from ``--straightness_num`` fresh noises, and the one-step distance of both (one Euler
   step against the teacher's ``--sampler`` from the same noises), written to
   ``NEW/reflow.json`` and printed. One-step quality: ``python -m diffjax.evaluate --workdir
   NEW --sampler flow_euler --steps 1`` (and the same for the teacher).

``--distill`` distils instead of reflowing (Liu et al. 2022, Sec. 2.3, "k-rectified flow +
distillation"): the same pairs, but the student trains at t = 1 only (time sampler
'constant'), where its one Euler step starts; usually the teacher is then a reflowed run::

  python -m diffjax.reflow --teacher runs/flow_2rf --workdir runs/flow_2rf_distill --distill

The teacher must be a rectified-flow run (``diffusion.process='rectified_flow'``).
"""

from __future__ import annotations

import json
import os

from absl import flags

from diffjax import cli
from diffjax.cli import (
    DEFAULT_COMPILATION_CACHE,
    cpu_devices_from_flag,
    define_cpu_devices_flag,
    define_fast_cpu_convolutions_flag,
    main_runner,
    run_program,
)

_TEACHER = flags.DEFINE_string("teacher", None, "The trained rectified-flow workdir.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The student's workdir (pairs, checkpoints).")
_NUM_PAIRS = flags.DEFINE_integer("num_pairs", 10000, "(noise, sample) pairs to generate.")
_PAIR_BATCH = flags.DEFINE_integer("pair_batch", 250, "Pairs per sampler call and shard.")
_SAMPLER = flags.DEFINE_string("sampler", "flow_euler", "Deterministic sampler of the pairs.")
_STEPS = flags.DEFINE_integer("steps", 20, "Its number of steps.")
_OPTION = flags.DEFINE_multi_string("option", [], "A sampler option as name=value.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the pairs' noise.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 1000, "Training steps of the student.")
_OVERRIDE = flags.DEFINE_multi_string(
    "config_override", [], "A student config value as section.key=value (repeatable)."
)
_STRAIGHTNESS_NUM = flags.DEFINE_integer("straightness_num", 256, "Noises for straightness.")
_STRAIGHTNESS_STEPS = flags.DEFINE_integer("straightness_steps", 8, "Euler steps of its paths.")
_DISTILL = flags.DEFINE_bool(
    "distill", False, "Distil the teacher to one step (train at t = 1 only) instead of reflowing."
)
_FAST_CPU_CONVOLUTIONS = define_fast_cpu_convolutions_flag()
_CPU_DEVICES = define_cpu_devices_flag()
flags.mark_flags_as_required(["teacher", "workdir"])


# The shared flags (CPU devices, the CPU convolution flag, multi-host) belong in --help too.
flags.adopt_module_key_flags(cli)


def reflow_main() -> dict:
    """Runs the three stages; returns the report."""
    from diffjax.cli import parse_option
    from diffjax.pipelines.reflow import reflow

    report = reflow(
        _TEACHER.value, _WORKDIR.value, num_pairs=_NUM_PAIRS.value,
        pair_batch=_PAIR_BATCH.value, sampler=_SAMPLER.value, num_steps=_STEPS.value,
        options=dict(parse_option(text) for text in _OPTION.value), seed=_SEED.value,
        train_steps=_TRAIN_STEPS.value,
        overrides=dict(parse_option(text) for text in _OVERRIDE.value),
        straightness_num=_STRAIGHTNESS_NUM.value, straightness_steps=_STRAIGHTNESS_STEPS.value,
        distill=_DISTILL.value,
    )  # fmt: skip
    summary = {key: report[key] for key in ("mode", "straightness", "one_step_distance")}
    print(json.dumps(summary, indent=2), flush=True)
    print(f"diffjax.reflow: wrote {os.path.join(_WORKDIR.value, 'reflow.json')}", flush=True)
    return report


def main(argv: list[str]) -> None:
    """absl entry point; expected failures print one line."""
    run_program(
        "diffjax.reflow",
        argv,
        reflow_main,
        fast_cpu_convolutions=_FAST_CPU_CONVOLUTIONS.value,
        cpu_devices=cpu_devices_from_flag(_CPU_DEVICES.value, [_PAIR_BATCH.value]),
        compilation_cache=DEFAULT_COMPILATION_CACHE,
    )


if __name__ == "__main__":
    main_runner("diffjax.reflow", main)
