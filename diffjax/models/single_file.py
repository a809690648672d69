"""The original single-file Stable Diffusion checkpoints (``v1-5-pruned-emaonly.safetensors``,
``v2-1_768-ema-pruned.ckpt``): ``from_single_file``.

One file holds the three networks under CompVis' LDM names: ``model.diffusion_model.*`` (the
UNet), ``first_stage_model.*`` (the autoencoder) and ``cond_stage_model.*`` (the text encoder:
transformers' CLIP names under ``cond_stage_model.transformer.`` in SD 1.x, OpenCLIP's under
``cond_stage_model.model.`` in SD 2.x). Each component's keys are renamed to diffusers' by
explicit regex tables (:func:`ldm_unet_to_diffusers`, :func:`ldm_vae_to_diffusers`,
:func:`~diffjax.models.clip_weights.clip_state_from_single_file`), and then loaded through the same
strict key tables as a diffusers folder (:mod:`diffjax.models.pretrained`). A key no rule
renames stays as it is and is then reported as unexpected.

A single file carries no config, so the config is read off the tensor shapes
(:func:`infer_unet_config`, :func:`infer_vae_config`), with the conventions of the published
SD models for what shapes do not show: 8 attention heads with a 768-wide context (SD 1.x) and
heads of width 64 otherwise (SD 2.x), 32 GroupNorm groups. Pass a diffusers ``config.json`` as
``config`` for anything else.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

import diffjax.models.clip_weights as clip_weights
import diffjax.models.pretrained as pretrained
from diffjax.weights.files import verify_checksum

__all__ = [
    "COMPONENT_PREFIXES",
    "from_single_file",
    "infer_clip_text_config",
    "infer_unet_config",
    "infer_vae_config",
    "ldm_unet_to_diffusers",
    "ldm_vae_to_diffusers",
]

COMPONENT_PREFIXES: dict[str, str] = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.",
}
"""Where each component's tensors live in an original single-file checkpoint."""

_RESNET_RULES = (
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
)


def _resnet(rest: str) -> str:
    for old, new in _RESNET_RULES:
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def _count(keys: list[str], pattern: str) -> int:
    """How many distinct integers the first group of ``pattern`` takes over ``keys``."""
    return len({match[1] for key in keys if (match := re.match(pattern, key))})


def ldm_unet_to_diffusers(
    state: Mapping[str, np.ndarray], layers_per_block: int
) -> dict[str, np.ndarray]:
    """Renames an LDM UNet's tensors (``input_blocks.4.1.proj_in.weight``) to diffusers'
    (``down_blocks.1.attentions.0.proj_in.weight``).

    LDM numbers its blocks through: ``input_blocks.0`` is ``conv_in``, then every level has
    ``layers_per_block`` ResNet(+attention) blocks and, but the last, one downsampling block;
    ``output_blocks`` has ``layers_per_block + 1`` per level, the last one carrying the
    upsampling convolution after its ResNet (and attention).
    """
    per_level = layers_per_block + 1
    rules: list[tuple[str, Callable[[re.Match], str]]] = [
        (r"time_embed\.0\.(.*)", lambda m: f"time_embedding.linear_1.{m[1]}"),
        (r"time_embed\.2\.(.*)", lambda m: f"time_embedding.linear_2.{m[1]}"),
        (r"input_blocks\.0\.0\.(.*)", lambda m: f"conv_in.{m[1]}"),
        (r"out\.0\.(.*)", lambda m: f"conv_norm_out.{m[1]}"),
        (r"out\.2\.(.*)", lambda m: f"conv_out.{m[1]}"),
        (
            r"input_blocks\.(\d+)\.0\.op\.(.*)",
            lambda m: f"down_blocks.{(int(m[1]) - 1) // per_level}.downsamplers.0.conv.{m[2]}",
        ),
        (
            r"input_blocks\.(\d+)\.0\.(.*)",
            lambda m: (
                f"down_blocks.{(int(m[1]) - 1) // per_level}.resnets."
                f"{(int(m[1]) - 1) % per_level}.{_resnet(m[2])}"
            ),
        ),
        (
            r"input_blocks\.(\d+)\.1\.(.*)",
            lambda m: (
                f"down_blocks.{(int(m[1]) - 1) // per_level}.attentions."
                f"{(int(m[1]) - 1) % per_level}.{m[2]}"
            ),
        ),
        (r"middle_block\.0\.(.*)", lambda m: f"mid_block.resnets.0.{_resnet(m[1])}"),
        (r"middle_block\.1\.(.*)", lambda m: f"mid_block.attentions.0.{m[1]}"),
        (r"middle_block\.2\.(.*)", lambda m: f"mid_block.resnets.1.{_resnet(m[1])}"),
        (
            r"output_blocks\.(\d+)\.[12]\.conv\.(.*)",
            lambda m: f"up_blocks.{int(m[1]) // per_level}.upsamplers.0.conv.{m[2]}",
        ),
        (
            r"output_blocks\.(\d+)\.0\.(.*)",
            lambda m: (
                f"up_blocks.{int(m[1]) // per_level}.resnets.{int(m[1]) % per_level}."
                f"{_resnet(m[2])}"
            ),
        ),
        (
            r"output_blocks\.(\d+)\.1\.(.*)",
            lambda m: (
                f"up_blocks.{int(m[1]) // per_level}.attentions.{int(m[1]) % per_level}.{m[2]}"
            ),
        ),
    ]
    return {_rename(key, rules): value for key, value in state.items()}


def ldm_vae_to_diffusers(state: Mapping[str, np.ndarray], num_levels: int) -> dict[str, np.ndarray]:
    """Renames an LDM autoencoder's tensors (``decoder.up.0.block.1.nin_shortcut.weight``) to
    diffusers' (``decoder.up_blocks.{L-1}.resnets.1.conv_shortcut.weight``); the middle
    attention's 1x1-convolution ``q``, ``k``, ``v`` and ``proj_out`` become linear weights.
    LDM numbers the decoder's levels from the lowest resolution up, diffusers from the top.
    """
    attention = {
        "norm": "group_norm",
        "q": "to_q",
        "k": "to_k",
        "v": "to_v",
        "proj_out": "to_out.0",
    }
    rules: list[tuple[str, Callable[[re.Match], str]]] = [
        (
            r"encoder\.down\.(\d+)\.block\.(\d+)\.(.*)",
            lambda m: f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{m[3]}",
        ),
        (
            r"encoder\.down\.(\d+)\.downsample\.(.*)",
            lambda m: f"encoder.down_blocks.{m[1]}.downsamplers.0.{m[2]}",
        ),
        (
            r"decoder\.up\.(\d+)\.block\.(\d+)\.(.*)",
            lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.resnets.{m[2]}.{m[3]}",
        ),
        (
            r"decoder\.up\.(\d+)\.upsample\.(.*)",
            lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.upsamplers.0.{m[2]}",
        ),
        (
            r"(encoder|decoder)\.mid\.block_([12])\.(.*)",
            lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{m[3]}",
        ),
        (
            r"(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(.*)",
            lambda m: f"{m[1]}.mid_block.attentions.0.{attention[m[2]]}.{m[3]}",
        ),
        (r"(encoder|decoder)\.norm_out\.(.*)", lambda m: f"{m[1]}.conv_norm_out.{m[2]}"),
    ]
    renamed = {}
    for key, value in state.items():
        new = _rename(key, rules).replace(".nin_shortcut.", ".conv_shortcut.")
        if ".mid_block.attentions." in new and value.ndim == 4:
            value = value[:, :, 0, 0]
        renamed[new] = value
    return renamed


def _rename(key: str, rules: list[tuple[str, Callable[[re.Match], str]]]) -> str:
    for pattern, rename in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return rename(match)
    return key


def infer_unet_config(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The diffusers ``UNet2DConditionModel`` config of an LDM UNet state dict, from its
    shapes and SD's conventions (module docstring)."""
    keys = list(state)
    num_inputs = _count(keys, r"input_blocks\.(\d+)\.")
    num_levels = _count(keys, r"input_blocks\.(\d+)\.0\.op\.weight") + 1
    layers = (num_inputs - 1 - (num_levels - 1)) // num_levels
    per_level = layers + 1
    channels = [
        int(state[f"input_blocks.{1 + level * per_level}.0.out_layers.3.weight"].shape[0])
        for level in range(num_levels)
    ]
    attention = [
        any(key.startswith(f"input_blocks.{1 + level * per_level}.1.") for key in keys)
        for level in range(num_levels)
    ]
    context = next(v for k, v in state.items() if k.endswith("attn2.to_k.weight")).shape[1]
    proj_in = next(v for k, v in state.items() if k.endswith(".proj_in.weight"))
    depth = _count(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    heads: int | list[int] = 8 if context == 768 else [c // 64 for c in channels]
    return dict(
        _class_name="UNet2DConditionModel",
        in_channels=int(state["input_blocks.0.0.weight"].shape[1]),
        out_channels=int(state["out.2.weight"].shape[0]),
        block_out_channels=channels,
        layers_per_block=layers,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        cross_attention_dim=int(context),
        attention_head_dim=heads,
        use_linear_projection=proj_in.ndim == 2,
        transformer_layers_per_block=depth,
    )


def infer_vae_config(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The diffusers ``AutoencoderKL`` config of an LDM autoencoder state dict, from its
    shapes."""
    keys = list(state)
    num_levels = _count(keys, r"encoder\.down\.(\d+)\.")
    layers = _count(keys, r"encoder\.down\.0\.block\.(\d+)\.")
    channels = [
        int(state[f"encoder.down.{level}.block.0.conv1.weight"].shape[0])
        for level in range(num_levels)
    ]
    quant = "quant_conv.weight" in state
    return dict(
        _class_name="AutoencoderKL",
        in_channels=int(state["encoder.conv_in.weight"].shape[1]),
        out_channels=int(state["decoder.conv_out.weight"].shape[0]),
        block_out_channels=channels,
        layers_per_block=layers,
        latent_channels=int(state["decoder.conv_in.weight"].shape[1]),
        down_block_types=["DownEncoderBlock2D"] * num_levels,
        up_block_types=["UpDecoderBlock2D"] * num_levels,
        use_quant_conv=quant,
        use_post_quant_conv=quant,
    )


def infer_clip_text_config(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The transformers ``CLIPTextModel`` config of a single file's text encoder (its keys
    after ``cond_stage_model.``), from its shapes: SD 1.x's CLIP ViT-L/14 (``quick_gelu``,
    transformers' names under ``transformer.``) or SD 2.x's OpenCLIP ViT-H/14 (``gelu``,
    OpenCLIP's names under ``model.``, all layers but the last, whose output SD 2 does not
    use); heads of width 64, as in both.

    Raises:
      ValueError: neither layout.
    """
    keys = list(state)
    if "transformer.text_model.embeddings.token_embedding.weight" in state:
        prefix, layers = (
            "transformer.text_model.",
            r"transformer\.text_model\.encoder\.layers\.(\d+)\.",
        )
        tokens = state[prefix + "embeddings.token_embedding.weight"]
        positions = state[prefix + "embeddings.position_embedding.weight"].shape[0]
        inner = state[prefix + "encoder.layers.0.mlp.fc1.weight"].shape[0]
        num_layers, activation = _count(keys, layers), "quick_gelu"
    elif "model.token_embedding.weight" in state:
        tokens = state["model.token_embedding.weight"]
        positions = state["model.positional_embedding"].shape[0]
        inner = state["model.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        num_layers = _count(keys, r"model\.transformer\.resblocks\.(\d+)\.") - 1
        activation = "gelu"
    else:
        raise ValueError(
            "the text encoder is neither SD 1.x's (transformer.text_model.*) nor SD 2.x's "
            "(model.token_embedding.weight, OpenCLIP) layout; pass its config."
        )
    return dict(
        architectures=["CLIPTextModel"],
        model_type="clip_text_model",
        vocab_size=int(tokens.shape[0]),
        hidden_size=int(tokens.shape[1]),
        intermediate_size=int(inner),
        num_hidden_layers=num_layers,
        num_attention_heads=int(tokens.shape[1]) // 64,
        max_position_embeddings=int(positions),
        hidden_act=activation,
        eos_token_id=2,  # what SD's published text-encoder configs say (pooling by argmax)
    )


def from_single_file(
    path: str | os.PathLike,
    component: str,
    *,
    config: Mapping[str, Any] | None = None,
    dtype: Any = None,
    sha256: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Loads one network of an original single-file Stable Diffusion checkpoint.

    Args:
      path: the ``.safetensors`` or ``.ckpt`` file (a ``.ckpt`` is read by the restricted
        reader, which refuses any pickled global but tensors, naming it).
      component: ``'unet' | 'vae' | 'text_encoder'``.
      config: the component's diffusers / transformers ``config.json`` (parsed); None reads it
        off the shapes with SD's conventions (module docstring).
      dtype: the module's compute and parameter dtype (default float32).
      sha256: the file's expected SHA-256 (hex), checked before reading.

    Returns:
      ``(module, params)`` as :func:`~diffjax.models.from_pretrained` returns them.

    Raises:
      ValueError: an unknown component, or a file without it.
      StateDictMismatchError: tensors that do not fit the config.

    Example:
      >>> unet, params = dj.models.from_single_file("v1-5-pruned-emaonly.safetensors", "unet")
    """
    if component not in COMPONENT_PREFIXES:
        raise ValueError(
            f"component must be one of {sorted(COMPONENT_PREFIXES)}, got {component!r}."
        )
    path = os.fspath(path)
    if sha256 is not None:
        verify_checksum(path, sha256, f"checkpoint {path}")
    prefix = COMPONENT_PREFIXES[component]
    checkpoint = pretrained.load_state_dict(path)
    state = {
        key[len(prefix) :]: value for key, value in checkpoint.items() if key.startswith(prefix)
    }
    if not state:
        raise ValueError(f"{path} holds no tensor under {prefix!r} (its {component}).")
    if component == "unet":
        config = config or infer_unet_config(state)
        state = ldm_unet_to_diffusers(state, int(config["layers_per_block"]))
    elif component == "vae":
        config = config or infer_vae_config(state)
        state = ldm_vae_to_diffusers(state, len(config["block_out_channels"]))
    else:
        config = config or infer_clip_text_config(state)
        state = clip_weights.clip_state_from_single_file(
            {prefix + key: value for key, value in state.items()}, int(config["num_hidden_layers"])
        )
    _, architecture = pretrained.architecture_of(config)
    overrides = {} if dtype is None else dict(dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype))
    module = architecture.build(config, **overrides)
    params = pretrained.params_from_state_dict(
        module, architecture, state, source=f"{path} ({component})",
        dtype=np.float32 if dtype is None else jnp.dtype(dtype),
    )  # fmt: skip
    return module, params
