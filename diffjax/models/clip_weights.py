"""Published CLIP text-encoder weights into :class:`~diffjax.models.clip.CLIPTextModel`: the
config mapping and key table that :func:`~diffjax.models.from_pretrained` and
:func:`~diffjax.models.save_pretrained` use for a diffusers ``text_encoder/`` folder
(transformers' ``config.json`` and ``model.safetensors``), and the renaming of the text
encoder inside an original single-file SD checkpoint (:func:`clip_state_from_single_file`,
used by :func:`~diffjax.models.from_single_file`).

Names: published files (and transformers < 5.6) write ``text_model.embeddings....``, transformers
>= 5.6 writes the same names without the ``text_model.`` prefix; both load
(:func:`published_clip_names`). diffjax's key table (:func:`clip_key_table`) uses the
published, prefixed names, which every transformers version loads. Every Flax parameter names
the one tensor it comes from and :func:`~diffjax.weights.apply_key_table` refuses a state with a
missing, unexpected or misshapen tensor, naming each; the ``text_model.embeddings.
position_ids`` buffer some files carry (an ``arange``) is the only key left unused.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.clip import ACTIVATIONS, CLIPTextModel
from diffjax.models.diffusers_weights import key_table
from diffjax.weights.key_tables import KeyRule

__all__ = [
    "POSITION_IDS",
    "clip_key_table",
    "clip_state_from_single_file",
    "clip_text_config_of",
    "clip_text_from_config",
    "published_clip_names",
]

_PREFIX = "text_model."
POSITION_IDS = "text_model.embeddings.position_ids"
"""A buffer some published files carry beside the parameters (not a parameter)."""

# transformers' CLIPTextConfig defaults (5.25), which it uses for keys a config.json lacks.
_CONFIG_DEFAULTS = dict(
    vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
    num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, eos_token_id=49407,
)  # fmt: skip
# config.json key -> CLIPTextModel field.
_CONFIG_FIELDS = dict(
    vocab_size="vocab_size", hidden_size="hidden_size", intermediate_size="intermediate_size",
    num_hidden_layers="num_layers", num_attention_heads="num_heads",
    max_position_embeddings="max_positions", hidden_act="hidden_act",
    layer_norm_eps="layer_norm_eps", eos_token_id="eos_token_id",
)  # fmt: skip


def clip_text_from_config(config: Mapping[str, Any], **overrides: Any) -> CLIPTextModel:
    """The :class:`CLIPTextModel` of a transformers ``CLIPTextConfig`` ``config.json``.

    Reads ``vocab_size``, ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``max_position_embeddings``, ``hidden_act``, ``layer_norm_eps`` and
    ``eos_token_id``, with transformers' defaults for absent keys.

    Args:
      config: the parsed ``config.json``.
      overrides: :class:`CLIPTextModel` fields to set (``dtype``, ``param_dtype``).

    Raises:
      ValueError: another model type or architecture (``CLIPTextModelWithProjection``: SDXL's
        second encoder), a ``hidden_act`` other than ``quick_gelu`` / ``gelu``, a non-integer
        ``eos_token_id``, or ``num_attention_heads`` not dividing ``hidden_size``.
    """
    model_type = config.get("model_type", "clip_text_model")
    architectures = list(config.get("architectures") or ["CLIPTextModel"])
    if model_type != "clip_text_model" or architectures != ["CLIPTextModel"]:
        raise ValueError(
            f"expected a transformers CLIPTextModel config (model_type 'clip_text_model'), got "
            f"model_type={model_type!r}, architectures={architectures}."
        )
    values = {key: config.get(key, default) for key, default in _CONFIG_DEFAULTS.items()}
    if values["hidden_act"] not in ACTIVATIONS:
        raise ValueError(
            f"hidden_act={values['hidden_act']!r} is not supported; expected one of "
            f"{sorted(ACTIVATIONS)}."
        )
    if not isinstance(values["eos_token_id"], int):
        raise ValueError(f"eos_token_id={values['eos_token_id']!r}; expected one integer id.")
    if values["hidden_size"] % values["num_attention_heads"]:
        raise ValueError(
            f"num_attention_heads={values['num_attention_heads']} must divide "
            f"hidden_size={values['hidden_size']}."
        )
    arguments = {_CONFIG_FIELDS[key]: value for key, value in values.items()}
    arguments["layer_norm_eps"] = float(arguments["layer_norm_eps"])
    arguments.update(overrides)
    return CLIPTextModel(**arguments)


def clip_text_config_of(module: CLIPTextModel) -> dict[str, Any]:
    """The transformers ``config.json`` of ``module`` (the inverse of
    :func:`clip_text_from_config`), which transformers' ``CLIPTextModel.from_pretrained``
    loads."""
    config = dict(architectures=["CLIPTextModel"], model_type="clip_text_model")
    config.update({key: getattr(module, field) for key, field in _CONFIG_FIELDS.items()})
    return config


def clip_key_table(module: CLIPTextModel) -> list[KeyRule]:
    """One :class:`~diffjax.weights.KeyRule` per parameter of ``module``, named as published
    (``text_model.encoder.layers.0.self_attn.q_proj.weight``); shapes from ``jax.eval_shape``,
    nothing allocated."""
    ids = jnp.zeros((1, 1), jnp.int32)
    return key_table(jax.eval_shape(lambda: module.init(jax.random.key(0), ids)["params"]))


def published_clip_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A transformers-named state dict under the published names: files written by
    transformers >= 5.6 drop the ``text_model.`` prefix (recognised when no key has it), which
    is added back; published files pass unchanged."""
    if any(key.startswith(_PREFIX) for key in state):
        return dict(state)
    return {_PREFIX + key: value for key, value in state.items()}


class _Rename(NamedTuple):
    """``pattern`` (matched on the whole key after the layout's prefix) -> ``target`` (a
    ``re`` template; None drops the key); ``split`` names the q/k/v pieces a fused
    ``[3D, ...]`` tensor is cut into (``{}`` in ``target``). A ``layer`` group drops layers
    ``>= num_layers``."""

    pattern: re.Pattern
    target: str | None
    split: tuple[str, ...] = ()


_LAYER = r"transformer\.resblocks\.(?P<layer>\d+)\."
_HF_LAYER = r"text_model.encoder.layers.\g<layer>."
# Original single-file checkpoints: the prefix of the text encoder, and its names -> HF names.
_SINGLE_FILE_LAYOUTS: dict[str, list[_Rename]] = {
    # SD 1.x (ldm's FrozenCLIPEmbedder): transformers' CLIPTextModel under a prefix.
    "cond_stage_model.transformer.": [_Rename(re.compile(r"(text_model\..+)"), r"\1")],
    # SD 2.x (ldm's FrozenOpenCLIPEmbedder): OpenCLIP ViT-H/14's text tower.
    "cond_stage_model.model.": [
        _Rename(re.compile(r"token_embedding\.weight"), "text_model.embeddings.token_embedding.weight"),
        _Rename(re.compile(r"positional_embedding"), "text_model.embeddings.position_embedding.weight"),
        _Rename(re.compile(r"ln_final\.(weight|bias)"), r"text_model.final_layer_norm.\1"),
        _Rename(re.compile(_LAYER + r"ln_1\.(weight|bias)"), _HF_LAYER + r"layer_norm1.\2"),
        _Rename(re.compile(_LAYER + r"ln_2\.(weight|bias)"), _HF_LAYER + r"layer_norm2.\2"),
        _Rename(re.compile(_LAYER + r"attn\.in_proj_(weight|bias)"), _HF_LAYER + r"self_attn.{}_proj.\2", ("q", "k", "v")),
        _Rename(re.compile(_LAYER + r"attn\.out_proj\.(weight|bias)"), _HF_LAYER + r"self_attn.out_proj.\2"),
        _Rename(re.compile(_LAYER + r"mlp\.c_fc\.(weight|bias)"), _HF_LAYER + r"mlp.fc1.\2"),
        _Rename(re.compile(_LAYER + r"mlp\.c_proj\.(weight|bias)"), _HF_LAYER + r"mlp.fc2.\2"),
        # The contrastive head, which SD does not use.
        _Rename(re.compile(r"text_projection|logit_scale"), None),
    ],
}  # fmt: skip


def clip_state_from_single_file(
    state: Mapping[str, np.ndarray], num_layers: int
) -> dict[str, np.ndarray]:
    """The text encoder of an original single-file Stable Diffusion checkpoint, under
    transformers' names (for the key table).

    - SD 1.x stores transformers' names under ``cond_stage_model.transformer.``: the prefix is
      removed.
    - SD 2.x stores OpenCLIP's: ``cond_stage_model.model.token_embedding.weight``,
      ``positional_embedding``, ``ln_final``, ``transformer.resblocks.N.{ln_1, ln_2,
      attn.in_proj_weight / in_proj_bias, attn.out_proj, mlp.c_fc, mlp.c_proj}``,
      ``text_projection`` and ``logit_scale``. The fused ``in_proj`` ``[3D, ...]`` is cut into
      q, k, v (in that order), the other names are mapped one to one, and three kinds of key
      are dropped: ``text_projection`` and ``logit_scale`` (CLIP's contrastive head) and the
      layers ``N >= num_layers`` (SD 2 uses 23 of OpenCLIP ViT-H's 24 layers: the penultimate
      layer's output). This matches diffusers' ``convert_open_clip_checkpoint``.

    Keys outside the text encoder's prefix (UNet, autoencoder) are ignored; keys under it that
    no rule names are kept as they are, so that the key table names them as
    unexpected.

    Args:
      state: the checkpoint's ``{name: array}`` (its ``state_dict``).
      num_layers: the text encoder's layers (``CLIPTextModel.num_layers``: 12 for SD 1, 23 for
        SD 2).

    Raises:
      ValueError: the checkpoint has no key under either prefix, or a fused ``in_proj`` whose
        first axis is not divisible by 3.
    """
    renamed: dict[str, np.ndarray] = {}
    for prefix, rules in _SINGLE_FILE_LAYOUTS.items():
        for key, value in state.items():
            if not key.startswith(prefix):
                continue
            for rule in rules:
                match = rule.pattern.fullmatch(key[len(prefix) :])
                if match:
                    break
            else:
                renamed[key] = value
                continue
            layer = match.groupdict().get("layer")
            if rule.target is None or (layer is not None and int(layer) >= num_layers):
                continue
            target = match.expand(rule.target)
            if not rule.split:
                renamed[target] = value
                continue
            if value.shape[0] % len(rule.split):
                raise ValueError(f"{key} has shape {value.shape}; expected a fused [3D, ...].")
            for piece, part in zip(rule.split, np.split(np.asarray(value), len(rule.split))):
                renamed[target.format(piece)] = part
    if not renamed:
        raise ValueError(
            "the checkpoint has no text encoder: expected keys under "
            f"{' or '.join(_SINGLE_FILE_LAYOUTS)} (SD 1.x / SD 2.x)."
        )
    return renamed
