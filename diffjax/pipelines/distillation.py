"""Progressive distillation as a program: rounds of students, each a resumable training run.

Salimans & Ho 2022 (arXiv:2202.00512, Algorithm 2): the student of round 1 takes N = the
config's ``start_steps`` DDIM steps where the teacher takes 2N; each later round halves N, its
teacher the previous round's student, until ``end_steps``. Every round is a run of the training
program (:func:`diffjax.training.loop.train_and_evaluate`) with the objective
``'progressive_distillation'`` (:mod:`diffjax.training.objectives`, the math in
:mod:`diffjax.distillation`), in its own sub-folder ``round_<k>_<N>_steps`` of the workdir:

* its config is the teacher's (network, process, data) with the objective naming the teacher's
  folder, ``training.init_from`` the same folder (the student starts from the teacher's
  weights), ``config.diffusion.prediction_type`` the student's, the paper's optimisation
  (learning rate annealed linearly to 0 within the round, no EMA, gradient clipping at 1),
  DDIM on the student's N-point grid as its sampler, then the distillation config's
  ``student`` overrides;
* the teacher's weights are read once, read-only, and enter every step as its ``frozen``
  argument; a round's folder is never deleted or pruned, so the teacher of round k + 1 (the
  newest checkpoint of round k) is kept whatever ``keep_checkpoints`` says;
* a kill anywhere resumes exactly: a finished round has ``round.json``; an unfinished one
  resumes from its newest checkpoint like any training run.

After each round the student's FD at N steps is measured beside the original teacher's DDIM and
DPM-Solver++ with N network calls (``compare_teacher``), with one protocol (samples, seed,
feature network, reference statistics) for all three; the teacher's results go to the
workdir's ``teacher_eval/``, never into the teacher's folder. ``distill.json`` collects the
rounds. The workdir then stands for its newest finished student (``run_pointer.json``,
:func:`diffjax.training.workdir.resolve_run_dir`): ``python -m diffjax.sample --workdir DIR``
and ``python -m diffjax.evaluate --workdir DIR`` sample it with its N steps.

**Guidance distillation** (Meng et al. 2023, "On Distillation of Guided Diffusion Models",
arXiv:2210.03142): with ``guidance=True`` a class-conditional teacher trained with condition
dropout is distilled into a student whose network also embeds the guidance scale w
(``config.model.guidance_embedding``): in round 1 the teacher is the classifier-free guided
prediction at w ~ U[guidance_min, guidance_max] (two network calls), and the student learns it
in one call (with half the steps, which merges the paper's two stages into one); later rounds
distil that w-conditioned student as usual. A guided student samples with
``config.sampling.guidance_scale`` as its w, one network call per step.
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any, Mapping

import jax
import ml_collections

from diffjax.errors import ConfigError
from diffjax.evaluation.features import write_json
from diffjax.evaluation.program import EvalSettings, evaluate_run
from diffjax.processes import is_discrete
from diffjax.training.config import config_to_dict, upgrade_config
from diffjax.training.console import log
from diffjax.training.loop import train_and_evaluate
from diffjax.training.programs import build_process, sampling_settings, validate_config
from diffjax.training.workdir import (
    CHECKPOINT_DIR,
    EVAL_DIR,
    load_run_record,
    resolve_run_dir,
    write_run_pointer,
)

__all__ = [
    "REPORT_FILE",
    "ROUND_FILE",
    "distill",
    "distill_config",
    "round_configs",
    "round_name",
    "round_steps",
]

REPORT_FILE = "distill.json"
"""The workdir's summary of the rounds (settings, per-round FD and wall time)."""
ROUND_FILE = "round.json"
"""A finished round's record, in its folder."""
SETTINGS_FILE = "distill_settings.json"
TEACHER_EVAL_DIR = "teacher_eval"


def distill_config() -> ml_collections.ConfigDict:
    """Every key of a distillation config with its default (``configs/*_distill.py`` edit it).

    Keys:
      start_steps: N of round 1's student (its teacher takes 2N DDIM steps).
      end_steps: N of the last round's student; ``start_steps / end_steps`` a power of two.
      steps_per_round: training steps of each round.
      student_prediction: the students' prediction type ('' = the teacher's; one of
        :data:`diffjax.distillation.STUDENT_PREDICTIONS`).
      weighting: the loss weighting (Salimans & Ho's 'truncated_snr' = max(SNR, 1)).
      guidance: guidance distillation of a class-conditional teacher (module docstring).
      guidance_min, guidance_max: the range of w it trains on.
      evaluate: after each round, FD of the student at N steps (off: no evaluation).
      compare_teacher: and FD of the original teacher's DDIM and DPM-Solver++ with N steps
        (N network calls; 2N with classifier-free guidance) beside it.
      fd_num_samples, fd_batch_size, fd_seed: the FD protocol of every round (the reference
        split is the teacher's ``config.eval.split``).
      fd_features: the feature network ('' = the teacher's ``config.eval.fd_features``;
        'inception' for FID).
      student: overrides of the students' training config, by section (e.g.
        ``student.optim.learning_rate``, ``student.data.batch_size``); applied after the
        paper's settings, which are ``optim.lr_decay='linear'``, ``optim.warmup_steps=0``,
        ``optim.ema_decay=0`` and ``optim.grad_clip_norm=1``.
    """
    config = ml_collections.ConfigDict()
    config.start_steps = 64
    config.end_steps = 1
    config.steps_per_round = 1000
    config.student_prediction = ""
    config.weighting = "truncated_snr"
    config.guidance = False
    config.guidance_min = 1.0
    config.guidance_max = 4.0
    config.evaluate = True
    config.compare_teacher = True
    config.fd_num_samples = 1000
    config.fd_batch_size = 200
    config.fd_seed = 0
    config.fd_features = ""
    config.student = ml_collections.ConfigDict()
    return config


def round_steps(start_steps: int, end_steps: int) -> list[int]:
    """[start, start / 2, ..., end]: the students' steps, round by round.

    Raises:
      ConfigError: ``end_steps`` not reachable from ``start_steps`` by halving.
    """
    if not (isinstance(start_steps, int) and isinstance(end_steps, int)) or end_steps < 1:
        raise ConfigError(
            f"start_steps and end_steps must be ints >= 1, got {start_steps!r}, {end_steps!r}."
        )
    steps = [start_steps]
    while steps[-1] > end_steps and steps[-1] % 2 == 0:
        steps.append(steps[-1] // 2)
    if steps[-1] != end_steps:
        raise ConfigError(
            f"end_steps={end_steps} is not reachable from start_steps={start_steps} by halving; "
            f"each round halves the steps, so start_steps must be end_steps times a power of two "
            f"(e.g. {end_steps * 2 ** max(1, (start_steps // end_steps).bit_length() - 1)})."
        )
    return steps


def round_name(index: int, steps: int) -> str:
    """The sub-folder of round ``index`` (1-based) whose student takes ``steps`` steps."""
    return f"round_{index:02d}_{steps}_steps"


def _check_settings(settings: Mapping[str, Any]) -> None:
    schema = config_to_dict(distill_config())
    for key in settings:
        if key not in schema:
            raise ConfigError(
                f"Unknown distillation config key {key!r}; the keys are {sorted(schema)}."
            )
    for key in ("steps_per_round", "fd_num_samples", "fd_batch_size"):
        if not isinstance(settings[key], int) or settings[key] < 1:
            raise ConfigError(f"config.{key} must be an int >= 1, got {settings[key]!r}.")
    from diffjax.metrics.feature_networks import FEATURE_NETWORKS

    if settings["fd_features"] not in ("", *FEATURE_NETWORKS):
        raise ConfigError(
            f"config.fd_features must be '' (the teacher's) or one of {FEATURE_NETWORKS}, got "
            f"{settings['fd_features']!r}."
        )
    if settings["fd_num_samples"] < 2:
        raise ConfigError(f"config.fd_num_samples must be >= 2, got {settings['fd_num_samples']}.")


def _apply_overrides(values: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for section, entries in overrides.items():
        if section not in values or not isinstance(values[section], dict):
            raise ConfigError(
                f"config.student.{section}: the training config has no section {section!r}; its "
                f"sections are {sorted(k for k, v in values.items() if isinstance(v, dict))}."
            )
        if not isinstance(entries, Mapping):
            raise ConfigError(f"config.student.{section} must be a section of overrides.")
        for key, value in entries.items():
            if key not in values[section]:
                raise ConfigError(
                    f"config.student.{section}.{key}: config.{section} has no key {key!r}; its "
                    f"keys are {sorted(values[section])}."
                )
            values[section][key] = value


def round_configs(
    teacher_values: Mapping[str, Any], teacher: str, workdir: str, settings: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The training config of every round (plain dicts, validated), from the teacher's.

    Raises:
      ConfigError: a setting the teacher cannot be distilled with, before anything is built.
    """
    teacher_prediction = teacher_values["diffusion"]["prediction_type"]
    student_prediction = settings["student_prediction"] or teacher_prediction
    process = build_process(teacher_values["diffusion"])
    guidance = settings["guidance"]
    if guidance:
        if teacher_values["model"]["num_classes"] is None:
            raise ConfigError(
                f"guidance distillation needs a class-conditional teacher; {teacher} was "
                f"trained unconditionally (config.model.num_classes is None)."
            )
        if teacher_values["training"]["cond_dropout"] <= 0:
            raise ConfigError(
                f"guidance distillation needs the unconditional model that condition dropout "
                f"trains; {teacher} has config.training.cond_dropout=0."
            )
    configs = []
    previous, previous_prediction = teacher, teacher_prediction
    for index, steps in enumerate(round_steps(settings["start_steps"], settings["end_steps"]), 1):
        values = copy.deepcopy(dict(teacher_values))
        values["objective"] = dict(
            name="progressive_distillation", teacher=previous,
            teacher_prediction=previous_prediction,
            teacher_guidance=bool(guidance and index == 1), student_steps=steps,
            teacher_clip_x0=teacher_values["sampling"]["clip_x0"],
            weighting=settings["weighting"], guidance_min=settings["guidance_min"],
            guidance_max=settings["guidance_max"],
        )  # fmt: skip
        values["diffusion"]["prediction_type"] = student_prediction
        if guidance:
            values["model"]["guidance_embedding"] = True
        values["training"].update(
            init_from=previous, pairs_dir="", num_steps=settings["steps_per_round"],
            cond_dropout=0.0 if guidance else values["training"]["cond_dropout"],
        )  # fmt: skip
        values["optim"].update(lr_decay="linear", warmup_steps=0, ema_decay=0.0, grad_clip_norm=1.0)
        values["sampling"].update(
            sampler="ddim", num_steps=steps, every_steps=0,
            options={"spacing": "trailing"} if is_discrete(process) else {},
        )  # fmt: skip
        values["eval"].update(fd_every_steps=0, quoted_fd={})
        _apply_overrides(values, config_to_dict(settings["student"]))
        try:
            configs.append(validate_config(values))
        except ConfigError as error:
            raise ConfigError(f"round {index} ({steps} steps): {error}") from error
        previous = os.path.join(workdir, round_name(index, steps))
        previous_prediction = student_prediction
    return configs


def _has_checkpoint(workdir: str) -> bool:
    folder = os.path.join(workdir, CHECKPOINT_DIR)
    return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


def _load_teacher(teacher: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The teacher's validated config; checks that it has a checkpoint and that its images
    suit the feature network of the evaluations."""
    from diffjax.metrics.feature_networks import load_feature_network

    record = load_run_record(teacher)
    if record is None:
        raise ConfigError(f"--teacher {teacher} holds no diffjax run (no config.json).")
    if not _has_checkpoint(teacher):
        raise ConfigError(f"--teacher {teacher} holds no checkpoint yet; train it first.")
    values = validate_config(upgrade_config(record["config"]))
    features = settings["fd_features"] or values["eval"]["fd_features"]
    if settings["evaluate"] and features == "fmnist":
        try:
            load_feature_network(features).check_image_shape(record["dataset"]["image_shape"])
        except ValueError as error:
            raise ConfigError(f"config.fd_features: {error} (or config.evaluate=False)") from error
    return values


def _fd(workdir: str, settings: EvalSettings, output_dir: str | None = None) -> dict[str, Any]:
    """A cached FD evaluation: the result file if this protocol was measured, else a run."""
    from diffjax.training.trained_run import load_trained_run

    folder = output_dir or workdir
    step = load_trained_run(workdir).step
    path = os.path.join(folder, EVAL_DIR, f"{settings.result_name(step)}.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return evaluate_run(workdir, settings, output_dir=output_dir)


def _eval_settings(
    values: Mapping[str, Any], settings: Mapping[str, Any], sampler: str, steps: int,
    reference: str | None,
) -> EvalSettings:  # fmt: skip
    name, options = sampling_settings(values, sampler=sampler, num_steps=steps)
    if sampler == "ddim" and is_discrete(build_process(values["diffusion"])):
        options = dict(options, spacing="trailing")  # the students' grid, for the teacher too
    return EvalSettings(
        metrics=("fd",), num_samples=settings["fd_num_samples"],
        batch_size=settings["fd_batch_size"], sampler=name, options=options,
        guidance_scale=values["sampling"]["guidance_scale"], ema=True, seed=settings["fd_seed"],
        features=settings["fd_features"] or values["eval"]["fd_features"], reference=reference,
    )  # fmt: skip


def _check_resume(workdir: str, manifest: Mapping[str, Any]) -> None:
    path = os.path.join(workdir, SETTINGS_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved != manifest:
            raise ConfigError(
                f"{workdir} holds a distillation with other settings ({saved}); these are "
                f"{manifest}. Use the original config and teacher or another --workdir; nothing "
                f"was changed."
            )
    elif jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        write_json(path, manifest)


def distill(config: Any, teacher: str | os.PathLike, workdir: str | os.PathLike) -> dict[str, Any]:
    """``python -m diffjax.distill`` (:mod:`diffjax.distill`): every round, resumably.

    Args:
      config: a distillation config (:func:`distill_config`'s keys).
      teacher: the trained teacher's workdir (read only).
      workdir: the distillation's folder (one sub-folder per round).

    Returns:
      The report written to ``workdir/distill.json``: the settings and, per round, its steps,
      folder, training and evaluation seconds and the FD of the student and of the teacher's
      DDIM and DPM-Solver++ at the same number of network calls.

    Raises:
      ConfigError: a bad setting, a teacher without a run or a checkpoint, steps not
        reachable by halving, an incompatible teacher (e.g. an eps-prediction teacher at zero
        SNR), or a workdir holding another distillation; all before anything is compiled.
    """
    teacher = resolve_run_dir(os.path.abspath(os.fspath(teacher)))
    workdir = os.path.abspath(os.fspath(workdir))
    if teacher == workdir or workdir.startswith(teacher + os.sep):
        raise ConfigError("--workdir must lie outside --teacher (the teacher is read only).")
    settings = config_to_dict(config)
    _check_settings(settings)
    teacher_values = _load_teacher(teacher, settings)
    configs = round_configs(teacher_values, teacher, workdir, settings)
    manifest = json.loads(json.dumps(dict(teacher=teacher, settings=settings)))
    _check_resume(workdir, manifest)
    report: dict[str, Any] = dict(manifest, rounds=[])
    reference = None
    for index, values in enumerate(configs, 1):
        steps = values["objective"]["student_steps"]
        folder = os.path.join(workdir, round_name(index, steps))
        record_path = os.path.join(folder, ROUND_FILE)
        if os.path.exists(record_path):
            with open(record_path, encoding="utf-8") as f:
                record = json.load(f)
        else:
            log(f"diffjax.distill: round {index}/{len(configs)}: {2 * steps} -> {steps} steps "
                f"in {folder}")  # fmt: skip
            start = time.perf_counter()
            train_and_evaluate(ml_collections.ConfigDict(values), folder)
            train_seconds = time.perf_counter() - start
            start = time.perf_counter()
            fd, protocol = {}, None
            if settings["evaluate"]:
                student = _fd(folder, _eval_settings(values, settings, "ddim", steps, reference))
                reference, protocol = student["protocol"]["reference"]["path"], student["protocol"]
                fd["student"] = _fd_value(student)
            if settings["evaluate"] and settings["compare_teacher"]:
                for name in ("ddim", "dpm_solver"):
                    result = _fd(
                        teacher, _eval_settings(teacher_values, settings, name, steps, reference),
                        output_dir=os.path.join(workdir, TEACHER_EVAL_DIR),
                    )  # fmt: skip
                    fd[f"teacher_{name}"] = _fd_value(result)
            record = dict(
                round=index, steps=steps, teacher_steps=2 * steps, folder=os.path.basename(folder),
                teacher=values["objective"]["teacher"], train_steps=values["training"]["num_steps"],
                train_seconds=train_seconds, eval_seconds=time.perf_counter() - start, fd=fd,
                fd_protocol=protocol,
            )  # fmt: skip
            if jax.process_index() == 0:
                write_json(record_path, record)
        if record["fd_protocol"] is not None:
            reference = record["fd_protocol"]["reference"]["path"]
        write_run_pointer(workdir, os.path.basename(folder))
        report["rounds"].append(record)
        scores = f": FD at {steps} steps {_fd_line(record['fd'])}" if record["fd"] else ""
        log(f"diffjax.distill: round {index} done{scores}")
        if jax.process_index() == 0:
            write_json(os.path.join(workdir, REPORT_FILE), report)
    return report


def _fd_value(record: Mapping[str, Any]) -> float:
    """The one result of an FD-only evaluation (``fd_fmnist`` or ``fid``)."""
    (value,) = record["results"].values()
    return value


def _fd_line(fd: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in fd.items())
