"""The ControlNet objective: spatial control of a trained run through a trainable copy of its
encoder (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion Models",
arXiv:2302.05543, Sec. 3.3).

``config.objective.name = 'controlnet'`` reads the EMA weights of the UNet or DiT run in
``config.objective.base`` as a frozen pytree (``frozen['base']``: a step argument, sharded like
the state, never updated) and trains only a ControlNet of it (:class:`diffjax.models.
ControlNet`, or :class:`diffjax.models.DiTControlNet` for a DiT), whose shared layers start as
copies of the base's and whose zero layers make the first prediction exactly the base model's.
``config.model`` is the ``'controlnet'`` (``'dit_controlnet'``) network: the base run's
``config.model`` keys with that name and the ControlNet's keys
(:func:`diffjax.models.registry.controlnet_base_config` is the inverse), and the data's batches
hold the control image ``cond['control']`` (``'circles'``, ``'fashion_mnist_edges'`` or a
registered dataset). The loss is ``config.diffusion``'s denoising loss; the condition
(control image and any label) is dropped to the null one, an all-zero control, with
probability ``config.training.cond_dropout``, so samples can be guided on the control
(classifier-free guidance). The state (parameters, EMA, optimizer moments) holds the
ControlNet alone; every generator of the run samples the base with the ControlNet's residuals.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax

from diffjax.errors import ConfigError
from diffjax.models.controlnet import controlnet_from_base
from diffjax.models.registry import controlnet_base_config
from diffjax.training.objectives.base import Objective, ObjectiveContext, ObjectiveEntry
from diffjax.training.objectives.denoising import DENOISING

__all__ = ["CONTROLNET"]


def _defaults() -> dict[str, Any]:
    # The workdir of the trained UNet run to control (its EMA weights; required).
    return dict(base="")


def _check(values: Mapping[str, Any]) -> None:
    if not values["objective"]["base"]:
        raise ConfigError(
            "config.objective.name='controlnet' controls a trained run: set "
            "config.objective.base to its workdir."
        )
    if values["model"]["name"] not in ("controlnet", "dit_controlnet"):
        raise ConfigError(
            f"config.objective.name='controlnet' trains the 'controlnet' network (a UNet's) or "
            f"the 'dit_controlnet' one (a DiT's), got config.model.name="
            f"{values['model']['name']!r}: copy the base run's config.model and set its name."
        )


def _frozen(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {"base": {"workdir": values["objective"]["base"]}}


def _build(context: ObjectiveContext) -> Objective:
    base_module = context.frozen_modules["base"]
    if base_module != context.model.base:
        wanted = controlnet_base_config(context.values["model"])
        raise ConfigError(
            f"config.model must be the network of the base run {context.values['objective']['base']} "
            f"with the ControlNet's name: its base ({wanted}) is not the base run's "
            f"{type(base_module).__name__} ({base_module}). Copy the base run's config.model."
        )
    denoising = DENOISING.build(context).loss_fn

    def network_params(params: Any, frozen: Mapping[str, Any]) -> dict[str, Any]:
        return {"base": frozen["base"], "controlnet": params}

    def loss_fn(params, frozen, batch, key, train):
        return denoising(network_params(params, frozen), frozen, batch, key, train)

    def init(key: jax.Array) -> Any:
        return context.model_init(key)["controlnet"]

    def init_from_frozen(key: jax.Array, frozen: Mapping[str, Any]) -> Any:
        return controlnet_from_base(init(key), frozen["base"])

    return Objective(
        loss_fn, init=init, network_params=network_params, init_from_frozen=init_from_frozen
    )


CONTROLNET = ObjectiveEntry(
    defaults=_defaults,
    check=_check,
    build=_build,
    frozen=_frozen,
    hooks=DENOISING.hooks,
)
"""The ``'controlnet'`` objective."""
