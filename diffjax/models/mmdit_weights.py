"""diffusers' ``SD3Transformer2DModel`` (Stable Diffusion 3 and 3.5's transformer) in diffjax's
:class:`~diffjax.models.mmdit.MMDiT`.

The parameter names are diffusers' (:func:`~diffjax.models.diffusers_weights.torch_key_of`) but
for the embedders' ``linear_1`` / ``linear_2``, which diffusers spells with an underscore. The
file's ``pos_embed.pos_embed`` is a buffer, the fixed sin-cos table that diffusers' constructor
computes from the config (:data:`POSITION_BUFFER`): diffjax computes the same table
(:func:`~diffjax.models.mmdit.sd3_positions`), so loading skips it and
:func:`~diffjax.models.save_pretrained` writes that table (:func:`add_position_buffer`), as
diffusers' own files hold it.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.diffusers_weights import key_table
from diffjax.models.mmdit import QK_NORMS, MMDiT, sd3_positions
from diffjax.weights.key_tables import KeyRule

__all__ = [
    "POSITION_BUFFER",
    "add_position_buffer",
    "diffusers_config_of_mmdit",
    "mmdit_from_diffusers_config",
    "mmdit_key_table",
]

POSITION_BUFFER = "pos_embed.pos_embed"
"""The state-dict name of diffusers' position table buffer ``[1, pos_embed_max_size^2, D]``."""

# diffusers names with an underscore before a digit that are not ModuleList indices.
_UNDERSCORE_NAMES = {".linear.1.": ".linear_1.", ".linear.2.": ".linear_2."}


def mmdit_from_diffusers_config(config: Mapping[str, Any], **overrides: Any) -> MMDiT:
    """The :class:`MMDiT` of a diffusers ``SD3Transformer2DModel`` ``config.json`` (missing
    entries take diffusers' defaults).

    Raises:
      ValueError: naming an option the network cannot express.
    """
    if config.get("_class_name") != "SD3Transformer2DModel":
        raise ValueError(
            f"expected an SD3Transformer2DModel config, got {config.get('_class_name')!r}."
        )
    heads = int(config.get("num_attention_heads", 18))
    hidden_size = heads * int(config.get("attention_head_dim", 64))
    caption_projection_dim = int(config.get("caption_projection_dim", 1152))
    if caption_projection_dim != hidden_size:
        raise ValueError(
            f"config option caption_projection_dim={caption_projection_dim} is not supported; "
            f"the joint attention needs it equal to num_attention_heads * attention_head_dim = "
            f"{hidden_size}."
        )
    qk_norm = config.get("qk_norm")
    if qk_norm not in QK_NORMS:
        raise ValueError(
            f"config option qk_norm={qk_norm!r} is not supported; expected {QK_NORMS}."
        )
    max_size = config.get("pos_embed_max_size", 96)
    if max_size is None:
        raise ValueError(
            "config option pos_embed_max_size=None (positions interpolated to the input, not "
            "SD3's cropped grid) is not supported."
        )
    in_channels = int(config.get("in_channels", 16))
    arguments = dict(
        patch_size=int(config.get("patch_size", 2)),
        hidden_size=hidden_size,
        depth=int(config.get("num_layers", 18)),
        num_heads=heads,
        in_channels=in_channels,
        out_channels=int(config.get("out_channels") or in_channels),
        joint_attention_dim=int(config.get("joint_attention_dim", 4096)),
        pooled_projection_dim=int(config.get("pooled_projection_dim", 2048)),
        sample_size=int(config.get("sample_size", 128)),
        pos_embed_max_size=int(max_size),
        qk_norm=qk_norm,
        dual_attention_layers=tuple(int(i) for i in config.get("dual_attention_layers", ())),
    )
    arguments.update(overrides)
    return MMDiT(**arguments)


def diffusers_config_of_mmdit(module: MMDiT, in_channels: int) -> dict[str, Any]:
    """The diffusers ``config.json`` of ``module`` with ``in_channels`` input channels (the
    inverse of :func:`mmdit_from_diffusers_config`).

    Raises:
      ValueError: ``in_channels`` differs from the module's.
    """
    if module.in_channels not in (None, in_channels):
        raise ValueError(
            f"in_channels={in_channels} differs from the MMDiT's in_channels={module.in_channels}."
        )
    return dict(
        _class_name="SD3Transformer2DModel",
        sample_size=module.sample_size,
        patch_size=module.patch_size,
        in_channels=in_channels,
        num_layers=module.depth,
        attention_head_dim=module.hidden_size // module.num_heads,
        num_attention_heads=module.num_heads,
        joint_attention_dim=module.joint_attention_dim,
        caption_projection_dim=module.hidden_size,
        pooled_projection_dim=module.pooled_projection_dim,
        out_channels=module.out_channels or in_channels,
        pos_embed_max_size=module.pos_embed_max_size,
        dual_attention_layers=list(module.dual_attention_layers),
        qk_norm=module.qk_norm,
    )


def mmdit_key_table(module: MMDiT, params: Any | None = None) -> list[KeyRule]:
    """One key rule per parameter of ``module`` (or of ``params``; None: traced from the module
    on a one-patch input, allocating nothing, which needs its ``in_channels``)."""
    if params is None:
        if module.in_channels is None:
            raise ValueError("the key table of an MMDiT with in_channels=None needs its params.")
        p = module.patch_size
        x = jnp.zeros((1, p, p, module.in_channels), jnp.float32)
        cond = dict(
            context=jnp.zeros((1, 1, module.joint_attention_dim), jnp.float32),
            pooled=jnp.zeros((1, module.pooled_projection_dim), jnp.float32),
        )
        params = jax.eval_shape(lambda: module.init(jax.random.key(0), x, 0.0, cond)["params"])
    rules = []
    for rule in key_table(params):
        for indexed, name in _UNDERSCORE_NAMES.items():
            if rule.torch_key.startswith("time_text_embed."):
                rule = rule._replace(torch_key=rule.torch_key.replace(indexed, name))
        rules.append(rule)
    return rules


def add_position_buffer(state: Mapping[str, np.ndarray], module: MMDiT) -> dict[str, np.ndarray]:
    """``state`` with diffusers' position table buffer ``[1, pos_embed_max_size^2, D]``
    (:data:`POSITION_BUFFER`), computed from the module's configuration."""
    size = module.pos_embed_max_size
    table = sd3_positions(module.hidden_size, size, module.sample_size // module.patch_size)
    return {**state, POSITION_BUFFER: np.asarray(table, np.float32)[None]}
