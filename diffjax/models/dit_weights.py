"""diffusers' ``DiTTransformer2DModel`` (the published DiT checkpoints as diffusers converts
them) in diffjax's :class:`~diffjax.models.dit.DiT`.

The parameter names are diffusers' (:func:`~diffjax.models.diffusers_weights.torch_key_of`) but
for the timestep and label embedders: DiT has one pair, diffusers a copy in every block's
``norm1.emb``. diffjax's pair is read from block 0's copy; the other copies must equal it
(:func:`drop_embedder_copies`, a :class:`~diffjax.weights.StateDictMismatchError` naming the
first that differs otherwise), and :func:`~diffjax.models.save_pretrained` writes them back.

facebookresearch's own checkpoints (``DiT-XL-2-256x256.pt``, ``DiT-XL-2-512x512.pt``: the EMA
model's plain state dict, saved by ``torch.save``) load through :func:`dit_from_checkpoint`,
which reads them with the restricted reader
(:func:`~diffjax.weights.state_dict.load_state_dict`, tensors only), renames them by the inverse
of diffusers' ``scripts/convert_dit_to_diffusers.py`` (:func:`facebookresearch_key_table`):

==================================  ===========================================================
facebookresearch                    diffjax (diffusers' name)
==================================  ===========================================================
``x_embedder.proj``                 ``pos_embed/proj`` (``pos_embed.proj``)
``t_embedder.mlp.0`` / ``.2``       ``timestep_embedder/linear_1`` / ``linear_2``
``y_embedder.embedding_table``      ``class_embedder/embedding_table``
``blocks.i.attn.qkv`` ``[3D, D]``   ``transformer_blocks_i/attn1/to_q``, ``to_k``, ``to_v``:
                                    rows ``[0, D)``, ``[D, 2D)``, ``[2D, 3D)``
``blocks.i.attn.proj``              ``transformer_blocks_i/attn1/to_out`` (``to_out.0``)
``blocks.i.mlp.fc1`` / ``fc2``      ``transformer_blocks_i/ff/net_0/proj`` / ``net_2``
``blocks.i.adaLN_modulation.1``     ``transformer_blocks_i/norm1/linear``
``final_layer.adaLN_modulation.1``  ``proj_out_1``
``final_layer.linear``              ``proj_out_2``
``pos_embed`` ``[1, N, D]``         none: checked equal to the computed positions
==================================  ===========================================================

and reads the configuration off the shapes (:func:`facebookresearch_dit_config`): the patch
size and input channels from ``x_embedder.proj.weight [D, C, p, p]``, the width D, the depth
from the ``blocks.i`` indices, ``num_classes`` from the label table's ``num_classes + 1`` rows
(the last the null label), the output channels from ``final_layer.linear`` (``2 C`` with
learned variance), the latent side ``sqrt(N) p`` from ``pos_embed``, and the MLP LayerNorm
epsilon 1e-6 of facebookresearch's blocks. The attention heads do not show in any shape:
``num_heads`` gives them; without it a width of one of :data:`~diffjax.models.DIT_PRESETS`
takes that preset's heads (the paper's DiT-S/B/L/XL: 6, 12, 16, 16), any other width 16.

``pos_embed`` is a fixed buffer in facebookresearch's DiT (MAE's 2-D sin-cos table, float64
rounded to the file's dtype) and is computed, not stored, in diffjax's; a file whose buffer is
not that table (learned positions, another grid) is refused rather than loaded with positions
it was not trained with.

The timestep sinusoid: facebookresearch embeds ``t`` as ``[cos(t w_k), sin(t w_k)]`` with
``w_k = 10000^(-k / 128)``; diffusers' ``DiTTransformer2DModel``, and diffjax's DiT after it,
use ``w_k = 10000^(-k / 127)`` (``Timesteps(256, flip_sin_to_cos=True,
downscale_freq_shift=1)``), and diffusers' conversion keeps the weights unchanged, so diffusers'
converted DiT is not exactly the original network (on the test fixture's random weights the
outputs differ by up to 1.9 at ``t = 999`` and 7e-3 at ``t = 3``; tests/fixtures/dit_checkpoint
keeps both). diffjax's DiT has the shift as ``time_freq_shift``: a diffusers folder loads with
1, a facebookresearch checkpoint with 0, and each computes its own reference's outputs.
"""

from __future__ import annotations

import functools
import math
import os
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from diffjax.models.diffusers_weights import key_table
from diffjax.models.dit import DIT_PRESETS, DiT, sincos_positions
from diffjax.weights.files import verify_checksum
from diffjax.weights.key_tables import KeyRule, StateDictMismatchError, apply_key_table
from diffjax.weights.state_dict import load_state_dict

__all__ = [
    "add_embedder_copies",
    "check_positions",
    "diffusers_config_of_dit",
    "dit_from_checkpoint",
    "dit_from_diffusers_config",
    "dit_from_state_dict",
    "dit_key_table",
    "drop_embedder_copies",
    "facebookresearch_dit_config",
    "facebookresearch_key_table",
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
    out_channels = int(config.get("out_channels") or in_channels)
    # diffusers' rule (its DiT pipeline): twice the input's channels is a learned variance.
    learn_sigma = out_channels == 2 * in_channels
    arguments = dict(
        patch_size=int(config.get("patch_size", 2)),
        hidden_size=heads * int(config.get("attention_head_dim", 72)),
        depth=int(config.get("num_layers", 28)),
        num_heads=heads,
        num_classes=int(config.get("num_embeds_ada_norm", 1000)),
        in_channels=in_channels,
        out_channels=None if learn_sigma or out_channels == in_channels else out_channels,
        learn_sigma=learn_sigma,
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
    if module.time_freq_shift != 1.0:
        raise ValueError(
            f"diffusers' DiTTransformer2DModel embeds timesteps with a frequency shift of 1; "
            f"this DiT has time_freq_shift={module.time_freq_shift} (facebookresearch's "
            f"original: 0), which its config cannot express."
        )
    out_channels = module.out_channels or in_channels * (2 if module.learn_sigma else 1)
    return dict(
        _class_name="DiTTransformer2DModel",
        num_attention_heads=module.num_heads,
        attention_head_dim=module.hidden_size // module.num_heads,
        in_channels=in_channels,
        out_channels=out_channels,
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
        x = jnp.zeros((1, side, side, module.in_channels or 4), jnp.float32)
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


_FACEBOOKRESEARCH_NAMES: tuple[tuple[str, str], ...] = (
    (r"pos_embed\.proj\.(\w+)", r"x_embedder.proj.\1"),
    (
        r"transformer_blocks\.0\.norm1\.emb\.timestep_embedder\.linear_1\.(\w+)",
        r"t_embedder.mlp.0.\1",
    ),
    (
        r"transformer_blocks\.0\.norm1\.emb\.timestep_embedder\.linear_2\.(\w+)",
        r"t_embedder.mlp.2.\1",
    ),
    (
        r"transformer_blocks\.0\.norm1\.emb\.class_embedder\.(embedding_table\.\w+)",
        r"y_embedder.\1",
    ),
    (r"transformer_blocks\.(\d+)\.attn1\.to_[qkv]\.(\w+)", r"blocks.\1.attn.qkv.\2"),
    (r"transformer_blocks\.(\d+)\.attn1\.to_out\.0\.(\w+)", r"blocks.\1.attn.proj.\2"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.(\w+)", r"blocks.\1.mlp.fc1.\2"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2\.(\w+)", r"blocks.\1.mlp.fc2.\2"),
    (r"transformer_blocks\.(\d+)\.norm1\.linear\.(\w+)", r"blocks.\1.adaLN_modulation.1.\2"),
    (r"proj_out_1\.(\w+)", r"final_layer.adaLN_modulation.1.\1"),
    (r"proj_out_2\.(\w+)", r"final_layer.linear.\1"),
)
"""diffusers' name (as :func:`dit_key_table` gives it) -> facebookresearch's: the inverse of
diffusers' ``scripts/convert_dit_to_diffusers.py``."""

_FUSED_PART = re.compile(r"transformer_blocks\.\d+\.attn1\.to_([qkv])\.\w+")
_POSITIONS = "pos_embed"
_MLP_NORM_EPSILON = 1e-6  # facebookresearch's DiTBlock.norm2 (diffusers' configs carry 1e-5)
_DEFAULT_HEADS = 16  # DiT-L and DiT-XL, the published checkpoints' size


def _fused_part(
    value: np.ndarray, *, index: int, transform: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Third ``index`` (q: 0, k: 1, v: 2) of a fused ``qkv`` weight ``[3D, D]`` or bias
    ``[3D]`` (rows ``[index D, (index + 1) D)``), in the Flax layout by ``transform``."""
    rows = value.shape[0] // 3
    return transform(value[index * rows : (index + 1) * rows])


def facebookresearch_key_table(module: DiT, in_channels: int = 4) -> list[KeyRule]:
    """One key rule per parameter of ``module`` named as in facebookresearch's DiT state dict
    (module docstring); the q, k and v rules read thirds of the fused ``attn.qkv``.

    Args:
      module: the DiT (its ``num_classes`` set: facebookresearch's DiT is class-conditional).
      in_channels: the input channels C of ``x_embedder.proj.weight [D, C, p, p]``.
    """
    side = module.patch_size * 2
    x = jnp.zeros((1, side, side, in_channels), jnp.float32)
    label = {"label": jnp.zeros((1,), jnp.int32)}
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, 0, label)["params"])
    rules = []
    for rule in dit_key_table(module, shapes):
        match, name = next(
            (match, name)
            for pattern, name in _FACEBOOKRESEARCH_NAMES
            if (match := re.fullmatch(pattern, rule.torch_key))
        )
        renamed = rule._replace(torch_key=match.expand(name))
        fused = _FUSED_PART.fullmatch(rule.torch_key)
        if fused:
            renamed = renamed._replace(
                transform=functools.partial(
                    _fused_part, index="qkv".index(fused[1]), transform=rule.transform
                )
            )
        rules.append(renamed)
    return rules


def facebookresearch_dit_config(
    state: Mapping[str, np.ndarray], num_heads: int | None = None, *, source: str = "the state"
) -> dict[str, Any]:
    """The diffusers ``DiTTransformer2DModel`` ``config.json`` of a facebookresearch DiT state
    dict, read off its shapes (module docstring).

    Args:
      state: ``{facebookresearch name: array}``.
      num_heads: the attention heads; None: the :data:`~diffjax.models.DIT_PRESETS` preset's of
        the same width (DiT-S 6, DiT-B 12, DiT-L and DiT-XL 16), 16 for any other width.
      source: what ``state`` is, for error messages.

    Raises:
      StateDictMismatchError: a tensor the configuration is read from is missing or shaped
        unlike facebookresearch's; ValueError: a width that is no multiple of the heads.
    """
    needed = (
        "x_embedder.proj.weight", "y_embedder.embedding_table.weight",
        "final_layer.linear.weight", _POSITIONS,
    )  # fmt: skip
    blocks = {int(match[1]) for key in state if (match := re.match(r"blocks\.(\d+)\.", key))}
    missing = [key for key in needed if key not in state] + ([] if blocks else ["blocks.0.*"])
    if missing:
        raise StateDictMismatchError(
            f"{source} is not a facebookresearch DiT state dict: missing key(s) {missing}."
        )
    hidden, in_channels, patch = state["x_embedder.proj.weight"].shape[:3]
    positions = state[_POSITIONS]
    grid = math.isqrt(positions.shape[1]) if positions.ndim == 3 else 0
    if positions.shape != (1, grid * grid, hidden) or grid == 0:
        raise StateDictMismatchError(
            f"{source}: pos_embed has shape {positions.shape}; facebookresearch's DiT has "
            f"[1, N, {hidden}] for a square grid of N patches."
        )
    if num_heads is None:
        presets = [p["num_heads"] for p in DIT_PRESETS.values() if p["hidden_size"] == hidden]
        num_heads = presets[0] if presets else _DEFAULT_HEADS
    if hidden % num_heads:
        raise ValueError(
            f"{source}: the width {hidden} is not a multiple of num_heads={num_heads}; pass the "
            f"checkpoint's num_heads."
        )
    return dict(
        _class_name="DiTTransformer2DModel",
        num_attention_heads=int(num_heads),
        attention_head_dim=int(hidden) // int(num_heads),
        in_channels=int(in_channels),
        out_channels=int(state["final_layer.linear.weight"].shape[0]) // int(patch) ** 2,
        num_layers=1 + max(blocks),
        sample_size=grid * int(patch),
        patch_size=int(patch),
        num_embeds_ada_norm=int(state["y_embedder.embedding_table.weight"].shape[0]) - 1,
        norm_eps=_MLP_NORM_EPSILON,
        **{key: allowed[0] for key, allowed in _FIXED_OPTIONS.items()},
    )


def check_positions(pos_embed: np.ndarray, *, source: str = "the state") -> None:
    """Checks that ``pos_embed [1, N, D]`` is DiT's fixed 2-D sin-cos table for a ``sqrt(N) x
    sqrt(N)`` grid (:func:`~diffjax.models.dit.sincos_positions`).

    facebookresearch computes the table in float64 and stores it rounded to float32 (or the
    dtype the file was re-saved in); :func:`~diffjax.models.dit.sincos_positions` computes the
    same float64 values and rounds them to float32. Each value lies in [-1, 1], so each rounding
    is at most half the dtype's spacing at 1, and a float64 ``sin`` / ``cos`` that differs in
    its last bit can move a value to the neighbouring float32: the tolerance is the file dtype's
    machine epsilon (float32: 1.2e-7, float16: 9.8e-4, bfloat16: 7.8e-3). Learned or otherwise
    different positions differ by O(1).

    Raises:
      StateDictMismatchError: the table is another (the largest difference named).
    """
    _, tokens, dim = pos_embed.shape
    grid = math.isqrt(tokens)
    expected = sincos_positions(dim, grid, grid).astype(np.float64)
    error = float(np.max(np.abs(np.asarray(pos_embed[0], np.float64) - expected)))
    tolerance = float(ml_dtypes.finfo(pos_embed.dtype).eps)
    if not error <= tolerance:
        raise StateDictMismatchError(
            f"{source}: pos_embed is not DiT's fixed 2-D sin-cos position table for a "
            f"{grid}x{grid} grid (largest difference {error:.3g}, tolerance {tolerance:.3g} for "
            f"{pos_embed.dtype}); diffjax's DiT computes these positions and cannot hold others "
            f"(learned ones, or a table of another grid)."
        )


def dit_from_state_dict(
    state: Mapping[str, np.ndarray],
    *,
    num_heads: int | None = None,
    dtype: Any = None,
    source: str = "the state",
) -> tuple[DiT, dict[str, Any]]:
    """A facebookresearch DiT state dict in diffjax: :func:`dit_from_checkpoint` after the
    file is read.

    Raises:
      StateDictMismatchError: a missing, unexpected or misshapen tensor (each named, under
        facebookresearch's names), or a ``pos_embed`` that is not the fixed sin-cos table.
    """
    config = facebookresearch_dit_config(state, num_heads, source=source)
    check_positions(state[_POSITIONS], source=source)
    overrides = {} if dtype is None else dict(dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype))
    module = dit_from_diffusers_config(config, time_freq_shift=0.0, **overrides)
    variables = apply_key_table(
        state,
        facebookresearch_key_table(module, config["in_channels"]),
        source=source,
        ignored=lambda key: key == _POSITIONS,
        dtype=np.dtype(np.float32 if dtype is None else jnp.dtype(dtype)),
    )
    return module, variables["params"]


def dit_from_checkpoint(
    path: str | os.PathLike,
    *,
    num_heads: int | None = None,
    dtype: Any = None,
    sha256: str | None = None,
) -> tuple[DiT, dict[str, Any]]:
    """Loads one of facebookresearch's published DiT checkpoints (``DiT-XL-2-256x256.pt``)
    into diffjax's :class:`~diffjax.models.DiT` (module docstring).

    Args:
      path: the ``.pt`` file (``torch.save`` of the model's state dict), read by the restricted
        reader, which refuses any pickled global but tensors, naming it.
      num_heads: the attention heads, which no tensor shape shows; None: by the width
        (:func:`facebookresearch_dit_config`), 16 for the published DiT-XL/2.
      dtype: the module's compute and parameter dtype (default float32).
      sha256: the file's expected SHA-256 (hex), checked before reading.

    Returns:
      ``(module, params)`` as :func:`~diffjax.models.from_pretrained` returns them: the module
      takes ``x [B, H, W, C]``, ``t [B]`` and ``{'label': int [B]}`` (``num_classes`` the null
      label) and returns ``[B, H, W, 2C]`` (noise, then the variance interpolation).

    Raises:
      StateDictMismatchError: as :func:`dit_from_state_dict`; UnsupportedCheckpointError: a
      pickle holding anything but tensors; WeightsChecksumError: a checksum mismatch.

    Example:
      >>> dit, params = dj.models.dit_from_checkpoint("DiT-XL-2-256x256.pt")
    """

    path = os.fspath(path)
    if sha256 is not None:
        verify_checksum(path, sha256, f"checkpoint {path}")
    return dit_from_state_dict(load_state_dict(path), num_heads=num_heads, dtype=dtype, source=path)
