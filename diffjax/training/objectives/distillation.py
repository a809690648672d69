"""The progressive-distillation objective: one round of Salimans & Ho 2022 against a frozen
teacher (the math in :mod:`diffjax.distillation`, the rounds in
:mod:`diffjax.pipelines.distillation`)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from diffjax.codecs import is_identity
from diffjax.errors import ConfigError
from diffjax.models.conditioning import (
    GUIDANCE_KEY,
    ModuleApply,
    cond_keys,
    drop_cond,
    make_model_fn,
    null_cond,
    select_cond,
)
from diffjax.training.objectives.base import Objective, ObjectiveContext, ObjectiveEntry

__all__ = ["PROGRESSIVE_DISTILLATION"]


def _distillation_defaults() -> dict[str, Any]:
    return dict(
        # The teacher's workdir (its EMA weights are the frozen 'teacher').
        teacher="",
        # What the teacher's network predicts (its config.diffusion.prediction_type).
        teacher_prediction="",
        # The teacher is a class-conditional network sampled with classifier-free guidance
        # (the first round of guidance distillation): two calls per teacher step.
        teacher_guidance=False,
        # N, the student's sampling steps; the teacher takes 2N on the nested grid.
        student_steps=0,
        # Clip the teacher's x-predictions to [-1, 1] in its two DDIM steps (as its sampler
        # does with config.sampling.clip_x0).
        teacher_clip_x0=True,
        # Salimans & Ho 2022, eq. 9: max(SNR, 1) on the x-space error.
        weighting="truncated_snr",
        # Guidance distillation (Meng et al. 2023): a network with a guidance embedding is
        # trained at guidance scales w ~ U[guidance_min, guidance_max].
        guidance_min=1.0,
        guidance_max=4.0,
    )


def _teacher_model(values: Mapping[str, Any]) -> dict[str, Any]:
    """The teacher's network config: the student's, without the guidance embedding when the
    teacher is the classifier-free guided network."""
    model = dict(values["model"])
    if values["objective"]["teacher_guidance"]:
        model["guidance_embedding"] = False
    return model


def _check_distillation(values: Mapping[str, Any]) -> None:
    from diffjax.distillation import check_distillation
    from diffjax.models.registry import build_model
    from diffjax.training.noise_process import build_process

    section = values["objective"]
    if not section["teacher"]:
        raise ConfigError("config.objective.teacher must name the teacher's workdir.")
    if section["student_steps"] < 1:
        raise ConfigError(
            f"config.objective.student_steps must be >= 1, got {section['student_steps']}."
        )
    student = build_model(values["model"])
    reads_guidance = GUIDANCE_KEY in cond_keys(student)
    if section["teacher_guidance"] and not reads_guidance:
        raise ConfigError(
            "config.objective.teacher_guidance=True distils a guided teacher into a student "
            "conditioned on the guidance scale: set config.model.guidance_embedding=True."
        )
    if reads_guidance and values["training"]["cond_dropout"] != 0:
        raise ConfigError(
            "guidance distillation trains no condition dropout (the scale w replaces it): set "
            "config.training.cond_dropout=0."
        )
    if reads_guidance and not 0 <= section["guidance_min"] <= section["guidance_max"]:
        raise ConfigError(
            f"config.objective.guidance_min={section['guidance_min']} and guidance_max="
            f"{section['guidance_max']} must satisfy 0 <= guidance_min <= guidance_max."
        )
    try:
        check_distillation(
            build_process(values["diffusion"]), section["student_steps"],
            student_prediction=values["diffusion"]["prediction_type"],
            teacher_prediction=section["teacher_prediction"], weighting=section["weighting"],
        )  # fmt: skip
    except ValueError as error:
        raise ConfigError(f"config.objective (progressive_distillation): {error}") from error


def _teacher_fn(module: Any, params: Any, cond: Mapping[str, Any], guidance: Any) -> Callable:
    """The teacher's ``model_fn``: its network with ``cond``, or with ``guidance`` [B] the
    classifier-free guided prediction uncond + w (cond - uncond) in one batched call."""
    if guidance is None:
        return make_model_fn(module, params, cond)
    network = ModuleApply(module)

    def guided(x_in, t_in):
        both = jax.tree.map(
            lambda value, empty: jnp.concatenate([value, empty]), cond, null_cond(module, cond)
        )
        outputs = network(
            params, both, None, jnp.concatenate([x_in, x_in]), jnp.concatenate([t_in, t_in])
        )
        conditional, unconditional = jnp.split(outputs, 2)
        scale = guidance.reshape((-1,) + (1,) * (x_in.ndim - 1)).astype(outputs.dtype)
        return unconditional + scale * (conditional - unconditional)

    return guided


def _build_distillation(context: ObjectiveContext) -> Objective:
    from diffjax.distillation import progressive_distillation_loss

    values, module, codec = context.values, context.model, context.codec
    section = values["objective"]
    teacher_module = context.frozen_modules["teacher"]
    reads_guidance = GUIDANCE_KEY in cond_keys(module)
    guided_teacher = section["teacher_guidance"]
    cond_dropout = values["training"]["cond_dropout"]
    settings = dict(
        num_student_steps=section["student_steps"],
        student_prediction=values["diffusion"]["prediction_type"],
        teacher_prediction=section["teacher_prediction"],
        weighting=section["weighting"],
        clip_x0=section["teacher_clip_x0"],
    )

    def loss_fn(params, frozen, batch, key, train):
        loss_key, dropout_key, guidance_key = jax.random.split(key, 3)
        cond = dict(batch.get("cond") or {})
        if train and cond_dropout > 0:  # teacher and student see the same dropped condition
            cond = select_cond(module, cond)
            cond = drop_cond(
                jax.random.fold_in(key, 4), cond, null_cond(module, cond), cond_dropout
            )
        if reads_guidance:
            cond[GUIDANCE_KEY] = jax.random.uniform(
                guidance_key, (batch["image"].shape[0],), jnp.float32,
                section["guidance_min"], section["guidance_max"],
            )  # fmt: skip
        student_fn = make_model_fn(
            module, params, select_cond(module, cond), train=train,
            rng=dropout_key if train else None,
        )  # fmt: skip
        teacher_fn = _teacher_fn(
            teacher_module, frozen["teacher"], select_cond(teacher_module, cond),
            cond.get(GUIDANCE_KEY) if guided_teacher else None,
        )  # fmt: skip
        x0 = batch["image"]
        if not is_identity(codec):
            x0 = codec.encode(frozen.get("codec"), x0, jax.random.fold_in(key, 3))
        loss, aux = progressive_distillation_loss(
            student_fn, teacher_fn, context.process, x0, loss_key, **settings
        )
        return loss, dict(mse=jnp.mean(aux["mse"]))

    return Objective(loss_fn)


def _distillation_frozen(values: Mapping[str, Any]) -> dict[str, Any]:
    return {"teacher": {"workdir": values["objective"]["teacher"], "model": _teacher_model(values)}}


PROGRESSIVE_DISTILLATION = ObjectiveEntry(
    defaults=_distillation_defaults,
    check=_check_distillation,
    build=_build_distillation,
    frozen=_distillation_frozen,
    hooks=("sample_grid", "frechet_distance", "held_out_loss"),
    state_keys=("teacher_guidance",),
)
"""The ``'progressive_distillation'`` objective."""
