r"""The training config: its documented base, the schema derived from it, and old configs upgraded.

:func:`base_config` is every key of a run with its default and a comment saying what it does
(``configs/base.py`` returns it; the other files in ``configs/`` edit it). The schema is not
written a second time: :func:`config_schema` derives each key's type from its default (an
``ml_collections`` placeholder or ``FieldReference`` marks a key that may be None, an empty
section a mapping of free options), and the ``model`` and ``objective`` sections come from the
registered network's and objective's own defaults. :func:`check_keys` checks a config against
it (unknown keys with a "did you mean", missing keys, wrong types); the values themselves are
checked by the components that use them (:func:`diffjax.training.programs.validate_config`).

:func:`upgrade_config` reads the ``config.json`` of an older workdir in today's layout, and
:func:`resume_conflicts` lists the settings that make resuming a run with another config
impossible (the state's shapes, the data, the seed, ...).

Reference: Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models"
(arXiv:2006.11239), Sec. 4 and Appendix B, whose CIFAR-10 run the defaults are.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict

from diffjax.errors import ConfigError, ConfigTypeError
from diffjax.models.registry import MODELS, default_model_config
from diffjax.training.objectives import OBJECTIVES, default_objective_config

__all__ = [
    "QUOTE_IGNORED_KEYS",
    "RESUME_KEYS",
    "base_config",
    "check_keys",
    "config_schema",
    "config_to_dict",
    "import_modules",
    "quoted_fd",
    "resume_conflicts",
    "resume_keys",
    "schema_of",
    "settings_digest",
    "upgrade_config",
]

# Type tags of the schema (see `_check_type`).
INT, FLOAT, BOOL, STR = "int", "float", "bool", "str"
INT_TUPLE, STR_TUPLE = "tuple of int", "tuple of str"
MAPPING = "mapping of option names to numbers, strings or bools"


def base_config() -> ml_collections.ConfigDict:
    """Every key of a diffjax training run, set to the DDPM paper's CIFAR-10 values.

    Sections: ``data, model, diffusion, codec, objective, optim, training, sampling, eval,
    sharding``, the run's ``seed`` and ``imports``. Any key can be overridden from the command
    line (``--config.training.num_steps=1000``).

    Returns:
      A fresh ``ml_collections.ConfigDict``.
    """
    config = ml_collections.ConfigDict()
    # Python modules imported before the config is validated: a module that registers a
    # sampler, network, objective, codec or dataset of your own (register_sampler, ...), so
    # that this run and every program that reads it later (sample, evaluate) can use it.
    config.imports = ()
    # Fixes the initialisation, the data order and every training noise draw.
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    # 'fashion_mnist' (offline), 'folder' (data_dir of PNG/JPEG, class subfolders = labels),
    # a dataset registered with diffjax.data.register_dataset, or any TFDS image dataset
    # ('cifar10', 'celeb_a', ...; preparing those needs TensorFlow).
    config.data.name = "cifar10"
    config.data.split = "train"
    # Images are center-cropped and resized to image_size x image_size.
    config.data.image_size = 32
    # The GLOBAL batch: summed over all devices and hosts; must split evenly over devices.
    config.data.batch_size = 128
    config.data.random_flip = True
    # TFDS data directory (default $TFDS_DATA_DIR or ~/tensorflow_datasets); for 'folder' the
    # image folder.
    config.data.data_dir = config_dict.placeholder(str)
    # Folder of manually downloaded source files (Fashion-MNIST's IDX files, ...).
    config.data.manual_dir = config_dict.placeholder(str)
    # False: never touch the network (fail fast if the data is not here).
    config.data.download = True
    # Host threads preparing batches ahead, and how many batches they may prepare.
    config.data.num_threads = 4
    config.data.prefetch_batches = 4

    # The network, by name in diffjax.models.MODELS, with that network's own keys; another
    # network: config.model = diffjax.models.default_model_config(name).
    config.model = default_model_config("unet")

    config.diffusion = ml_collections.ConfigDict()
    # The noise process x_t = alpha(t) x_0 + sigma(t) eps: 'discrete' (the schedule below, int t
    # in [0, T)) or a continuous one (float t in [0, 1]): 'vp_linear', 'vp_cosine', 've',
    # 'edm', 'rectified_flow' (diffjax.processes).
    config.diffusion.process = "discrete"
    # A continuous process's parameters, e.g. {'sigma_max': 80.0} for 'edm'; empty: defaults.
    config.diffusion.process_options = ml_collections.ConfigDict()
    # The discrete process: 'linear' (DDPM), 'cosine' (Nichol & Dhariwal 2021), 'scaled_linear',
    # 'sigmoid'.
    config.diffusion.schedule = "linear"
    config.diffusion.num_timesteps = 1000
    # Rescale the schedule to zero terminal SNR (Lin et al. 2024); pair with 'v' prediction.
    config.diffusion.zero_terminal_snr = False
    # What the network predicts: 'eps', 'x0', 'v', 'flow' (the velocity; continuous processes)
    # or 'edm' (EDM's preconditioned F).
    config.diffusion.prediction_type = "eps"
    # 'uniform' (the plain regression, DDPM's simple loss), 'min_snr' (Hang et al. 2023, gamma
    # below), 'edm' (Karras et al. 2022) or 'rectified_flow' (SD3's w^RF).
    config.diffusion.loss_weighting = "uniform"
    config.diffusion.min_snr_gamma = 5.0
    # Per-channel offset noise scale (Guttenberg 2023); 0 disables it.
    config.diffusion.offset_noise = 0.0
    # lambda of Improved DDPM's hybrid loss L_simple + lambda L_vlb for a network with a learned
    # variance (DiT's learn_sigma; 0.001 in Nichol & Dhariwal 2021 and DiT); 0: L_simple.
    config.diffusion.vlb_weight = 0.0
    # Training times of a continuous process: 'uniform' (on [1e-5, 1]), 'logit_normal' and
    # 'mode' (SD3), 'edm_lognormal' (EDM's noise levels), 'constant' (one-step distillation,
    # python -m diffjax.reflow --distill); a discrete schedule uses 'uniform'.
    config.diffusion.time_sampler = "uniform"
    # Its options, e.g. {'mean': 0.0, 'std': 1.0, 'shift': 3.0} for 'logit_normal'.
    config.diffusion.time_sampler_options = ml_collections.ConfigDict()

    # The space the model runs in (diffjax.codecs): 'identity' is pixel space; a latent codec
    # encodes the images for training and decodes the samples.
    config.codec = ml_collections.ConfigDict()
    config.codec.name = "identity"
    # The codec's own options.
    config.codec.options = ml_collections.ConfigDict()

    # What training minimises, by name in diffjax.training.OBJECTIVES, with that objective's
    # own keys: 'denoising' is the diffusion loss of the diffusion section above.
    config.objective = default_objective_config("denoising")

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 5000
    # 'constant' after warm-up (DDPM), or a 'cosine' or 'linear' decay to 0 at
    # training.num_steps (linear: each round of progressive distillation).
    config.optim.lr_decay = "constant"
    # Clip the global gradient norm (None: no clipping).
    config.optim.grad_clip_norm = config_dict.FieldReference(1.0, field_type=float)
    # Decoupled weight decay on kernels (AdamW); 0 is Adam.
    config.optim.weight_decay = 0.0
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    # EMA of the weights used for sampling (with a warm-up: min(decay, (1+n)/(10+n))).
    config.optim.ema_decay = 0.9999

    config.training = ml_collections.ConfigDict()
    config.training.num_steps = 800_000
    # Metrics are fetched from the devices (one host sync) only every log_every_steps.
    config.training.log_every_steps = 100
    config.training.checkpoint_every_steps = 5000
    # Newest checkpoints kept; >= 2 leaves a fallback when the newest one is damaged.
    config.training.keep_checkpoints = 3
    config.training.async_checkpointing = True
    # On a NaN/Inf loss or gradient: 'stop' (clear error naming the step; the last good
    # checkpoint is kept) or 'skip' (leave the weights unchanged for that step and go on).
    config.training.nan_policy = "stop"
    # Probability of replacing an example's whole condition (class label, context, ...) by
    # the network's null condition: trains the unconditional model of classifier-free guidance.
    config.training.cond_dropout = 0.0
    config.training.progress_bar = True
    # The workdir whose EMA weights a fresh run starts from (python -m diffjax.reflow sets it).
    config.training.init_from = ""
    # A folder of reflow (noise, sample) pairs to train on instead of the dataset.
    config.training.pairs_dir = ""
    # A latent run (an autoencoder codec): encode the training split once into this folder
    # (resumable, in shards) and train on the cached encoder outputs instead of the images.
    config.training.latent_cache = ""

    # EMA sample grids written to workdir/samples/ during training (same seed every time).
    config.sampling = ml_collections.ConfigDict()
    # Every this many steps, and always at the end; 0: only at the end.
    config.sampling.every_steps = 20_000
    # Images per grid; 0 disables the grids.
    config.sampling.num_samples = 64
    # Any of diffjax.samplers.SAMPLER_NAMES: 'ddpm', 'ddim', 'dpm_solver', 'euler', 'heun',
    # 'flow_euler', 'flow_midpoint', 'flow_heun', 'euler_maruyama', 'pc', 'ode', or your own.
    config.sampling.sampler = "ddim"
    config.sampling.num_steps = 100
    # That sampler's own options, checked against it before training starts, e.g.
    # {'eta': 1.0} for DDIM or {'s_churn': 10.0} for 'heun'; empty: its defaults.
    config.sampling.options = ml_collections.ConfigDict()
    # Classifier-free guidance weight; 1.0 means no guidance.
    config.sampling.guidance_scale = 1.0
    config.sampling.clip_x0 = True
    config.sampling.seed = 0

    # Held-out loss of the EMA weights on fixed batches, noise and timesteps.
    config.eval = ml_collections.ConfigDict()
    # Every this many steps, and at the end; 0: never.
    config.eval.every_steps = 20_000
    config.eval.split = "test"
    # Global batch size and number of batches of each evaluation.
    config.eval.batch_size = 256
    config.eval.num_batches = 4
    # A Fréchet distance of the EMA samples (drawn as the sample grids are) every this many
    # steps and at the end, logged as 'fid' or 'fd_fmnist'; 0: never. A run shorter than this
    # (a smoke run) computes none.
    config.eval.fd_every_steps = 0
    config.eval.fd_num_samples = 1000
    # Samples per compiled call; a multiple of the device count.
    config.eval.fd_batch_size = 200
    # 'fmnist' (the shipped Fashion-MNIST classifier, 28x28x1 only, offline) or 'inception'
    # (FID; needs the published weights).
    config.eval.fd_features = "fmnist"
    # Reference statistics (.npz with mu, sigma); None: built once from eval.split into
    # workdir/eval/.
    config.eval.fd_reference = config_dict.placeholder(str)
    # What the recipe's author measured, quoted beside this run's own Fréchet distance by the
    # training log and the evaluate CLI while the run's settings are the recipe's:
    # {'digest': settings_digest(recipe), '500': 48.0, '1000': 33.0}, values by step; empty: none.
    config.eval.quoted_fd = ml_collections.ConfigDict()

    # The device mesh and where the state lives on it (diffjax.sharding).
    config.sharding = ml_collections.ConfigDict()
    # Mesh axis names ('data', 'fsdp') and sizes (-1: all remaining devices). The batch is
    # split over every axis.
    config.sharding.mesh_axes = ("data",)
    config.sharding.mesh_shape = (-1,)
    # How parameters, EMA, optimizer state and frozen networks are laid out on the mesh:
    # 'replicated' (pure data parallelism), 'fsdp' (each array split over the 'fsdp' axis,
    # ZeRO-3; needs that axis, e.g. mesh_axes=('data', 'fsdp'), mesh_shape=(1, -1)), or a rule
    # registered with register_sharding_rules.
    config.sharding.rules = "replicated"
    return config


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return FLOAT
    if isinstance(value, str):
        return STR
    if isinstance(value, (tuple, list)):
        if value and all(isinstance(item, int) and not isinstance(item, bool) for item in value):
            return INT_TUPLE
        return STR_TUPLE
    raise TypeError(f"no schema type for the default {value!r}")


def _field_tag(value: Any) -> str | dict:
    if isinstance(value, config_dict.FieldReference):
        field_type = value.get_type()
        inner = _type_of(value.get()) if value.get() is not None else _type_of(field_type())
        return f"{inner} or None"
    if isinstance(value, (ml_collections.ConfigDict, Mapping)):
        return schema_of(value) if len(value) else MAPPING
    return _type_of(value)


def schema_of(section: Any) -> dict[str, Any]:
    """The type tags of a config section, derived from its defaults.

    A key's type is its default's (``int``, ``float``, ``bool``, ``str``, ``tuple of int``,
    ``tuple of str``); a placeholder or ``FieldReference`` may also be None; an empty section
    is a mapping of free options (a sampler's or process's own); a non-empty one a nested
    section.

    Args:
      section: an ``ml_collections.ConfigDict`` or a mapping of defaults.

    Returns:
      ``{key: tag or nested schema}``.
    """
    if isinstance(section, ml_collections.ConfigDict):
        items = section.items(preserve_field_references=True)
    else:
        items = section.items()
    return {key: _field_tag(value) for key, value in items}


_BASE_SCHEMA: dict[str, Any] | None = None


def config_schema(values: Mapping[str, Any]) -> dict[str, Any]:
    """The schema of a config: :func:`base_config`'s, with the ``model`` and ``objective``
    sections of the network and objective the config names.

    Raises:
      ConfigError: an unknown network or objective name.
    """
    global _BASE_SCHEMA
    if _BASE_SCHEMA is None:
        _BASE_SCHEMA = schema_of(base_config())
    schema = dict(_BASE_SCHEMA)
    for section, make_default in (
        ("model", default_model_config), ("objective", default_objective_config),
    ):  # fmt: skip
        current = values.get(section)
        name = current.get("name") if isinstance(current, Mapping) else None
        if not isinstance(name, str):
            raise ConfigError(
                f"config.{section}.name must name a registered {section}; start from "
                f"configs/base.py, which sets every key."
            )
        try:
            schema[section] = schema_of(make_default(name))
        except ValueError as error:
            raise ConfigError(f"config.{section}.name: {error}") from error
    return schema


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
        STR_TUPLE: isinstance(value, (tuple, list)) and all(isinstance(i, str) for i in value),
        MAPPING: _is_mapping_of_scalars(value),
    }[base]
    if not ok:
        raise ConfigTypeError(
            f"config.{key} must be {kind}, got {value!r} of type {type(value).__name__}."
        )


def _check_section(schema: Mapping[str, Any], config: Mapping[str, Any], prefix: str) -> None:
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
            _check_section(kind, config[key], f"{prefix}{key}.")
        else:
            _check_type(f"{prefix}{key}", config[key], kind)


def import_modules(values: Mapping[str, Any]) -> None:
    """Imports the config's ``imports`` (modules that register samplers, networks, ...).

    Raises:
      ConfigError: a module that cannot be imported, naming it.
    """
    modules = values.get("imports", ())
    if isinstance(modules, str) or not isinstance(modules, (tuple, list)):
        raise ConfigTypeError(f"config.imports must be a tuple of module names, got {modules!r}.")
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ConfigError(
                f"config.imports names {name!r}, which cannot be imported ({error}); put its "
                f"folder on PYTHONPATH or install it."
            ) from error


def check_keys(values: Mapping[str, Any]) -> None:
    """Checks every key of a config against :func:`config_schema`: unknown keys (with a
    suggestion), missing keys and wrong types.

    Raises:
      ConfigError / ConfigTypeError: naming the key, the value and what is allowed.
    """
    _check_section(config_schema(values), values, "")


_UNET_ADDED_KEYS = dict(
    guidance_embedding=False, context_dim=None, transformer_heads=8, transformer_depth=1,
    linear_projection=False, class_context=False, attn_levels=(), attention_head_dim=None,
    norm_epsilon=1e-6, flip_sin_to_cos=False, freq_shift=1.0, downsample_padding=0,
    remat_attention=False, remat_policy="nothing_saveable",
)  # fmt: skip
"""UNet keys added after 0.1.0, with the defaults that leave an older UNet as it was."""
_DIT_ADDED_KEYS = dict(learn_sigma=False, time_freq_shift=1.0)
"""DiT keys added after the DiT, with the defaults that leave an older DiT as it was."""


def upgrade_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config saved by an older diffjax (``config.json`` of an older workdir) in today's layout.

    0.1.0 had no ``model.name`` (always the UNet), no noise process (always the discrete
    schedule), no time-sampler keys, no Fréchet distance during training and a ``sampling.eta``
    key instead of ``sampling.options``; 0.2.0 had no ``imports``, ``codec``, ``objective`` or
    ``sharding`` section, a ``training.label_dropout`` where ``training.cond_dropout`` is, and,
    before reflow, no ``training.init_from`` or ``pairs_dir``; the UNet had no
    ``guidance_embedding`` before progressive distillation, cross-attention keys before
    latent diffusion nor the published UNets' conventions before the Stable Diffusion ports,
    and an objective's section gains the keys its objective added since (their defaults);
    ``training.latent_cache`` is new too, as are ``diffusion.vlb_weight`` (the hybrid loss) and
    the DiT's ``learn_sigma`` and ``time_freq_shift``. The defaults filled in here are what
    those versions did. Current configs pass unchanged.
    """
    values = config_to_dict(values)
    values.setdefault("imports", ())
    values.setdefault("codec", {"name": "identity", "options": {}})
    values.setdefault("objective", config_to_dict(default_objective_config("denoising")))
    values.setdefault(
        "sharding", {"mesh_axes": ("data",), "mesh_shape": (-1,), "rules": "replicated"}
    )
    if isinstance(values.get("eval"), dict):
        values["eval"].setdefault("quoted_fd", {})
    if isinstance(values.get("diffusion"), dict):
        values["diffusion"].setdefault("vlb_weight", 0.0)
    training = values.get("training")
    if isinstance(training, dict):
        training.setdefault("init_from", "")
        training.setdefault("pairs_dir", "")
        training.setdefault("latent_cache", "")
        if "label_dropout" in training:
            training["cond_dropout"] = training.pop("label_dropout")
    objective = values.get("objective")
    if isinstance(objective, dict) and objective.get("name") in OBJECTIVES:
        for key, default in OBJECTIVES[objective["name"]].defaults().items():
            objective.setdefault(key, default)
    model = values.get("model")
    if isinstance(model, dict) and model.get("name") == "unet":
        for key, default in _UNET_ADDED_KEYS.items():
            model.setdefault(key, default)
    if isinstance(model, dict) and model.get("name") in ("dit", "dit_controlnet"):
        for key, default in _DIT_ADDED_KEYS.items():
            model.setdefault(key, default)
    if not isinstance(values.get("model"), dict) or "name" in values["model"]:
        return values
    values["model"] = {"name": "unet", **_UNET_ADDED_KEYS, **values["model"]}
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
    "codec.name",
    "codec.options",
    "objective.name",
    "optim.grad_clip_norm",
)
"""Keys a resumed run must share with the run that wrote the workdir: they fix the state's
shapes, what the network means, or the order of the data and noise. The network's and the
objective's own such keys come from their registry entries (:func:`resume_keys`)."""


def resume_keys(values: Mapping[str, Any]) -> tuple[str, ...]:
    """:data:`RESUME_KEYS` plus the network's and the objective's state keys."""
    model = MODELS.get(values["model"]["name"])
    objective = OBJECTIVES.get(values["objective"]["name"])
    model_keys = () if model is None else tuple(f"model.{key}" for key in model.state_keys)
    objective_keys = (
        () if objective is None else tuple(f"objective.{key}" for key in objective.state_keys)
    )
    return RESUME_KEYS + model_keys + objective_keys


def _lookup(values: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        values = values[part]
    return values


def resume_conflicts(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The :func:`resume_keys` on which two configs differ, each as one readable line.

    Args:
      saved: the config stored in the workdir (plain dict, e.g. from JSON).
      current: the config of the new run (plain dict).

    Returns:
      Lines like ``"model.base_channels: 32 in the workdir, 64 now"``; empty when resuming
      is possible.
    """
    saved, current = upgrade_config(saved), config_to_dict(current)
    conflicts = []
    for key in resume_keys(current):
        try:
            before = _lookup(saved, key)
        except (KeyError, TypeError):
            before = "<absent>"
        now = _lookup(current, key)
        if before != now:
            conflicts.append(f"{key}: {before!r} in the workdir, {now!r} now")
    return conflicts


QUOTE_IGNORED_KEYS = (
    "imports",
    "data.data_dir",
    "data.manual_dir",
    "data.download",
    "data.num_threads",
    "data.prefetch_batches",
    "training.log_every_steps",
    "training.checkpoint_every_steps",
    "training.keep_checkpoints",
    "training.async_checkpointing",
    "training.progress_bar",
    "sampling.every_steps",
    "sampling.num_samples",
    "eval.every_steps",
    "eval.batch_size",
    "eval.num_batches",
    "eval.fd_every_steps",
    "eval.fd_batch_size",
    "eval.quoted_fd",
    "sharding",
)
"""Keys that do not change a run's weights or its Fréchet distance at a given step (where the
data comes from, how often it logs, saves and evaluates, how the work is split), left out of
:func:`settings_digest`. ``training.num_steps`` is left out too while the learning rate is
constant after the warm-up, since a longer run then passes through the same states."""


def settings_digest(values: Mapping[str, Any]) -> str:
    """The first 12 hex digits of a SHA-256 of the settings that decide a run's weights and
    its logged Fréchet distance at a given step: the config without :data:`QUOTE_IGNORED_KEYS`.

    Args:
      values: a validated config (``config.json``'s ``config``).
    """
    values = config_to_dict(values)
    ignored = QUOTE_IGNORED_KEYS
    if values["optim"]["lr_decay"] == "constant":
        ignored += ("training.num_steps",)
    for key in ignored:
        *parents, last = key.split(".")
        section = values
        for part in parents:
            section = section[part]
        section.pop(last, None)
    text = json.dumps(values, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def quoted_fd(values: Mapping[str, Any], step: int) -> float | None:
    """The Fréchet distance ``config.eval.quoted_fd`` quotes for ``step``, or None: no quote at
    that step, or a run whose :func:`settings_digest` is not the quote's (its settings were
    changed, so the recipe's measurement says nothing about it).

    Args:
      values: a validated config.
      step: a training step.
    """
    quote = values["eval"].get("quoted_fd") or {}
    if str(step) not in quote or quote.get("digest") != settings_digest(values):
        return None
    return float(quote[str(step)])
