"""Checks a training config completely, before anything is built or compiled.

ml_collections already rejects unknown keys and wrong types for overrides given on the command
line; a config built or edited in Python (a notebook calling ``train_and_evaluate``) gets no such
check. :func:`validate_config` checks every config against :data:`CONFIG_SCHEMA`: unknown keys
(with a "did you mean" suggestion), missing keys, wrong types, values out of range, and
combinations that cannot work (an image size the UNet cannot halve, attention at a resolution
that never occurs, a batch that does not split over the devices, guidance without classes).
Every error names the key, the bad value and what is allowed.

:func:`resume_conflicts` compares the config of a run with the one saved in its workdir and lists
the settings that make resuming impossible (the model's shape, the data, the seed, ...).
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Mapping

__all__ = [
    "CONFIG_SCHEMA",
    "ConfigError",
    "ConfigTypeError",
    "LR_DECAYS",
    "NAN_POLICIES",
    "RESUME_KEYS",
    "build_process",
    "build_time_sampler",
    "config_schema",
    "config_to_dict",
    "resume_conflicts",
    "resume_keys",
    "sampler_options",
    "upgrade_config",
    "validate_config",
]


class ConfigError(ValueError):
    """A config value, key or combination that training cannot run with."""


class ConfigTypeError(ConfigError, TypeError):
    """A config value of the wrong type."""


NAN_POLICIES = ("stop", "skip")
LR_DECAYS = ("constant", "cosine")

# Type tags of the schema (see `_check_type`); the model registry uses the same strings.
INT, FLOAT, BOOL, STR, INT_TUPLE = "int", "float", "bool", "str", "tuple of int"
OPT_INT, OPT_FLOAT, OPT_STR = "int or None", "float or None", "str or None"
MAPPING = "mapping of option names to numbers, strings or bools"

CONFIG_SCHEMA: dict[str, Any] = {
    "seed": INT,
    "data": {
        "name": STR,
        "split": STR,
        "image_size": INT,
        "batch_size": INT,
        "random_flip": BOOL,
        "data_dir": OPT_STR,
        "manual_dir": OPT_STR,
        "download": BOOL,
        "num_threads": INT,
        "prefetch_batches": INT,
    },
    # The model section is the registry entry's: its common keys plus the network's own.
    "model": {},
    "diffusion": {
        "process": STR,
        "process_options": MAPPING,
        "schedule": STR,
        "num_timesteps": INT,
        "zero_terminal_snr": BOOL,
        "prediction_type": STR,
        "loss_weighting": STR,
        "min_snr_gamma": FLOAT,
        "offset_noise": FLOAT,
        "time_sampler": STR,
        "time_sampler_options": MAPPING,
    },
    "optim": {
        "learning_rate": FLOAT,
        "warmup_steps": INT,
        "lr_decay": STR,
        "grad_clip_norm": OPT_FLOAT,
        "weight_decay": FLOAT,
        "b1": FLOAT,
        "b2": FLOAT,
        "eps": FLOAT,
        "ema_decay": FLOAT,
    },
    "training": {
        "num_steps": INT,
        "log_every_steps": INT,
        "checkpoint_every_steps": INT,
        "keep_checkpoints": INT,
        "async_checkpointing": BOOL,
        "nan_policy": STR,
        "label_dropout": FLOAT,
        "progress_bar": BOOL,
        "init_from": STR,
        "pairs_dir": STR,
    },
    "sampling": {
        "every_steps": INT,
        "num_samples": INT,
        "sampler": STR,
        "num_steps": INT,
        "options": MAPPING,
        "guidance_scale": FLOAT,
        "clip_x0": BOOL,
        "seed": INT,
    },
    "eval": {
        "every_steps": INT,
        "split": STR,
        "batch_size": INT,
        "num_batches": INT,
        "fd_every_steps": INT,
        "fd_num_samples": INT,
        "fd_batch_size": INT,
        "fd_features": STR,
        "fd_reference": OPT_STR,
    },
}
"""Every key a training config has, with its type, except the model's own keys, which come from
its registry entry (:func:`config_schema`). Sections are nested dicts."""

RESUME_KEYS = (
    "seed",
    "data.name",
    "data.split",
    "data.image_size",
    "data.batch_size",
    "data.random_flip",
    "model.name",
    "model.num_classes",
    "model.param_dtype",
    "diffusion.process",
    "diffusion.process_options",
    "diffusion.schedule",
    "diffusion.num_timesteps",
    "diffusion.zero_terminal_snr",
    "diffusion.prediction_type",
    "optim.grad_clip_norm",
)
"""Keys a resumed run must share with the run that wrote the workdir: they fix the state's
shapes, what the network means, or the order of the data and noise. The network's own such keys
come from its registry entry (:func:`resume_keys`)."""


def config_schema(model_name: str) -> dict[str, Any]:
    """:data:`CONFIG_SCHEMA` with the model section of the registered network ``model_name``."""
    from diffjax.models.registry import COMMON_MODEL_KEYS, model_entry

    try:
        entry = model_entry(model_name)
    except ValueError as error:
        raise ConfigError(f"config.model.name: {error}") from error
    return {**CONFIG_SCHEMA, "model": {**COMMON_MODEL_KEYS, **entry.keys}}


def resume_keys(model_name: str) -> tuple[str, ...]:
    """:data:`RESUME_KEYS` plus the keys of network ``model_name`` that fix its parameters."""
    from diffjax.models.registry import MODELS

    entry = MODELS.get(model_name)
    model_keys = () if entry is None else tuple(f"model.{key}" for key in entry.state_keys)
    return RESUME_KEYS + model_keys


def upgrade_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config saved by diffjax 0.1.0 (``config.json`` of an older workdir) in today's layout.

    0.1.0 had no ``model.name`` (always the UNet), no noise process (always the discrete
    schedule), no time-sampler keys, no Fréchet distance during training and a ``sampling.eta``
    key instead of ``sampling.options``; the defaults filled in here are what 0.1.0 did.
    Current configs pass unchanged.
    """
    values = config_to_dict(values)
    if isinstance(values.get("training"), dict):
        # Added in 0.3.0 (reflow): a fresh run's initial weights and its (noise, sample) pairs.
        values["training"].setdefault("init_from", "")
        values["training"].setdefault("pairs_dir", "")
    if not isinstance(values.get("model"), dict) or "name" in values["model"]:
        return values
    values["model"] = {"name": "unet", **values["model"]}
    diffusion = values.get("diffusion", {})
    diffusion.setdefault("process", "discrete")
    diffusion.setdefault("process_options", {})
    diffusion.setdefault("time_sampler", "uniform")
    diffusion.setdefault("time_sampler_options", {})
    evaluation = values.get("eval", {})
    for key, default in (
        ("fd_every_steps", 0), ("fd_num_samples", 1000), ("fd_batch_size", 200),
        ("fd_features", "fmnist"), ("fd_reference", None),
    ):  # fmt: skip
        evaluation.setdefault(key, default)
    sampling = values.get("sampling", {})
    if "eta" in sampling:
        eta = sampling.pop("eta")
        sampling["options"] = {"eta": eta} if sampling.get("sampler") == "ddim" else {}
    return values


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain nested dict of a ``ConfigDict`` (references resolved) or of a mapping.

    Args:
      config: an ``ml_collections.ConfigDict`` or a nested mapping.

    Returns:
      Nested ``dict``; lists become tuples so that a config read back from JSON compares equal.
    """
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise ConfigTypeError(
            f"config must be an ml_collections.ConfigDict or a mapping, got "
            f"{type(config).__name__}."
        )

    def convert(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return tuple(convert(item) for item in value)
        return value

    return convert(config)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_mapping_of_scalars(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(key, str) and (item is None or isinstance(item, (int, float, str, bool)))
        for key, item in value.items()
    )


def _check_type(key: str, value: Any, kind: str) -> None:
    if kind.endswith(" or None") and value is None:
        return
    base = kind.removesuffix(" or None")
    ok = {
        INT: _is_int(value),
        FLOAT: _is_int(value) or isinstance(value, float),
        BOOL: isinstance(value, bool),
        STR: isinstance(value, str),
        INT_TUPLE: isinstance(value, (tuple, list)) and all(_is_int(item) for item in value),
        MAPPING: _is_mapping_of_scalars(value),
    }[base]
    if not ok:
        raise ConfigTypeError(
            f"config.{key} must be {kind}, got {value!r} of type {type(value).__name__}."
        )


def _check_keys(schema: Mapping[str, Any], config: Mapping[str, Any], prefix: str) -> None:
    """Unknown keys (with a suggestion), missing keys, and every value's type."""
    for key in config:
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(
                f"Unknown config key '{prefix}{key}'.{hint} Allowed keys here: {sorted(schema)}."
            )
    for key, kind in schema.items():
        if key not in config:
            raise ConfigError(
                f"The config lacks '{prefix}{key}'; start from configs/base.py, which sets "
                f"every key."
            )
        if isinstance(kind, dict):
            if not isinstance(config[key], Mapping):
                raise ConfigTypeError(
                    f"config.{prefix}{key} must be a section (ConfigDict), got "
                    f"{type(config[key]).__name__}."
                )
            _check_keys(kind, config[key], f"{prefix}{key}.")
        else:
            _check_type(f"{prefix}{key}", config[key], kind)


def _lookup(values: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        values = values[part]
    return values


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _expect(values: Mapping[str, Any], key: str, condition: Any, expectation: str) -> None:
    """Raises ``ConfigError('config.<key> must <expectation>, got <value>.')`` unless
    ``condition(value)``."""
    value = _lookup(values, key)
    _require(bool(condition(value)), f"config.{key} must {expectation}, got {value!r}.")


def _check_choice(values: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> None:
    _expect(values, key, lambda value: value in allowed, f"be one of {allowed}")


def _check_model(values: Mapping[str, Any]) -> None:
    from diffjax.models.registry import check_model_config

    image_size = values["data"]["image_size"]
    try:
        check_model_config(values["model"], (image_size, image_size))
    except ValueError as error:
        raise ConfigError(
            f"config.model ({values['model']['name']}) does not fit config.data.image_size="
            f"{image_size}: {error}"
        ) from error


def build_process(diffusion: Mapping[str, Any]) -> Any:
    """The noise process a config's ``diffusion`` section describes.

    Raises:
      ConfigError: an unknown process or a bad option, naming the key.
    """
    from diffjax.processes import PROCESS_NAMES, get_process
    from diffjax.schedules import get_schedule

    name = diffusion["process"]
    if name not in PROCESS_NAMES:
        raise ConfigError(f"config.diffusion.process must be one of {PROCESS_NAMES}, got {name!r}.")
    try:
        if name == "discrete":
            if diffusion["process_options"]:
                raise ValueError(
                    f"the discrete process takes no process_options (its keys are schedule, "
                    f"num_timesteps and zero_terminal_snr), got "
                    f"{dict(diffusion['process_options'])}"
                )
            return get_schedule(
                diffusion["schedule"], num_timesteps=diffusion["num_timesteps"],
                zero_terminal_snr=diffusion["zero_terminal_snr"],
            )  # fmt: skip
        return get_process(name, **diffusion["process_options"])
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config.diffusion.process={name!r}: {error}") from error


def build_time_sampler(diffusion: Mapping[str, Any], process: Any) -> Any:
    """The training-time sampler of a config (None: the discrete schedule's uniform default).

    Raises:
      ConfigError: an unknown sampler, a bad option, or one the process cannot use.
    """
    from diffjax.losses import get_time_sampler

    try:
        return get_time_sampler(
            diffusion["time_sampler"], process, **diffusion["time_sampler_options"]
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"config.diffusion.time_sampler={diffusion['time_sampler']!r} with "
            f"time_sampler_options={dict(diffusion['time_sampler_options'])}: {error}"
        ) from error


def sampler_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments the sample grids pass to ``config.sampling.sampler``."""
    sampling = values["sampling"]
    return dict(
        num_steps=sampling["num_steps"],
        prediction_type=values["diffusion"]["prediction_type"],
        **sampling["options"],
    )


def _check_diffusion(values: Mapping[str, Any]) -> Any:
    from diffjax.losses import LOSS_WEIGHTINGS
    from diffjax.predictions import PREDICTION_TYPES, check_prediction_supported
    from diffjax.schedules import SCHEDULE_NAMES

    _check_choice(values, "diffusion.schedule", SCHEDULE_NAMES)
    _expect(values, "diffusion.num_timesteps", lambda v: v >= 2, "be >= 2")
    _check_choice(values, "diffusion.prediction_type", PREDICTION_TYPES)
    _check_choice(values, "diffusion.loss_weighting", LOSS_WEIGHTINGS)
    _expect(values, "diffusion.min_snr_gamma", lambda v: v > 0, "be > 0")
    _expect(values, "diffusion.offset_noise", lambda v: v >= 0, "be >= 0")
    process = build_process(values["diffusion"])
    try:
        check_prediction_supported(values["diffusion"]["prediction_type"], process)
    except ValueError as error:
        raise ConfigError(f"config.diffusion.prediction_type: {error}") from error
    build_time_sampler(values["diffusion"], process)
    return process


def _check_sampling(values: Mapping[str, Any], process: Any) -> None:
    from diffjax.samplers import SAMPLER_NAMES, check_sampler_options

    sampling = values["sampling"]
    _expect(values, "sampling.every_steps", lambda v: v >= 0, "be >= 0 (0: only at the end)")
    _expect(values, "sampling.num_samples", lambda v: v >= 0, "be >= 0 (0: no sample grids)")
    _check_choice(values, "sampling.sampler", SAMPLER_NAMES)
    _expect(values, "sampling.num_steps", lambda v: v >= 1, "be >= 1")
    _expect(values, "sampling.seed", lambda v: 0 <= v < 2**32, "lie in [0, 2**32)")
    # The sampler checks its own options, as it will when it draws the grids.
    try:
        check_sampler_options(sampling["sampler"], process, sampler_options(values))
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"config.sampling (sampler {sampling['sampler']!r}, num_steps "
            f"{sampling['num_steps']}, options {dict(sampling['options'])}): {error}"
        ) from error
    num_classes = values["model"]["num_classes"]
    label_dropout = values["training"]["label_dropout"]
    guidance_scale = sampling["guidance_scale"]
    _require(
        guidance_scale == 1.0 or num_classes is not None,
        f"config.sampling.guidance_scale={guidance_scale} asks for classifier-free guidance, "
        f"which needs a class-conditional model: set config.model.num_classes (and "
        f"config.training.label_dropout > 0), or guidance_scale=1.0.",
    )
    _require(
        guidance_scale == 1.0 or label_dropout > 0,
        f"config.sampling.guidance_scale={guidance_scale} needs the unconditional model that "
        f"config.training.label_dropout > 0 trains (got 0.0; 0.1 is usual).",
    )


def _check_ranges(values: Mapping[str, Any]) -> None:
    num_classes = values["model"]["num_classes"]
    label_dropout = values["training"]["label_dropout"]

    _expect(values, "seed", lambda v: 0 <= v < 2**32, "lie in [0, 2**32)")
    for key in ("data.image_size", "data.batch_size"):
        _expect(values, key, lambda v: v >= 1, "be >= 1")
    for key in ("data.num_threads", "data.prefetch_batches"):
        _expect(values, key, lambda v: v >= 0, "be >= 0")
    _expect(
        values, "model.num_classes", lambda v: v is None or v >= 1,
        "be None (unconditional) or >= 1",
    )  # fmt: skip
    from diffjax.models.registry import DTYPES

    _check_choice(values, "model.dtype", tuple(DTYPES))
    _check_choice(values, "model.param_dtype", tuple(DTYPES))
    for key in ("model.dtype", "model.param_dtype"):
        _require(
            _lookup(values, key) != "float16",
            f"config.{key}='float16' needs loss scaling against gradient underflow, which "
            f"diffjax does not implement; use 'bfloat16' (same memory, float32's range) or "
            f"'float32'.",
        )
    _check_model(values)
    process = _check_diffusion(values)

    _expect(
        values, "optim.learning_rate", lambda v: math.isfinite(v) and v > 0,
        "be a finite number > 0",
    )  # fmt: skip
    _expect(values, "optim.warmup_steps", lambda v: v >= 0, "be >= 0")
    _check_choice(values, "optim.lr_decay", LR_DECAYS)
    _require(
        values["optim"]["lr_decay"] == "constant"
        or values["optim"]["warmup_steps"] < values["training"]["num_steps"],
        f"config.optim.lr_decay='cosine' needs config.optim.warmup_steps "
        f"({values['optim']['warmup_steps']}) < config.training.num_steps "
        f"({values['training']['num_steps']}).",
    )
    _expect(values, "optim.grad_clip_norm", lambda v: v is None or v > 0, "be None or > 0")
    _expect(values, "optim.weight_decay", lambda v: v >= 0, "be >= 0")
    for key in ("optim.b1", "optim.b2"):
        _expect(values, key, lambda v: 0 <= v < 1, "lie in [0, 1)")
    _expect(values, "optim.eps", lambda v: v > 0, "be > 0")
    _expect(values, "optim.ema_decay", lambda v: 0 <= v <= 1, "lie in [0, 1]")

    for key in ("num_steps", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        _expect(values, f"training.{key}", lambda v: v >= 1, "be >= 1")
    _check_choice(values, "training.nan_policy", NAN_POLICIES)
    _expect(values, "training.label_dropout", lambda v: 0 <= v < 1, "lie in [0, 1)")
    _require(
        label_dropout == 0 or num_classes is not None,
        f"config.training.label_dropout={label_dropout} drops class labels, but "
        f"config.model.num_classes is None (an unconditional model has no labels to drop).",
    )
    _check_sampling(values, process)

    _expect(values, "eval.every_steps", lambda v: v >= 0, "be >= 0 (0: never)")
    for key in ("eval.batch_size", "eval.num_batches", "eval.fd_batch_size"):
        _expect(values, key, lambda v: v >= 1, "be >= 1")
    _expect(values, "eval.fd_every_steps", lambda v: v >= 0, "be >= 0 (0: no FD during training)")
    _expect(values, "eval.fd_num_samples", lambda v: v >= 2, "be >= 2")
    from diffjax.metrics.feature_networks import FEATURE_NETWORKS

    _check_choice(values, "eval.fd_features", FEATURE_NETWORKS)


def validate_config(config: Any, num_devices: int | None = None) -> dict[str, Any]:
    """Checks a training config; raises on the first problem, before anything is compiled.

    Args:
      config: an ``ml_collections.ConfigDict`` (or nested mapping) with the sections of
        :data:`CONFIG_SCHEMA`.
      num_devices: if given, the global batch sizes must split evenly over this many devices.

    Returns:
      The config as a plain nested dict (see :func:`config_to_dict`).

    Raises:
      ConfigTypeError: a value of the wrong type (also a ``TypeError``).
      ConfigError: an unknown or missing key, a value out of range, or an impossible
        combination (also a ``ValueError``).
    """
    values = config_to_dict(config)
    model = values.get("model")
    model_name = model.get("name") if isinstance(model, Mapping) else None
    if not isinstance(model_name, str):
        raise ConfigError(
            "config.model.name must name a registered network (e.g. 'unet'); start from "
            "configs/base.py, which sets every key."
        )
    _check_keys(config_schema(model_name), values, "")
    _check_ranges(values)
    if num_devices is not None:
        batch_keys = ["data.batch_size", "eval.batch_size"]
        if values["eval"]["fd_every_steps"] > 0:
            batch_keys.append("eval.fd_batch_size")
        for key in batch_keys:
            _expect(
                values, key, lambda v: v % num_devices == 0,
                f"be a multiple of the number of devices ({num_devices}), so that each device "
                f"gets an equal share of the global batch",
            )  # fmt: skip
    return values


def resume_conflicts(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The :data:`RESUME_KEYS` on which two configs differ, each as one readable line.

    Args:
      saved: the config stored in the workdir (plain dict, e.g. from JSON).
      current: the config of the new run (plain dict).

    Returns:
      Lines like ``"model.base_channels: 32 in the workdir, 64 now"``; empty when resuming
      is possible.
    """
    saved, current = upgrade_config(saved), config_to_dict(current)
    conflicts = []
    for key in resume_keys(current["model"]["name"]):
        try:
            before = _lookup(saved, key)
        except (KeyError, TypeError):
            before = "<absent>"
        now = _lookup(current, key)
        if before != now:
            conflicts.append(f"{key}: {before!r} in the workdir, {now!r} now")
    return conflicts
