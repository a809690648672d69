"""The autoencoder objective: LDM's KL autoencoder with an optional LPIPS term and patch GAN.

``config.objective.name = 'autoencoder'`` trains the network ``config.model`` names (an
:class:`~diffjax.models.autoencoder.AutoencoderKL`, ``'autoencoder_kl'``) on the loss of
:mod:`diffjax.autoencoding`: per image, the summed L1 (or L2) reconstruction error, plus
``lpips_weight`` times LPIPS counted once per pixel (as LDM adds it to every pixel's error),
plus ``kl_weight`` times the KL term, plus, from step ``disc_start`` on, the adaptively weighted
adversarial term of a :class:`~diffjax.models.discriminator.PatchDiscriminator` trained with
the hinge loss. The parameters are ``{'autoencoder': ..., 'discriminator': ...}`` (no
discriminator when ``disc_weight`` is 0), two parameter groups with their own optimizers:
before ``disc_start`` only the autoencoder is updated; from then on the two alternate, the
autoencoder on even steps counted from ``disc_start`` and the discriminator on odd ones. The
loss counts its own steps in the state outside the gradient (``extra['step']``), so a resumed
run switches the GAN on at the same step. A latent diffusion run then reads the autoencoder's
EMA weights as its codec (:class:`diffjax.codecs.AutoencoderCodec`).

The LPIPS network (``lpips_net``, published weights resolved as :func:`diffjax.metrics.
load_lpips` does) is a frozen pytree of the step, ``frozen['lpips']``.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from diffjax.autoencoding import (
    RECONSTRUCTION_LOSSES,
    CodebookStatistics,
    adaptive_weight,
    codebook_from_statistics,
    codebook_perplexity,
    ema_codebook_update,
    gaussian_kl,
    generator_loss,
    hinge_discriminator_loss,
    quantize,
    reconstruction_loss,
    restart_dead_codes,
    sample_posterior,
    straight_through,
    vq_losses,
)
from diffjax.errors import ConfigError
from diffjax.models.autoencoder import AutoencoderVQ
from diffjax.models.discriminator import PatchDiscriminator
from diffjax.training.objectives.base import (
    FROZEN_GROUP,
    Objective,
    ObjectiveContext,
    ObjectiveEntry,
)

__all__ = ["AUTOENCODER", "assign_codebook", "make_autoencoder_loss"]

AUTOENCODER_MODELS = ("autoencoder_kl", "autoencoder_vq")
"""The networks the objective trains."""

CODEBOOK_UPDATES = ("ema", "gradient")
"""How a VQ autoencoder's codebook learns."""


def _defaults() -> dict[str, Any]:
    return dict(
        # 'l1' (LDM) or 'l2': the per-pixel reconstruction error, summed over each image.
        reconstruction="l1",
        # beta of the KL term KL(q(z|x) || N(0, I)) (LDM's kl-f8: 1e-6).
        kl_weight=1e-6,
        # LPIPS on the reconstructions (LDM: 1.0); RGB images of at least 64 px.
        lpips_weight=0.0,
        lpips_net="vgg",
        # The patch-GAN's weight (LDM: 0.5); 0 trains no discriminator.
        disc_weight=0.0,
        # The step from which the discriminator trains and the adversarial term counts.
        disc_start=50_001,
        disc_base_channels=64,
        disc_layers=3,
        # The discriminator's learning rate; 0 takes config.optim.learning_rate.
        disc_learning_rate=0.0,
        # VQ ('autoencoder_vq'): beta of the commitment loss (van den Oord et al.: 0.25).
        commitment_weight=0.25,
        # 'ema' (exponential moving averages, the codebook outside the gradient) or
        # 'gradient' (the codebook loss).
        codebook_update="ema",
        codebook_decay=0.99,
        # EMA codebooks: restart an entry whose EMA count falls below this at a batch encoding.
        restart_threshold=0.01,
    )


def _check(values: Mapping[str, Any]) -> None:
    section, model = values["objective"], values["model"]
    if model["name"] not in AUTOENCODER_MODELS:
        raise ConfigError(
            f"config.objective.name='autoencoder' trains an autoencoder: config.model.name must "
            f"be one of {AUTOENCODER_MODELS}, got {model['name']!r}."
        )
    if values["codec"]["name"] != "identity":
        raise ConfigError(
            f"the autoencoder trains on pixels: config.codec.name must be 'identity', got "
            f"{values['codec']['name']!r}."
        )
    if section["reconstruction"] not in RECONSTRUCTION_LOSSES:
        raise ConfigError(
            f"config.objective.reconstruction must be one of {RECONSTRUCTION_LOSSES}, got "
            f"{section['reconstruction']!r}."
        )
    if section["codebook_update"] not in CODEBOOK_UPDATES:
        raise ConfigError(
            f"config.objective.codebook_update must be one of {CODEBOOK_UPDATES}, got "
            f"{section['codebook_update']!r}."
        )
    if not 0.0 < section["codebook_decay"] < 1.0:
        raise ConfigError(
            f"config.objective.codebook_decay must lie in (0, 1), got {section['codebook_decay']}."
        )
    for key in ("kl_weight", "lpips_weight", "disc_weight", "disc_learning_rate",
                "commitment_weight", "restart_threshold"):  # fmt: skip
        if not section[key] >= 0:
            raise ConfigError(f"config.objective.{key} must be >= 0, got {section[key]}.")
    if section["disc_start"] < 0 or section["disc_layers"] < 1 or section["disc_base_channels"] < 1:
        raise ConfigError(
            f"config.objective needs disc_start >= 0, disc_layers >= 1 and disc_base_channels "
            f">= 1; got {section['disc_start']}, {section['disc_layers']} and "
            f"{section['disc_base_channels']}."
        )
    size = values["data"]["image_size"]
    if section["lpips_weight"] > 0:
        from diffjax.metrics.lpips import lpips_min_image_size

        least = lpips_min_image_size(section["lpips_net"])
        if size < max(least, 64):
            raise ConfigError(
                f"config.objective.lpips_weight={section['lpips_weight']} needs images of at least "
                f"64 px for LPIPS {section['lpips_net']!r} (its ImageNet backbone), got "
                f"config.data.image_size={size}; set lpips_weight=0."
            )
    if section["disc_weight"] > 0:
        side = size
        for _ in range(section["disc_layers"]):
            side = side // 2
        if side < 3:
            raise ConfigError(
                f"config.objective.disc_layers={section['disc_layers']} halves {size} px images "
                f"to {side} px, too small for the discriminator's last two 4x4 convolutions; "
                f"use fewer layers."
            )


def _frozen(values: Mapping[str, Any]) -> dict[str, Any]:
    section = values["objective"]
    return {"lpips": {"lpips": section["lpips_net"]}} if section["lpips_weight"] > 0 else {}


def make_autoencoder_loss(
    autoencoder: Any,
    discriminator: Any | None,
    *,
    reconstruction: str = "l1",
    kl_weight: float = 1e-6,
    lpips_weight: float = 0.0,
    lpips_net: str = "vgg",
    disc_weight: float = 0.0,
    disc_start: int = 0,
    commitment_weight: float = 0.25,
    codebook_update: str = "ema",
    codebook_decay: float = 0.99,
    restart_threshold: float = 0.01,
) -> Any:
    """The autoencoder's training loss as a stateful train-step ``loss_fn``.

    Args:
      autoencoder: an :class:`~diffjax.models.autoencoder.AutoencoderKL`.
      discriminator: a :class:`~diffjax.models.discriminator.PatchDiscriminator`, or None.
      reconstruction: ``'l1'`` or ``'l2'``.
      kl_weight: beta of the KL term.
      lpips_weight: weight of LPIPS (its variables in ``frozen['lpips']``).
      lpips_net: ``'alex'`` or ``'vgg'``.
      disc_weight: the adversarial term's weight on top of the adaptive one.
      disc_start: the loss's step count from which the adversarial terms count.
      commitment_weight: a VQ autoencoder's beta (its commitment loss's weight).
      codebook_update: ``'ema'`` (statistics in ``extra``; the step writes the codebook from
        them, :func:`assign_codebook`) or ``'gradient'`` (the codebook loss).
      codebook_decay: the EMA's gamma.
      restart_threshold: EMA entries whose count falls below it restart at a batch encoding.

    Returns:
      ``loss_fn(params, frozen, batch, key, train, extra) -> (loss, (metrics, extra))`` with
      ``params = {'autoencoder': ..., 'discriminator': ...}``, ``batch['image']`` ``[B, H, W,
      C]`` in [-1, 1] and ``extra = {'step': int32}`` (and a VQ-EMA codebook's ``'counts'``
      and ``'sums'``). With ``train`` the latent is a posterior draw (a VQ autoencoder's
      quantized encoding, passed straight through) and the step count and codebook statistics
      advance; without, it is the posterior mean and nothing advances. ``loss`` is the
      autoencoder's loss plus the discriminator's (each network's gradient only reaches its
      own parameters).
    """
    if reconstruction not in RECONSTRUCTION_LOSSES:
        raise ValueError(
            f"reconstruction must be one of {RECONSTRUCTION_LOSSES}, got {reconstruction!r}."
        )
    if codebook_update not in CODEBOOK_UPDATES:
        raise ValueError(
            f"codebook_update must be one of {CODEBOOK_UPDATES}, got {codebook_update!r}."
        )
    use_gan = discriminator is not None and disc_weight > 0
    vector_quantized = isinstance(autoencoder, AutoencoderVQ)

    def _ema_step(extra, encodings, indices, key):
        statistics = ema_codebook_update(
            CodebookStatistics(extra["counts"], extra["sums"]), encodings, indices,
            decay=codebook_decay,
        )  # fmt: skip
        # Count 0 (before the first step) always restarts: the codebook starts at encodings.
        statistics, restarted = restart_dead_codes(
            statistics, encodings, jax.random.fold_in(key, 5),
            threshold=max(restart_threshold, 1e-30),
        )  # fmt: skip
        return dict(counts=statistics.counts, sums=statistics.sums), restarted

    def loss_fn(params, frozen, batch, key, train, extra):
        from diffjax.metrics.lpips import lpips_distance

        images = batch["image"]
        ae_params = params["autoencoder"]
        metrics, new_extra = {}, dict(extra)
        if vector_quantized:
            encodings = autoencoder.apply({"params": ae_params}, images, method="encode")
            quantized, indices = quantize(encodings, ae_params["codebook"])
            z = straight_through(encodings, quantized)
            codebook_loss, commitment_loss = vq_losses(encodings, quantized)
            regulariser = commitment_weight * commitment_loss
            if codebook_update == "gradient":
                regulariser = regulariser + codebook_loss
            elif train:
                statistics, metrics["restarted_codes"] = _ema_step(extra, encodings, indices, key)
                new_extra.update(statistics)
            perplexity, usage = codebook_perplexity(indices, autoencoder.codebook_size)
            metrics.update(
                codebook_loss=codebook_loss, commitment_loss=commitment_loss,
                perplexity=perplexity, codebook_usage=usage,
            )  # fmt: skip
        else:
            mean, logvar = autoencoder.apply({"params": ae_params}, images, method="encode")
            z = sample_posterior(mean, logvar, key) if train else mean
            kl = jnp.mean(gaussian_kl(mean, logvar))
            regulariser = kl_weight * kl
            metrics.update(kl=kl)
        features = autoencoder.apply({"params": ae_params}, z, method="decode_features")
        pixels = images[0].size

        def decode_with(last_layer):
            decoder = {**ae_params["decoder"], "conv_out": last_layer}
            return autoencoder.apply(
                {"params": {**ae_params, "decoder": decoder}}, features, method="output_layer"
            )

        def nll(last_layer):
            decoded = decode_with(last_layer)
            per_image = reconstruction_loss(images, decoded, reconstruction)
            if lpips_weight > 0:
                perceptual = lpips_distance(frozen["lpips"], images, decoded, net=lpips_net)
                per_image = per_image + lpips_weight * pixels * perceptual
            return jnp.mean(per_image), decoded

        last_layer = ae_params["decoder"]["conv_out"]
        if not use_gan:
            nll_value, decoded = nll(last_layer)
            loss = nll_value + regulariser
        else:
            (nll_value, decoded), nll_grads = jax.value_and_grad(nll, has_aux=True)(last_layer)
            active = extra["step"] >= disc_start

            def gan_terms(disc_params):
                frozen_disc = jax.lax.stop_gradient(disc_params)

                def adversarial(last_layer):
                    fake = decode_with(last_layer)
                    return generator_loss(discriminator.apply({"params": frozen_disc}, fake))

                g_loss, g_grads = jax.value_and_grad(adversarial)(last_layer)
                logits_real = discriminator.apply({"params": disc_params}, images)
                logits_fake = discriminator.apply(
                    {"params": disc_params}, jax.lax.stop_gradient(decoded)
                )
                return dict(
                    g_loss=g_loss,
                    d_loss=hinge_discriminator_loss(logits_real, logits_fake),
                    d_weight=disc_weight * adaptive_weight(nll_grads["kernel"], g_grads["kernel"]),
                    logits_real=jnp.mean(logits_real),
                    logits_fake=jnp.mean(logits_fake),
                )

            def before_disc_start(disc_params):
                return dict.fromkeys(
                    ("g_loss", "d_loss", "d_weight", "logits_real", "logits_fake"),
                    jnp.zeros((), jnp.float32),
                )

            # Before disc_start the discriminator is not even run (its terms are 0).
            gan = jax.lax.cond(active, gan_terms, before_disc_start, params["discriminator"])
            loss = nll_value + regulariser + gan["d_weight"] * gan["g_loss"] + gan["d_loss"]
            metrics.update(gan, gan_active=active.astype(jnp.float32))
        error = decoded - images.astype(jnp.float32)
        metrics.update(nll=nll_value, l1=jnp.mean(jnp.abs(error)), mse=jnp.mean(jnp.square(error)))
        if train:
            new_extra["step"] = extra["step"] + 1
        return loss, (metrics, new_extra)

    return loss_fn


def _labels(params: Any, ema_codebook: bool) -> Any:
    """Each top-level network is a group; an EMA codebook is frozen (the step writes it)."""

    def label(path: tuple[Any, ...], _: Any) -> str:
        names = tuple(getattr(entry, "key", entry) for entry in path)
        if ema_codebook and names[:2] == ("autoencoder", "codebook"):
            return FROZEN_GROUP
        return names[0]

    return jax.tree_util.tree_map_with_path(label, params)


def assign_codebook(params: Any, extra: Any) -> Any:
    """``params`` with ``params['autoencoder']['codebook']`` set from the EMA statistics in
    ``extra`` (:func:`diffjax.autoencoding.codebook_from_statistics`)."""
    codebook = codebook_from_statistics(CodebookStatistics(extra["counts"], extra["sums"]))
    autoencoder = dict(
        params["autoencoder"], codebook=codebook.astype(params["autoencoder"]["codebook"].dtype)
    )
    return dict(params, autoencoder=autoencoder)


def _build(context: ObjectiveContext) -> Objective:
    values, autoencoder = context.values, context.model
    section = values["objective"]
    use_gan = section["disc_weight"] > 0
    ema_codebook = isinstance(autoencoder, AutoencoderVQ) and section["codebook_update"] == "ema"
    discriminator = None
    if use_gan:
        discriminator = PatchDiscriminator(
            section["disc_base_channels"], section["disc_layers"], dtype=autoencoder.dtype
        )
    image_shape = tuple(values["image_shape"])

    def init(key: jax.Array) -> dict[str, Any]:
        ae_key, disc_key = jax.random.split(key)
        x = jnp.zeros((1, *image_shape), jnp.float32)
        params = {"autoencoder": autoencoder.init(ae_key, x)["params"]}
        if use_gan:
            params["discriminator"] = discriminator.init(disc_key, x)["params"]
        return params

    def init_extra() -> dict[str, jax.Array]:
        extra = {"step": jnp.zeros((), jnp.int32)}
        if ema_codebook:
            # Zero counts: the first step restarts every entry at an encoding of its batch.
            size, channels = autoencoder.codebook_size, autoencoder.latent_channels
            extra.update(
                counts=jnp.zeros((size,), jnp.float32),
                sums=jnp.zeros((size, channels), jnp.float32),
            )
        return extra

    loss_fn = make_autoencoder_loss(
        autoencoder, discriminator, reconstruction=section["reconstruction"],
        kl_weight=section["kl_weight"], lpips_weight=section["lpips_weight"],
        lpips_net=section["lpips_net"], disc_weight=section["disc_weight"],
        disc_start=section["disc_start"], commitment_weight=section["commitment_weight"],
        codebook_update=section["codebook_update"], codebook_decay=section["codebook_decay"],
        restart_threshold=section["restart_threshold"],
    )  # fmt: skip
    group_options: dict[str, Any] = {}
    if use_gan:
        start = section["disc_start"]
        disc_options: dict[str, Any] = {
            "when": lambda count: (count >= start) & ((count - start) % 2 == 1)
        }
        if section["disc_learning_rate"] > 0:
            disc_options["learning_rate"] = section["disc_learning_rate"]
        group_options = {
            "autoencoder": {"when": lambda count: (count < start) | ((count - start) % 2 == 0)},
            "discriminator": disc_options,
        }
    return Objective(
        loss_fn,
        param_labels=(
            (lambda params: _labels(params, ema_codebook)) if use_gan or ema_codebook else None
        ),
        group_options=group_options,
        init_extra=init_extra,
        init=init,
        assign=assign_codebook if ema_codebook else None,
    )


AUTOENCODER = ObjectiveEntry(
    defaults=_defaults,
    check=_check,
    build=_build,
    frozen=_frozen,
    hooks=("reconstruction_grid", "reconstruction_metrics", "held_out_loss", "latent_statistics"),
    state_keys=("disc_weight", "disc_base_channels", "disc_layers", "codebook_update"),
)
"""The ``'autoencoder'`` objective."""
