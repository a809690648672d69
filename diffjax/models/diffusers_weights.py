"""diffusers' parameter names and layouts for diffjax's ports of its networks.

A diffjax port names its Flax modules after diffusers' PyTorch modules, with ``_<index>`` for a
``ModuleList`` index (``down_blocks_0_resnets_1`` for ``down_blocks.0.resnets.1``), so the
PyTorch name of every Flax parameter follows from its path (:func:`torch_key_of`), and a key
table for :func:`~diffjax.weights.apply_key_table` from the parameter tree (:func:`key_table`):
convolution kernels ``[out, in, kh, kw] -> [kh, kw, in, out]``, linear weights transposed,
GroupNorm and LayerNorm ``weight`` as ``scale``, ``nn.Embed`` tables (``embedding``) as they are.
The table lists every parameter, so a file with a missing, unexpected or misshapen tensor is
refused with each one named.
"""

from __future__ import annotations

import re
from typing import Any

from flax import traverse_util

from diffjax.weights.key_tables import KeyRule, conv_kernel, linear_kernel

__all__ = ["key_table", "torch_key_of"]

_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}


def _torch_module_path(part: str) -> str:
    """``'down_blocks_0_resnets_1'`` -> ``'down_blocks.0.resnets.1'``; samplers and the
    attention's output projection gain the submodule diffusers wraps them in."""
    part = re.sub(r"_(\d+)(?=_|$)", r".\1", part)
    part = re.sub(r"(\.\d+)_", r"\1.", part)
    part = re.sub(r"(downsamplers|upsamplers)\.(\d+)$", r"\1.\2.conv", part)
    return "to_out.0" if part == "to_out" else part


def torch_key_of(flax_path: tuple[str, ...]) -> str:
    """The diffusers state-dict name of a Flax parameter path, e.g. ``('encoder',
    'down_blocks_0_downsamplers_0', 'kernel')`` -> ``'encoder.down_blocks.0.downsamplers.0.
    conv.weight'``."""
    *modules, leaf = flax_path
    return ".".join([*(_torch_module_path(module) for module in modules), _LEAF_NAMES[leaf]])


def _transform(flax_path: tuple[str, ...], ndim: int) -> Any:
    if flax_path[-1] != "kernel":
        return lambda value: value
    return conv_kernel if ndim == 4 else linear_kernel


def key_table(params: Any) -> list[KeyRule]:
    """One :class:`~diffjax.weights.KeyRule` per leaf of ``params`` (arrays or
    ``jax.ShapeDtypeStruct``), named by :func:`torch_key_of`, under the ``'params'`` collection."""
    return [
        KeyRule(
            torch_key_of(path),
            ("params", *path),
            tuple(leaf.shape),
            _transform(path, len(leaf.shape)),
        )
        for path, leaf in traverse_util.flatten_dict(params).items()
    ]
