r"""Samples from a trained run: ``python -m diffjax.sample --workdir DIR``.

Example::

  python -m diffjax.sample --workdir runs/fmnist --sampler ddim --steps 50 --option eta=0.5 \
      --num 64 --seed 0
  python -m diffjax.sample --workdir runs/fmnist_edm --sampler heun --steps 18 --option s_churn=10
  python -m diffjax.sample --workdir runs/cifar10_cond --guidance 3.0 --label 3

Loads the newest good checkpoint read-only (safe while the run is still training), draws
``--num`` samples with the EMA weights (``--noema`` for the raw weights), and writes a PNG grid
and an ``.npz`` (``samples`` float32 [N, H, W, C] in [-1, 1], ``labels`` int32 [N] for a
class-conditional model) into ``DIR/samples/``. Sample i is drawn with the key
``fold_in(key(seed), i)``, so it does not depend on ``--num``, ``--batch`` or the device count,
and ``--seed S`` gives the training loop's grid images for ``config.sampling.seed = S`` (same
sampler and steps). It prints the time per sample, without the one-off compilation (a
single-batch run is timed on a second, compiled call). The sampler, steps, sampler options and
guidance default to the run's config; ``--option name=value`` sets any option of the chosen
sampler (checked against it before anything compiles). On CPU it splits each batch over one JAX
device per core (``--cpu_devices=N`` chooses the count); unlike the training CLI it leaves out
the CPU convolution flag by default, because with it and several CPU devices the sampling loop
is not bit-reproducible from run to run (``--fast_cpu_convolutions`` adds it, for somewhat
faster sampling: ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import os
import time

from absl import flags

from diffjax.cli import (
    cpu_devices_from_flag,
    define_cpu_devices_flag,
    define_fast_cpu_convolutions_flag,
    define_multihost_flags,
    main_runner,
    parse_option,
    run_program,
)

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's folder.")
_SAMPLER = flags.DEFINE_string(
    "sampler", None,
    "Sampler by name (diffjax.samplers.SAMPLER_NAMES, or one the run's config.imports "
    "registers); default: the run's config.",
)  # fmt: skip
_STEPS = flags.DEFINE_integer("steps", None, "Sampling steps; default: the run's config.")
_OPTIONS = flags.DEFINE_multi_string(
    "option", [], "A sampler option as name=value (repeatable), e.g. eta=0.5 or s_churn=10."
)
_NUM = flags.DEFINE_integer("num", 64, "Number of samples.")
_BATCH = flags.DEFINE_integer("batch", 256, "Samples drawn per compiled call.")
_GUIDANCE = flags.DEFINE_float(
    "guidance", None, "Classifier-free guidance weight (1: none); default: the config's."
)
_LABEL = flags.DEFINE_integer(
    "label", None, "Class of every sample (class-conditional runs); default: all classes in turn."
)
_SEED = flags.DEFINE_integer(
    "seed",
    None,
    "Random seed of the samples (default: the run's config.sampling.seed, so that the first "
    "sampling.num_samples samples are the training grid's, up to float rounding).",
)
_EMA = flags.DEFINE_bool("ema", True, "Use the EMA weights (--noema: the raw weights).")
_OUT = flags.DEFINE_string(
    "out", None, "Output path without extension; default DIR/samples/<settings>."
)
_FAST_CPU_CONVOLUTIONS = define_fast_cpu_convolutions_flag(default=False)
_CPU_DEVICES = define_cpu_devices_flag()
_MULTIHOST = define_multihost_flags()
flags.mark_flag_as_required("workdir")


def _check_flags(num_classes: int | None) -> None:
    from diffjax.errors import ConfigError

    if _NUM.value < 1 or _BATCH.value < 1:
        raise ConfigError(f"--num and --batch must be >= 1, got {_NUM.value} and {_BATCH.value}.")
    if _STEPS.value is not None and _STEPS.value < 1:
        raise ConfigError(f"--steps must be >= 1, got {_STEPS.value}.")
    if _LABEL.value is not None and (num_classes is None or not 0 <= _LABEL.value <= num_classes):
        allowed = "none (unconditional run)" if num_classes is None else f"0..{num_classes}"
        raise ConfigError(f"--label={_LABEL.value} is not a class of this run; allowed: {allowed}.")


def sample_main() -> str:
    """Samples from the run in ``--workdir`` as the parsed flags say and writes the files.

    Returns:
      The path prefix of the written ``.png`` and ``.npz``.
    """
    import jax
    import numpy as np

    from diffjax.errors import ConfigError
    from diffjax.generation import class_labels
    from diffjax.images import atomic_write, save_image_grid
    from diffjax.samplers import check_sampler_options
    from diffjax.sharding import gather_to_host, make_mesh
    from diffjax.training.frozen import load_frozen
    from diffjax.training.programs import SampleConditions, make_run_generator, sample_drawer
    from diffjax.training.trained_run import load_trained_run

    mesh = make_mesh()
    run = load_trained_run(_WORKDIR.value, mesh)
    sampling = run.config["sampling"]
    num_classes = run.config["model"]["num_classes"]
    _check_flags(num_classes)
    sampler = _SAMPLER.value or sampling["sampler"]
    num_steps = _STEPS.value or sampling["num_steps"]
    # The config's options belong to the config's sampler; another sampler starts from its own.
    options = dict(sampling["options"]) if sampler == sampling["sampler"] else {}
    options.update(parse_option(text) for text in _OPTIONS.value)
    options = dict(
        options, num_steps=num_steps, prediction_type=run.config["diffusion"]["prediction_type"]
    )
    try:
        check_sampler_options(sampler, run.process, options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"--sampler={sampler} --steps={num_steps}: {error}") from error
    guidance = sampling["guidance_scale"] if _GUIDANCE.value is None else _GUIDANCE.value
    seed = sampling["seed"] if _SEED.value is None else _SEED.value
    batch = min(_BATCH.value, _NUM.value)
    generate = make_run_generator(
        run.config, run.programs, batch, mesh, sampler=sampler, options=options,
        guidance_scale=guidance,
    )  # fmt: skip
    frozen, _ = load_frozen(run.config, run.programs, mesh)
    params = run.state.ema_params if _EMA.value else run.state.params
    all_labels = None
    if _LABEL.value is not None:
        all_labels = np.full((_NUM.value,), _LABEL.value, np.int32)
    elif num_classes is not None:
        all_labels = class_labels(np.arange(_NUM.value), num_classes, blocks=_NUM.value)
    draw_samples = sample_drawer(
        generate, params, seed=seed, conditions=SampleConditions(run.config, run.model),
        frozen=frozen, labels=all_labels,
    )  # fmt: skip

    def draw(index: int) -> np.ndarray:
        # The last call is padded to the compiled batch size, then trimmed.
        return gather_to_host(draw_samples(index * batch, batch))

    chunks, timed_seconds, timed_samples = [], 0.0, 0
    start = time.perf_counter()
    for index in range(-(-_NUM.value // batch)):
        call_start = time.perf_counter()
        chunks.append(draw(index))
        if index == 0:
            first_call = time.perf_counter() - call_start
        else:
            timed_seconds += time.perf_counter() - call_start
            timed_samples += batch
    elapsed = time.perf_counter() - start
    if timed_samples == 0:
        # One call only: time a second, already compiled call of the same batch.
        call_start = time.perf_counter()
        draw(0)
        timed_seconds, timed_samples = time.perf_counter() - call_start, batch
    samples = np.concatenate(chunks)[: _NUM.value].astype(np.float32)

    name = (
        f"{sampler}_{num_steps}steps_step{run.step}_seed{seed}"
        + (f"_w{guidance:g}" if num_classes is not None else "")
        + ("" if _EMA.value else "_raw")
    )
    prefix = _OUT.value or os.path.join(_WORKDIR.value, "samples", f"cli_{name}")
    if jax.process_index() != 0:
        return prefix
    height = samples.shape[1]
    save_image_grid(samples, prefix + ".png", scale=max(1, 64 // height))
    arrays = {"samples": samples}
    if all_labels is not None:
        arrays["labels"] = all_labels.astype(np.int32)

    def write(tmp_path: str) -> None:
        with open(tmp_path, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(prefix + ".npz", write)
    per_sample = timed_seconds / timed_samples
    print(
        f"diffjax.sample: {_NUM.value} samples from step {run.step} ({sampler}, {num_steps} "
        f"steps, {'EMA' if _EMA.value else 'raw'} weights) in {elapsed:.2f} s: "
        f"{1000 * per_sample:.2f} ms per sample on {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s) (compiled; the first call, with compilation, "
        f"took {first_call:.1f} s). Wrote {prefix}.png and {prefix}.npz",
        flush=True,
    )
    return prefix


def main(argv: list[str]) -> None:
    """absl entry point: runs :func:`sample_main`; expected failures print one line."""
    run_program(
        "diffjax.sample",
        argv,
        sample_main,
        fast_cpu_convolutions=_FAST_CPU_CONVOLUTIONS.value,
        multihost=_MULTIHOST,
        # One compiled batch of min(--batch, --num) samples.
        cpu_devices=cpu_devices_from_flag(_CPU_DEVICES.value, [min(_BATCH.value, _NUM.value)]),
    )


if __name__ == "__main__":
    main_runner("diffjax.sample", main)
