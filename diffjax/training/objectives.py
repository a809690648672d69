"""Objectives by name: what the training program minimises, and what it needs to do so.

``config.objective.name`` picks a registered objective (:data:`OBJECTIVES`: ``'denoising'``,
the diffusion loss, and ``'progressive_distillation'``, one round of Salimans & Ho 2022 with a
frozen teacher (:mod:`diffjax.distillation`; the rounds are :mod:`diffjax.pipelines.
distillation`); the autoencoder, the noisy classifier and ControlNet register here as they
land). An objective owns

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
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from diffjax.codecs import IdentityCodec, is_identity
from diffjax.errors import ConfigError
from diffjax.losses import (
    TimeSampler,
    check_min_snr_gamma,
    check_weighting,
    denoising_loss,
    get_time_sampler,
)
from diffjax.models.conditioning import (
    GUIDANCE_KEY,
    ModuleApply,
    cond_keys,
    drop_cond,
    make_model_fn,
    null_cond,
    select_cond,
)
from diffjax.names import RegistryNames
from diffjax.predictions import check_prediction_supported
from diffjax.processes import check_process, is_discrete

__all__ = [
    "FROZEN_GROUP",
    "OBJECTIVES",
    "OBJECTIVE_NAMES",
    "LossFn",
    "Objective",
    "ObjectiveContext",
    "ObjectiveEntry",
    "default_objective_config",
    "make_denoising_loss",
    "objective_entry",
    "register_objective",
]

Params = Any
Batch = Mapping[str, Any]

LossFn = Callable[[Params, Any, Batch, jax.Array, bool], tuple[jnp.ndarray, dict[str, jnp.ndarray]]]
"""``loss_fn(params, frozen, batch, key, train) -> (loss, metrics)``; ``metrics`` float32
scalars."""

FROZEN_GROUP = "frozen"
"""The parameter-group label of parameters that are not trained."""


class Objective(NamedTuple):
    """An objective built for one run (what :meth:`ObjectiveEntry.build` returns).

    Attributes:
      loss_fn: ``loss_fn(params, frozen, batch, key, train) -> (loss, metrics)``; with
        ``init_extra``, ``loss_fn(params, frozen, batch, key, train, extra) -> (loss,
        (metrics, new_extra))``.
      param_labels: ``param_labels(params) -> pytree of group names`` (the structure of the
        params; :data:`FROZEN_GROUP` for parameters not trained), or None: one group.
      group_options: per group name, overrides of ``config.optim``'s keys (e.g.
        ``{'learning_rate': 1e-5}``) and ``every`` / ``offset`` (update the group only on steps
        with ``step % every == offset``).
      init_extra: ``init_extra() -> pytree`` of the state outside the gradient, or None.
    """

    loss_fn: Callable
    param_labels: Callable[[Params], Any] | None = None
    group_options: Mapping[str, Mapping[str, Any]] = {}
    init_extra: Callable[[], Any] | None = None


class ObjectiveContext(NamedTuple):
    """What an objective is built from.

    Attributes:
      values: the validated config (a plain dict).
      model: the trained network (a registered Flax module).
      process: the noise process.
      codec: the run's codec (:mod:`diffjax.codecs`).
      frozen_modules: the networks of the frozen pytrees, by name (a teacher's module).
    """

    values: Mapping[str, Any]
    model: Any
    process: Any
    codec: Any
    frozen_modules: Mapping[str, Any]


class ObjectiveEntry(NamedTuple):
    """A registered objective.

    Attributes:
      defaults: ``defaults() -> dict`` of its own ``config.objective`` keys (besides
        ``name``) with their defaults; the schema of the section is derived from them.
      check: ``check(values)`` raising ``ConfigError`` for a config it cannot run with (its
        own section and what it needs of the others), before anything is built.
      build: ``build(context: ObjectiveContext) -> Objective``.
      frozen: ``frozen(values) -> {name: source}``: the frozen pytrees it reads, each source
        ``{'workdir': path}`` (that run's EMA weights and network) or ``{'weights': path,
        'sha256': hex}`` (a parameter file); ``{}`` for none.
      hooks: the names of the loop's periodic jobs it runs (:mod:`diffjax.training.hooks`).
      state_keys: keys of its section that fix the state (a resume must keep them).
    """

    defaults: Callable[[], Mapping[str, Any]]
    check: Callable[[Mapping[str, Any]], None]
    build: Callable[[ObjectiveContext], Objective]
    frozen: Callable[[Mapping[str, Any]], Mapping[str, Mapping[str, Any]]]
    hooks: tuple[str, ...]
    state_keys: tuple[str, ...] = ()


def make_denoising_loss(
    module: Any,
    process: Any,
    *,
    prediction_type: str = "eps",
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    offset_noise: float = 0.0,
    time_sampler: TimeSampler | None = None,
    cond_dropout: float = 0.0,
    codec: Any = None,
) -> LossFn:
    """The denoising loss of :func:`diffjax.losses.denoising_loss` as a train-step ``loss_fn``.

    Each call splits ``key`` into the loss key (times and noise), the dropout key and the
    condition-dropout key; a latent codec's posterior draw uses ``fold_in(key, 3)``. The network is called through the one adapter
    (:func:`diffjax.models.make_model_fn`) with the batch's conditioning; with ``train`` it
    applies dropout and replaces each example's whole condition by the network's null
    condition with probability ``cond_dropout`` (Ho & Salimans 2022, Algorithm 1); without,
    neither (the held-out loss). A latent codec encodes the images first, its parameters taken
    from ``frozen['codec']``.

    Args:
      module: the registered network (``module(x, t, cond, train=...)``).
      process: the schedule or continuous process.
      prediction_type: what the network predicts.
      weighting: one of :data:`diffjax.losses.LOSS_WEIGHTINGS`.
      min_snr_gamma: gamma of the Min-SNR weighting.
      offset_noise: per-channel offset-noise scale (0 disables it).
      time_sampler: training times for a continuous process (default uniform).
      cond_dropout: probability of training an example unconditionally.
      codec: the model space (:mod:`diffjax.codecs`; default pixel space).

    Returns:
      ``loss_fn(params, frozen, batch, key, train) -> (loss, {'mse': ...})``. ``batch`` holds
      ``'image'`` float ``[B, H, W, C]`` in [-1, 1], ``'cond'`` (what the network reads of it),
      and optionally ``'noise'``, the eps paired with each image (reflow).

    Raises:
      ValueError: a bad option, before anything is traced.
    """
    check_process(process)
    check_prediction_supported(prediction_type, process)
    check_weighting(weighting)
    if weighting == "min_snr":
        check_min_snr_gamma(min_snr_gamma)
    if not offset_noise >= 0:
        raise ValueError(f"offset_noise must be >= 0, got {offset_noise}.")
    if time_sampler is not None and is_discrete(process):
        raise ValueError("time_sampler is for continuous processes; a schedule draws U{0..T-1}.")
    if not 0.0 <= cond_dropout < 1.0:
        raise ValueError(f"cond_dropout must lie in [0, 1), got {cond_dropout}.")
    if cond_dropout > 0 and not getattr(module, "cond_keys", ()):
        raise ValueError(
            f"cond_dropout={cond_dropout} drops the condition, but {type(module).__name__} reads "
            f"none (cond_keys=()); an unconditional network has nothing to drop."
        )
    codec = IdentityCodec() if codec is None else codec

    def loss_fn(params, frozen, batch, key, train):
        if "image" not in batch:
            raise ValueError(
                f"The batch needs an 'image' entry [B, H, W, C]; got keys {sorted(batch)}."
            )
        loss_key, dropout_key, cond_key = jax.random.split(key, 3)
        cond = select_cond(module, batch.get("cond"))
        if train and cond_dropout > 0:
            cond = drop_cond(cond_key, cond, null_cond(module, cond), cond_dropout)
        model_fn = make_model_fn(
            module, params, cond, train=train, rng=dropout_key if train else None
        )
        x0 = batch["image"]
        if not is_identity(codec):
            x0 = codec.encode(frozen.get("codec"), x0, jax.random.fold_in(key, 3))
        loss, aux = denoising_loss(
            model_fn, process, x0, loss_key, prediction_type=prediction_type,
            weighting=weighting, min_snr_gamma=min_snr_gamma, offset_noise=offset_noise,
            time_sampler=time_sampler, noise=batch.get("noise"),
        )  # fmt: skip
        return loss, dict(mse=jnp.mean(aux["mse"]))

    return loss_fn


def _no_keys() -> dict[str, Any]:
    return {}


def _check_denoising(values: Mapping[str, Any]) -> None:
    """The denoising loss reads the diffusion section, which the programs check."""


def _build_denoising(context: ObjectiveContext) -> Objective:
    diffusion = context.values["diffusion"]
    time_sampler = get_time_sampler(
        diffusion["time_sampler"], context.process, **diffusion["time_sampler_options"]
    )
    return Objective(
        make_denoising_loss(
            context.model,
            context.process,
            prediction_type=diffusion["prediction_type"],
            weighting=diffusion["loss_weighting"],
            min_snr_gamma=diffusion["min_snr_gamma"],
            offset_noise=diffusion["offset_noise"],
            time_sampler=time_sampler,
            cond_dropout=context.values["training"]["cond_dropout"],
            codec=context.codec,
        )
    )


def _no_frozen(values: Mapping[str, Any]) -> dict[str, Any]:
    return {}


# ------------------------------------------------------------------ progressive distillation


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


OBJECTIVES: dict[str, ObjectiveEntry] = {
    "denoising": ObjectiveEntry(
        defaults=_no_keys,
        check=_check_denoising,
        build=_build_denoising,
        frozen=_no_frozen,
        hooks=("sample_grid", "frechet_distance", "held_out_loss"),
    ),
    "progressive_distillation": ObjectiveEntry(
        defaults=_distillation_defaults,
        check=_check_distillation,
        build=_build_distillation,
        frozen=_distillation_frozen,
        hooks=("sample_grid", "frechet_distance", "held_out_loss"),
        state_keys=("teacher_guidance",),
    ),
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
