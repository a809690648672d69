"""diffusers' ``UNet2DModel`` and ``UNet2DConditionModel`` in diffjax's :class:`UNet`.

One network serves both: DDPM's CIFAR-10 UNet (``google/ddpm-cifar10-32``, a ``UNet2DModel``)
and Stable Diffusion 1.x/2.x's (a ``UNet2DConditionModel``) are the same ResNet/attention
ladder with different conventions, which are :class:`UNet` fields (``attn_levels``,
``attention_head_dim``, ``norm_epsilon``, ``flip_sin_to_cos``, ``freq_shift``,
``downsample_padding``). The config mapping (:func:`unet_from_diffusers_config`) refuses any
diffusers option the network cannot express, naming it; the key table
(:func:`unet_key_table`) names the diffusers tensor of every Flax parameter:

=====================================  ======================================================
diffjax                                diffusers
=====================================  ======================================================
``time_embedding/dense_{0,1}``         ``time_embedding.linear_{1,2}``
``down_{l}_res_{b}``                   ``down_blocks.{l}.resnets.{b}``
``down_{l}_attn_{b}``                  ``down_blocks.{l}.attentions.{b}``
``down_{l}_downsample/conv``           ``down_blocks.{l}.downsamplers.0.conv``
``mid_res_0``, ``mid_attn``, ...       ``mid_block.resnets.0``, ``mid_block.attentions.0``
``up_{l}_res_{b}``                     ``up_blocks.{L-1-l}.resnets.{b}``
``up_{l}_upsample/conv``               ``up_blocks.{L-1-l}.upsamplers.0.conv``
``norm_out``                           ``conv_norm_out``
=====================================  ======================================================

Inside a ResNet block ``norm_0/conv_0/time_projection/norm_1/conv_1/shortcut`` are
``norm1/conv1/time_emb_proj/norm2/conv2/conv_shortcut`` (a 1x1 convolution stored as a Dense
kernel); a self-attention block's fused ``qkv`` is diffusers' ``to_q``, ``to_k`` and ``to_v``
stacked (:func:`fuse_attention_projections`), and the older names ``query/key/value/
proj_attn`` of files written before diffusers 0.14 are read too. Spatial transformers share
diffusers' names already.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diffjax.models.diffusers_weights import torch_key_of
from diffjax.models.unet import UNet
from diffjax.weights.key_tables import KeyRule, conv_kernel, linear_kernel

__all__ = [
    "diffusers_config_of_unet",
    "fuse_attention_projections",
    "pointwise_conv_kernel",
    "rename_legacy_attention",
    "split_attention_projections",
    "unet_from_diffusers_config",
    "unet_key_table",
]

_UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
_RES_BLOCK_NAMES = {
    "norm_0": "norm1",
    "conv_0": "conv1",
    "time_projection": "time_emb_proj",
    "norm_1": "norm2",
    "conv_1": "conv2",
    "shortcut": "conv_shortcut",
}
_SELF_ATTENTION_NAMES = {"norm": "group_norm", "qkv": "to_qkv", "proj_out": "to_out.0"}
_TIME_EMBEDDING_NAMES = {"dense_0": "linear_1", "dense_1": "linear_2"}
_LEGACY_ATTENTION_NAMES = {
    "query": "to_q",
    "key": "to_k",
    "value": "to_v",
    "proj_attn": "to_out.0",
}

# Options of diffusers' UNets and the only values diffjax's UNet expresses.
_FIXED_OPTIONS = {
    "act_fn": ("silu",),
    "center_input_sample": (False,),
    "resnet_time_scale_shift": ("default",),
    "time_embedding_type": ("positional",),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "addition_embed_type": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "only_cross_attention": (False,),
    "dual_cross_attention": (False,),
    "mid_block_only_cross_attention": (None, False),
    "mid_block_scale_factor": (1, 1.0),
    "mid_block_type": ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D"),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "time_cond_proj_dim": (None,),
    "time_embedding_dim": (None,),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "projection_class_embeddings_input_dim": (None,),
    "class_embeddings_concat": (False,),
    "cross_attention_norm": (None,),
    "reverse_transformer_layers_per_block": (None,),
    "attention_type": ("default",),
    "add_attention": (True,),
    "downsample_type": ("conv",),
    "upsample_type": ("conv",),
    "attn_norm_num_groups": (None,),
    "num_train_timesteps": (None,),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1, 1.0),
    "dropout": None,
    # diffjax's attention logits and softmax are float32 whatever the compute dtype.
    "upcast_attention": None,
}


def _per_level(value: Any, levels: int, name: str) -> tuple[Any, ...]:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * levels
    if len(values) != levels:
        raise ValueError(f"{name}={value!r} has {len(values)} entries for {levels} blocks.")
    return values


def _attention_levels(config: Mapping[str, Any]) -> tuple[int, ...]:
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    if len(down) != len(up):
        raise ValueError(f"{len(down)} down blocks but {len(up)} up blocks: {down}, {up}.")
    known_down = {"DownBlock2D": False, "AttnDownBlock2D": True, "CrossAttnDownBlock2D": True}
    known_up = {"UpBlock2D": False, "AttnUpBlock2D": True, "CrossAttnUpBlock2D": True}
    for block in down + up:
        if block not in known_down and block not in known_up:
            raise ValueError(
                f"block type {block!r} is not supported; diffjax's UNet has "
                f"{sorted(known_down) + sorted(known_up)}."
            )
    attention = [known_down[block] for block in down]
    if attention != [known_up[block] for block in reversed(up)]:
        raise ValueError(
            f"the up blocks {up} do not mirror the down blocks {down} (diffjax's UNet puts "
            f"attention at the same levels on both paths)."
        )
    return tuple(level for level, has in enumerate(attention) if has)


def _heads(
    config: Mapping[str, Any], channels: tuple[int, ...], levels: tuple[int, ...]
) -> dict[str, Any]:
    """``transformer_heads`` / ``attention_head_dim`` of a config's attention blocks."""
    if config["_class_name"] == "UNet2DModel":
        head_dim = config.get("attention_head_dim")
        return dict(attention_head_dim=None if head_dim is None else int(head_dim))
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    heads = _per_level(heads, len(channels), "attention_head_dim")
    attended = [(channels[level], int(heads[level])) for level in levels]
    attended.append((channels[-1], int(heads[-1])))  # the middle block
    if len({count for _, count in attended}) == 1:
        return dict(transformer_heads=attended[0][1])
    widths = {width // count for width, count in attended}
    if len(widths) == 1 and all(width % count == 0 for width, count in attended):
        return dict(attention_head_dim=widths.pop())
    raise ValueError(
        f"attention heads {heads} per block are neither one count nor one head width for "
        f"block_out_channels {channels}; diffjax's UNet expresses only those."
    )


def unet_from_diffusers_config(config: Mapping[str, Any], **overrides: Any) -> UNet:
    """The :class:`UNet` of a diffusers ``UNet2DModel`` / ``UNet2DConditionModel``
    ``config.json``.

    Args:
      config: the parsed ``config.json``.
      overrides: :class:`UNet` fields to set as well (``dtype``).

    Raises:
      ValueError: naming a config option the network cannot express (SDXL's added
        embeddings, class embeddings, other block types, unequal channel steps, ...).
    """
    if config.get("_class_name") not in _UNET_CLASSES:
        raise ValueError(f"expected one of {_UNET_CLASSES}, got {config.get('_class_name')!r}.")
    for key, allowed in _FIXED_OPTIONS.items():
        if allowed is not None and key in config and config[key] not in allowed:
            raise ValueError(
                f"config option {key}={config[key]!r} is not supported; diffjax's UNet "
                f"expresses {key} in {allowed}."
            )
    channels = tuple(int(c) for c in config["block_out_channels"])
    base = channels[0]
    if any(c % base for c in channels):
        raise ValueError(f"block_out_channels={list(channels)} must be multiples of the first.")
    layers = _per_level(config.get("layers_per_block", 2), len(channels), "layers_per_block")
    if len(set(layers)) != 1:
        raise ValueError(f"layers_per_block={layers} must be one number for every block.")
    levels = _attention_levels(config)
    conditional = config["_class_name"] == "UNet2DConditionModel"
    depth = _per_level(
        config.get("transformer_layers_per_block", 1), len(channels), "transformer_layers_per_block"
    )
    if len(set(depth)) != 1:
        raise ValueError(f"transformer_layers_per_block={depth} must be one number.")
    context_dim = config.get("cross_attention_dim", 1280) if conditional else None
    if isinstance(context_dim, (list, tuple)):
        raise ValueError(f"cross_attention_dim={context_dim} must be one number.")
    arguments = dict(
        base_channels=base,
        channel_mults=tuple(c // base for c in channels),
        num_res_blocks=int(layers[0]),
        attn_resolutions=(),
        attn_levels=levels,
        dropout=float(config.get("dropout", 0.0)),
        out_channels=int(config.get("out_channels", config.get("in_channels", 4))),
        context_dim=None if context_dim is None else int(context_dim),
        transformer_depth=int(depth[0]),
        linear_projection=bool(config.get("use_linear_projection", False)),
        num_groups=int(config.get("norm_num_groups", 32)),
        norm_epsilon=float(config.get("norm_eps", 1e-5)),
        flip_sin_to_cos=bool(config.get("flip_sin_to_cos", True)),
        freq_shift=float(config.get("freq_shift", 0)),
        downsample_padding=int(config.get("downsample_padding", 1)),
        **_heads(config, channels, levels),
    )
    arguments.update(overrides)
    return UNet(**arguments)


def diffusers_config_of_unet(module: UNet, in_channels: int) -> dict[str, Any]:
    """The diffusers ``config.json`` of ``module`` (``UNet2DConditionModel`` with
    cross-attention, ``UNet2DModel`` without), for :func:`~diffjax.models.save_pretrained`.

    Args:
      module: a UNet with attention given by level (``attn_levels``) or none at all.
      in_channels: the image channels it takes.

    Raises:
      ValueError: for what diffusers' UNets cannot hold (attention by resolution, class or
        guidance embeddings, a label context).
    """
    if module.attn_resolutions:
        raise ValueError(
            f"attention by resolution (attn_resolutions={tuple(module.attn_resolutions)}) has "
            f"no diffusers equivalent; rebuild the UNet with attn_levels."
        )
    if module.num_classes is not None or module.guidance_embedding:
        raise ValueError("diffusers' UNets have no class label or guidance-scale embedding.")
    channels = [module.base_channels * mult for mult in module.channel_mults]
    conditional = module.context_dim is not None
    attention = [level in module.attn_levels for level in range(len(channels))]
    down_attention = "CrossAttnDownBlock2D" if conditional else "AttnDownBlock2D"
    up_attention = "CrossAttnUpBlock2D" if conditional else "AttnUpBlock2D"
    config: dict[str, Any] = dict(
        _class_name="UNet2DConditionModel" if conditional else "UNet2DModel",
        in_channels=in_channels,
        out_channels=in_channels if module.out_channels is None else module.out_channels,
        block_out_channels=channels,
        layers_per_block=module.num_res_blocks,
        down_block_types=[down_attention if a else "DownBlock2D" for a in attention],
        up_block_types=[up_attention if a else "UpBlock2D" for a in reversed(attention)],
        norm_num_groups=module.num_groups,
        norm_eps=module.norm_epsilon,
        flip_sin_to_cos=module.flip_sin_to_cos,
        freq_shift=module.freq_shift,
        downsample_padding=module.downsample_padding,
        act_fn="silu",
    )
    if conditional:
        heads = [
            c // module.attention_head_dim
            if module.attention_head_dim
            else module.transformer_heads
            for c in channels
        ]
        config.update(
            cross_attention_dim=module.context_dim,
            attention_head_dim=heads,
            transformer_layers_per_block=module.transformer_depth,
            use_linear_projection=module.linear_projection,
            mid_block_type="UNetMidBlock2DCrossAttn",
        )
    else:
        config.update(attention_head_dim=module.attention_head_dim, add_attention=True)
    return config


def pointwise_conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch 1x1 convolution ``[out, in, 1, 1]`` -> Flax Dense ``[in, out]``."""
    return np.transpose(weight[:, :, 0, 0])


def _diffusers_block(part: str, num_levels: int) -> str:
    """``'down_1_res_0'`` -> ``'down_blocks.1.resnets.0'`` and the like (module docstring)."""
    match = re.fullmatch(r"(down|up)_(\d+)_(res|attn)_(\d+)", part)
    if match:
        path, level, kind, index = match.groups()
        block = int(level) if path == "down" else num_levels - 1 - int(level)
        return f"{path}_blocks.{block}.{'resnets' if kind == 'res' else 'attentions'}.{index}"
    match = re.fullmatch(r"(down|up)_(\d+)_(downsample|upsample)", part)
    if match:
        path, level, kind = match.groups()
        block = int(level) if path == "down" else num_levels - 1 - int(level)
        return f"{path}_blocks.{block}.{kind}rs.0"
    match = re.fullmatch(r"mid_(res|attn)_?(\d*)", part)
    if match:
        kind, index = match.groups()
        return f"mid_block.{'resnets' if kind == 'res' else 'attentions'}.{index or 0}"
    return "conv_norm_out" if part == "norm_out" else part


def _identity(value: np.ndarray) -> np.ndarray:
    return value


def _rule(
    path: tuple[str, ...], shape: tuple[int, ...], num_levels: int, self_attention: bool
) -> KeyRule:
    """The key rule of one UNet parameter (module docstring)."""
    block, *inner, leaf = path
    transform = (conv_kernel if len(shape) == 4 else linear_kernel) if leaf == "kernel" else None
    leaf_name = "weight" if leaf in ("kernel", "scale") else leaf
    if block == "time_embedding":
        name = f"time_embedding.{_TIME_EMBEDDING_NAMES[inner[0]]}"
    elif "_res" in block:
        name = f"{_diffusers_block(block, num_levels)}.{_RES_BLOCK_NAMES[inner[0]]}"
        if inner[0] == "shortcut" and leaf == "kernel":
            transform = pointwise_conv_kernel
    elif "attn" in block and self_attention:
        name = f"{_diffusers_block(block, num_levels)}.{_SELF_ATTENTION_NAMES[inner[0]]}"
    elif "attn" in block:
        return KeyRule(
            f"{_diffusers_block(block, num_levels)}.{torch_key_of((*inner, leaf))}",
            ("params", *path), shape, transform or _identity,
        )  # fmt: skip
    else:
        name = ".".join([_diffusers_block(block, num_levels), *inner])
    return KeyRule(f"{name}.{leaf_name}", ("params", *path), shape, transform or _identity)


def unet_key_table(module: UNet, params: Any | None = None) -> list[KeyRule]:
    """One :class:`~diffjax.weights.KeyRule` per parameter of ``module``, named after
    diffusers' ``UNet2DModel`` / ``UNet2DConditionModel`` (module docstring).

    Args:
      module: the UNet.
      params: its parameters or their shapes; None traces ``module.init`` (no allocation),
        which needs attention by level (``attn_levels``) or none.
    """
    if params is None:
        side = 2 ** (len(module.channel_mults) - 1)
        if module.attn_resolutions:
            side = max(module.attn_resolutions) * 2 ** (len(module.channel_mults) - 1)
        x = jnp.zeros((1, side, side, module.out_channels or 4), jnp.float32)
        cond = {} if module.context_dim is None else {
            "context": jnp.zeros((1, 1, module.context_dim), jnp.float32)
        }  # fmt: skip
        params = jax.eval_shape(lambda: module.init(jax.random.key(0), x, 0, cond)["params"])
    flat = traverse_util.flatten_dict(params)
    unsupported = sorted(
        {path[0] for path in flat if path[0] in ("label_embedding", "label_context")}
        | {path[0] for path in flat if path[0].startswith("guidance_")}
    )
    if unsupported:
        raise ValueError(f"diffusers' UNets have no counterpart of {unsupported}.")
    return [
        _rule(path, tuple(leaf.shape), len(module.channel_mults), module.context_dim is None)
        for path, leaf in flat.items()
    ]


def rename_legacy_attention(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames the attention tensors of files written before diffusers 0.14 (``query``,
    ``key``, ``value``, ``proj_attn``) to today's names; other keys pass unchanged."""
    pattern = re.compile(r"(\.attentions\.\d+\.)(query|key|value|proj_attn)(\.)")
    return {
        pattern.sub(lambda m: m[1] + _LEGACY_ATTENTION_NAMES[m[2]] + m[3], key): value
        for key, value in state.items()
    }


def fuse_attention_projections(
    state: Mapping[str, np.ndarray], rules: list[KeyRule]
) -> dict[str, np.ndarray]:
    """Stacks ``to_q``, ``to_k`` and ``to_v`` into the ``to_qkv`` tensor each fused rule names
    (``[3C, C]`` weights, ``[3C]`` biases, q first); other keys pass unchanged, and a
    projection that is missing is left for the key table to report."""
    state = dict(state)
    for rule in rules:
        if ".to_qkv." not in rule.torch_key:
            continue
        parts = [rule.torch_key.replace(".to_qkv.", f".to_{name}.") for name in "qkv"]
        if all(part in state for part in parts):
            state[rule.torch_key] = np.concatenate([state.pop(part) for part in parts], axis=0)
    return state


def split_attention_projections(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of :func:`fuse_attention_projections`: ``to_qkv`` back into three."""
    split: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if ".to_qkv." not in key:
            split[key] = value
            continue
        for name, part in zip("qkv", np.split(value, 3, axis=0)):
            split[key.replace(".to_qkv.", f".to_{name}.")] = part
    return split
