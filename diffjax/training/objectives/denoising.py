"""The denoising objective: the diffusion loss of any process, prediction and weighting."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from diffjax.codecs import IdentityCodec, is_identity
from diffjax.losses import (
    TimeSampler,
    check_min_snr_gamma,
    check_weighting,
    denoising_loss,
    get_time_sampler,
)
from diffjax.models.conditioning import (
    drop_cond,
    learned_variance,
    make_model_fn,
    null_cond,
    select_cond,
)
from diffjax.predictions import check_prediction_supported
from diffjax.processes import check_process, is_discrete
from diffjax.training.objectives.base import LossFn, Objective, ObjectiveContext, ObjectiveEntry

__all__ = ["DENOISING", "make_denoising_loss", "no_frozen", "no_keys"]


def make_denoising_loss(
    module: Any,
    process: Any,
    *,
    prediction_type: str = "eps",
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    offset_noise: float = 0.0,
    time_sampler: TimeSampler | None = None,
    cond_dropout: float = 0.0,
    codec: Any = None,
    vlb_weight: float = 0.0,
) -> LossFn:
    """The denoising loss of :func:`diffjax.losses.denoising_loss` as a train-step ``loss_fn``.

    Each call splits ``key`` into the loss key (times and noise), the dropout key and the
    condition-dropout key; a latent codec's posterior draw uses ``fold_in(key, 3)``. The network is called through the one adapter
    (:func:`diffjax.models.make_model_fn`) with the batch's conditioning; with ``train`` it
    applies dropout and replaces each example's whole condition by the network's null
    condition with probability ``cond_dropout`` (Ho & Salimans 2022, Algorithm 1); without,
    neither (the held-out loss). A latent codec encodes the images first, its parameters taken
    from ``frozen['codec']``.

    Args:
      module: the registered network (``module(x, t, cond, train=...)``).
      process: the schedule or continuous process.
      prediction_type: what the network predicts.
      weighting: one of :data:`diffjax.losses.LOSS_WEIGHTINGS`.
      min_snr_gamma: gamma of the Min-SNR weighting.
      offset_noise: per-channel offset-noise scale (0 disables it).
      time_sampler: training times for a continuous process (default uniform).
      cond_dropout: probability of training an example unconditionally.
      codec: the model space (:mod:`diffjax.codecs`; default pixel space).
      vlb_weight: lambda of the hybrid loss for a network with a learned variance
        (:func:`diffjax.losses.denoising_loss`); > 0 exactly when the network has one.

    Returns:
      ``loss_fn(params, frozen, batch, key, train) -> (loss, {'mse': ...})``. ``batch`` holds
      ``'image'`` float ``[B, H, W, C]`` in [-1, 1], ``'cond'`` (what the network reads of it),
      and optionally ``'noise'``, the eps paired with each image (reflow); a latent cache's
      batches hold the codec's ``'moments'`` instead of images.

    Raises:
      ValueError: a bad option, before anything is traced.
    """
    check_process(process)
    check_prediction_supported(prediction_type, process)
    check_weighting(weighting)
    if weighting == "min_snr":
        check_min_snr_gamma(min_snr_gamma)
    if not offset_noise >= 0:
        raise ValueError(f"offset_noise must be >= 0, got {offset_noise}.")
    if time_sampler is not None and is_discrete(process):
        raise ValueError("time_sampler is for continuous processes; a schedule draws U{0..T-1}.")
    if not 0.0 <= cond_dropout < 1.0:
        raise ValueError(f"cond_dropout must lie in [0, 1), got {cond_dropout}.")
    if cond_dropout > 0 and not getattr(module, "cond_keys", ()):
        raise ValueError(
            f"cond_dropout={cond_dropout} drops the condition, but {type(module).__name__} reads "
            f"none (cond_keys=()); an unconditional network has nothing to drop."
        )
    if learned_variance(module) != (vlb_weight > 0):
        raise ValueError(
            f"{type(module).__name__} {'has' if learned_variance(module) else 'has no'} learned "
            f"variance but vlb_weight={vlb_weight}: a learned variance trains only through "
            f"the hybrid loss's bound term (config.diffusion.vlb_weight > 0; Improved DDPM and "
            f"DiT: 0.001), and the term needs one (config.model.learn_sigma)."
        )
    codec = IdentityCodec() if codec is None else codec

    def loss_fn(params, frozen, batch, key, train):
        if "image" not in batch and "moments" not in batch:
            raise ValueError(
                f"The batch needs an 'image' entry [B, H, W, C] (or a latent cache's "
                f"'moments'); got keys {sorted(batch)}."
            )
        loss_key, dropout_key, cond_key = jax.random.split(key, 3)
        cond = select_cond(module, batch.get("cond"))
        if train and cond_dropout > 0:
            cond = drop_cond(cond_key, cond, null_cond(module, cond), cond_dropout)
        model_fn = make_model_fn(
            module, params, cond, train=train, rng=dropout_key if train else None
        )
        if "moments" in batch:  # a latent cache: a fresh posterior draw of cached moments
            x0 = codec.from_moments(batch["moments"], jax.random.fold_in(key, 3))
        elif is_identity(codec):
            x0 = batch["image"]
        else:
            x0 = codec.encode(frozen.get("codec"), batch["image"], jax.random.fold_in(key, 3))
        loss, aux = denoising_loss(
            model_fn, process, x0, loss_key, prediction_type=prediction_type,
            weighting=weighting, min_snr_gamma=min_snr_gamma, offset_noise=offset_noise,
            time_sampler=time_sampler, noise=batch.get("noise"), vlb_weight=vlb_weight,
        )  # fmt: skip
        return loss, dict(mse=jnp.mean(aux["mse"]))

    return loss_fn


def no_keys() -> dict[str, Any]:
    return {}


def _check_denoising(values: Mapping[str, Any]) -> None:
    """The denoising loss reads the diffusion section, which the programs check."""


def _build_denoising(context: ObjectiveContext) -> Objective:
    diffusion = context.values["diffusion"]
    time_sampler = get_time_sampler(
        diffusion["time_sampler"], context.process, **diffusion["time_sampler_options"]
    )
    return Objective(
        make_denoising_loss(
            context.model,
            context.process,
            prediction_type=diffusion["prediction_type"],
            weighting=diffusion["loss_weighting"],
            min_snr_gamma=diffusion["min_snr_gamma"],
            offset_noise=diffusion["offset_noise"],
            time_sampler=time_sampler,
            cond_dropout=context.values["training"]["cond_dropout"],
            codec=context.codec,
            vlb_weight=diffusion["vlb_weight"],
        )
    )


def no_frozen(values: Mapping[str, Any]) -> dict[str, Any]:
    return {}


DENOISING = ObjectiveEntry(
    defaults=no_keys,
    check=_check_denoising,
    build=_build_denoising,
    frozen=no_frozen,
    hooks=("sample_grid", "frechet_distance", "held_out_loss"),
)
"""The ``'denoising'`` objective."""
