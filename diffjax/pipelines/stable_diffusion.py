"""Text to image with a published Stable Diffusion 1.x / 2.x folder, without torch.

The pipeline of Rombach et al. 2022 (arXiv:2112.10752, Sec. 3.3) as diffusers'
``StableDiffusionPipeline`` runs it, from the same folder (``model_index.json`` with
``tokenizer/``, ``text_encoder/``, ``unet/``, ``vae/``, ``scheduler/``):

1. the prompts and negative prompts are tokenized (padded / truncated to 77 tokens) and encoded
   by the CLIP text encoder: contexts ``c`` and ``c_null`` ``[B, 77, D]``;
2. latents ``z_T ~ N(0, I)`` ``[B, H/f, W/f, C]`` are denoised by the UNet under
   classifier-free guidance, ``eps = eps(z, t, c_null) + w (eps(z, t, c) - eps(z, t, c_null))``
   (Ho & Salimans 2022, eq. 6), with the sampler the scheduler config names
   (:mod:`diffjax.pipelines.scheduler_configs`);
3. the autoencoder decodes ``z_0 / scaling_factor + shift_factor`` to images, returned
   clipped to [-1, 1] as every diffjax sampler's (``dj.save_image_grid`` and
   ``diffjax.images.to_uint8`` take them; diffusers' ``output_type="np"`` is ``x / 2 + 0.5``).

All three run in one ``jax.jit`` per (networks, batch, size, sampler, steps): the prompt
tokens, latents, guidance scale and parameters are its arguments, so new prompts, seeds or
scales do not recompile. With several devices a batch divisible by their count is split over
them (data parallel, parameters replicated).
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

import diffjax.models.pretrained as pretrained
import diffjax.pipelines.scheduler_configs as scheduler_configs
from diffjax.errors import ConfigError
from diffjax.models.clip import CLIPTextModel
from diffjax.models.clip_tokenizer import CLIPTokenizer
from diffjax.models.conditioning import make_model_fn
from diffjax.samplers.registry import sample
from diffjax.sharding import batch_sharding, make_mesh, replicated_sharding

__all__ = ["StableDiffusion", "load_stable_diffusion", "text_to_image"]


class StableDiffusion(NamedTuple):
    """A loaded Stable Diffusion folder (:func:`load_stable_diffusion`).

    Attributes:
      tokenizer: the CLIP tokenizer.
      text_encoder, unet, vae: the Flax modules.
      params: ``{'text_encoder': ..., 'unet': ..., 'vae': ...}`` parameters.
      scheduler_config: the parsed ``scheduler/scheduler_config.json``.
      scaling_factor, shift_factor: the autoencoder's latent scale and shift.
      sample_size: the UNet's default latent side (images are ``sample_size * vae_factor``).
      skip_layers: text-encoder layers skipped from the top (diffusers' ``clip_skip``).
    """

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: Any
    vae: Any
    params: dict[str, Any]
    scheduler_config: dict[str, Any]
    scaling_factor: float
    shift_factor: float
    sample_size: int
    skip_layers: int = 0

    @property
    def vae_factor(self) -> int:
        """Image pixels per latent pixel (8 for SD)."""
        return 2 ** (len(self.vae.channel_mults) - 1)


def load_stable_diffusion(
    folder: str | os.PathLike, *, dtype: Any = None, skip_layers: int = 0
) -> StableDiffusion:
    """Loads a diffusers Stable Diffusion folder (module docstring) with
    :func:`~diffjax.models.from_pretrained`, strictly.

    Args:
      folder: the pipeline folder (``model_index.json`` and its component folders).
      dtype: compute and parameter dtype of the three networks (``'bfloat16'``; default
        float32); the autoencoder decodes in float32 regardless (SD's VAE overflows in half
        precision).
      skip_layers: diffusers' ``clip_skip``: the context is the final LayerNorm of the output
        of layer ``num_layers - skip_layers``.
    """
    folder = os.fspath(folder)
    index = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index):
        raise FileNotFoundError(
            f"{folder} has no model_index.json: not a diffusers pipeline folder."
        )
    text_encoder, text_params = pretrained.from_pretrained(
        os.path.join(folder, "text_encoder"), dtype=dtype
    )
    unet, unet_params = pretrained.from_pretrained(os.path.join(folder, "unet"), dtype=dtype)
    vae, vae_params = pretrained.from_pretrained(os.path.join(folder, "vae"))
    if unet.context_dim != text_encoder.hidden_size:
        raise ValueError(
            f"the UNet cross-attends to {unet.context_dim}-wide contexts but the text encoder "
            f"gives {text_encoder.hidden_size}."
        )
    vae_config = pretrained.read_config(os.path.join(folder, "vae"))
    with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as file:
        scheduler_config = json.load(file)
    return StableDiffusion(
        tokenizer=CLIPTokenizer.from_folder(os.path.join(folder, "tokenizer")),
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        params=jax.device_put(
            dict(text_encoder=text_params, unet=unet_params, vae=vae_params),
            replicated_sharding(make_mesh()),
        ),
        scheduler_config=scheduler_config,
        scaling_factor=float(vae_config.get("scaling_factor") or 0.18215),
        shift_factor=float(vae_config.get("shift_factor") or 0.0),
        sample_size=int(
            pretrained.read_config(os.path.join(folder, "unet")).get("sample_size", 64)
        ),
        skip_layers=int(skip_layers),
    )


class _Settings(NamedTuple):
    """What one compilation is specialised to (hashable)."""

    text_encoder: Any
    unet: Any
    vae: Any
    skip_layers: int
    scheduler_config: str
    sampler: str
    options: tuple[tuple[str, Any], ...]
    scaling_factor: float
    shift_factor: float
    batch_sharding: NamedSharding | None


@functools.partial(jax.jit, static_argnames=("settings",))
def _generate(params, ids, negative_ids, latents, guidance_scale, key, settings: _Settings):
    """Prompt tokens ``[B, 77]`` -> images ``[B, H, W, 3]`` in [-1, 1] (module docstring)."""

    def encode(tokens):
        return settings.text_encoder.apply(
            {"params": params["text_encoder"]}, tokens, settings.skip_layers
        )[0]

    model_fn = make_model_fn(
        settings.unet, params["unet"], {"context": encode(ids)}, guidance_scale=guidance_scale,
        null={"context": encode(negative_ids)},
    )  # fmt: skip
    with jax.ensure_compile_time_eval():  # the samplers build their grids in NumPy
        schedule = scheduler_configs.schedule_from_scheduler_config(
            json.loads(settings.scheduler_config)
        )
    z = sample(
        settings.sampler, model_fn, schedule, key, latents.shape, x_T=latents,
        out_sharding=settings.batch_sharding,
        **dict(settings.options),
    )  # fmt: skip
    z = z / settings.scaling_factor + settings.shift_factor
    images = settings.vae.apply({"params": params["vae"]}, z, method=settings.vae.decode)
    return jnp.clip(images, -1.0, 1.0)


def _prompts(prompt: str | Sequence[str], name: str) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ConfigError(
            f"{name} must be a string or a non-empty list of strings, got {prompt!r}."
        )
    return prompts


def batch_sharding_for(batch: int) -> NamedSharding | None:
    """The examples split over all devices when their count divides the batch (``P('data')``
    on the 1-D mesh), else None (the default device)."""
    if jax.device_count() == 1 or batch % jax.device_count():
        return None
    return batch_sharding(make_mesh())


def text_to_image(
    pipeline: StableDiffusion | str | os.PathLike,
    prompt: str | Sequence[str],
    negative_prompt: str | Sequence[str] | None = None,
    *,
    steps: int = 50,
    guidance_scale: float = 7.5,
    sampler: str | None = None,
    sampler_options: dict[str, Any] | None = None,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    latents: np.ndarray | None = None,
) -> np.ndarray:
    """Images of prompts with a Stable Diffusion 1.x / 2.x folder (module docstring).

    Args:
      pipeline: a folder or a :func:`load_stable_diffusion` result (load once to generate
        repeatedly).
      prompt: one prompt or a list of B prompts.
      negative_prompt: what guidance steers away from, one or B; default the empty prompt.
      steps: sampler steps (network calls without guidance).
      guidance_scale: w of classifier-free guidance (1: none).
      sampler: a diffjax sampler name; default the one the scheduler config maps to.
      sampler_options: more options for it (``eta``, ``spacing``, ...), over the config's.
      seed: the seed of the initial latents (jax.random; not the same draws as torch's).
      height: image height; multiples of the autoencoder factor times the UNet's
        downsampling (8 x 8 = 64 for SD); default the UNet's ``sample_size`` times the factor
        (512 for SD 1.5, 768 for SD 2.1).
      width: image width, like ``height``.
      latents: optional initial latents ``[B, H/8, W/8, C]`` (instead of ``seed``).

    Returns:
      ``[B, height, width, 3]`` float32 images in [-1, 1] (NumPy).

    Raises:
      ConfigError: a bad prompt, size, step count, scale or sampler option, before anything
        is compiled.

    Example:
      >>> images = dj.pipelines.text_to_image("stable-diffusion-v1-5", "a red fox", steps=25)
    """
    if not isinstance(pipeline, StableDiffusion):
        pipeline = load_stable_diffusion(pipeline)
    prompts = _prompts(prompt, "prompt")
    negatives = _prompts("" if negative_prompt is None else negative_prompt, "negative_prompt")
    if len(negatives) == 1:
        negatives = negatives * len(prompts)
    if len(negatives) != len(prompts):
        raise ConfigError(f"{len(negatives)} negative prompts for {len(prompts)} prompts.")
    scale = float(guidance_scale)
    if not math.isfinite(scale):
        raise ConfigError(f"guidance_scale must be finite, got {guidance_scale}.")
    factor = pipeline.vae_factor
    multiple = factor * 2 ** (len(pipeline.unet.channel_mults) - 1)
    height = pipeline.sample_size * factor if height is None else int(height)
    width = pipeline.sample_size * factor if width is None else int(width)
    for name, side in (("height", height), ("width", width)):
        if side < 1 or side % multiple:
            raise ConfigError(
                f"{name}={side} must be a positive multiple of {multiple} (the autoencoder's "
                f"factor {factor} times the UNet's {multiple // factor})."
            )
    shape = (len(prompts), height // factor, width // factor, pipeline.vae.latent_channels)
    key = jax.random.key(seed)
    if latents is None:
        latents = jax.random.normal(jax.random.fold_in(key, 1), shape, jnp.float32)
    elif tuple(np.shape(latents)) != shape:
        raise ConfigError(f"latents must have shape {shape}, got {np.shape(latents)}.")
    name, options = scheduler_configs.checked_sampler(
        pipeline.scheduler_config, sampler, sampler_options, steps
    )
    settings = _Settings(
        pipeline.text_encoder, pipeline.unet, pipeline.vae, pipeline.skip_layers,
        json.dumps(pipeline.scheduler_config, sort_keys=True), name,
        tuple(sorted(options.items())), pipeline.scaling_factor, pipeline.shift_factor,
        batch_sharding_for(len(prompts)),
    )  # fmt: skip
    tokens = pipeline.tokenizer(prompts), pipeline.tokenizer(negatives)
    batch = settings.batch_sharding
    put = (lambda x: jnp.asarray(x)) if batch is None else (lambda x: jax.device_put(x, batch))
    images = _generate(
        pipeline.params, put(tokens[0]), put(tokens[1]), put(jnp.asarray(latents, jnp.float32)),
        jnp.float32(scale), key, settings,
    )  # fmt: skip
    return np.asarray(images)
