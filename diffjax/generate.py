r"""Images from a published diffusers model folder, without torch:
``python -m diffjax.generate --model DIR``.

Example::

  python -m diffjax.generate --model stable-diffusion-v1-5 --prompt "a red fox in the snow" \
      --negative_prompt "blurry" --steps 25 --guidance 7.5 --num 4 --seed 0
  python -m diffjax.generate --model ddpm-cifar10-32 --num 64 --sampler ddim --steps 100

A Stable Diffusion 1.x / 2.x pipeline folder (``model_index.json`` with a text encoder) draws
``--num`` images of every ``--prompt`` (:func:`diffjax.pipelines.text_to_image`); an
unconditional ``UNet2DModel`` folder draws ``--num`` samples
(:func:`diffjax.pipelines.sample_pretrained`). The sampler, its grid and the prediction type
default to the folder's scheduler config; ``--option name=value`` sets any option of the
sampler, checked before anything compiles. It writes a PNG grid and an ``.npz``
(``samples`` float32 [N, H, W, C] in [-1, 1], and the ``prompts``) to ``--out`` and prints the
time taken (compilation included). On CPU it splits the batch over one JAX device per core, as
the sample CLI does; ``--fast_cpu_convolutions`` adds XLA's CPU convolution flag (faster, not
bit-reproducible from run to run with several devices).
"""

from __future__ import annotations

import json
import os
import time

from absl import flags

from diffjax import cli
from diffjax.cli import (
    cpu_devices_from_flag,
    define_cpu_devices_flag,
    define_fast_cpu_convolutions_flag,
    main_runner,
    parse_option,
    run_program,
)

_MODEL = flags.DEFINE_string("model", None, "A diffusers pipeline or UNet2DModel folder.")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable; text-to-image only).")
_NEGATIVE = flags.DEFINE_string("negative_prompt", "", "What guidance steers away from.")
_NUM = flags.DEFINE_integer("num", 1, "Images per prompt (text-to-image) or samples.")
_STEPS = flags.DEFINE_integer("steps", 50, "Sampler steps.")
_GUIDANCE = flags.DEFINE_float("guidance", 7.5, "Classifier-free guidance weight (1: none).")
_SAMPLER = flags.DEFINE_string("sampler", None, "A diffjax sampler; default the scheduler's.")
_OPTIONS = flags.DEFINE_multi_string(
    "option", [], "A sampler option as name=value (repeatable), e.g. eta=0.5."
)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the initial noise.")
_HEIGHT = flags.DEFINE_integer("height", None, "Image height (default: the model's).")
_WIDTH = flags.DEFINE_integer("width", None, "Image width (default: the model's).")
_OUT = flags.DEFINE_string(
    "out", None, "Output path without extension; default ./generated/<model>_seed<seed>."
)
_FAST_CPU_CONVOLUTIONS = define_fast_cpu_convolutions_flag(default=False)
_CPU_DEVICES = define_cpu_devices_flag()
flags.mark_flag_as_required("model")
flags.adopt_module_key_flags(cli)


def _is_text_to_image(folder: str) -> bool:
    """Whether ``folder`` is a pipeline with a text encoder (else an unconditional model)."""
    index = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index):
        return False
    with open(index) as file:
        return "text_encoder" in json.load(file)


def _check_flags() -> bool:
    """Checks the flags before anything heavy loads; returns whether it is text-to-image.

    Raises:
      ConfigError: a bad count, step count, prompt or folder.
    """
    from diffjax.errors import ConfigError

    if not os.path.isdir(_MODEL.value):
        raise ConfigError(f"--model={_MODEL.value} is not a folder.")
    if _NUM.value < 1 or _STEPS.value < 1:
        raise ConfigError(f"--num and --steps must be >= 1, got {_NUM.value} and {_STEPS.value}.")
    text_to_image = _is_text_to_image(_MODEL.value)
    if text_to_image and not _PROMPT.value:
        raise ConfigError(f"{_MODEL.value} is a text-to-image pipeline: give --prompt.")
    if not text_to_image and _PROMPT.value:
        raise ConfigError(f"{_MODEL.value} is not a text-to-image pipeline: drop --prompt.")
    return text_to_image


def generate_main() -> str:
    """Generates as the parsed flags say and writes the files.

    Returns:
      The path prefix of the written ``.png`` and ``.npz``.
    """
    import numpy as np

    from diffjax.images import atomic_write, save_image_grid
    from diffjax.pipelines import sample_pretrained, text_to_image

    text_to_image_folder = _check_flags()
    options = dict(parse_option(text) for text in _OPTIONS.value)
    start = time.perf_counter()
    prompts = [prompt for prompt in _PROMPT.value for _ in range(_NUM.value)]
    if text_to_image_folder:
        samples = text_to_image(
            _MODEL.value, prompts, _NEGATIVE.value, steps=_STEPS.value,
            guidance_scale=_GUIDANCE.value, sampler=_SAMPLER.value, sampler_options=options,
            seed=_SEED.value, height=_HEIGHT.value, width=_WIDTH.value,
        )  # fmt: skip
    else:
        samples = sample_pretrained(
            _MODEL.value, _NUM.value, steps=_STEPS.value, sampler=_SAMPLER.value,
            sampler_options=options, seed=_SEED.value,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    name = os.path.basename(os.path.normpath(_MODEL.value))
    prefix = _OUT.value or os.path.join("generated", f"{name}_seed{_SEED.value}")
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    save_image_grid(samples, prefix + ".png", scale=max(1, 64 // samples.shape[1]))

    def write(tmp_path: str) -> None:
        with open(tmp_path, "wb") as file:
            np.savez(file, samples=samples.astype(np.float32), prompts=np.asarray(prompts, str))

    atomic_write(prefix + ".npz", write)
    print(
        f"diffjax.generate: {len(samples)} images of {samples.shape[1]}x{samples.shape[2]} in "
        f"{seconds:.1f} s (loading and compiling included). Wrote {prefix}.png and "
        f"{prefix}.npz",
        flush=True,
    )
    return prefix


def main(argv: list[str]) -> None:
    """absl entry point: runs :func:`generate_main`; expected failures print one line."""
    batch = _NUM.value * max(1, len(_PROMPT.value))
    run_program(
        "diffjax.generate", argv, generate_main,
        fast_cpu_convolutions=_FAST_CPU_CONVOLUTIONS.value,
        # The batch is split over one JAX device per core when their count divides it.
        cpu_devices=cpu_devices_from_flag(_CPU_DEVICES.value, [batch]),
    )  # fmt: skip


if __name__ == "__main__":
    main_runner("diffjax.generate", main)
