"""diffusers' ``ControlNetModel`` in diffjax's :class:`~diffjax.models.controlnet.ControlNet`.

A ControlNet is a UNet's encoder and middle block under the UNet's names, so the config
mapping (:func:`controlnet_from_diffusers_config`) is :func:`~diffjax.models.unet_weights.
unet_from_diffusers_config`'s on the config with the decoder mirrored in, plus the condition
encoder's widths (``conditioning_embedding_out_channels``); the key table
(:func:`controlnet_key_table`) is :func:`~diffjax.models.unet_weights.unet_key_table` for the
shared parameters and these for the ControlNet's own:

=====================================  ======================================================
diffjax                                diffusers
=====================================  ======================================================
``cond_embedding/conv_in``             ``controlnet_cond_embedding.conv_in``
``cond_embedding/blocks_{j}``          ``controlnet_cond_embedding.blocks.{j}``
``cond_embedding/conv_out``            ``controlnet_cond_embedding.conv_out``
``controlnet_down_{i}``                ``controlnet_down_blocks.{i}`` (one per skip, in order)
``controlnet_mid``                     ``controlnet_mid_block``
=====================================  ======================================================

All are convolutions (``[out, in, kh, kw] -> [kh, kw, in, out]``). diffusers strides every
width change of the condition encoder, so a published ControlNet takes its control image at
``2**(len(conditioning_embedding_out_channels) - 1)`` times the latent's size (8x for SD's
four widths), which diffjax's :class:`ControlNet` infers from the sizes it is given.

The image and control-image channel counts (``in_channels``, ``conditioning_channels``) are
no module fields: they follow the inputs. The key table traced from a module alone assumes 4
and 3 (SD's); :func:`fit_input_channels` takes a file's counts instead when it is loaded.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import traverse_util

import diffjax.models.unet_weights as unet_weights
from diffjax.models.controlnet import CONTROL_KEY, ControlNet, controlnet_fields
from diffjax.weights.key_tables import KeyRule, conv_kernel

__all__ = [
    "controlnet_from_diffusers_config",
    "controlnet_key_table",
    "diffusers_config_of_controlnet",
    "fit_input_channels",
    "read_controlnet_state",
]

_DEFAULT_WIDTHS = (16, 32, 96, 256)  # diffusers' conditioning_embedding_out_channels
_MIRRORED_BLOCKS = {
    "DownBlock2D": "UpBlock2D",
    "CrossAttnDownBlock2D": "CrossAttnUpBlock2D",
    "AttnDownBlock2D": "AttnUpBlock2D",
}
# ControlNetModel's own options and the only values diffjax's ControlNet expresses (the
# others are UNet2DConditionModel's, checked by unet_from_diffusers_config).
_FIXED_OPTIONS = {
    "controlnet_conditioning_channel_order": ("rgb",),
    "global_pool_conditions": (False,),
    # A ControlNet's "UNetMidBlock2D" has no attention; diffjax's middle block always does.
    "mid_block_type": ("UNetMidBlock2DCrossAttn",),
}
_CONTROLNET_ONLY = (
    "conditioning_channels",
    "conditioning_embedding_out_channels",
    "controlnet_conditioning_channel_order",
    "global_pool_conditions",
    "addition_embed_type_num_heads",
    "addition_time_embed_dim",
)
_OWN_PARTS = ("cond_embedding", "controlnet_mid")
_INPUT_KERNELS = ("conv_in.weight", "controlnet_cond_embedding.conv_in.weight")


def controlnet_from_diffusers_config(config: Mapping[str, Any], **overrides: Any) -> ControlNet:
    """The :class:`ControlNet` of a diffusers ``ControlNetModel`` ``config.json``.

    Args:
      config: the parsed ``config.json``.
      overrides: :class:`ControlNet` fields to set as well (``dtype``, ``param_dtype``).

    Returns:
      The ControlNet, with the fields of the UNet the config's encoder belongs to
      (:func:`~diffjax.models.controlnet.controlnet_fields`) and
      ``conditioning_embedding_channels = conditioning_embedding_out_channels``; it takes
      latents ``[B, H, W, in_channels]`` and a control image ``[B, 2**k H, 2**k W,
      conditioning_channels]`` (``k = len(conditioning_embedding_out_channels) - 1`` for
      diffusers' weights).

    Raises:
      ValueError: naming a config option the network cannot express (class or added
        embeddings, BGR control images, pooled residuals, a middle block without attention,
        other block types, ...).
    """
    if config.get("_class_name") != "ControlNetModel":
        raise ValueError(f"expected a ControlNetModel config, got {config.get('_class_name')!r}.")
    for key, allowed in _FIXED_OPTIONS.items():
        if key in config and config[key] not in allowed:
            raise ValueError(
                f"config option {key}={config[key]!r} is not supported; diffjax's ControlNet "
                f"expresses {key} in {allowed}."
            )
    widths = config.get("conditioning_embedding_out_channels", _DEFAULT_WIDTHS)
    if not widths:
        raise ValueError(
            f"conditioning_embedding_out_channels={widths!r} must list the condition "
            f"encoder's widths."
        )
    down = list(config.get("down_block_types", ()))
    unet_config = {key: value for key, value in config.items() if key not in _CONTROLNET_ONLY}
    unet_config.update(
        _class_name="UNet2DConditionModel",
        up_block_types=[_MIRRORED_BLOCKS.get(block, block) for block in reversed(down)],
    )
    fields = controlnet_fields(unet_weights.unet_from_diffusers_config(unet_config))
    fields.update(conditioning_embedding_channels=tuple(int(width) for width in widths))
    fields.update(overrides)
    return ControlNet(**fields)


def diffusers_config_of_controlnet(
    module: ControlNet, in_channels: int, conditioning_channels: int
) -> dict[str, Any]:
    """The diffusers ``ControlNetModel`` ``config.json`` of ``module``, for
    :func:`~diffjax.models.save_pretrained`.

    Args:
      module: a ControlNet with cross-attention (``context_dim``) and attention by level.
      in_channels: the latent channels it takes (``C`` of ``[B, H, W, C]``).
      conditioning_channels: the control image's channels (``C_c``).

    Raises:
      ValueError: for what ``ControlNetModel`` cannot hold (no cross-attention, attention by
        resolution, class or guidance embeddings).
    """
    if module.context_dim is None:
        raise ValueError(
            "diffusers' ControlNetModel attends to a text context; this ControlNet has no "
            "context_dim."
        )
    config = unet_weights.diffusers_config_of_unet(module, in_channels)
    for key in ("up_block_types", "out_channels"):
        config.pop(key)
    config.update(
        _class_name="ControlNetModel",
        conditioning_channels=int(conditioning_channels),
        conditioning_embedding_out_channels=[
            int(w) for w in module.conditioning_embedding_channels
        ],
        controlnet_conditioning_channel_order="rgb",
        global_pool_conditions=False,
    )
    return config


def _own_rule(path: tuple[str, ...], shape: tuple[int, ...]) -> KeyRule:
    """The key rule of a parameter of the condition encoder or a zero convolution."""
    *modules, leaf = path
    if modules[0] == "cond_embedding":
        name = "controlnet_cond_embedding." + re.sub(r"^blocks_(\d+)$", r"blocks.\1", modules[1])
    elif modules[0] == "controlnet_mid":
        name = "controlnet_mid_block"
    else:
        name = "controlnet_down_blocks." + modules[0].removeprefix("controlnet_down_")
    if leaf == "kernel":
        return KeyRule(f"{name}.weight", ("params", *path), shape, conv_kernel)
    return KeyRule(f"{name}.{leaf}", ("params", *path), shape)


def _is_own(name: str) -> bool:
    return name in _OWN_PARTS or re.fullmatch(r"controlnet_down_\d+", name) is not None


def controlnet_key_table(
    module: ControlNet,
    params: Any | None = None,
    *,
    in_channels: int = 4,
    conditioning_channels: int = 3,
) -> list[KeyRule]:
    """One :class:`~diffjax.weights.KeyRule` per parameter of ``module``, named after
    diffusers' ``ControlNetModel`` (module docstring).

    Args:
      module: the ControlNet.
      params: its parameters or their shapes; None traces ``module.init`` (no allocation) on
        latents ``[1, s, s, in_channels]`` and a control image ``[1, s, s,
        conditioning_channels]``, which needs attention by level (``attn_levels``) or none.
      in_channels: the input channel count of a traced table.
      conditioning_channels: the conditioning channel count of a traced table.

    Raises:
      ValueError: parameters diffusers has no counterpart of (class or guidance embeddings).
    """
    if params is None:
        side = 2 ** (len(module.channel_mults) - 1)
        if module.attn_resolutions:
            side = max(module.attn_resolutions) * side
        x = jnp.zeros((1, side, side, in_channels), jnp.float32)
        cond = {CONTROL_KEY: jnp.zeros((1, side, side, conditioning_channels), jnp.float32)}
        if module.context_dim is not None:
            cond["context"] = jnp.zeros((1, 1, module.context_dim), jnp.float32)
        params = jax.eval_shape(lambda: module.init(jax.random.key(0), x, 0, cond)["params"])
    shared = {name: tree for name, tree in params.items() if not _is_own(name)}
    own = {name: tree for name, tree in params.items() if _is_own(name)}
    rules = unet_weights.unet_key_table(module, shared)
    for path, leaf in traverse_util.flatten_dict(own).items():
        rules.append(_own_rule(path, tuple(leaf.shape)))
    return rules


def fit_input_channels(state: Mapping[str, Any], rules: list[KeyRule]) -> None:
    """Sets, in place, the input-channel count of the two input convolutions' rules
    (``conv_in``, ``controlnet_cond_embedding.conv_in``: ``[3, 3, C_in, C_out]`` in Flax) to
    the file's, since a module does not fix them; every other dimension is still checked."""
    for index, rule in enumerate(rules):
        weight = state.get(rule.torch_key)
        if rule.torch_key in _INPUT_KERNELS and weight is not None and len(weight.shape) == 4:
            rules[index] = rule._replace(shape=(*rule.shape[:2], weight.shape[1], rule.shape[3]))


def read_controlnet_state(state: dict[str, Any], rules: list[KeyRule]) -> dict[str, Any]:
    """A published ``ControlNetModel`` state dict made ready for the key table: the input
    channel counts taken from it (:func:`fit_input_channels`, which updates ``rules``), the
    attention names of files before diffusers 0.14 renamed, self-attention projections fused.
    """
    fit_input_channels(state, rules)
    return unet_weights.fuse_attention_projections(
        unet_weights.rename_legacy_attention(state), rules
    )
