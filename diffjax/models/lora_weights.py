"""LoRA files in the formats the PyTorch ecosystem reads: diffusers / PEFT and kohya.

A LoRA of :mod:`diffjax.lora` adapts kernels by their Flax paths. On disk the same factors are
named after the diffusers module each kernel belongs to (the network's key table,
:data:`diffjax.models.pretrained.ARCHITECTURES`) and stored in PyTorch's layouts:

* ``'peft'`` (diffusers' ``save_lora_weights`` / ``load_lora_weights``, PEFT):
  ``unet.<module>.lora_A.weight`` ``[r, in(, kh, kw)]`` and ``unet.<module>.lora_B.weight``
  ``[out, r(, 1, 1)]``; alpha and the rank in the safetensors metadata
  (``lora_adapter_metadata``: ``{"unet.r": r, "unet.lora_alpha": alpha, ...}``, as diffusers
  writes it; a file without it has alpha = r, diffusers' default).
* ``'kohya'`` (sd-scripts, A1111, ComfyUI): ``lora_unet_<module with _>.lora_down.weight``,
  ``.lora_up.weight`` and ``.alpha`` (a scalar per module).

The fused ``qkv`` kernel of a self-attention block (DDPM's UNet) is written as diffusers'
``to_q``, ``to_k`` and ``to_v`` with one shared down factor, and read back only when the three
share it. Loading checks every name and shape, and says which are missing or extra.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from diffjax.weights.key_tables import conv_kernel

__all__ = ["LORA_FORMATS", "load_lora", "lora_state_dict", "lora_from_state_dict", "save_lora"]

LORA_FORMATS = ("peft", "kohya")
"""The LoRA file formats :func:`save_lora` writes and :func:`load_lora` reads."""

_METADATA_KEY = "lora_adapter_metadata"
_QKV = ("to_q", "to_k", "to_v")


def _key_table(module: Any, params: Any) -> list:
    from diffjax.models.diffusers_weights import key_table
    from diffjax.models.dit import DiT
    from diffjax.models.dit_weights import dit_key_table
    from diffjax.models.unet import UNet
    from diffjax.models.unet_weights import unet_key_table

    if isinstance(module, UNet):
        return unet_key_table(module, params)
    if isinstance(module, DiT):
        return dit_key_table(module, params)
    return key_table(params)


def _torch_modules(module: Any, params: Any) -> dict[str, tuple[str, str]]:
    """``{kernel path: (diffusers module name, 'linear' | 'conv')}`` of every kernel."""
    from diffjax.models.unet_weights import pointwise_conv_kernel

    modules = {}
    for rule in _key_table(module, params):
        if rule.flax_path[-1] != "kernel":
            continue
        path = "/".join(rule.flax_path[1:])
        kind = "conv" if rule.transform in (conv_kernel, pointwise_conv_kernel) else "linear"
        modules[path] = (rule.torch_key.removesuffix(".weight"), kind)
    return modules


def _to_torch(pair: Mapping[str, Any], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(down, up) in Flax layouts -> (A / down, B / up) in PyTorch's."""
    down, up = np.asarray(pair["down"], np.float32), np.asarray(pair["up"], np.float32)
    if down.ndim == 4:  # a k x k convolution to r channels, then a 1x1 one
        return np.transpose(down, (3, 2, 0, 1)), np.transpose(up)[:, :, None, None]
    if kind == "conv":  # a Flax Dense that is a 1x1 convolution in PyTorch
        return np.transpose(down)[:, :, None, None], np.transpose(up)[:, :, None, None]
    return np.transpose(down), np.transpose(up)


def _from_torch(down: np.ndarray, up: np.ndarray, kernel_ndim: int) -> dict[str, np.ndarray]:
    if kernel_ndim == 4:
        return {"down": conv_kernel(down), "up": np.transpose(up[:, :, 0, 0])}
    if down.ndim == 4:
        down, up = down[:, :, 0, 0], up[:, :, 0, 0]
    return {"down": np.transpose(down), "up": np.transpose(up)}


def _names(format: str, prefix: str, module_name: str) -> tuple[str, str, str | None]:
    if format == "peft":
        base = f"{prefix}.{module_name}" if prefix else module_name
        return f"{base}.lora_A.weight", f"{base}.lora_B.weight", None
    base = f"lora_{prefix}_{module_name.replace('.', '_')}"
    return f"{base}.lora_down.weight", f"{base}.lora_up.weight", f"{base}.alpha"


def _check_format(format: str) -> None:
    if format not in LORA_FORMATS:
        raise ValueError(f"format must be one of {LORA_FORMATS}, got {format!r}.")


def lora_state_dict(
    lora: Mapping[str, Any],
    module: Any,
    params: Any,
    *,
    alpha: float,
    format: str = "peft",
    prefix: str = "unet",
) -> dict[str, np.ndarray]:
    """The LoRA's tensors named and laid out as ``format`` stores them (module docstring).

    Args:
      lora: a LoRA of ``params`` (:func:`diffjax.lora.init_lora`).
      module: the adapted network (its key table names the modules).
      params: its parameters or their shapes.
      alpha: the LoRA's alpha (the update's scale is alpha / r).
      format: ``'peft'`` or ``'kohya'``.
      prefix: the component's name (``'unet'``; ``'transformer'`` for a DiT).

    Returns:
      ``{name: float32 array}``.
    """
    from diffjax.lora import flat_lora

    _check_format(format)
    modules = _torch_modules(module, params)
    state = {}
    for path, pair in sorted(flat_lora(lora).items()):
        if path not in modules:
            raise ValueError(f"the LoRA adapts {path}, which the network's key table lacks.")
        name, kind = modules[path]
        down, up = _to_torch(pair, kind)
        if name.endswith(".to_qkv"):
            parts = np.split(up, 3, axis=0)
            targets = [
                (f"{name.removesuffix('.to_qkv')}.{q}", part) for q, part in zip(_QKV, parts)
            ]
        else:
            targets = [(name, up)]
        for module_name, up_part in targets:
            down_key, up_key, alpha_key = _names(format, prefix, module_name)
            # safetensors writes the raw buffer: transposed views must be made contiguous.
            state[down_key] = np.ascontiguousarray(down)
            state[up_key] = np.ascontiguousarray(up_part)
            if alpha_key:
                state[alpha_key] = np.asarray(alpha, np.float32)
    return state


def lora_from_state_dict(
    state: Mapping[str, np.ndarray], module: Any, params: Any, *, prefix: str = "unet"
) -> tuple[dict[str, Any], float | None]:
    """The inverse of :func:`lora_state_dict`, the format recognised from the names.

    Returns:
      ``(lora, alpha)``: alpha from the kohya ``.alpha`` tensors (one value), or None for a
      PEFT file (its alpha is in the metadata, which :func:`load_lora` reads).

    Raises:
      ValueError: names that match no kernel of the network, missing factors, a wrong shape,
        unequal alphas, or q / k / v factors of a fused kernel that do not share ``down``.
    """
    format = "kohya" if any(key.endswith(".lora_down.weight") for key in state) else "peft"
    modules = _torch_modules(module, params)
    flat = traverse_util.flatten_dict(params, sep="/")
    by_module = {}
    for path, (name, _) in modules.items():
        if name.endswith(".to_qkv"):
            for q in _QKV:
                by_module[f"{name.removesuffix('.to_qkv')}.{q}"] = path
        else:
            by_module[name] = path
    used, pieces, alphas = set(), {}, set()
    for module_name, path in by_module.items():
        down_key, up_key, alpha_key = _names(format, prefix, module_name)
        if down_key not in state and up_key not in state:
            continue
        if down_key not in state or up_key not in state:
            raise ValueError(f"{module_name}: the LoRA file has one of its two factors only.")
        used.update({down_key, up_key})
        if alpha_key and alpha_key in state:
            used.add(alpha_key)
            alphas.add(float(np.asarray(state[alpha_key])))
        pieces.setdefault(path, []).append((module_name, state[down_key], state[up_key]))
    unknown = sorted(set(state) - used)
    if unknown:
        raise ValueError(
            f"the LoRA file names {len(unknown)} tensors that match no kernel of this network "
            f"(format {format!r}, prefix {prefix!r}): {unknown[:4]}."
        )
    if len(alphas) > 1:
        raise ValueError(f"the LoRA file has several alphas {sorted(alphas)}; diffjax uses one.")
    lora = {}
    for path, parts in pieces.items():
        kernel_ndim = len(flat[path].shape)
        if modules[path][0].endswith(".to_qkv"):
            order = {name.rsplit(".", 1)[1]: (down, up) for name, down, up in parts}
            if set(order) != set(_QKV):
                raise ValueError(
                    f"{path}: a fused q/k/v kernel needs LoRAs of to_q, to_k and to_v."
                )
            downs = [order[q][0] for q in _QKV]
            if not all(np.array_equal(downs[0], other) for other in downs[1:]):
                raise ValueError(
                    f"{path} is one fused q/k/v kernel in diffjax: its to_q, to_k and to_v "
                    f"LoRAs must share their down factor (lora_A), and these do not."
                )
            down, up = downs[0], np.concatenate([order[q][1] for q in _QKV], axis=0)
        else:
            ((_, down, up),) = parts
        pair = _from_torch(np.asarray(down, np.float32), np.asarray(up, np.float32), kernel_ndim)
        rank = pair["up"].shape[0]
        if pair["down"].shape != (*flat[path].shape[:-1], rank) or pair["up"].shape != (
            rank, flat[path].shape[-1]
        ):  # fmt: skip
            raise ValueError(
                f"{path}: LoRA factors {pair['down'].shape} and {pair['up'].shape} do not fit "
                f"the kernel {tuple(flat[path].shape)}."
            )
        lora[path] = pair
    if not lora:
        raise ValueError(f"the LoRA file adapts no kernel of this network (prefix {prefix!r}).")
    from diffjax.lora import nested_lora

    return nested_lora(lora), (alphas.pop() if alphas else None)


def save_lora(
    path: str | os.PathLike,
    lora: Mapping[str, Any],
    module: Any,
    params: Any,
    *,
    alpha: float,
    format: str = "peft",
    prefix: str = "unet",
) -> None:
    """Writes a LoRA as a safetensors file in ``format`` (module docstring); a PEFT file
    records its rank, alpha and target modules in the metadata, as diffusers does."""
    from safetensors.numpy import save_file

    from diffjax.lora import lora_rank

    state = lora_state_dict(lora, module, params, alpha=alpha, format=format, prefix=prefix)
    metadata = {"format": "pt"}
    if format == "peft":
        targets = sorted({key.split(".lora_A.")[0].removeprefix(f"{prefix}.") for key in state
                          if ".lora_A." in key})  # fmt: skip
        metadata[_METADATA_KEY] = json.dumps(
            {f"{prefix}.r": lora_rank(lora), f"{prefix}.lora_alpha": float(alpha),
             f"{prefix}.target_modules": targets}, sort_keys=True,
        )  # fmt: skip
    save_file(state, os.fspath(path), metadata=metadata)


def load_lora(
    path: str | os.PathLike, module: Any, params: Any, *, prefix: str = "unet"
) -> tuple[dict[str, Any], float]:
    """Reads a LoRA file of either format for ``module``.

    Returns:
      ``(lora, alpha)``: alpha from the kohya tensors or the PEFT metadata; r when the file
      does not say (diffusers' default for its own files).
    """
    from safetensors import safe_open
    from safetensors.numpy import load_file

    from diffjax.lora import lora_rank

    state = load_file(os.fspath(path))
    with safe_open(os.fspath(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
    lora, alpha = lora_from_state_dict(state, module, params, prefix=prefix)
    if alpha is None and metadata.get(_METADATA_KEY):
        recorded = json.loads(metadata[_METADATA_KEY])
        alpha = recorded.get(f"{prefix}.lora_alpha", recorded.get("lora_alpha"))
    return lora, float(lora_rank(lora) if alpha is None else alpha)
