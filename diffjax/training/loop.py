"""``train_and_evaluate(config, workdir)``: the training program behind ``python -m diffjax.train``.

One call validates the config, builds the data pipeline, the UNet, the optimizer and the
sharded train state, resumes from the newest good checkpoint in ``workdir`` if there is one,
and trains to ``config.training.num_steps``. While it runs it shows a progress bar, writes
scalars to TensorBoard and ``metrics.jsonl``, an EMA sample grid every
``config.sampling.every_steps`` into ``workdir/samples/``, a held-out loss every
``config.eval.every_steps``, and an asynchronous checkpoint every
``config.training.checkpoint_every_steps``; at the end a last checkpoint, a last grid and
``loss.png``.

Reliability (the run must lose nothing):

- every check that can fail (config, workdir, dataset, devices, a resume with another config)
  runs before anything compiles and before anything in the workdir is written;
- a resumed run continues exactly: the data iterator's position is in the checkpoint and the
  noise of step n is ``fold_in(key, n)``, so a run killed at any moment and started again with
  the same command ends with the same parameters as an uninterrupted one;
- a damaged newest checkpoint is reported and the previous good one is used
  (:mod:`diffjax.training.checkpoint`);
- a NaN/Inf loss or gradient stops the run with the step named (or is skipped, with
  ``config.training.nan_policy='skip'``), and a state holding NaN/Inf is never saved.

The step is compiled once; metrics stay on the devices and are fetched (one host sync) only
every ``config.training.log_every_steps`` steps.

Workdir layout::

    workdir/config.json          the config and dataset description of the run
    workdir/checkpoints/<step>/  orbax checkpoints (the newest ``keep_checkpoints``)
    workdir/metrics.jsonl        one JSON record per logged step
    workdir/events.out.tfevents.*  TensorBoard
    workdir/samples/step_<step>.png  EMA sample grids (same seed every time)
    workdir/loss.png             the loss curve, written at the end
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from diffjax.images import atomic_write, make_grid, save_image_grid, save_loss_curve, to_uint8
from diffjax.losses import denoising_loss
from diffjax.models.unet import UNet, count_params
from diffjax.schedules import DiffusionSchedule, get_schedule
from diffjax.training.config_validation import (
    ConfigError,
    resume_conflicts,
    validate_config,
)
from diffjax.training.metrics_writer import MetricsWriter, read_metrics
from diffjax.training.sharding import (
    batch_sharding,
    host_batch_to_global,
    make_mesh,
    process_batch_size,
    replicated_sharding,
)
from diffjax.training.step import flax_apply_fn, jit_train_step, make_train_step
from diffjax.training.train_state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    make_optimizer,
)

__all__ = [
    "CHECKPOINT_DIR",
    "DEFAULT_COMPILATION_CACHE",
    "EXPECTED_ERRORS",
    "IncompatibleResumeError",
    "NonFiniteLossError",
    "RUN_RECORD_FILE",
    "WorkdirError",
    "TrainedRun",
    "build_model",
    "enable_compilation_cache",
    "grid_labels",
    "load_run_record",
    "load_trained_run",
    "make_sample_fn",
    "train_and_evaluate",
]

RUN_RECORD_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
LOSS_PLOT_FILE = "loss.png"
# Per-step decay of the "loss_ema" curve: a time constant of 1 / (1 - 0.99) = 100 steps,
# whatever the logging interval.
_LOSS_EMA_DECAY_PER_STEP = 0.99
# Headroom demanded on the workdir's disk beyond one checkpoint's size.
_DISK_MARGIN_BYTES = 32 * 2**20
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class WorkdirError(OSError):
    """The workdir cannot be created, written, or has too little free space."""


class IncompatibleResumeError(ConfigError):
    """The workdir holds a run whose config cannot continue under the new one."""


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or Inf loss or gradient (with ``nan_policy='stop'``)."""


def _expected_errors() -> tuple[type[BaseException], ...]:
    from diffjax.training import checkpoint
    from diffjax.training.datasets import DatasetUnavailableError

    return (
        ConfigError,
        WorkdirError,
        NonFiniteLossError,
        DatasetUnavailableError,
        checkpoint.IncompatibleCheckpointError,
        checkpoint.NoUsableCheckpointError,
        checkpoint.NonFiniteStateError,
    )


EXPECTED_ERRORS = _expected_errors()
"""The failures that are the user's to fix (config, workdir, data, resume, divergence): the
CLIs report them in one line instead of a traceback."""


DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "diffjax", "jax-cache")


def enable_compilation_cache(path: str = DEFAULT_COMPILATION_CACHE) -> None:
    """Turns on JAX's persistent compilation cache, unless $JAX_COMPILATION_CACHE_DIR is set.

    A resumed run (after a kill or preemption) then loads its compiled step from disk instead
    of compiling it again. Used by the CLIs; a notebook may call it too.

    Args:
      path: cache folder (``~`` is expanded); empty leaves JAX's settings alone.
    """
    if not path or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _log(message: str) -> None:
    """One line to stderr from process 0 (stdout stays free for the caller).

    Written through ``tqdm.write``, which moves a progress bar out of the way instead of
    breaking it.
    """
    if jax.process_index() == 0:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)


def _check_workdir(workdir: str) -> None:
    """Creates ``workdir`` and proves it writable with a probe file (removed again)."""
    try:
        os.makedirs(workdir, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-probe-", dir=workdir)
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise WorkdirError(
            f"The workdir {workdir} cannot be written ({error.strerror or error}); choose "
            f"another --workdir or fix its permissions."
        ) from error


def _check_free_space(workdir: str, checkpoint_bytes: int) -> None:
    free = shutil.disk_usage(workdir).free
    needed = checkpoint_bytes + _DISK_MARGIN_BYTES
    if free < needed:
        raise WorkdirError(
            f"The workdir {workdir} has {free / 2**20:.0f} MiB free; a checkpoint of this "
            f"state needs about {checkpoint_bytes / 2**20:.0f} MiB plus "
            f"{_DISK_MARGIN_BYTES / 2**20:.0f} MiB of headroom. Free some space or choose "
            f"another --workdir."
        )


def load_run_record(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """Reads ``workdir/config.json`` (plain JSON: loading it runs no code).

    Args:
      workdir: a run's folder.

    Returns:
      ``{"config": {...}, "dataset": {...}, "diffjax_version": str}``, or None when the
      workdir holds no run record.

    Raises:
      IncompatibleResumeError: the file exists but is not a run record.
    """
    path = os.path.join(os.fspath(workdir), RUN_RECORD_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as error:
        raise IncompatibleResumeError(
            f"{path} is unreadable ({error}); it should hold the config of the run in this "
            f"workdir. Restore it or choose a new --workdir."
        ) from error
    if not isinstance(record, dict) or not {"config", "dataset"} <= set(record):
        raise IncompatibleResumeError(
            f"{path} is not a diffjax run record (expected the keys 'config' and 'dataset')."
        )
    return record


def build_model(model_config: Mapping[str, Any]) -> UNet:
    """The UNet described by a config's ``model`` section.

    Args:
      model_config: the (validated) ``config.model`` as a mapping.

    Returns:
      A :class:`diffjax.models.UNet`.
    """
    return UNet(
        base_channels=model_config["base_channels"],
        channel_mults=tuple(model_config["channel_mults"]),
        num_res_blocks=model_config["num_res_blocks"],
        attn_resolutions=tuple(model_config["attn_resolutions"]),
        dropout=model_config["dropout"],
        num_classes=model_config["num_classes"],
        num_groups=model_config["num_groups"],
        dtype=_DTYPES[model_config["dtype"]],
        param_dtype=_DTYPES[model_config["param_dtype"]],
        remat=model_config["remat"],
    )


def _make_optimizer(
    optim: Mapping[str, Any], num_steps: int | None
) -> optax.GradientTransformation:
    """The optimizer of a config's ``optim`` section (``num_steps``: end of a cosine decay)."""
    return make_optimizer(
        learning_rate=optim["learning_rate"],
        warmup_steps=optim["warmup_steps"],
        total_steps=num_steps if optim["lr_decay"] == "cosine" else None,
        grad_clip_norm=optim["grad_clip_norm"],
        weight_decay=optim["weight_decay"],
        b1=optim["b1"],
        b2=optim["b2"],
        eps=optim["eps"],
    )


def _init_fn(model: UNet, image_shape: tuple[int, int, int]) -> Callable[[jax.Array], Any]:
    def init(key: jax.Array) -> Any:
        x = jnp.zeros((1, *image_shape), jnp.float32)
        t = jnp.zeros((1,), jnp.int32)
        labels = None if model.num_classes is None else jnp.zeros((1,), jnp.int32)
        return model.init({"params": key}, x, t, labels, train=False)["params"]

    return init


def _keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(init, train, eval) keys, all derived from the run's seed."""
    base = jax.random.key(seed)
    return jax.random.fold_in(base, 0), jax.random.fold_in(base, 1), jax.random.fold_in(base, 2)


def _create_dataset(
    values: Mapping[str, Any], mesh: Mesh, split: str, batch_size: int, **kwargs: Any
) -> Any:
    from diffjax.training import data as data_lib  # grain/TFDS load only when training.

    data = values["data"]
    try:
        return data_lib.create_dataset(
            name=data["name"],
            split=split,
            image_size=data["image_size"],
            batch_size=process_batch_size(batch_size, mesh),
            seed=values["seed"],
            data_dir=data["data_dir"],
            manual_dir=data["manual_dir"],
            download=data["download"],
            num_threads=data["num_threads"],
            prefetch_batches=data["prefetch_batches"],
            **kwargs,
        )
    except (ValueError, TypeError) as error:
        # A dataset name, split or folder that does not exist is a config problem.
        raise ConfigError(f"config.data ({data['name']!r}, split {split!r}): {error}") from error


def _check_dataset_fits(values: Mapping[str, Any], info) -> None:
    """The model's classes must match the dataset's labels."""
    num_classes = values["model"]["num_classes"]
    if num_classes is None or info.num_classes == num_classes:
        return
    if info.num_classes is None:
        fix = "set config.model.num_classes to None (unconditional)"
    else:
        fix = f"set config.model.num_classes={info.num_classes}, or None (unconditional)"
    raise ConfigError(
        f"config.model.num_classes={num_classes}, but the dataset {info.name!r} has "
        f"{info.num_classes or 'no'} classes: {fix}."
    )


def _dataset_record(info) -> dict[str, Any]:
    return dict(
        name=info.name,
        split=info.split,
        num_examples=info.num_examples,
        num_classes=info.num_classes,
        class_names=None if info.class_names is None else list(info.class_names),
        image_shape=list(info.image_shape),
    )


def _apply_unconditional(model: UNet, params: Any, x_t: jnp.ndarray, t: jnp.ndarray):
    return model.apply({"params": params}, x_t, t, None, train=False)


def _apply_conditional(model: UNet, params: Any, x_t: jnp.ndarray, t: jnp.ndarray, labels):
    return model.apply({"params": params}, x_t, t, labels, train=False)


def _apply_fixed_labels(model: UNet, params: Any, labels, x_t: jnp.ndarray, t: jnp.ndarray):
    return model.apply({"params": params}, x_t, t, labels, train=False)


def make_sample_fn(
    model: UNet,
    schedule: DiffusionSchedule,
    *,
    image_shape: tuple[int, int, int],
    num_samples: int,
    sampler: str,
    num_steps: int,
    eta: float,
    guidance_scale: float,
    clip_x0: bool,
    prediction_type: str,
    mesh: Mesh | None = None,
) -> Callable[[Any, jax.Array, jnp.ndarray | None], jax.Array]:
    """``sample(params, key, labels) -> images [num_samples, H, W, C]`` for a trained UNet.

    The network becomes a plain ``model_fn(x_t, t)`` for the samplers of
    :mod:`diffjax.samplers` (a :class:`jax.tree_util.Partial` holding the params, so new params
    reuse the compiled sampler); with ``guidance_scale != 1`` it is wrapped in classifier-free
    guidance (Ho & Salimans 2022). Each sampler is one ``lax.scan`` in one compiled function.
    With a ``mesh`` whose device count divides ``num_samples``, the samples are split over
    the devices.

    Args:
      model: the UNet.
      schedule: the :class:`~diffjax.DiffusionSchedule` it was trained with.
      image_shape: ``(H, W, C)``.
      num_samples: N, images per call.
      sampler: ``'ddpm' | 'ddim' | 'dpm_solver'``.
      num_steps: sampling steps (model calls; per sample, doubled by guidance).
      eta: DDIM's noise scale (used by ``'ddim'`` only).
      guidance_scale: classifier-free guidance weight w (1: the plain conditional model).
      clip_x0: clip predicted x0 to [-1, 1] in each step.
      prediction_type: ``'eps' | 'x0' | 'v'``, as trained.
      mesh: optional mesh to split the samples over.

    Returns:
      ``sample(params, key, labels)``; ``labels`` int32 ``[N]`` in ``[0, num_classes]`` for a
      class-conditional model (``num_classes`` = unconditional), else None. The result is
      float32 ``[N, H, W, C]`` in model space (about [-1, 1]).
    """
    from diffjax import samplers

    if model.num_classes is None and guidance_scale != 1.0:
        raise ConfigError(
            f"guidance_scale={guidance_scale} needs a class-conditional model; this UNet has "
            f"num_classes=None. Use guidance_scale=1.0."
        )
    shape = (num_samples, *image_shape)
    options = dict(num_steps=num_steps, prediction_type=prediction_type, clip_x0=clip_x0)
    if sampler == "ddim":
        options["eta"] = eta
    if mesh is not None and num_samples % mesh.devices.size == 0:
        options["out_sharding"] = batch_sharding(mesh)
    unconditional = functools.partial(_apply_unconditional, model)
    conditional = functools.partial(_apply_conditional, model)
    fixed_labels = functools.partial(_apply_fixed_labels, model)

    def sample(params: Any, key: jax.Array, labels: jnp.ndarray | None) -> jax.Array:
        if model.num_classes is None:
            model_fn = jax.tree_util.Partial(unconditional, params)
        elif guidance_scale != 1.0:
            model_fn = samplers.classifier_free_guidance(
                jax.tree_util.Partial(conditional, params),
                labels,
                guidance_scale,
                num_classes=model.num_classes,
            )
        else:
            model_fn = jax.tree_util.Partial(fixed_labels, params, jnp.asarray(labels, jnp.int32))
        return samplers.sample(sampler, model_fn, schedule, key, shape, **options)

    return sample


class TrainedRun(NamedTuple):
    """A finished or running training run, loaded for sampling (see :func:`load_trained_run`).

    Attributes:
      config: the run's validated config as a plain dict.
      dataset: the description of its training data (``image_shape``, ``num_classes``, ...).
      model: the UNet.
      schedule: the diffusion schedule it was trained with.
      state: the restored train state (params, EMA params, optimizer state).
      step: the step of the restored checkpoint.
    """

    config: dict[str, Any]
    dataset: dict[str, Any]
    model: UNet
    schedule: DiffusionSchedule
    state: TrainState
    step: int


def load_trained_run(workdir: str | os.PathLike, mesh: Mesh | None = None) -> TrainedRun:
    """Loads the newest good checkpoint of a run, read-only (safe while it is training).

    Args:
      workdir: the run's folder, as given to :func:`train_and_evaluate`.
      mesh: where to place the state; default every device (replicated).

    Returns:
      The :class:`TrainedRun`.

    Raises:
      WorkdirError: the folder holds no run record or no checkpoint.
      NoUsableCheckpointError: every checkpoint is damaged.
    """
    from diffjax.training.checkpoint import CheckpointManager

    workdir = os.path.abspath(os.fspath(workdir))
    record = load_run_record(workdir)
    if record is None:
        raise WorkdirError(
            f"{workdir} holds no diffjax run (no {RUN_RECORD_FILE}); pass the --workdir of a "
            f"training run."
        )
    values = validate_config(record["config"])
    mesh = make_mesh() if mesh is None else mesh
    programs = _programs(_program_spec(values, record["dataset"]["image_shape"]), mesh)
    manager = CheckpointManager(
        os.path.join(workdir, CHECKPOINT_DIR), read_only=True, report=_log
    )
    try:
        restored = manager.restore_latest(programs.abstract_state)
    finally:
        manager.close()
    if restored is None:
        raise WorkdirError(f"{workdir} holds no checkpoint yet; train first.")
    return TrainedRun(
        values, record["dataset"], programs.model, programs.schedule, restored.state,
        restored.step,
    )  # fmt: skip


def grid_labels(num_samples: int, num_classes: int | None) -> jnp.ndarray | None:
    """Labels for a grid of samples: class k for the k-th block, so a grid shows each class.

    Args:
      num_samples: N.
      num_classes: K, or None for an unconditional model.

    Returns:
      int32 ``[N]`` with ``labels[i] = i * K // N``, or None when ``num_classes`` is None.
    """
    if num_classes is None:
        return None
    return jnp.asarray(np.arange(num_samples) * num_classes // num_samples, jnp.int32)


@jax.jit
def _accumulate(totals, metrics, step):
    """Adds one step's metrics to the running totals, on the devices."""
    finite = metrics["is_finite"]
    # Non-finite values must not poison the sums the user reads; they are counted instead.
    zero = jnp.zeros((), jnp.float32)
    new = dict(
        loss=jnp.where(finite, metrics["loss"], zero),
        grad_norm=jnp.where(finite, metrics["grad_norm"], zero),
        num_finite=finite.astype(jnp.int32),
        first_nonfinite=jnp.where(finite, jnp.int32(-1), step),
        last_loss=metrics["loss"],
        last_grad_norm=metrics["grad_norm"],
        learning_rate=metrics.get("learning_rate", zero),
        param_norm=metrics["param_norm"],
    )
    if totals is None:
        return new
    first = totals["first_nonfinite"]
    return dict(
        new,
        loss=totals["loss"] + new["loss"],
        grad_norm=totals["grad_norm"] + new["grad_norm"],
        num_finite=totals["num_finite"] + new["num_finite"],
        first_nonfinite=jnp.where(first >= 0, first, new["first_nonfinite"]),
    )


class _Accumulator:
    """Sums step metrics on the devices between two fetches (no host sync per step)."""

    def __init__(self) -> None:
        self.totals = None
        self.num_steps = 0

    def add(self, metrics: Mapping[str, jax.Array], step: int) -> None:
        self.totals = _accumulate(self.totals, dict(metrics), jnp.int32(step))
        self.num_steps += 1

    def fetch(self) -> dict[str, Any] | None:
        """Host copy of the totals since the last fetch, then a reset; None if empty."""
        if self.totals is None:
            return None
        totals = {key: np.asarray(value) for key, value in jax.device_get(self.totals).items()}
        totals["num_steps"] = self.num_steps
        self.totals, self.num_steps = None, 0
        return totals


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _Programs(NamedTuple):
    """Everything a run compiles, built once per (settings, mesh) and kept for later runs."""

    model: UNet
    schedule: DiffusionSchedule
    optimizer: optax.GradientTransformation
    init_fn: Callable[[jax.Array], Any]
    abstract_state: TrainState
    train_step: Callable
    sample_fn: Callable | None
    eval_loss: Callable | None


def _program_spec(values: Mapping[str, Any], image_shape: tuple[int, ...]) -> str:
    """The settings that the compiled functions depend on, as a canonical JSON key."""
    training = values["training"]
    sampling = {k: v for k, v in values["sampling"].items() if k not in ("every_steps", "seed")}
    spec = dict(
        model=values["model"],
        diffusion=values["diffusion"],
        optim=values["optim"],
        label_dropout=training["label_dropout"],
        nan_policy=training["nan_policy"],
        # The learning-rate schedule depends on the run length only when it decays.
        num_steps=training["num_steps"] if values["optim"]["lr_decay"] == "cosine" else None,
        sampling=sampling,
        evaluate=values["eval"]["every_steps"] > 0,
        image_shape=list(image_shape),
    )
    return json.dumps(spec, sort_keys=True)


@functools.lru_cache(maxsize=8)
def _programs(spec: str, mesh: Mesh) -> _Programs:
    """Builds (and, through the cache, reuses) the model and the jitted functions of a run.

    A second run in the same process (a resumed run in a notebook, a test) then neither traces
    nor compiles again: JAX's caches key on these very function objects.
    """
    values = json.loads(spec)
    model = build_model(values["model"])
    diffusion, sampling = values["diffusion"], values["sampling"]
    schedule = get_schedule(
        diffusion["schedule"],
        num_timesteps=diffusion["num_timesteps"],
        zero_terminal_snr=diffusion["zero_terminal_snr"],
    )
    optimizer = _make_optimizer(values["optim"], values["num_steps"])
    image_shape = tuple(values["image_shape"])
    init_fn = _init_fn(model, image_shape)
    # Only the key's type matters for the shapes; the run's own key initialises.
    abstract = abstract_train_state(init_fn, jax.random.key(0), optimizer, mesh)
    train_step = jit_train_step(
        make_train_step(
            flax_apply_fn(model),
            schedule,
            optimizer,
            prediction_type=diffusion["prediction_type"],
            weighting=diffusion["loss_weighting"],
            min_snr_gamma=diffusion["min_snr_gamma"],
            offset_noise=diffusion["offset_noise"],
            ema_decay=values["optim"]["ema_decay"],
            num_classes=values["model"]["num_classes"],
            label_dropout=values["label_dropout"],
            skip_nonfinite=values["nan_policy"] == "skip",
        ),
        mesh,
    )
    sample_fn = None
    if sampling["num_samples"] > 0:
        sample_fn = make_sample_fn(
            model,
            schedule,
            image_shape=image_shape,
            num_samples=sampling["num_samples"],
            sampler=sampling["sampler"],
            num_steps=sampling["num_steps"],
            eta=sampling["eta"],
            guidance_scale=sampling["guidance_scale"],
            clip_x0=sampling["clip_x0"],
            prediction_type=diffusion["prediction_type"],
            mesh=mesh,
        )
    eval_loss = _eval_loss_fn(model, schedule, diffusion, mesh) if values["evaluate"] else None
    return _Programs(
        model, schedule, optimizer, init_fn, abstract, train_step, sample_fn, eval_loss
    )


class _Run:
    """The state of one call of :func:`train_and_evaluate` (setup, then the loop)."""

    def __init__(
        self, config: Any, workdir: str | os.PathLike, devices: Sequence[jax.Device] | None
    ) -> None:
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.mesh = make_mesh(devices)
        self.values = validate_config(config, num_devices=self.mesh.devices.size)
        _check_workdir(self.workdir)
        self.record = load_run_record(self.workdir)
        if self.record is not None:
            conflicts = resume_conflicts(self.record["config"], self.values)
            if conflicts:
                raise IncompatibleResumeError(
                    f"The workdir {self.workdir} holds a run with another config, which this "
                    f"one cannot continue ({'; '.join(conflicts)}). Rerun with the original "
                    f"config or choose a new --workdir; nothing was changed."
                )
        values = self.values
        self.dataset = _create_dataset(
            values, self.mesh, values["data"]["split"], values["data"]["batch_size"],
            random_flip=values["data"]["random_flip"],
        )  # fmt: skip
        self.info = self.dataset.info
        _check_dataset_fits(values, self.info)
        self.eval_dataset = None
        if values["eval"]["every_steps"] > 0:
            self.eval_dataset = _create_dataset(
                values, self.mesh, values["eval"]["split"], values["eval"]["batch_size"],
                shuffle=False,
            )  # fmt: skip

        self.programs = _programs(_program_spec(values, self.info.image_shape), self.mesh)
        self.init_key, self.train_key, self.eval_key = _keys(values["seed"])
        abstract = self.programs.abstract_state
        self.num_params = count_params(abstract.params)
        state_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(abstract))
        _check_free_space(self.workdir, state_bytes)

        from diffjax.training.checkpoint import CheckpointManager  # orbax loads here.

        self.checkpoints = CheckpointManager(
            os.path.join(self.workdir, CHECKPOINT_DIR),
            max_to_keep=values["training"]["keep_checkpoints"],
            async_save=values["training"]["async_checkpointing"],
            report=_log,
        )
        try:
            restored = self.checkpoints.restore_latest(abstract)
            if restored is None:
                self.state = create_train_state(
                    self.programs.init_fn, self.init_key, self.programs.optimizer, self.mesh
                )
                self.start_step, self.data_state, self.last_saved_step = 0, None, None
            else:
                self.state, self.start_step = restored.state, restored.step
                self.data_state, self.last_saved_step = restored.data_state, restored.step
        except BaseException:
            self.checkpoints.close()
            raise

    def write_record(self) -> None:
        """Saves the config and dataset description (after every check has passed)."""
        if jax.process_index() != 0:
            return
        from diffjax import __version__

        record = dict(
            config=self.values, dataset=_dataset_record(self.info), diffjax_version=__version__
        )

        def write(tmp_path: str) -> None:
            with open(tmp_path, "w", encoding="utf-8") as f:
                json.dump(record, f, indent=2)

        atomic_write(os.path.join(self.workdir, RUN_RECORD_FILE), write)

    def summary(self) -> str:
        devices = self.mesh.devices.reshape(-1)
        batch = self.values["data"]["batch_size"]
        info = self.info
        size = f"{info.num_examples:,} images" if info.num_examples is not None else "size ?"
        resumed = (
            f"; resuming at step {self.start_step}" if self.start_step else "; starting at step 0"
        )
        return (
            f"diffjax: {len(devices)} {devices[0].platform} device(s) on "
            f"{jax.process_count()} process(es), mesh {dict(self.mesh.shape)}; UNet "
            f"{self.num_params / 1e6:.2f}M params; global batch {batch} "
            f"({batch // len(devices)} per device); dataset {info.name}:{info.split} ({size}, "
            f"{'x'.join(map(str, info.image_shape))}); workdir {self.workdir}{resumed}"
        )


def _eval_loss_fn(
    model: UNet, schedule: DiffusionSchedule, diffusion: Mapping[str, Any], mesh: Mesh
) -> Callable[[Any, dict, jax.Array], jax.Array]:
    """Jitted mean denoising loss of given params on one batch, without dropout."""

    def loss(params: Any, batch: dict, key: jax.Array) -> jax.Array:
        labels = batch.get("label") if model.num_classes is not None else None

        def model_fn(x_t, t):
            return model.apply({"params": params}, x_t, t, labels, train=False)

        value, _ = denoising_loss(
            model_fn,
            schedule,
            batch["image"],
            key,
            prediction_type=diffusion["prediction_type"],
            weighting=diffusion["loss_weighting"],
            min_snr_gamma=diffusion["min_snr_gamma"],
            offset_noise=diffusion["offset_noise"],
        )
        return value

    return jax.jit(
        loss,
        in_shardings=(replicated_sharding(mesh), batch_sharding(mesh), None),
        out_shardings=replicated_sharding(mesh),
    )


def _evaluate(run: _Run, eval_loss, params: Any) -> float:
    """Mean loss over the first ``eval.num_batches`` batches, with the same keys every time."""
    total = 0.0
    with iter(run.eval_dataset) as iterator:
        for index in range(run.values["eval"]["num_batches"]):
            batch = host_batch_to_global(next(iterator), run.mesh)
            total += float(eval_loss(params, batch, jax.random.fold_in(run.eval_key, index)))
    return total / run.values["eval"]["num_batches"]


def _sample_grid(run: _Run, sample_fn, step: int, writer: MetricsWriter) -> None:
    sampling = run.values["sampling"]
    _log(
        f"diffjax: sampling {sampling['num_samples']} images ({sampling['sampler']}, "
        f"{sampling['num_steps']} steps) at step {step}..."
    )
    start = time.perf_counter()
    labels = grid_labels(sampling["num_samples"], run.programs.model.num_classes)
    images = sample_fn(run.state.ema_params, jax.random.key(sampling["seed"]), labels)
    images = np.asarray(jax.device_get(images))
    if jax.process_index() != 0:
        return
    height = run.info.image_shape[0]
    path = os.path.join(run.workdir, SAMPLES_DIR, f"step_{step:07d}.png")
    save_image_grid(images, path, scale=max(1, 64 // height))
    writer.write_image("samples", step, make_grid(to_uint8(images)))
    _log(f"diffjax: wrote {path} ({time.perf_counter() - start:.1f} s)")


def _write_loss_plot(workdir: str) -> None:
    records = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]
    records = [r for r in records if r["loss"] is not None]
    if not records or jax.process_index() != 0:
        return
    save_loss_curve(
        [r["step"] for r in records],
        [r["loss"] for r in records],
        os.path.join(workdir, LOSS_PLOT_FILE),
        smoothed=[r.get("loss_ema", r["loss"]) for r in records],
    )


def _handle_nonfinite(run: _Run, totals: dict[str, Any], step: int) -> int:
    """Applies ``nan_policy`` to a logging interval; returns the number of skipped steps."""
    num_bad = int(totals["num_steps"] - totals["num_finite"])
    if num_bad == 0:
        return 0
    first = int(totals["first_nonfinite"]) + 1
    saved = run.last_saved_step
    kept = f"the newest checkpoint (step {saved}) is intact" if saved else "no checkpoint exists"
    detail = (
        f"loss={float(totals['last_loss']):.4g}, grad_norm={float(totals['last_grad_norm']):.4g}"
        f" at step {step}"
    )
    if run.values["training"]["nan_policy"] == "stop":
        raise NonFiniteLossError(
            f"Non-finite loss or gradient at step {first} ({detail}); training stopped and "
            f"nothing was saved after it ({kept}). Lower config.optim.learning_rate, keep "
            f"config.optim.grad_clip_norm set, or set config.training.nan_policy='skip'."
        )
    if num_bad == totals["num_steps"]:
        raise NonFiniteLossError(
            f"Every one of the {num_bad} steps up to step {step} was non-finite and skipped "
            f"({detail}); training is not progressing ({kept}). Lower "
            f"config.optim.learning_rate."
        )
    _log(f"diffjax: skipped {num_bad} non-finite step(s), the first at step {first}.")
    return num_bad


def train_and_evaluate(
    config: Any, workdir: str | os.PathLike, devices: Sequence[jax.Device] | None = None
) -> TrainState:
    """Trains a diffusion model as ``config`` says, resuming from ``workdir`` if it holds a run.

    Re-running the same call (or command) after an interruption continues from the newest
    good checkpoint and ends exactly where an uninterrupted run would.

    Args:
      config: an ``ml_collections.ConfigDict`` with the sections of ``configs/default.py``
        (data, model, diffusion, optim, training, sampling, eval, seed); validated first.
      workdir: the run's folder (created if needed).
      devices: the devices to train on (the mesh's ``'data'`` axis); default every device of
        every process. A run may resume on a different number of devices: the checkpoint is
        restored onto the new mesh (same data order; float sums may differ in the last bits).

    Returns:
      The final :class:`~diffjax.training.train_state.TrainState` (step, params, EMA params,
      optimizer state), replicated over the devices.

    Raises:
      ConfigError (ValueError) / ConfigTypeError (TypeError): a bad config, or one that does
        not fit the dataset or the devices.
      IncompatibleResumeError: the workdir holds a run with an incompatible config.
      WorkdirError (OSError): the workdir is not writable or its disk is too full.
      DatasetUnavailableError (FileNotFoundError): the dataset is missing.
      NonFiniteLossError (FloatingPointError): a NaN/Inf loss with ``nan_policy='stop'``.
      NoUsableCheckpointError: checkpoints exist but all are damaged.

    Example:
      >>> import ml_collections, runpy
      >>> config = runpy.run_path("configs/test.py")["get_config"]()
      >>> state = train_and_evaluate(config, "/tmp/diffjax-test")
    """
    run = _Run(config, workdir, devices)
    try:
        return _train(run)
    finally:
        run.checkpoints.close()


class _Logger:
    """Turns the accumulated metrics of each logging interval into scalars, bar and lines.

    Throughput counts only the time spent in train steps: the time taken by sample grids,
    evaluations and checkpoint saves inside an interval (``exclude``) is left out.
    """

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.num_steps = run.values["training"]["num_steps"]
        self.global_batch = run.values["data"]["batch_size"]
        self.writer = MetricsWriter(run.workdir, resume_step=run.start_step)
        previous = read_metrics(os.path.join(run.workdir, "metrics.jsonl"))
        emas = [r["loss_ema"] for r in previous if r.get("loss_ema") is not None]
        self.loss_ema = emas[-1] if emas else None
        self.accumulator = _Accumulator()
        self.progress = None
        if run.values["training"]["progress_bar"] and jax.process_index() == 0:
            from tqdm.auto import tqdm

            self.progress = tqdm(
                total=self.num_steps, initial=run.start_step, unit="step", dynamic_ncols=True,
                desc="train", smoothing=0.1,
            )  # fmt: skip
        self.run_start = time.perf_counter()
        self.restart_interval(run.start_step)

    def restart_interval(self, step: int) -> None:
        self.interval_start, self.interval_first_step = time.perf_counter(), step
        self.excluded = 0.0

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def log(self, step: int) -> None:
        """Fetches the interval's totals (one host sync), applies the NaN policy, writes."""
        totals = self.accumulator.fetch()
        if totals is None:
            return
        skipped = _handle_nonfinite(self.run, totals, step)
        now = time.perf_counter()
        train_seconds = max(now - self.interval_start - self.excluded, 1e-9)
        num_steps = step - self.interval_first_step
        images_per_s = num_steps * self.global_batch / train_seconds
        num_finite = max(int(totals["num_finite"]), 1)
        loss = float(totals["loss"]) / num_finite
        if self.loss_ema is None:
            self.loss_ema = loss
        else:
            decay = _LOSS_EMA_DECAY_PER_STEP ** int(totals["num_steps"])
            self.loss_ema = decay * self.loss_ema + (1 - decay) * loss
        self.writer.write_scalars(
            step,
            dict(
                loss=loss,
                loss_ema=self.loss_ema,
                grad_norm=float(totals["grad_norm"]) / num_finite,
                learning_rate=float(totals["learning_rate"]),
                param_norm=float(totals["param_norm"]),
                images_per_second=images_per_s,
                skipped_steps=skipped,
            ),
        )
        _report_progress(
            self.progress, step, self.num_steps, loss, images_per_s, num_steps / train_seconds,
            now - self.run_start,
        )  # fmt: skip
        self.restart_interval(step)

    def close(self) -> None:
        self.writer.close()
        if self.progress is not None:
            self.progress.close()


def _train(run: _Run) -> TrainState:
    values = run.values
    training, sampling = values["training"], values["sampling"]
    num_steps = training["num_steps"]
    run.write_record()
    _log(run.summary())
    train_step, sample_fn = run.programs.train_step, run.programs.sample_fn
    eval_loss = run.programs.eval_loss if run.eval_dataset is not None else None

    def due(every: int, step: int) -> bool:
        return step == num_steps or (every > 0 and step % every == 0)

    logger = _Logger(run)
    iterator = iter(run.dataset)
    try:
        if run.data_state is not None:
            iterator.set_state(run.data_state)
        for step in range(run.start_step, num_steps):
            batch = host_batch_to_global(next(iterator), run.mesh)
            run.state, metrics = train_step(run.state, batch, run.train_key)
            logger.accumulator.add(metrics, step)
            done = step + 1
            if step == run.start_step:
                jax.block_until_ready(metrics["loss"])
                _log(
                    f"diffjax: compiled and ran the first train step in "
                    f"{time.perf_counter() - logger.interval_start:.1f} s"
                )
                logger.restart_interval(done)
            save_now = due(training["checkpoint_every_steps"], done)
            if due(training["log_every_steps"], done) or save_now:
                # Also before every save: a NaN must stop the run before it is written.
                logger.log(done)
            start = time.perf_counter()
            if sample_fn is not None and due(sampling["every_steps"], done):
                _sample_grid(run, sample_fn, done, logger.writer)
            if eval_loss is not None and due(values["eval"]["every_steps"], done):
                eval_value = _evaluate(run, eval_loss, run.state.ema_params)
                logger.writer.write_scalars(done, {"eval_loss": eval_value})
                _log(f"diffjax: held-out loss of the EMA weights at step {done}: {eval_value:.5f}")
            if save_now:
                run.checkpoints.save(
                    done, run.state, data_state=iterator.get_state(),
                    metadata=dict(config=run.values),
                )  # fmt: skip
                run.last_saved_step = done
            logger.exclude(time.perf_counter() - start)
        if run.start_step >= num_steps:
            _log(f"diffjax: the run in {run.workdir} already reached step {num_steps}.")
        run.checkpoints.wait_until_finished()
        logger.writer.flush()
        _write_loss_plot(run.workdir)
        _log(
            f"diffjax: done at step {num_steps}; checkpoints in "
            f"{os.path.join(run.workdir, CHECKPOINT_DIR)}"
        )
        return run.state
    finally:
        iterator.close()
        logger.close()


def _report_progress(
    progress, done: int, num_steps: int, loss: float, images_per_s: float, steps_per_s: float,
    elapsed: float,
) -> None:
    """Moves the progress bar, or prints one line per log interval when there is none."""
    if jax.process_index() != 0:
        return
    if progress is not None:
        progress.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.1f}", refresh=False)
        progress.update(done - progress.n)
        return
    eta = (num_steps - done) / steps_per_s if steps_per_s > 0 else float("nan")
    _log(
        f"step {done}/{num_steps}  loss {loss:.5f}  {images_per_s:.1f} images/s  "
        f"elapsed {_format_duration(elapsed)}  ETA {_format_duration(eta) if eta == eta else '?'}"
    )
