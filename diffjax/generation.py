"""Generation from a trained network: sample -> guide -> decode, in one place.

:func:`make_generator` turns a registered network, its process, codec and sampler settings into
``generate(params, keys, cond, frozen=None, x_T=None, decode=True) -> images``, which every
program that draws samples calls: the training loop's grids and Fréchet distance, ``python -m
diffjax.sample``, ``python -m diffjax.evaluate`` and reflow's pairs. The network becomes a
``model_fn`` through the one adapter (:func:`diffjax.models.make_model_fn`, classifier-free
guidance on the whole ``cond`` pytree included), any sampler runs by name with an optional
denoiser-level ``guide``, and the codec decodes the result (pixel space: nothing to do).

Which condition sample i gets is fixed by its index, like its key ``fold_in(key(seed), i)``:
:func:`class_labels` gives the classes of a class-conditional network (in blocks for a grid,
cycling for an evaluation); other conditioning comes from the run's data.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffjax import samplers
from diffjax.codecs import IdentityCodec, is_identity
from diffjax.models.conditioning import (
    GUIDANCE_KEY,
    cond_keys,
    learned_variance,
    make_model_fn,
    prediction_channels,
)
from diffjax.samplers.guidance import compose_guides
from diffjax.sharding import batch_sharding

__all__ = ["Generator", "class_labels", "make_generator"]

Generator = Callable[..., jax.Array]
"""``generate(params, keys, cond=None, *, frozen=None, x_T=None, decode=True) -> [N, ...]``."""


def class_labels(indices: np.ndarray, num_classes: int, *, blocks: int | None = None) -> np.ndarray:
    """The class of each sample index: ``i mod K`` (every class in turn, for evaluations) or,
    with ``blocks=N``, ``i K // N`` (K blocks of equal size: each row of a grid of N is one
    class).

    Args:
      indices: int ``[n]`` sample indices.
      num_classes: K.
      blocks: N, the size of the grid, or None.

    Returns:
      int32 ``[n]`` labels in [0, K).
    """
    indices = np.asarray(indices, np.int64)
    if blocks is None:
        return (indices % num_classes).astype(np.int32)
    return (indices * num_classes // blocks).astype(np.int32)


def make_generator(
    module: Any,
    process: Any,
    *,
    shape: tuple[int, ...],
    num_samples: int,
    sampler: str,
    options: Mapping[str, Any],
    guidance_scale: float = 1.0,
    clip_x0: bool = False,
    codec: Any = None,
    guide: Callable | None = None,
    mesh: Mesh | None = None,
) -> Generator:
    """``generate(params, keys, cond)`` for a trained network (see the module docstring).

    Sampling with classifier-free guidance (Ho & Salimans 2022, eq. 6) when ``guidance_scale``
    is not 1, then the latent decode x~ = D(z) (Rombach et al. 2022, Sec. 3.1) of the codec.
    Each call is one sampler run (one jitted ``lax.scan``, or one ``diffeqsolve``) over
    ``num_samples`` samples, then the codec's decode; the params, cond, keys and start noise are
    traced, so new ones reuse the compiled sampler. With a ``mesh`` whose device count divides
    ``num_samples``, the samples are split over the devices.

    Args:
      module: the registered network (``module(x, t, cond, train=...)``).
      process: the schedule or continuous process it was trained with.
      shape: the model-space shape of one sample (the codec's latent shape of the images).
      num_samples: N, samples per call.
      sampler: a registered sampler's name (:data:`diffjax.samplers.SAMPLER_NAMES`).
      options: that sampler's keyword arguments (``num_steps``, ``prediction_type``, ...),
        checked by the sampler when called; with ``return_stats=True`` (an adaptive sampler,
        ``'ode'``), ``generate`` returns ``(images, stats)``.
      guidance_scale: classifier-free guidance weight w (1: the plain conditional model); a
        network that embeds w (a guidance-distilled student, ``cond['guidance']``) gets it as
        its condition and is called once per step instead. A network with a learned
        variance is sampled from its prediction's channels, but by DDPM with
        ``variance='learned_range'``, which reads the variance too.
      clip_x0: clip each x0-prediction to [-1, 1] (ignored where the codec says its space is
        not [-1, 1]).
      codec: the :class:`~diffjax.codecs.Codec` (default pixel space).
      guide: a denoiser-level guide (:mod:`diffjax.samplers.guidance`).
      mesh: optional mesh to split the samples over.

    Returns:
      ``generate(params, keys, cond=None, *, frozen=None, x_T=None, decode=True,
      guide=None)``: ``keys`` one key or ``[N]`` per-sample keys
      (:func:`diffjax.samplers.sample_keys`), ``cond`` the conditioning ``{key: [N, ...]}``
      (None for an unconditional network), ``frozen`` the run's frozen pytrees (the codec's
      parameters as ``frozen['codec']``), ``x_T`` an optional start ``[N, *shape]``, ``guide``
      this call's guide (classifier guidance towards this batch's classes; applied before
      the ``guide`` given here); returns float32 images ``[N, H, W, C]`` in about
      [-1, 1], or the model-space samples ``[N, *shape]`` with ``decode=False``.
    """
    codec = IdentityCodec() if codec is None else codec
    options = dict(options, clip_x0=bool(clip_x0 and codec.clip))
    if guide is not None:
        options["guide"] = guide
    if mesh is not None and num_samples % mesh.devices.size == 0:
        options["out_sharding"] = batch_sharding(mesh)
    full_shape = (num_samples, *shape)
    embeds_guidance = GUIDANCE_KEY in cond_keys(module)
    # A learned variance is read by DDPM's 'learned_range' step; every other sampler gets the
    # prediction's channels.
    learned = learned_variance(module)
    keeps_variance = sampler == "ddpm" and options.get("variance") == "learned_range"
    if keeps_variance and not learned:
        raise ValueError(
            f"variance='learned_range' reads a learned variance, which "
            f"{type(module).__name__} does not output (DiT: learn_sigma=True)."
        )
    decode_fn = None if is_identity(codec) else jax.jit(codec.decode)

    def generate(
        params: Any,
        keys: jax.Array,
        cond: Mapping[str, Any] | None = None,
        *,
        frozen: Mapping[str, Any] | None = None,
        x_T: jax.Array | None = None,
        decode: bool = True,
        guide: Callable | None = None,
    ) -> jax.Array:
        if embeds_guidance:
            scale = jnp.full((num_samples,), guidance_scale, jnp.float32)
            cond = {**(cond or {}), GUIDANCE_KEY: scale}
        model_fn = make_model_fn(
            module, params, cond, guidance_scale=1.0 if embeds_guidance else guidance_scale
        )
        if learned and not keeps_variance:
            model_fn = prediction_channels(model_fn)
        extra = {} if x_T is None else {"x_T": jnp.asarray(x_T)}
        if guide is not None:
            extra["guide"] = compose_guides(guide, options.get("guide"))
        latents = samplers.sample(
            sampler, model_fn, process, keys, full_shape, **{**options, **extra}
        )
        if options.get("return_stats"):
            latents, stats = latents
        if decode and decode_fn is not None:
            latents = decode_fn((frozen or {}).get("codec"), latents)
        return (latents, stats) if options.get("return_stats") else latents

    return generate
