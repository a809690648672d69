"""The LoRA objective: fine-tune a trained run through low-rank updates of its frozen weights.

``config.objective.name = 'lora'`` reads the EMA weights of the run in
``config.objective.base`` as a frozen pytree (``frozen['base']``: a step argument, sharded like
the state, never updated) and trains only a LoRA of them (:mod:`diffjax.lora`: rank
``rank``, scale ``alpha / rank``, on the kernels ``targets`` selects), with the denoising loss
of ``config.diffusion`` on the run's data. The state (parameters, EMA, optimizer moments)
holds the LoRA alone: the base costs no optimizer memory and its checkpoints hold a few
thousand numbers. ``config.model`` must be the base run's network; every generator of the run
(sample grids, Fréchet distances, ``python -m diffjax.sample`` and ``evaluate``) samples with
the merged weights W + (alpha / r) down @ up. :func:`diffjax.models.lora_weights.save_lora`
writes the trained LoRA (the run's EMA parameters) in the diffusers/PEFT or kohya format.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax

from diffjax.errors import ConfigError
from diffjax.lora import LORA_TARGETS, init_lora, lora_paths, lora_scale, merge
from diffjax.training.objectives.base import Objective, ObjectiveContext, ObjectiveEntry
from diffjax.training.objectives.denoising import DENOISING

__all__ = ["LORA"]


def _defaults() -> dict[str, Any]:
    return dict(
        # The workdir of the trained run to adapt (its EMA weights; required).
        base="",
        # r, and alpha: the update is (alpha / r) down @ up.
        rank=4,
        alpha=4.0,
        # 'attention' (the attention projections), 'all' (every kernel) or a regular
        # expression over '/'-joined kernel paths (diffjax.lora.LORA_TARGETS).
        targets="attention",
    )


def _check(values: Mapping[str, Any]) -> None:
    section = values["objective"]
    if not section["base"]:
        raise ConfigError(
            "config.objective.name='lora' adapts a trained run: set config.objective.base to "
            "its workdir."
        )
    if section["rank"] < 1:
        raise ConfigError(f"config.objective.rank must be >= 1, got {section['rank']}.")
    try:
        lora_scale(section["alpha"], section["rank"])
    except ValueError as error:
        raise ConfigError(f"config.objective.alpha: {error}") from error
    if section["targets"] not in LORA_TARGETS:
        import re

        try:
            re.compile(section["targets"])
        except re.error as error:
            raise ConfigError(
                f"config.objective.targets must be one of {tuple(LORA_TARGETS)} or a regular "
                f"expression, got {section['targets']!r} ({error})."
            ) from error


def _frozen(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {"base": {"workdir": values["objective"]["base"]}}


def _build(context: ObjectiveContext) -> Objective:
    section = context.values["objective"]
    base_module = context.frozen_modules["base"]
    if base_module != context.model:
        raise ConfigError(
            f"config.model must be the network of the base run {section['base']} "
            f"({type(base_module).__name__} as that run configured it): a LoRA adapts that "
            f"network's weights. Copy its config.model section."
        )
    rank, targets = section["rank"], section["targets"]
    scale = lora_scale(section["alpha"], rank)
    shapes = jax.eval_shape(context.model_init, jax.random.key(0))
    try:
        lora_paths(shapes, targets)
        jax.eval_shape(lambda: init_lora(jax.random.key(0), shapes, rank, targets=targets))
    except ValueError as error:
        raise ConfigError(f"config.objective: {error}") from error
    denoising = DENOISING.build(context).loss_fn

    def loss_fn(params, frozen, batch, key, train):
        return denoising(merge(frozen["base"], params, scale), frozen, batch, key, train)

    def network_params(params, frozen):
        return merge(frozen["base"], params, scale)

    return Objective(
        loss_fn,
        init=lambda key: init_lora(key, shapes, rank, targets=targets),
        network_params=network_params,
    )


LORA = ObjectiveEntry(
    defaults=_defaults,
    check=_check,
    build=_build,
    frozen=_frozen,
    hooks=DENOISING.hooks,
    state_keys=("rank", "targets"),
)
"""The ``'lora'`` objective."""
