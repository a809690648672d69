"""A live, read-only view of a registry's names (samplers, models, objectives).

The registries of diffjax are dicts that user code may add to (``register_sampler``,
``register_model``, ``register_objective``); their public ``*_NAMES`` constants are views of
those dicts, so that a name registered after import is listed, and ``name in NAMES`` and
``tuple(NAMES)`` work as on a tuple.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["RegistryNames"]


class RegistryNames(Sequence):
    """The keys of ``registry``, in registration order, as a read-only sequence.

    Args:
      registry: the dict whose keys are the names.
    """

    def __init__(self, registry: Mapping[str, Any]):
        self._registry = registry

    def __getitem__(self, index):
        return tuple(self._registry)[index]

    def __len__(self) -> int:
        return len(self._registry)

    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, Sequence) else other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self._registry))
