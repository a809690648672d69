"""diffusers' ``AutoencoderKL`` config and key table for
:class:`~diffjax.models.autoencoder.AutoencoderKL`.

diffusers' folder format (``config.json`` and ``diffusion_pytorch_model.safetensors``, the
format SD 1/2, SDXL and SD3's autoencoders are published in) maps onto diffjax's network with
one explicit key table, built from the Flax parameter tree: every Flax variable names the one
PyTorch tensor it comes from, and :func:`~diffjax.weights.apply_key_table` refuses a file with a
missing, unexpected or misshapen tensor, naming each. :func:`~diffjax.models.from_pretrained`
loads such a folder (no torch) and :func:`~diffjax.models.save_pretrained` writes one.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from diffjax.models.autoencoder import AutoencoderKL
from diffjax.models.diffusers_weights import key_table
from diffjax.weights.key_tables import KeyRule

__all__ = [
    "DIFFUSERS_WEIGHTS_FILE",
    "autoencoder_from_diffusers_config",
    "autoencoder_key_table",
    "diffusers_autoencoder_shapes",
    "diffusers_config_of_autoencoder",
    "model_config_of",
]

DIFFUSERS_WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
"""The weights file of a diffusers model folder."""


def autoencoder_key_table(module: AutoencoderKL, image_side: int = 64) -> list[KeyRule]:
    """One :class:`~diffjax.weights.KeyRule` per parameter of ``module``.

    Args:
      module: the autoencoder.
      image_side: any side the module takes (the parameters' shapes do not depend on it).
    """
    x = jnp.zeros((1, image_side, image_side, module.image_channels), jnp.float32)
    return key_table(jax.eval_shape(lambda: module.init(jax.random.key(0), x)["params"]))


def autoencoder_from_diffusers_config(config: Mapping[str, Any], **overrides: Any) -> AutoencoderKL:
    """The :class:`AutoencoderKL` of a diffusers ``AutoencoderKL`` ``config.json``.

    Raises:
      ValueError: a config diffjax's network cannot express (other block types, an activation
        other than SiLU, a middle without attention, unequal channel steps).
    """
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ValueError(f"expected an AutoencoderKL config, got {config.get('_class_name')!r}.")
    blocks = (config.get("down_block_types"), config.get("up_block_types"))
    if set(blocks[0]) != {"DownEncoderBlock2D"} or set(blocks[1]) != {"UpDecoderBlock2D"}:
        raise ValueError(f"unsupported block types {blocks}; expected Down/UpDecoderBlock2D.")
    if config.get("act_fn", "silu") != "silu" or not config.get("mid_block_add_attention", True):
        raise ValueError("only act_fn='silu' with mid-block attention is supported.")
    if config.get("use_quant_conv", True) != config.get("use_post_quant_conv", True):
        raise ValueError("use_quant_conv and use_post_quant_conv must agree.")
    channels = list(config["block_out_channels"])
    base = channels[0]
    if any(c % base for c in channels):
        raise ValueError(f"block_out_channels={channels} must be multiples of the first.")
    if config.get("in_channels", 3) != config.get("out_channels", 3):
        raise ValueError("in_channels and out_channels must agree.")
    arguments = dict(
        base_channels=base,
        channel_mults=tuple(c // base for c in channels),
        num_res_blocks=int(config["layers_per_block"]),
        latent_channels=int(config["latent_channels"]),
        image_channels=int(config.get("in_channels", 3)),
        num_groups=int(config.get("norm_num_groups", 32)),
        quant_conv=bool(config.get("use_quant_conv", True)),
    )
    arguments.update(overrides)
    return AutoencoderKL(**arguments)


def diffusers_config_of_autoencoder(module: AutoencoderKL) -> dict[str, Any]:
    """The diffusers ``AutoencoderKL`` ``config.json`` of ``module`` (the inverse of
    :func:`autoencoder_from_diffusers_config`)."""
    levels = len(module.channel_mults)
    return dict(
        _class_name="AutoencoderKL",
        in_channels=module.image_channels,
        out_channels=module.image_channels,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=[module.base_channels * mult for mult in module.channel_mults],
        layers_per_block=module.num_res_blocks,
        latent_channels=module.latent_channels,
        norm_num_groups=module.num_groups,
        act_fn="silu",
        use_quant_conv=module.quant_conv,
        use_post_quant_conv=module.quant_conv,
    )


def model_config_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The diffjax ``config.model`` section (``'autoencoder_kl'``) of a diffusers
    ``AutoencoderKL`` ``config.json``, in float32."""
    module = autoencoder_from_diffusers_config(config)
    return dict(
        name="autoencoder_kl", num_classes=None, dtype="float32", param_dtype="float32",
        base_channels=module.base_channels, channel_mults=tuple(module.channel_mults),
        num_res_blocks=module.num_res_blocks, latent_channels=module.latent_channels,
        image_channels=module.image_channels, num_groups=module.num_groups,
        quant_conv=module.quant_conv, force_upcast=False,
    )  # fmt: skip


def diffusers_autoencoder_shapes(folder: str | os.PathLike) -> tuple[AutoencoderKL, Any]:
    """``(module, parameter shapes)`` of a diffusers ``AutoencoderKL`` folder, from its
    ``config.json`` alone."""
    with open(os.path.join(folder, "config.json")) as file:
        module = autoencoder_from_diffusers_config(json.load(file))
    x = jnp.zeros((1, 64, 64, module.image_channels), jnp.float32)
    return module, jax.eval_shape(lambda: module.init(jax.random.key(0), x)["params"])
