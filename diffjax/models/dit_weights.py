"""diffusers' ``DiTTransformer2DModel`` (the published DiT checkpoints as diffusers converts
them) in diffjax's :class:`~diffjax.models.dit.DiT`.

The parameter names are diffusers' (:func:`~diffjax.models.diffusers_weights.torch_key_of`) but
for the timestep and label embedders: DiT has one pair, diffusers a copy in every block's
``norm1.emb``. diffjax's pair is read from block 0's copy; the other copies must equal it
(:func:`drop_embedder_copies`, a :class:`~diffjax.weights.StateDictMismatchError` naming the
first that differs otherwise), and :func:`~diffjax.models.save_pretrained` writes them back.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.diffusers_weights import key_table
from diffjax.models.dit import DiT
from diffjax.weights.key_tables import KeyRule, StateDictMismatchError

__all__ = [
    "add_embedder_copies",
    "diffusers_config_of_dit",
    "dit_from_diffusers_config",
    "dit_key_table",
    "drop_embedder_copies",
]

_EMBEDDERS = ("timestep_embedder", "class_embedder")
# diffusers names with an underscore before a digit that are not ModuleList indices.
_UNDERSCORE_NAMES = {
    "proj_out.1.": "proj_out_1.",
    "proj_out.2.": "proj_out_2.",
    "timestep_embedder.linear.1.": "timestep_embedder.linear_1.",
    "timestep_embedder.linear.2.": "timestep_embedder.linear_2.",
}
_BLOCK_EMBEDDER = re.compile(r"transformer_blocks\.(\d+)\.norm1\.emb\.(.*)")
_FIXED_OPTIONS = {
    "norm_type": ("ada_norm_zero",),
    "activation_fn": ("gelu-approximate",),
    "attention_bias": (True,),
    "norm_elementwise_affine": (False,),
}


def dit_from_diffusers_config(config: Mapping[str, Any], **overrides: Any) -> DiT:
    """The :class:`DiT` of a diffusers ``DiTTransformer2DModel`` ``config.json``.

    Raises:
      ValueError: naming an option the network cannot express.
    """
    if config.get("_class_name") != "DiTTransformer2DModel":
        raise ValueError(
            f"expected a DiTTransformer2DModel config, got {config.get('_class_name')!r}."
        )
    for key, allowed in _FIXED_OPTIONS.items():
        if key in config and config[key] not in allowed:
            raise ValueError(
                f"config option {key}={config[key]!r} is not supported; expected {allowed}."
            )
    heads = int(config.get("num_attention_heads", 16))
    in_channels = int(config.get("in_channels", 4))
    arguments = dict(
        patch_size=int(config.get("patch_size", 2)),
        hidden_size=heads * int(config.get("attention_head_dim", 72)),
        depth=int(config.get("num_layers", 28)),
        num_heads=heads,
        num_classes=int(config.get("num_embeds_ada_norm", 1000)),
        out_channels=int(config.get("out_channels") or in_channels),
        sample_size=int(config.get("sample_size", 32)),
        mlp_norm_epsilon=float(config.get("norm_eps", 1e-5)),
    )
    arguments.update(overrides)
    return DiT(**arguments)


def diffusers_config_of_dit(module: DiT, in_channels: int) -> dict[str, Any]:
    """The diffusers ``config.json`` of ``module`` (the inverse of
    :func:`dit_from_diffusers_config`)."""
    if module.num_classes is None:
        raise ValueError("diffusers' DiTTransformer2DModel is always class-conditional.")
    return dict(
        _class_name="DiTTransformer2DModel",
        num_attention_heads=module.num_heads,
        attention_head_dim=module.hidden_size // module.num_heads,
        in_channels=in_channels,
        out_channels=module.out_channels or in_channels,
        num_layers=module.depth,
        sample_size=module.sample_size,
        patch_size=module.patch_size,
        num_embeds_ada_norm=module.num_classes,
        norm_eps=module.mlp_norm_epsilon,
        **{key: allowed[0] for key, allowed in _FIXED_OPTIONS.items()},
    )


def dit_key_table(module: DiT, params: Any | None = None) -> list[KeyRule]:
    """One key rule per parameter of ``module`` (or of ``params``), the embedders named after
    block 0's copy."""
    if params is None:
        side = module.patch_size * 2
        x = jnp.zeros((1, side, side, 4), jnp.float32)
        cond = {} if module.num_classes is None else {"label": jnp.zeros((1,), jnp.int32)}
        params = jax.eval_shape(lambda: module.init(jax.random.key(0), x, 0, cond)["params"])
    rules = []
    for rule in key_table(params):
        for indexed, name in _UNDERSCORE_NAMES.items():
            if rule.torch_key.startswith(indexed) or f".{indexed}" in f".{rule.torch_key}":
                rule = rule._replace(torch_key=rule.torch_key.replace(indexed, name))
        if rule.flax_path[1] in _EMBEDDERS:
            rule = rule._replace(torch_key=f"transformer_blocks.0.norm1.emb.{rule.torch_key}")
        rules.append(rule)
    return rules


def drop_embedder_copies(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The state without blocks 1..N-1's embedder copies, each checked equal to block 0's.

    Raises:
      StateDictMismatchError: a copy that differs from block 0's, or has no counterpart.
    """
    kept = {}
    for key, value in state.items():
        match = _BLOCK_EMBEDDER.fullmatch(key)
        if not match or match[1] == "0":
            kept[key] = value
            continue
        first = state.get(f"transformer_blocks.0.norm1.emb.{match[2]}")
        if first is None or first.shape != value.shape or not np.array_equal(first, value):
            raise StateDictMismatchError(
                f"{key} differs from block 0's copy of the embedder; diffjax's DiT has one "
                f"timestep and label embedder shared by all blocks."
            )
    return kept


def add_embedder_copies(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of :func:`drop_embedder_copies`: block 0's embedders copied into every
    block, as diffusers' files hold them."""
    state = dict(state)
    depth = 1 + max(
        int(match[1]) for key in state if (match := re.match(r"transformer_blocks\.(\d+)\.", key))
    )
    for key in [key for key in state if key.startswith("transformer_blocks.0.norm1.emb.")]:
        for block in range(1, depth):
            state[key.replace("transformer_blocks.0.", f"transformer_blocks.{block}.", 1)] = state[
                key
            ]
    return state
