"""Explicit key tables from a PyTorch state dict to a Flax variable tree.

A port lists, for every Flax variable, the PyTorch name it comes from and how its layout
changes (:class:`KeyRule`). :func:`apply_key_table` then builds the variables and refuses a
state dict with a missing key, an unexpected key or a wrong shape, naming each, so that a
file of another architecture can never load silently into the wrong slots (DESIGN rule 11).

Layouts: PyTorch convolution kernels are ``[out, in, kh, kw]`` and Flax's ``[kh, kw, in,
out]``; PyTorch linear weights are ``[out, in]`` and Flax's ``[in, out]``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, NamedTuple

import numpy as np

__all__ = ["KeyRule", "StateDictMismatchError", "apply_key_table", "conv_kernel", "linear_kernel"]


class StateDictMismatchError(ValueError):
    """A state dict's keys or shapes do not match the architecture it is loaded into."""


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch ``[out, in, kh, kw]`` -> Flax ``[kh, kw, in, out]``."""
    return np.transpose(weight, (2, 3, 1, 0))


def linear_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch ``[out, in]`` -> Flax ``[in, out]``."""
    return np.transpose(weight)


def _identity(value: np.ndarray) -> np.ndarray:
    return value


class KeyRule(NamedTuple):
    """One Flax variable and where it comes from.

    Attributes:
      torch_key: the state-dict name, e.g. ``'Mixed_5b.branch1x1.conv.weight'``.
      flax_path: the variable's path, collection first, e.g.
        ``('params', 'Mixed_5b', 'branch1x1', 'conv', 'kernel')``.
      shape: the Flax variable's shape.
      transform: maps the PyTorch array to the Flax layout (:func:`conv_kernel`, ...).
    """

    torch_key: str
    flax_path: tuple[str, ...]
    shape: tuple[int, ...]
    transform: Callable[[np.ndarray], np.ndarray] = _identity


def _insert(tree: dict[str, Any], path: tuple[str, ...], value: np.ndarray) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def apply_key_table(
    state_dict: Mapping[str, np.ndarray],
    rules: Iterable[KeyRule],
    *,
    source: str,
    ignored: Callable[[str], bool] = lambda key: False,
    dtype: np.dtype | None = np.float32,
) -> dict[str, Any]:
    """Builds the Flax variables that ``rules`` describe from ``state_dict``.

    Args:
      state_dict: ``{torch name: array}`` (:func:`~diffjax.weights.read_torch_state_dict`).
      rules: one :class:`KeyRule` per Flax variable.
      source: what the state dict is, for error messages (a path or a description).
      ignored: keys of the state dict that are allowed to be left unused (e.g. BatchNorm's
        ``num_batches_tracked``).
      dtype: cast every variable to this dtype (None keeps the stored dtypes).

    Returns:
      The nested variable dict, e.g. ``{'params': {...}, 'batch_stats': {...}}``.

    Raises:
      StateDictMismatchError: keys missing, unexpected or of the wrong shape (all listed).
    """
    rules = list(rules)
    used = {rule.torch_key for rule in rules}
    missing = sorted(used - set(state_dict))
    unexpected = sorted(key for key in state_dict if key not in used and not ignored(key))
    variables: dict[str, Any] = {}
    wrong_shape = []
    for rule in rules:
        if rule.torch_key not in state_dict:
            continue
        value = rule.transform(np.asarray(state_dict[rule.torch_key]))
        if tuple(value.shape) != tuple(rule.shape):
            wrong_shape.append(
                f"{rule.torch_key}: {tuple(state_dict[rule.torch_key].shape)} in the file "
                f"(Flax layout {tuple(value.shape)}), Flax layout {tuple(rule.shape)} expected"
            )
            continue
        _insert(
            variables, rule.flax_path, value if dtype is None else value.astype(dtype, copy=False)
        )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {unexpected[:5]}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} wrong shape(s): {wrong_shape[:3]}")
    if problems:
        raise StateDictMismatchError(
            f"{source} does not match the architecture it is loaded into: {'; '.join(problems)}."
        )
    return variables
