r"""Samples from a trained run: ``python -m diffjax.sample --workdir DIR``.

Example::

  python -m diffjax.sample --workdir runs/fmnist --sampler ddim --steps 50 --option eta=0.5 \
      --num 64 --seed 0
  python -m diffjax.sample --workdir runs/fmnist_edm --sampler heun --steps 18 --option s_churn=10
  python -m diffjax.sample --workdir runs/cifar10_cond --guidance 3.0 --label 3
  python -m diffjax.sample --workdir runs/fmnist --classifier runs/fmnist_classifier \
      --classifier_scale 2 --class 3
  python -m diffjax.sample --workdir runs/circles_cn --control outline.png

Loads the newest good checkpoint read-only (safe while the run is still training), draws
``--num`` samples with the EMA weights (``--noema`` for the raw weights), and writes a PNG grid
and an ``.npz`` (``samples`` float32 [N, H, W, C] in [-1, 1], ``labels`` int32 [N] for a
class-conditional model) into ``DIR/samples/``. Sample i is drawn with the key
``fold_in(key(seed), i)``, so it does not depend on ``--num``, ``--batch`` or the device count,
and ``--seed S`` gives the training loop's grid images for ``config.sampling.seed = S`` (same
sampler and steps). It prints the first batch's time (compilation included) and, apart, the
compiled time per sample (a single-batch run is timed on a second call), and for the adaptive
``ode`` sampler its function evaluations. ``--classifier`` guides the samples with a noisy
classifier's gradient (classifier guidance, ``diffjax.gradient_guidance``) towards ``--class``
(an alias of ``--label``), or one class per row of the grid. ``--control IMAGE`` gives every
sample of a ControlNet run that control image (default: the evaluation split's). The sampler, steps, sampler options and
guidance default to the run's config; ``--option name=value`` sets any option of the chosen
sampler (checked against it before anything compiles). Without ``--steps``, the run's sampler
uses its configured steps and another sampler its own default (``ddpm``: all T steps, as in the
API); ``prediction_type`` is always the run's. The same settings in Python:
``dj.sample_run(dj.load_trained_run(DIR), N, sampler=..., num_steps=...)``. On CPU it splits each batch over one JAX
device per core (``--cpu_devices=N`` chooses the count); unlike the training CLI it leaves out
the CPU convolution flag by default, because with it and several CPU devices the sampling loop
is not bit-reproducible from run to run (``--fast_cpu_convolutions`` adds it, for somewhat
faster sampling: ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from absl import flags

from diffjax import cli
from diffjax.cli import (
    cpu_devices_from_flag,
    define_cpu_devices_flag,
    define_fast_cpu_convolutions_flag,
    define_multihost_flags,
    describe_sampler,
    is_adaptive,
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
_STEPS = flags.DEFINE_integer(
    "steps", None,
    "Sampling steps; default: the run's config for its sampler, another sampler's own default "
    "(ddpm: all T). The adaptive 'ode' sampler only starts with this step count.",
)  # fmt: skip
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
flags.DEFINE_alias("class", "label")
_CLASSIFIER = flags.DEFINE_string(
    "classifier", None,
    "Classifier guidance: the workdir of a noisy classifier trained on this run's process "
    "(config.objective.name='classifier'); samples are guided towards --class (default: one "
    "class per row of the grid).",
)  # fmt: skip
_CLASSIFIER_SCALE = flags.DEFINE_float(
    "classifier_scale", 1.0, "The classifier guidance scale s (with --classifier; 0: unguided)."
)
_CONTROL = flags.DEFINE_string(
    "control",
    None,
    "A control image (PNG/JPEG) for every sample of a ControlNet run, read in [0, 1] at the "
    "run's control size and channels; default: the evaluation split's control images.",
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


# The shared flags (CPU devices, the CPU convolution flag, multi-host) belong in --help too.
flags.adopt_module_key_flags(cli)


def _check_flags() -> dict:
    """Checks the flags against the run's ``config.json`` before the checkpoint and the
    heavy libraries load; returns the run's upgraded config.

    Raises:
      ConfigError: a bad count, label, sampler or option; WorkdirError: no run.
    """
    from diffjax.errors import ConfigError
    from diffjax.training.config import import_modules, upgrade_config
    from diffjax.training.programs import build_process, sampling_settings
    from diffjax.training.workdir import RUN_RECORD_FILE, WorkdirError, load_run_record

    if _NUM.value < 1 or _BATCH.value < 1:
        raise ConfigError(f"--num and --batch must be >= 1, got {_NUM.value} and {_BATCH.value}.")
    if _STEPS.value is not None and _STEPS.value < 1:
        raise ConfigError(f"--steps must be >= 1, got {_STEPS.value}.")
    record = load_run_record(_WORKDIR.value)
    if record is None:
        raise WorkdirError(
            f"{_WORKDIR.value} holds no diffjax run (no {RUN_RECORD_FILE}); pass the --workdir "
            f"of a training run."
        )
    config = upgrade_config(record["config"])
    import_modules(config)  # they may register the sampler
    num_classes = config["model"]["num_classes"]
    if _CLASSIFIER.value:
        classifier_record = load_run_record(_CLASSIFIER.value)
        if classifier_record is None:
            raise WorkdirError(
                f"--classifier {_CLASSIFIER.value} holds no diffjax run (no {RUN_RECORD_FILE})."
            )
        classes = upgrade_config(classifier_record["config"])["model"]["num_classes"]
        if _LABEL.value is not None and not 0 <= _LABEL.value < (classes or 0):
            raise ConfigError(
                f"--class={_LABEL.value} is not a class of the classifier; allowed: "
                f"0..{(classes or 1) - 1}."
            )
        if num_classes is None:
            return config
    elif _CLASSIFIER_SCALE.value != 1.0:
        raise ConfigError("--classifier_scale needs --classifier (a classifier run's workdir).")
    if _LABEL.value is not None and (num_classes is None or not 0 <= _LABEL.value <= num_classes):
        allowed = "none (unconditional run)" if num_classes is None else f"0..{num_classes}"
        raise ConfigError(f"--label={_LABEL.value} is not a class of this run; allowed: {allowed}.")
    sampling_settings(
        config, sampler=_SAMPLER.value, num_steps=_STEPS.value, options=_options(),
        process=build_process(config["diffusion"]),
    )  # fmt: skip
    if _CONTROL.value is not None:
        _read_control(record)
    return config


def _read_control(record: dict) -> Any:
    """``--control`` as float32 ``[H, W, C]`` in [0, 1], checked against the run's control
    images (their size and channels, from the run's dataset record).

    Raises:
      ConfigError: a run without control images, a missing file or a wrong size.
    """
    import numpy as np
    from PIL import Image

    from diffjax.errors import ConfigError
    from diffjax.training.workdir import cond_spec_of

    spec = {key: shape for key, shape, _ in cond_spec_of(record["dataset"])}
    if "control" not in spec or record["config"]["model"]["name"] != "controlnet":
        raise ConfigError(
            f"--control={_CONTROL.value} needs a ControlNet run (config.model.name="
            f"'controlnet'); {_WORKDIR.value} trained a {record['config']['model']['name']!r} "
            f"network."
        )
    height, width, channels = spec["control"]
    try:
        with Image.open(_CONTROL.value) as image:
            pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), np.float32)
    except (OSError, ValueError) as error:
        raise ConfigError(f"--control={_CONTROL.value}: not a readable image ({error}).") from error
    if pixels.shape[:2] != (height, width):
        raise ConfigError(
            f"--control={_CONTROL.value} is {pixels.shape[1]}x{pixels.shape[0]} pixels; this "
            f"run's control images are {width}x{height}."
        )
    return pixels.reshape(height, width, channels) / 255.0


def _options() -> dict:
    return dict(parse_option(text) for text in _OPTIONS.value)


def sample_main() -> str:
    """Samples from the run in ``--workdir`` as the parsed flags say and writes the files.

    Returns:
      The path prefix of the written ``.png`` and ``.npz``.
    """
    import jax
    import numpy as np

    from diffjax.generation import class_labels
    from diffjax.images import atomic_write, save_image_grid
    from diffjax.sharding import gather_to_host, make_mesh
    from diffjax.training.classifier_guidance import load_run_classifier
    from diffjax.training.run_sampling import run_sampler
    from diffjax.training.trained_run import load_trained_run

    num_classes = _check_flags()["model"]["num_classes"]
    control = None
    if _CONTROL.value is not None:
        from diffjax.training.workdir import load_run_record

        control = _read_control(load_run_record(_WORKDIR.value))
    mesh = make_mesh()
    run = load_trained_run(_WORKDIR.value, mesh)
    classifier = None
    if _CLASSIFIER.value:
        classifier = load_run_classifier(
            _CLASSIFIER.value, run.config, _CLASSIFIER_SCALE.value, mesh=mesh
        )
    all_labels = None
    if _LABEL.value is not None:
        all_labels = np.full((_NUM.value,), _LABEL.value, np.int32)
    elif num_classes is not None or classifier is not None:
        classes = num_classes if classifier is None else classifier.num_classes
        all_labels = class_labels(np.arange(_NUM.value), classes, blocks=_NUM.value)
    batch = min(_BATCH.value, _NUM.value)
    settings = dict(
        sampler=_SAMPLER.value, num_steps=_STEPS.value,
        options=_options(), guidance_scale=_GUIDANCE.value, ema=_EMA.value, seed=_SEED.value,
        labels=all_labels, classifier=classifier, control=control,
    )  # fmt: skip
    sampler = run_sampler(run, batch, **settings)
    if is_adaptive(sampler.sampler):
        sampler = run_sampler(run, batch, **settings, stats=True)
    words, file_part = describe_sampler(sampler.sampler, sampler.options)
    function_evals = []

    def draw(index: int) -> np.ndarray:
        # The last call is padded to the compiled batch size, then trimmed.
        images = sampler.draw(index * batch, batch)
        if isinstance(images, tuple):
            images, stats = images
            function_evals.append(int(stats.num_function_evals))
        return gather_to_host(images)

    start = time.perf_counter()
    chunks = [draw(0)]
    first_call = time.perf_counter() - start
    for index in range(1, -(-_NUM.value // batch)):
        chunks.append(draw(index))
    compiled_calls = len(chunks) - 1
    compiled_seconds = time.perf_counter() - start - first_call
    if compiled_calls == 0:
        # One call only: time a second, already compiled call of the same batch.
        call_start = time.perf_counter()
        draw(0)
        compiled_seconds, compiled_calls = time.perf_counter() - call_start, 1
    samples = np.concatenate(chunks)[: _NUM.value].astype(np.float32)

    name = (
        f"{file_part}_step{run.step}_seed{sampler.seed}"
        + (f"_w{sampler.guidance_scale:g}" if num_classes is not None else "")
        + (f"_cg{classifier.scale:g}" if classifier is not None else "")
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
    per_sample = compiled_seconds / (compiled_calls * batch)
    devices = f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
    nfe = ""
    if function_evals:
        nfe = f", {np.mean(function_evals):.0f} function evaluations per batch"
    print(
        f"diffjax.sample: {_NUM.value} samples from step {run.step} ({words}, "
        f"{'EMA' if _EMA.value else 'raw'} weights{nfe}) on {devices}: compiling and the first "
        f"batch of {batch} took {first_call:.1f} s; compiled, {1000 * per_sample:.2f} ms per "
        f"sample. Wrote {prefix}.png and {prefix}.npz",
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
