"""What a run builds from its config: the one reader of a config (DESIGN rule 2).

:func:`validate_config` checks a whole config before anything is built or compiled: its keys
against the schema derived from the base config (:mod:`diffjax.training.config`), then every
section by the component that uses it (the data pipeline, the network's registry entry, the
process and time sampler, the codec, the objective, the optimizer, the sampler, the
evaluation, the mesh). Every error names the key, the bad value and what is allowed.

:func:`build_programs` builds the network, process, codec, objective, optimizer, the abstract
state with its shardings, and the jitted train step and held-out loss, once per (settings,
mesh): the training loop and :func:`~diffjax.training.trained_run.load_trained_run` share it,
so a run loaded for sampling has exactly the model and state layout it was trained with, and a
second run in the same process (a notebook) compiles nothing again.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from diffjax.codecs import check_latent_shape, get_codec
from diffjax.data.pipeline import check_data_config
from diffjax.errors import ConfigError
from diffjax.models.conditioning import GUIDANCE_KEY, cond_keys, data_cond_keys
from diffjax.models.registry import DTYPES, build_model, check_model_config
from diffjax.sharding import (
    FSDP_AXIS,
    SHARDING_RULES,
    batch_sharding,
    make_mesh,
    replicated_sharding,
    resolve_mesh_shape,
    state_shardings,
)
from diffjax.training.config import check_keys, config_to_dict, import_modules, upgrade_config
from diffjax.training.latent_codec import AutoencoderCodec
from diffjax.training.noise_process import build_process
from diffjax.training.objectives import (
    FROZEN_GROUP,
    Objective,
    ObjectiveContext,
    objective_entry,
)
from diffjax.training.step import jit_train_step, make_train_step
from diffjax.training.train_state import (
    TrainState,
    abstract_train_state,
    group_optimizer,
    make_optimizer,
    trainable_part,
)
from diffjax.training.workdir import cond_spec_of, load_run_record
from diffjax.weights.params import params_file_shapes

__all__ = [
    "LR_DECAYS",
    "NAN_POLICIES",
    "Programs",
    "SampleConditions",
    "build_codec",
    "build_process",
    "build_programs",
    "build_time_sampler",
    "make_run_generator",
    "mesh_from_config",
    "program_spec",
    "sample_drawer",
    "sampling_settings",
    "validate_config",
]

NAN_POLICIES = ("stop", "skip")
LR_DECAYS = ("constant", "cosine", "linear")


# ------------------------------------------------------------------------------ builders


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


def build_codec(values: Mapping[str, Any]) -> Any:
    """The codec a config's ``codec`` section describes.

    Raises:
      ConfigError: an unknown codec or a bad option.
    """
    codec = values["codec"]
    try:
        return get_codec(codec["name"], **codec["options"])
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config.codec ({codec['name']!r}): {error}") from error


def sampling_settings(
    values: Mapping[str, Any],
    *,
    sampler: str | None = None,
    num_steps: int | None = None,
    options: Mapping[str, Any] | None = None,
    process: Any = None,
) -> tuple[str, dict[str, Any]]:
    """The sampler and its keyword arguments for a run, the one rule every program uses.

    The config's sampler starts from ``config.sampling``'s ``num_steps`` and ``options``;
    another sampler starts from its own defaults (``ddpm``: all T steps, as in the API); then
    ``options`` and ``num_steps`` are put on top. ``prediction_type`` is always the run's
    ``config.diffusion.prediction_type``: what the network was trained to predict. ``clip_x0``
    is ``config.sampling.clip_x0`` unless an option of that name overrides it; it is always in
    the result, so a recorded protocol says whether the x0-predictions were clipped.

    Args:
      values: the run's validated config.
      sampler: a registered sampler's name; None: ``config.sampling.sampler``.
      num_steps: the steps; None: as above.
      options: more of the sampler's keyword arguments (e.g. ``{'eta': 0.5}``).
      process: the run's process: the options are then checked against the sampler
        (:func:`diffjax.samplers.check_sampler_options`), compiling nothing.

    Returns:
      ``(sampler, options)``, ``options`` with ``clip_x0`` (a bool).

    Raises:
      ConfigError: an option ``prediction_type`` other than the run's, a ``clip_x0`` that is
        not a bool, or (with ``process``) an option the sampler does not take or refuses.
    """
    sampling = values["sampling"]
    name = sampling["sampler"] if sampler is None else sampler
    chosen: dict[str, Any] = {}
    if name == sampling["sampler"]:
        chosen = dict(sampling["options"], num_steps=sampling["num_steps"])
    chosen.update(options or {})
    if num_steps is not None:
        chosen["num_steps"] = num_steps
    clip_x0 = chosen.pop("clip_x0", sampling["clip_x0"])
    if not isinstance(clip_x0, bool):
        raise ConfigError(f"clip_x0={clip_x0!r} must be true or false.")
    trained = values["diffusion"]["prediction_type"]
    if chosen.get("prediction_type", trained) != trained:
        raise ConfigError(
            f"prediction_type={chosen['prediction_type']!r} contradicts the run: its network was "
            f"trained to predict {trained!r} (config.diffusion.prediction_type); leave the "
            f"option out."
        )
    chosen["prediction_type"] = trained
    if process is not None:
        from diffjax.samplers import check_sampler_options

        try:
            check_sampler_options(name, process, chosen)
        except (TypeError, ValueError) as error:
            raise ConfigError(
                f"sampler {name!r}, num_steps={chosen.get('num_steps')}: {error}"
            ) from error
    return name, dict(chosen, clip_x0=clip_x0)


def mesh_from_config(values: Mapping[str, Any], devices: Sequence[Any] | None = None) -> Mesh:
    """The mesh of a config's ``sharding`` section over ``devices`` (default all).

    Raises:
      ConfigError: axis names, sizes or a device count that do not fit.
    """
    sharding = values["sharding"]
    try:
        return make_mesh(devices, sharding["mesh_axes"], sharding["mesh_shape"])
    except ValueError as error:
        raise ConfigError(f"config.sharding: {error}") from error


# ---------------------------------------------------------------------------- validation


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


def _check_choice(values: Mapping[str, Any], key: str, allowed: Sequence[str]) -> None:
    _expect(values, key, lambda value: value in allowed, f"be one of {tuple(allowed)}")


def _latent_shape(values: Mapping[str, Any]) -> tuple[int, ...]:
    """The model-space shape of an example before the dataset is opened (its channel count is
    not known yet; the codec's spatial sides do not depend on it)."""
    size = values["data"]["image_size"]
    try:
        return check_latent_shape(build_codec(values), (size, size, 3))
    except ValueError as error:
        raise ConfigError(f"config.codec: {error}") from error


def _check_model(values: Mapping[str, Any]) -> None:
    shape = _latent_shape(values)
    if values["model"]["dtype"] in DTYPES and values["model"]["param_dtype"] in DTYPES:
        try:
            build_model(values["model"])
        except ValueError as error:
            raise ConfigError(f"config.model ({values['model']['name']}): {error}") from error
    try:
        check_model_config(values["model"], shape[:-1])
    except ValueError as error:
        message = str(error)
        for key in ("dtype", "param_dtype"):
            if message.startswith(f"{key}="):
                raise ConfigError(f"config.model.{message}") from error
        raise ConfigError(
            f"config.model ({values['model']['name']}) does not fit config.data.image_size="
            f"{values['data']['image_size']}: {error}"
        ) from error


def _check_diffusion(values: Mapping[str, Any]) -> Any:
    from diffjax.losses import LOSS_WEIGHTINGS, check_vlb_weight
    from diffjax.predictions import PREDICTION_TYPES, check_prediction_supported

    _expect(values, "diffusion.num_timesteps", lambda v: v >= 2, "be >= 2")
    _check_choice(values, "diffusion.prediction_type", PREDICTION_TYPES)
    _check_choice(values, "diffusion.loss_weighting", LOSS_WEIGHTINGS)
    _expect(values, "diffusion.min_snr_gamma", lambda v: v > 0, "be > 0")
    _expect(values, "diffusion.offset_noise", lambda v: v >= 0, "be >= 0")
    _expect(values, "diffusion.vlb_weight", lambda v: v >= 0, "be >= 0")
    process = build_process(values["diffusion"])
    try:
        check_vlb_weight(values["diffusion"]["vlb_weight"], process)
    except ValueError as error:
        raise ConfigError(f"config.diffusion.vlb_weight: {error}") from error
    try:
        check_prediction_supported(values["diffusion"]["prediction_type"], process)
    except ValueError as error:
        raise ConfigError(f"config.diffusion.prediction_type: {error}") from error
    build_time_sampler(values["diffusion"], process)
    return process


def _check_optim(values: Mapping[str, Any]) -> None:
    optim = values["optim"]
    _expect(
        values, "optim.learning_rate", lambda v: math.isfinite(v) and v > 0,
        "be a finite number > 0",
    )  # fmt: skip
    _check_choice(values, "optim.lr_decay", LR_DECAYS)
    _require(
        optim["lr_decay"] == "constant" or optim["warmup_steps"] < values["training"]["num_steps"],
        f"config.optim.lr_decay={optim['lr_decay']!r} needs config.optim.warmup_steps "
        f"({optim['warmup_steps']}) < config.training.num_steps "
        f"({values['training']['num_steps']}).",
    )
    _expect(values, "optim.ema_decay", lambda v: 0 <= v <= 1, "lie in [0, 1]")
    try:
        _make_optimizer(optim, values["training"]["num_steps"])
    except ValueError as error:
        raise ConfigError(f"config.optim: {error}") from error


def _check_training(values: Mapping[str, Any]) -> None:
    for key in ("num_steps", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        _expect(values, f"training.{key}", lambda v: v >= 1, "be >= 1")
    _check_choice(values, "training.nan_policy", NAN_POLICIES)
    _expect(values, "training.cond_dropout", lambda v: 0 <= v < 1, "lie in [0, 1)")
    dropout = values["training"]["cond_dropout"]
    _require(
        dropout == 0 or cond_keys(build_model(values["model"])),
        f"config.training.cond_dropout={dropout} drops the condition, but the network reads "
        f"none (config.model.num_classes is None: an unconditional model has nothing to drop).",
    )
    cache = values["training"]["latent_cache"]
    if cache:
        _require(
            isinstance(build_codec(values), AutoencoderCodec),
            f"config.training.latent_cache={cache!r} caches an autoencoder's latents: set "
            f"config.codec.name='autoencoder' (the codec is {values['codec']['name']!r}).",
        )
        _require(
            values["objective"]["name"] == "denoising" and not values["training"]["pairs_dir"],
            f"config.training.latent_cache={cache!r} is for the denoising objective on the "
            f"dataset (objective {values['objective']['name']!r}, pairs_dir "
            f"{values['training']['pairs_dir']!r}).",
        )
        _require(
            not values["data"]["random_flip"],
            "config.training.latent_cache encodes each image once, unflipped: set "
            "config.data.random_flip=False.",
        )


def _check_sampling(values: Mapping[str, Any], process: Any) -> None:
    from diffjax.samplers import SAMPLER_NAMES, check_sampler_options

    sampling = values["sampling"]
    _expect(values, "sampling.every_steps", lambda v: v >= 0, "be >= 0 (0: only at the end)")
    _expect(values, "sampling.num_samples", lambda v: v >= 0, "be >= 0 (0: no sample grids)")
    _check_choice(values, "sampling.sampler", tuple(SAMPLER_NAMES))
    _expect(values, "sampling.num_steps", lambda v: v >= 1, "be >= 1")
    _expect(values, "sampling.seed", lambda v: 0 <= v < 2**32, "lie in [0, 2**32)")
    # The sampler checks its own options, as it will when it draws the grids.
    try:
        check_sampler_options(sampling["sampler"], process, sampling_settings(values)[1])
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"config.sampling (sampler {sampling['sampler']!r}, num_steps "
            f"{sampling['num_steps']}, options {dict(sampling['options'])}): {error}"
        ) from error
    guidance_scale = sampling["guidance_scale"]
    keys = cond_keys(build_model(values["model"]))
    if GUIDANCE_KEY in keys:  # the network embeds w: no classifier-free guidance needed
        _expect(values, "sampling.guidance_scale", lambda v: v >= 0, "be >= 0")
        return
    _require(
        guidance_scale == 1.0 or bool(keys),
        f"config.sampling.guidance_scale={guidance_scale} asks for classifier-free guidance, "
        f"which needs a conditional network (a class-conditional one: set "
        f"config.model.num_classes, and config.training.cond_dropout > 0), or "
        f"guidance_scale=1.0.",
    )
    _require(
        guidance_scale == 1.0 or values["training"]["cond_dropout"] > 0,
        f"config.sampling.guidance_scale={guidance_scale} needs the unconditional model that "
        f"config.training.cond_dropout > 0 trains (got 0.0; 0.1 is usual).",
    )


def _check_eval(values: Mapping[str, Any]) -> None:
    from diffjax.metrics.feature_networks import FEATURE_NETWORKS

    _expect(values, "eval.every_steps", lambda v: v >= 0, "be >= 0 (0: never)")
    for key in ("eval.batch_size", "eval.num_batches", "eval.fd_batch_size"):
        _expect(values, key, lambda v: v >= 1, "be >= 1")
    _expect(values, "eval.fd_every_steps", lambda v: v >= 0, "be >= 0 (0: no FD during training)")
    _expect(values, "eval.fd_num_samples", lambda v: v >= 2, "be >= 2")
    _check_choice(values, "eval.fd_features", FEATURE_NETWORKS)


def _check_sharding(values: Mapping[str, Any], num_devices: int | None) -> None:
    _check_choice(values, "sharding.rules", tuple(SHARDING_RULES))
    sharding = values["sharding"]
    if sharding["rules"] == "fsdp" and FSDP_AXIS not in tuple(sharding["mesh_axes"]):
        raise ConfigError(
            f"config.sharding.rules='fsdp' splits the state over a mesh axis named "
            f"'{FSDP_AXIS}', but config.sharding.mesh_axes={tuple(sharding['mesh_axes'])}; use "
            f"e.g. mesh_axes=('data', 'fsdp') with mesh_shape=(1, -1) (all devices) or (-1, 2)."
        )
    try:
        resolve_mesh_shape(sharding["mesh_axes"], sharding["mesh_shape"], num_devices)
    except ValueError as error:
        raise ConfigError(f"config.sharding: {error}") from error


def validate_config(config: Any, num_devices: int | None = None) -> dict[str, Any]:
    """Checks a training config; raises on the first problem, before anything is compiled.

    First the config's ``imports`` are imported (they may register what the config names),
    then every key is checked against the schema, then every section by its component.

    Args:
      config: an ``ml_collections.ConfigDict`` (or nested mapping) with the sections of
        :func:`diffjax.training.config.base_config`.
      num_devices: if given, the global batch sizes must split evenly over this many devices
        and the mesh must fit them.

    Returns:
      The config as a plain nested dict (see :func:`~diffjax.training.config.config_to_dict`).

    Raises:
      ConfigTypeError: a value of the wrong type (also a ``TypeError``).
      ConfigError: an unknown or missing key, a value out of range, or an impossible
        combination (also a ``ValueError``).
    """
    values = config_to_dict(config)
    import_modules(values)
    check_keys(values)
    _expect(values, "seed", lambda v: 0 <= v < 2**32, "lie in [0, 2**32)")
    check_data_config(values["data"])
    _check_model(values)
    process = _check_diffusion(values)
    entry = objective_entry(values["objective"]["name"])
    entry.check(values)
    _check_optim(values)
    _check_training(values)
    _check_sampling(values, process)
    _check_eval(values)
    _check_sharding(values, num_devices)
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


# ------------------------------------------------------------------------------ programs


class Programs(NamedTuple):
    """Everything a run compiles, built once per (settings, mesh) and kept for later runs.

    Attributes:
      model: the network (a Flax module from the registry).
      process: the noise process (a schedule or a continuous process).
      codec: the model space (:mod:`diffjax.codecs`).
      latent_shape: the model-space shape of one example.
      objective: the built :class:`~diffjax.training.objectives.Objective`.
      hooks: the names of the loop's periodic jobs the objective runs.
      optimizer: the optax optimizer of the trainable parameters.
      trainable: the trainable mask (None: every parameter is trained).
      init_fn: ``init(key) -> params`` of the network.
      abstract_state: the train state's shapes, dtypes and shardings (no arrays).
      frozen_modules: the networks of the frozen pytrees, by name.
      abstract_frozen: the frozen pytrees' shapes, dtypes and shardings.
      train_step: the jitted ``train_step(state, batch, key, frozen) -> (state, metrics)``.
      eval_loss: the jitted ``eval_loss(params, frozen, batch, key, extra) -> scalar``
        held-out loss (the training loss without dropout), or None when
        ``config.eval.every_steps`` is 0.
    """

    model: nn.Module
    process: Any
    codec: Any
    latent_shape: tuple[int, ...]
    objective: Objective
    hooks: tuple[str, ...]
    optimizer: optax.GradientTransformation
    trainable: Any
    init_fn: Callable[[jax.Array], Any]
    abstract_state: TrainState
    frozen_modules: dict[str, Any]
    abstract_frozen: dict[str, Any]
    train_step: Callable
    eval_loss: Callable | None


def program_spec(values: Mapping[str, Any], dataset: Mapping[str, Any]) -> str:
    """The settings that the compiled functions depend on, as a canonical JSON key.

    Args:
      values: a validated config as a plain dict.
      dataset: the training data's description: ``image_shape`` ``(H, W, C)`` and
        ``cond_spec`` (see :class:`~diffjax.data.pipeline.DatasetInfo`).

    Returns:
      The key for :func:`build_programs` (JSON with sorted keys: equal settings, equal key):
      the sections ``model``, ``diffusion``, ``codec``, ``objective``, ``optim``,
      ``sharding``, ``imports``, the ``training`` keys the step depends on (``cond_dropout``,
      ``nan_policy``, ``num_steps`` for a decaying learning rate) and the data's shapes. These
      are what an objective's ``build`` may read; the run length, logging, data and evaluation
      keys do not change what is compiled.
    """
    training = values["training"]
    entry = objective_entry(values["objective"]["name"])
    spec = dict(
        imports=list(values["imports"]),
        model=values["model"],
        diffusion=values["diffusion"],
        codec=values["codec"],
        objective=values["objective"],
        frozen=dict(entry.frozen(values)),
        optim=values["optim"],
        sharding=values["sharding"],
        training=dict(
            cond_dropout=training["cond_dropout"],
            nan_policy=training["nan_policy"],
            # The learning-rate schedule depends on the run length only when it decays.
            num_steps=(
                training["num_steps"] if values["optim"]["lr_decay"] != "constant" else None
            ),
        ),
        evaluate=values["eval"]["every_steps"] > 0,
        image_shape=list(dataset["image_shape"]),
        cond_spec=[[key, list(shape), dtype] for key, shape, dtype in dataset["cond_spec"]],
    )
    return json.dumps(spec, sort_keys=True)


def _make_optimizer(
    optim: Mapping[str, Any], num_steps: int | None
) -> optax.GradientTransformation:
    """The optimizer of a config's ``optim`` section (``num_steps``: end of a decay)."""
    return make_optimizer(
        learning_rate=optim["learning_rate"],
        warmup_steps=optim["warmup_steps"],
        total_steps=None if optim["lr_decay"] == "constant" else num_steps,
        decay="linear" if optim["lr_decay"] == "linear" else "cosine",
        grad_clip_norm=optim["grad_clip_norm"],
        weight_decay=optim["weight_decay"],
        b1=optim["b1"],
        b2=optim["b2"],
        eps=optim["eps"],
    )


def _group_optimizers(
    optim: Mapping[str, Any], num_steps: int | None, labels: Any, options: Mapping[str, Any]
) -> optax.GradientTransformation:
    """One optimizer over the trainable parameters' groups: ``config.optim`` with each group's
    overrides, updated on every step, on every ``every``-th (from ``offset``), or on the steps
    where ``when(count)`` holds."""
    optimizers = {}
    for name in sorted(set(jax.tree.leaves(labels))):
        overrides = dict(options.get(name, {}))
        every, offset = int(overrides.pop("every", 1)), int(overrides.pop("offset", 0))
        when = overrides.pop("when", None)
        if when is None and every > 1:
            when = lambda count, every=every, offset=offset: count % every == offset  # noqa: E731
        optimizer = _make_optimizer({**optim, **overrides}, num_steps)
        if when is not None:
            optimizer = optax.transforms.conditionally_mask(optimizer, when)
        optimizers[name] = optimizer
    return group_optimizer(labels, optimizers)


def _example_cond(module: nn.Module, cond_spec: Sequence[Any]) -> dict[str, jnp.ndarray]:
    # A guidance scale is drawn by the objective, not read from the data.
    shapes = {GUIDANCE_KEY: ((), "float32")}
    shapes.update({key: (tuple(shape), dtype) for key, shape, dtype in cond_spec})
    wanted = cond_keys(module)
    missing = [key for key in wanted if key not in shapes]
    if missing:
        raise ConfigError(
            f"the network reads cond keys {list(wanted)}, but the dataset's batches hold "
            f"{sorted(shapes)} (missing {missing})."
        )
    return {key: jnp.zeros((1, *shapes[key][0]), shapes[key][1]) for key in wanted}


def _init_fn(
    model: nn.Module, shape: tuple[int, ...], discrete: bool, cond: Mapping[str, Any]
) -> Callable[[jax.Array], Any]:
    def init(key: jax.Array) -> Any:
        x = jnp.zeros((1, *shape), jnp.float32)
        t = jnp.zeros((1,), jnp.int32 if discrete else jnp.float32)
        return model.init({"params": key}, x, t, dict(cond), train=False)["params"]

    return init


def _frozen_source_programs(
    source: Mapping[str, Any], mesh: Mesh, init_for: Callable[[nn.Module], Callable]
) -> tuple[Any, Any]:
    """(module, abstract params) of a frozen source: LPIPS's published network (``'lpips'``), the network a source names by its config
    (``'model'``; e.g. a distillation teacher, built without reading its workdir, so that the
    student loads and samples without it), a workdir's network and EMA weights, or a weights
    file's arrays (whose network the objective names)."""
    if "lpips" in source:
        from diffjax.metrics.lpips import lpips_variable_shapes

        return None, lpips_variable_shapes(source["lpips"])
    if "model" in source:
        module = build_model(source["model"])
        return module, jax.eval_shape(init_for(module), jax.random.key(0))
    if "diffusers" in source:
        from diffjax.models.autoencoder_weights import diffusers_autoencoder_shapes

        return diffusers_autoencoder_shapes(source["diffusers"])
    if "workdir" in source:
        record = load_run_record(source["workdir"])
        if record is None:
            raise ConfigError(f"{source['workdir']} holds no diffjax run (no config.json).")
        values = validate_config(upgrade_config(record["config"]))
        dataset = dict(record["dataset"], cond_spec=cond_spec_of(record["dataset"]))
        programs = build_programs(program_spec(values, dataset), mesh)
        params = programs.abstract_state.ema_params
        if source.get("params_key"):
            params = params[source["params_key"]]
        return programs.model, params
    return None, params_file_shapes(source["weights"])


@functools.lru_cache(maxsize=8)
def build_programs(spec: str, mesh: Mesh) -> Programs:
    """Builds (and, through the cache, reuses) the model and the jitted functions of a run.

    A second run in the same process (a resumed run in a notebook, a test) then neither traces
    nor compiles again: JAX's caches key on these very function objects.

    Args:
      spec: the run's settings, from :func:`program_spec`.
      mesh: the devices the functions run on.

    Returns:
      The run's :class:`Programs`.
    """
    from diffjax.processes import is_discrete

    values = json.loads(spec)
    import_modules(values)
    model = build_model(values["model"])
    process = build_process(values["diffusion"])
    codec = build_codec(values)
    latent_shape = check_latent_shape(codec, tuple(values["image_shape"]))
    rules = values["sharding"]["rules"]
    entry = objective_entry(values["objective"]["name"])
    frozen_modules, abstract_frozen = {}, {}
    sources = dict(entry.frozen(values))
    codec_source = codec.frozen_source()
    if codec_source is not None:
        sources["codec"] = codec_source
    discrete, example_cond = is_discrete(process), values["cond_spec"]

    def init_for(module: nn.Module) -> Callable[[jax.Array], Any]:
        return _init_fn(module, latent_shape, discrete, _example_cond(module, example_cond))

    for name, source in sources.items():
        module, abstract = _frozen_source_programs(source, mesh, init_for)
        frozen_modules[name] = module
        abstract_frozen[name] = jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            abstract,
            state_shardings(abstract, mesh, rules),
        )
    objective = entry.build(
        ObjectiveContext(values, model, process, codec, frozen_modules, init_for(model))
    )
    init_fn = init_for(model) if objective.init is None else objective.init
    # Only the key's type matters for the shapes; the run's own key initialises.
    params_shape = jax.eval_shape(init_fn, jax.random.key(0))
    optim, num_steps = values["optim"], values["training"]["num_steps"]
    if objective.param_labels is None:
        trainable, optimizer = None, _make_optimizer(optim, num_steps)
    else:
        labels = objective.param_labels(params_shape)
        trainable = jax.tree.map(lambda label: label != FROZEN_GROUP, labels)
        optimizer = _group_optimizers(
            optim, num_steps, trainable_part(labels, trainable), objective.group_options
        )
    shardings = functools.partial(_shardings, mesh=mesh, rules=rules)
    abstract = abstract_train_state(
        init_fn, jax.random.key(0), optimizer, shardings=shardings, trainable=trainable,
        init_extra=objective.init_extra,
    )  # fmt: skip
    state_sharding = jax.tree.map(lambda leaf: leaf.sharding, abstract)
    frozen_sharding = jax.tree.map(lambda leaf: leaf.sharding, abstract_frozen)
    train_step = jit_train_step(
        make_train_step(
            objective.loss_fn,
            optimizer,
            ema_decay=optim["ema_decay"],
            skip_nonfinite=values["training"]["nan_policy"] == "skip",
            trainable=trainable,
            stateful=objective.init_extra is not None,
            assign=objective.assign,
        ),
        mesh,
        state_sharding,
        frozen_sharding,
    )
    eval_loss = None
    if values["evaluate"]:
        eval_loss = _eval_loss_fn(
            objective, mesh, state_sharding.ema_params, frozen_sharding, state_sharding.extra
        )
    return Programs(
        model, process, codec, latent_shape, objective, entry.hooks, optimizer, trainable,
        init_fn, abstract, frozen_modules, abstract_frozen, train_step, eval_loss,
    )  # fmt: skip


def _shardings(abstract: Any, *, mesh: Mesh, rules: str) -> Any:
    return state_shardings(abstract, mesh, rules)


def _eval_loss_fn(
    objective: Objective, mesh: Mesh, params_sharding: Any, frozen_sharding: Any,
    extra_sharding: Any,
) -> Callable[[Any, Any, dict, jax.Array, Any], jax.Array]:  # fmt: skip
    """Jitted held-out loss of given params on one batch: the training loss with train=False."""
    stateful = objective.init_extra is not None

    def loss(params: Any, frozen: Any, batch: dict, key: jax.Array, extra: Any) -> jax.Array:
        if stateful:
            return objective.loss_fn(params, frozen, batch, key, False, extra)[0]
        return objective.loss_fn(params, frozen, batch, key, False)[0]

    replicated = replicated_sharding(mesh)
    return jax.jit(
        loss,
        in_shardings=(params_sharding, frozen_sharding, batch_sharding(mesh), None, extra_sharding),
        out_shardings=replicated,
    )


# ---------------------------------------------------------------------------- generation


class SampleConditions:
    """The condition of generated sample i, fixed by its index like its key.

    A class-conditional network gets class i mod K (every class in turn), or, for a grid of
    N, class i K // N (one class per row); a network that reads more than a class label gets
    the conditioning of example i of the run's evaluation split (``config.eval.split``, read in
    order and cycled); an unconditional one gets None. A guidance scale (``'guidance'``, a
    guidance-distilled network) is not part of it: the generator sets it. Entries of
    ``fixed`` are every sample's (a control image given to the sample CLI).

    Args:
      values: the run's validated config.
      module: the network.
      fixed: ``{key: array [...]}`` shared by every sample, or None.

    Raises:
      ValueError: a fixed key the network does not read.
    """

    def __init__(
        self,
        values: Mapping[str, Any],
        module: nn.Module,
        fixed: Mapping[str, Any] | None = None,
    ):
        self._values = values
        self._fixed = dict(fixed or {})
        # A guidance scale is the generator's to set (diffjax.generation.make_generator).
        wanted = data_cond_keys(module)
        unread = sorted(set(self._fixed) - set(wanted))
        if unread:
            raise ValueError(
                f"the network reads cond keys {list(wanted)}, not {unread}; it cannot be given "
                f"them."
            )
        self._keys = tuple(key for key in wanted if key not in self._fixed)
        self._num_classes = values["model"]["num_classes"]
        self._loaded: dict[str, Any] = {}

    def _from_data(self, indices: Any) -> dict[str, Any]:
        import numpy as np

        from diffjax.data.pipeline import dataset_cond

        needed = int(np.max(indices)) + 1
        if not self._loaded or len(next(iter(self._loaded.values()))) < needed:
            self._loaded = dataset_cond(
                self._values, self._values["eval"]["split"], needed, self._keys
            )
        return {key: jnp.asarray(value[np.asarray(indices)]) for key, value in self._loaded.items()}

    def __call__(self, indices: Any, *, blocks: int | None = None) -> dict[str, Any] | None:
        """The conditioning ``{key: [n, ...]}`` of samples ``indices`` (None: unconditional).

        Args:
          indices: int ``[n]`` sample indices.
          blocks: N, the size of a grid whose rows are one class each, or None.
        """
        from diffjax.generation import class_labels

        fixed = {
            key: jnp.broadcast_to(jnp.asarray(value), (len(indices), *jnp.shape(value)))
            for key, value in self._fixed.items()
        }
        if not self._keys:
            return fixed or None
        if self._keys == ("label",) and self._num_classes is not None:
            labels = class_labels(indices, self._num_classes, blocks=blocks)
            return {"label": jnp.asarray(labels), **fixed}
        return {**self._from_data(indices), **fixed}


def sample_drawer(
    generate: Callable,
    params: Any,
    *,
    seed: int,
    conditions: SampleConditions,
    frozen: Any = None,
    blocks: int | None = None,
    labels: Any = None,
    classifier: Any = None,
) -> Callable[[int, int], jax.Array]:
    """``draw(start, count) -> images`` of samples ``start .. start + count - 1``: sample i with
    the key ``fold_in(key(seed), i)`` and the condition ``conditions(i)``.

    Args:
      generate: from :func:`diffjax.generation.make_generator` (``count`` samples per call).
      params: the network's parameters.
      seed: the samples' seed.
      conditions: the :class:`SampleConditions` of the run.
      frozen: the run's frozen pytrees (the codec's parameters).
      blocks: a grid's size (one class per row), or None.
      labels: int ``[N]`` classes of all samples, overriding ``conditions`` (the sample CLI's
        ``--label``); a short last batch is padded by repetition.
      classifier: a :class:`~diffjax.training.classifier_guidance.RunClassifier` guiding each
        sample towards its class: ``labels[i]``, else the class a class-conditional run draws
        it for, else class i mod K (i K // N with ``blocks``), K the classifier's classes.
    """
    import numpy as np

    from diffjax.generation import class_labels
    from diffjax.samplers import sample_keys

    def draw(start: int, count: int) -> jax.Array:
        indices = np.arange(start, start + count)
        chosen = None if labels is None else np.resize(np.asarray(labels)[start:], count)
        cond = conditions(indices, blocks=blocks)
        if chosen is not None:
            cond = {**(cond or {}), "label": jnp.asarray(chosen, jnp.int32)}
        guide = None
        if classifier is not None:
            if chosen is None and cond is not None and "label" in cond:
                chosen = np.asarray(cond["label"])
            if chosen is None:
                chosen = class_labels(indices, classifier.num_classes, blocks=blocks)
            guide = classifier.guide(chosen)
        keys = sample_keys(seed, start, count)
        return generate(params, keys, cond, frozen=frozen, guide=guide)

    return draw


def make_run_generator(
    values: Mapping[str, Any],
    programs: Programs,
    num_samples: int,
    mesh: Mesh | None,
    *,
    sampler: str | None = None,
    options: Mapping[str, Any] | None = None,
    guidance_scale: float | None = None,
) -> Callable:
    """:func:`diffjax.generation.make_generator` with a run's settings: its network, process,
    codec, ``config.sampling``'s sampler, options, guidance and ``clip_x0`` (each overridable;
    ``clip_x0`` by an option of that name, e.g. ``--option clip_x0=false``). An objective
    whose trained parameters are not the network's (``Objective.network_params``: a LoRA)
    has them turned into the network's on every call, from the ``frozen`` pytrees given.

    Raises:
      ConfigError: guidance for an unconditional network.
    """
    from diffjax.generation import make_generator

    sampling = values["sampling"]
    scale = sampling["guidance_scale"] if guidance_scale is None else guidance_scale
    if scale != 1.0 and not cond_keys(programs.model):
        raise ConfigError(
            f"guidance_scale={scale} needs a conditional network; this one reads no "
            f"conditioning. Use guidance_scale=1.0."
        )
    options = dict(sampling_settings(values)[1] if options is None else options)
    clip_x0 = options.pop("clip_x0", sampling["clip_x0"])
    generate = make_generator(
        programs.model,
        programs.process,
        shape=programs.latent_shape,
        num_samples=num_samples,
        sampler=sampling["sampler"] if sampler is None else sampler,
        options=options,
        guidance_scale=scale,
        clip_x0=clip_x0,
        codec=programs.codec,
        mesh=mesh,
    )
    network_params = programs.objective.network_params
    if network_params is None:
        return generate

    def generate_with_network_params(params: Any, *args: Any, **kwargs: Any) -> Any:
        # The trained parameters (a LoRA) and the frozen base make the network's weights.
        return generate(network_params(params, kwargs.get("frozen")), *args, **kwargs)

    return generate_with_network_params
