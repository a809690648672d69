"""The autoencoder codec: a trained autoencoder as the space a latent diffusion model runs in.

``config.codec = {'name': 'autoencoder', 'options': {...}}`` makes a run train and sample on
``z = scaling_factor * (e - shift_factor)``, ``e`` a posterior draw of the autoencoder's encoder
(Rombach et al. 2022, arXiv:2112.10752, Sec. 4.3.2: "we rescale the latents by the component-wise
standard deviation"), and decode its samples with the autoencoder's decoder. The autoencoder
comes from

* ``workdir``: a diffjax autoencoder run (``config.objective.name = 'autoencoder'``): its
  network from its ``config.json``, its EMA weights from its newest good checkpoint; with
  ``scaling_factor = 0`` the scale is ``1 / std`` from the run's ``latent_statistics.json``
  (written when it finished);
* ``diffusers``: a published ``AutoencoderKL`` folder (``config.json`` and
  ``diffusion_pytorch_model.safetensors``; ``sha256`` the weights file's checksum), read without
  torch; with ``scaling_factor = 0`` the folder's own ``scaling_factor`` and ``shift_factor``
  (SD 1/2: 0.18215; SDXL: 0.13025; SD3: 1.5305 and 0.0609).

Its parameters are the step's frozen ``frozen['codec']`` (DESIGN rule 10); the training run
records where they came from, their step or checksum and the scale in its ``config.json``.
Latents are not clipped (their range is not [-1, 1]).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp

from diffjax.autoencoding import sample_posterior
from diffjax.codecs import register_codec
from diffjax.models.autoencoder import AutoencoderKL, AutoencoderVQ, decode_checked, latent_side
from diffjax.models.registry import build_model
from diffjax.training.workdir import load_run_record, resolve_run_dir

__all__ = ["AutoencoderCodec", "LATENT_STATISTICS_FILE", "autoencoder_codec"]

LATENT_STATISTICS_FILE = "latent_statistics.json"
"""An autoencoder run's latent mean and standard deviation (its codec's default scale)."""


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class AutoencoderCodec:
    """Latent space of a KL autoencoder (module docstring).

    Attributes:
      model: the autoencoder's ``config.model`` section as sorted ``(key, value)`` pairs.
      scaling_factor: ``z = scaling_factor * (e - shift_factor)``.
      shift_factor: see above.
      source: the frozen source of its parameters (``{'workdir': ...}`` or ``{'diffusers':
        ..., 'sha256': ...}``) as sorted pairs.
    """

    model: tuple[tuple[str, Any], ...]
    scaling_factor: float
    shift_factor: float
    source: tuple[tuple[str, Any], ...]

    name = "autoencoder"
    clip = False

    @functools.cached_property
    def module(self) -> AutoencoderKL:
        """The autoencoder network."""
        return build_model(dict(self.model))

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(H', W', latent_channels)`` of images ``(H, W, C)``."""
        mults = self.module.channel_mults
        return (
            latent_side(image_shape[0], mults), latent_side(image_shape[1], mults),
            self.module.latent_channels,
        )  # fmt: skip

    def encode(self, params: Any, images: jnp.ndarray, key: jax.Array | None) -> jnp.ndarray:
        """Scaled latents of images ``[B, H, W, C]``: posterior draws (the mean without a key)
        of a KL autoencoder, the encodings of a VQ one."""
        latents = self.module.apply({"params": params}, images, key, method="latents")
        return self.scaling_factor * (latents - self.shift_factor)

    def decode(self, params: Any, latents: jnp.ndarray) -> jnp.ndarray:
        """Images of scaled latents (quantized first by a VQ autoencoder), redone in float32
        where a bfloat16 decode overflowed."""
        return decode_checked(
            self.module, params, latents / self.scaling_factor + self.shift_factor
        )

    def moments(self, params: Any, images: jnp.ndarray) -> jnp.ndarray:
        """The encoder's unscaled output, what a latent cache stores: a KL posterior's mean and
        log variance concatenated on the channel axis ``[B, h, w, 2c]``, a VQ autoencoder's
        encodings ``[B, h, w, c]``."""
        if isinstance(self.module, AutoencoderVQ):
            return self.module.apply({"params": params}, images, method="encode")
        mean, logvar = self.module.apply({"params": params}, images, method="encode")
        return jnp.concatenate([mean, logvar], axis=-1)

    def from_moments(self, moments: jnp.ndarray, key: jax.Array | None) -> jnp.ndarray:
        """Scaled latents of cached :meth:`moments`: a fresh posterior draw (the mean without a
        key) of a KL autoencoder's, a VQ autoencoder's encodings as they are."""
        latents = moments
        if not isinstance(self.module, AutoencoderVQ):
            mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
            latents = mean if key is None else sample_posterior(mean, logvar, key)
        return self.scaling_factor * (latents - self.shift_factor)

    def frozen_source(self) -> dict[str, Any]:
        """Where the parameters come from (:mod:`diffjax.training.frozen`)."""
        return dict(self.source)

    def record(self) -> dict[str, float]:
        """What ``config.json`` records beside the parameters' source."""
        return dict(scaling_factor=self.scaling_factor, shift_factor=self.shift_factor)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _from_workdir(workdir: str) -> tuple[dict[str, Any], float]:
    record = load_run_record(workdir)
    if record is None:
        raise ValueError(f"workdir={workdir!r} holds no diffjax run (no config.json).")
    config = record["config"]
    if config["objective"]["name"] != "autoencoder":  # KL or VQ
        raise ValueError(
            f"workdir={workdir!r} is a {config['objective']['name']!r} run, not an autoencoder "
            f"run (config.objective.name='autoencoder')."
        )
    path = os.path.join(resolve_run_dir(workdir), LATENT_STATISTICS_FILE)
    std = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as file:
            std = float(json.load(file)["std"])
    return dict(config["model"]), std


def autoencoder_codec(
    workdir: str = "",
    diffusers: str = "",
    sha256: str = "",
    scaling_factor: float = 0.0,
    shift_factor: float = 0.0,
    force_upcast: bool = False,
    dtype: str = "",
) -> AutoencoderCodec:
    """The codec of ``config.codec.options`` (module docstring).

    Args:
      workdir: a diffjax autoencoder run.
      diffusers: a diffusers ``AutoencoderKL`` folder (instead of ``workdir``).
      sha256: the diffusers weights file's SHA-256 (hex), checked when the run loads it.
      scaling_factor: the latent scale; 0 takes the source's (module docstring).
      shift_factor: the latent shift (with ``scaling_factor`` 0 the source's).
      force_upcast: run the autoencoder in float32.
      dtype: the autoencoder's compute dtype ('' keeps the source's).

    Raises:
      ValueError: neither or both sources, a source that is missing or not an autoencoder,
        or no scale to be had.
    """
    if bool(workdir) == bool(diffusers):
        raise ValueError(
            f"set exactly one of workdir (a diffjax autoencoder run) and diffusers (a diffusers "
            f"AutoencoderKL folder); got workdir={workdir!r}, diffusers={diffusers!r}."
        )
    if workdir:
        model, std = _from_workdir(workdir)
        source = {"workdir": os.path.abspath(workdir), "params_key": "autoencoder"}
        if not scaling_factor:
            if not std:
                raise ValueError(
                    f"scaling_factor=0 takes 1/std of the latents from {LATENT_STATISTICS_FILE} "
                    f"in {workdir!r}, which the autoencoder run writes when it finishes; finish "
                    f"it (rerun its train command) or set scaling_factor."
                )
            scaling_factor = 1.0 / std
    else:
        from diffjax.models.autoencoder_weights import DIFFUSERS_WEIGHTS_FILE, model_config_of

        config_path = os.path.join(diffusers, "config.json")
        weights = os.path.join(diffusers, DIFFUSERS_WEIGHTS_FILE)
        for path in (config_path, weights):
            if not os.path.exists(path):
                raise ValueError(f"diffusers={diffusers!r} has no {os.path.basename(path)}.")
        with open(config_path, encoding="utf-8") as file:
            published = json.load(file)
        if not sha256:
            raise ValueError(
                f"diffusers={diffusers!r} needs sha256, the checksum of {weights} (sha256sum "
                f"it), so that the run says exactly which weights it was trained against."
            )
        model = model_config_of(published)
        source = {"diffusers": os.path.abspath(diffusers), "sha256": sha256}
        if not scaling_factor:
            scaling_factor = float(published.get("scaling_factor") or 0.0)
            shift_factor = float(published.get("shift_factor") or 0.0)
            if not scaling_factor:
                raise ValueError(f"{config_path} has no scaling_factor; set scaling_factor.")
    if not scaling_factor > 0:
        raise ValueError(f"scaling_factor must be > 0, got {scaling_factor}.")
    model["force_upcast"] = bool(force_upcast)
    if dtype:
        model["dtype"] = dtype
    return AutoencoderCodec(
        model=tuple(sorted((key, _hashable(value)) for key, value in model.items())),
        scaling_factor=float(scaling_factor),
        shift_factor=float(shift_factor),
        source=tuple(sorted(source.items())),
    )


register_codec("autoencoder", autoencoder_codec)
