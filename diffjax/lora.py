"""LoRA: low-rank updates of a frozen network's kernels (Hu et al. 2021, "LoRA: Low-Rank
Adaptation of Large Language Models", arXiv:2106.09685, eq. 3).

A LoRA holds, for each adapted kernel W of a parameter pytree, two factors ``down`` and
``up`` of rank r, and the adapted kernel is

    W' = W + (alpha / r) * down @ up

where, in Flax's layouts, a Dense kernel ``[in, out]`` has ``down`` ``[in, r]`` and ``up``
``[r, out]``, and a convolution kernel ``[kh, kw, in, out]`` has ``down`` ``[kh, kw, in, r]``
(a convolution to r channels) and ``up`` ``[r, out]`` (a 1x1 convolution back): PEFT's and
kohya's factorisations. ``up`` starts at zero (Hu et al.: B = 0), so a new LoRA leaves the
network unchanged, and ``down`` like PEFT's ``lora_A`` (uniform in +-1 / sqrt(fan_in)).

Everything here maps arrays to arrays: the LoRA is a nested dict shaped like the parameters,
with ``{'down': ..., 'up': ...}`` where an adapted kernel is (so it checkpoints and shards like
any parameter pytree; :func:`flat_lora` gives ``{'/'-joined kernel path: pair}``), the base
parameters are never changed in place, and the merged
parameters are what a network is called with (``make_model_fn(module, merge(base, lora,
scale))``). Training differentiates with respect to the LoRA only; the base can be a frozen
step argument, with no gradient and no optimizer state. File formats (diffusers/PEFT and
kohya) are :mod:`diffjax.models.lora_weights`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import traverse_util

__all__ = [
    "LORA_TARGETS",
    "flat_lora",
    "init_lora",
    "nested_lora",
    "lora_paths",
    "lora_rank",
    "lora_scale",
    "merge",
    "unmerge",
]

LORA_TARGETS: dict[str, str] = {
    "attention": r"(^|/)(qkv|to_q|to_k|to_v|to_out)/kernel$",
    "all": r"(^|/)kernel$",
}
"""Named target sets, regular expressions over a kernel's ``'/'``-joined path: the attention
projections (Hu et al.'s default; diffusers' ``to_q`` / ``to_k`` / ``to_v`` / ``to_out`` of SD
and the DiT, the fused ``qkv`` of DDPM's self-attention, and that block's output projection
``proj_out``, the kernel beside a ``qkv``), or every Dense and convolution kernel. Any other
regular expression selects its own set."""

Lora = dict[str, Any]
"""A LoRA: a nested dict with ``{'down': [..., in, r], 'up': [r, out]}`` at each adapted
kernel's path."""


def flat_lora(lora: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{'/'-joined kernel path: {'down', 'up'}}`` of a nested LoRA."""
    flat = traverse_util.flatten_dict(lora, sep="/")
    pairs: dict[str, dict[str, Any]] = {}
    for path, value in flat.items():
        kernel, _, factor = path.rpartition("/")
        if factor not in ("down", "up"):
            raise ValueError(f"a LoRA holds 'down' and 'up' factors; {path!r} is neither.")
        pairs.setdefault(kernel, {})[factor] = value
    return pairs


def nested_lora(pairs: Mapping[str, Mapping[str, Any]]) -> Lora:
    """The nested LoRA of ``{'/'-joined kernel path: {'down', 'up'}}``."""
    return traverse_util.unflatten_dict(
        {
            f"{path}/{factor}": value
            for path, pair in pairs.items()
            for factor, value in pair.items()
        },
        sep="/",
    )


def _pattern(targets: str) -> re.Pattern:
    try:
        return re.compile(LORA_TARGETS.get(targets, targets))
    except re.error as error:
        raise ValueError(
            f"targets must be one of {tuple(LORA_TARGETS)} or a regular expression over "
            f"kernel paths, got {targets!r} ({error})."
        ) from error


def lora_paths(params: Any, targets: str = "attention") -> list[str]:
    """The ``'/'``-joined paths of the Dense (2-D) and convolution (4-D) kernels of ``params``
    that ``targets`` selects (a name of :data:`LORA_TARGETS` or a regular expression).

    Raises:
      ValueError: a bad regular expression, or nothing selected.
    """
    pattern = _pattern(targets)
    flat = traverse_util.flatten_dict(params, sep="/")
    selected = {path for path in flat if pattern.search(path)}
    if targets == "attention":  # a self-attention block's output projection, beside its qkv
        selected |= {
            path.replace("/qkv/kernel", "/proj_out/kernel") for path in selected
            if path.endswith("/qkv/kernel") and path.replace("/qkv/", "/proj_out/") in flat
        }  # fmt: skip
    paths = [path for path in selected if len(flat[path].shape) in (2, 4)]
    if not paths:
        kernels = [path for path, leaf in flat.items() if path.endswith("/kernel")]
        raise ValueError(
            f"targets={targets!r} selects no Dense or convolution kernel of these parameters "
            f"(kernels: {kernels[:6]}{' ...' if len(kernels) > 6 else ''})."
        )
    return sorted(paths)


def init_lora(
    key: jax.Array, params: Any, rank: int, *, targets: str = "attention", dtype: Any = None
) -> Lora:
    """A new LoRA of rank ``rank`` for the kernels ``targets`` selects: ``up`` zero, ``down``
    uniform in +-1 / sqrt(fan_in) (PEFT's ``lora_A``), so merging it changes nothing (B = 0 at
    the start: Hu et al. 2021, Sec. 4.1).

    Args:
      key: PRNG key.
      params: the base parameters (arrays or ``jax.ShapeDtypeStruct``).
      rank: r >= 1, at most min(fan_in, out) of each adapted kernel (a kernel as the matrix
        ``[kh kw in, out]``).
      targets: a name of :data:`LORA_TARGETS` or a regular expression over kernel paths.
      dtype: the factors' dtype (default each kernel's).

    Returns:
      The LoRA: nested like ``params``, ``{'down': [..., in, r], 'up': [r, out]}`` at each
      adapted kernel.

    Raises:
      ValueError: a bad rank or target set.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}.")
    flat = traverse_util.flatten_dict(params, sep="/")
    paths = lora_paths(params, targets)
    lora = {}
    for index, path in enumerate(paths):
        shape = flat[path].shape
        fan_in, fan_out = math.prod(shape[:-1]), shape[-1]
        if rank > min(fan_in, fan_out):
            raise ValueError(
                f"rank={rank} exceeds the sides of {path} {tuple(shape)}: a rank-{rank} update "
                f"would not be low-rank."
            )
        kind = dtype or flat[path].dtype
        bound = 1.0 / math.sqrt(fan_in)
        down = jax.random.uniform(
            jax.random.fold_in(key, index), (*shape[:-1], rank), kind, -bound, bound
        )
        lora[path] = {"down": down, "up": jnp.zeros((rank, fan_out), kind)}
    return nested_lora(lora)


def lora_rank(lora: Mapping[str, Any]) -> int:
    """r of a LoRA (every factor pair has the same rank)."""
    ranks = {int(pair["up"].shape[0]) for pair in flat_lora(lora).values()}
    if len(ranks) != 1:
        raise ValueError(f"a LoRA has one rank; these factors have ranks {sorted(ranks)}.")
    return ranks.pop()


def lora_scale(alpha: float, rank: int) -> float:
    """alpha / r, the factor of every update (Hu et al. 2021, Sec. 4.1)."""
    if not math.isfinite(alpha) or rank < 1:
        raise ValueError(f"alpha must be finite and rank >= 1, got {alpha} and {rank}.")
    return float(alpha) / rank


def _delta(pair: Mapping[str, jax.Array]) -> jax.Array:
    """down @ up in the kernel's layout: ``[..., in, r] @ [r, out] -> [..., in, out]``."""
    return jnp.einsum("...r,ro->...o", pair["down"], pair["up"])


def _add(params: Any, lora: Mapping[str, Any], scale: Any) -> Any:
    flat = traverse_util.flatten_dict(params, sep="/")
    pairs = flat_lora(lora)
    missing = sorted(set(pairs) - set(flat))
    if missing:
        raise ValueError(f"the LoRA adapts kernels these parameters lack: {missing[:6]}.")
    for path, pair in pairs.items():
        kernel = flat[path]
        delta = _delta(pair)
        if delta.shape != kernel.shape:
            raise ValueError(
                f"the LoRA of {path} gives shape {delta.shape}; the kernel is {kernel.shape}."
            )
        flat[path] = (kernel + scale * delta.astype(jnp.float32)).astype(kernel.dtype)
    return traverse_util.unflatten_dict(flat, sep="/")


def merge(params: Any, lora: Mapping[str, Any], scale: float) -> Any:
    """The adapted parameters W + scale * down @ up for every kernel of ``lora`` (the others
    unchanged); ``scale`` is :func:`lora_scale` (alpha / r), 0 gives the base back. This is
    W_0 + Delta W = W_0 + B A (Hu et al. 2021, eq. 3) scaled by alpha / r (Sec. 4.1).

    Args:
      params: the base parameters (a nested dict).
      lora: from :func:`init_lora`, trained or loaded.
      scale: alpha / r (a float, or a traced scalar).

    Returns:
      A new parameter pytree of the structure of ``params``.
    """
    return _add(params, lora, scale)


def unmerge(params: Any, lora: Mapping[str, Any], scale: float) -> Any:
    """The inverse of :func:`merge`: W - scale * down @ up (the base again, to float32
    rounding; Hu et al. 2021, eq. 3, subtracted)."""
    return _add(params, lora, -scale)
