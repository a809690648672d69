"""Objectives by name: what the training program minimises, and what it needs to do so.

``config.objective.name`` picks a registered objective (:data:`OBJECTIVES`: ``'denoising'``,
the diffusion loss, ``'progressive_distillation'``, one round of Salimans & Ho 2022 with a
frozen teacher (:mod:`diffjax.distillation`; the rounds are :mod:`diffjax.pipelines.
distillation`), ``'autoencoder'``, LDM's autoencoder, ``'classifier'``, the noisy
classifier of classifier guidance, ``'lora'``, a LoRA of a trained run's frozen weights, and
``'controlnet'``, a ControlNet of a trained run's frozen UNet). An objective owns

* its loss: ``loss_fn(params, frozen, batch, key, train) -> (loss, metrics)``, the function
  the generic train step (:mod:`diffjax.training.step`) differentiates with respect to
  ``params`` and the held-out evaluation calls with ``train=False``;
* the frozen pytrees it reads and where they come from (:meth:`ObjectiveEntry.frozen`: a
  diffjax workdir's EMA weights, or a weights file with its SHA-256); the loop loads them once,
  records them in ``config.json`` and passes them to every step as its ``frozen`` argument,
  never as constants closed over (DESIGN rule 10);
* its parameter groups: which parameters are trained with which optimizer settings, and which
  are frozen (no gradient, no optimizer state, left bit-identical); a group can also be
  updated only on every k-th step (``every``, ``offset``), which is how two networks update
  in alternation (a GAN's generator and discriminator);
* state outside the gradient (``init_extra``: a VQ codebook's EMA, batch statistics), which the
  step carries in :attr:`~diffjax.training.train_state.TrainState.extra`: the loss then takes
  it as a sixth argument and returns ``(loss, (metrics, new_extra))``;
* the periodic jobs the loop runs for it (sample grids, Fréchet distance, held-out loss; see
  :mod:`diffjax.training.hooks`).

``batch`` is a dict of arrays: ``'image'`` ``[B, H, W, C]``, ``'cond'`` the conditioning pytree
(:mod:`diffjax.models.conditioning`), and objective-specific entries (reflow's ``'noise'``).
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from diffjax.errors import ConfigError
from diffjax.names import RegistryNames
from diffjax.training.objectives.autoencoder import AUTOENCODER, make_autoencoder_loss
from diffjax.training.objectives.base import (
    FROZEN_GROUP,
    LossFn,
    Objective,
    ObjectiveContext,
    ObjectiveEntry,
)
from diffjax.training.objectives.classifier import CLASSIFIER, make_classifier_loss
from diffjax.training.objectives.controlnet import CONTROLNET
from diffjax.training.objectives.denoising import DENOISING, make_denoising_loss
from diffjax.training.objectives.distillation import PROGRESSIVE_DISTILLATION
from diffjax.training.objectives.lora import LORA

__all__ = [
    "FROZEN_GROUP",
    "OBJECTIVES",
    "OBJECTIVE_NAMES",
    "LossFn",
    "Objective",
    "ObjectiveContext",
    "ObjectiveEntry",
    "default_objective_config",
    "make_autoencoder_loss",
    "make_classifier_loss",
    "make_denoising_loss",
    "objective_entry",
    "register_objective",
]

OBJECTIVES: dict[str, ObjectiveEntry] = {
    "denoising": DENOISING,
    "progressive_distillation": PROGRESSIVE_DISTILLATION,
    "autoencoder": AUTOENCODER,
    "classifier": CLASSIFIER,
    "lora": LORA,
    "controlnet": CONTROLNET,
}
"""The registered objectives by name (the built-in ones and those of
:func:`register_objective`)."""

OBJECTIVE_NAMES: Sequence[str] = RegistryNames(OBJECTIVES)
"""The names of the registered objectives (a live view)."""


def register_objective(name: str, entry: ObjectiveEntry) -> None:
    """Adds an objective that configs can name (``config.objective.name``).

    Raises:
      ValueError: the name is taken or empty; TypeError: not an :class:`ObjectiveEntry`.
    """
    if not isinstance(name, str) or not name or name in OBJECTIVES:
        raise ValueError(
            f"register_objective needs a new, non-empty name; {name!r} is taken or empty "
            f"(registered: {tuple(OBJECTIVES)})."
        )
    if not isinstance(entry, ObjectiveEntry):
        raise TypeError(
            f"entry must be a diffjax.training.ObjectiveEntry, got {type(entry).__name__}."
        )
    OBJECTIVES[name] = entry


def objective_entry(name: str) -> ObjectiveEntry:
    """The registry entry of objective ``name``; ``ConfigError`` listing the names otherwise."""
    if name not in OBJECTIVES:
        raise ConfigError(f"Unknown objective {name!r}; expected one of {tuple(OBJECTIVES)}.")
    return OBJECTIVES[name]


def default_objective_config(name: str) -> ml_collections.ConfigDict:
    """The ``config.objective`` section of objective ``name`` with every default."""
    section = ml_collections.ConfigDict()
    section.name = name
    for key, value in objective_entry(name).defaults().items():
        section[key] = value
    return section
