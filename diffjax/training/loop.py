"""``train_and_evaluate(config, workdir)``: the training program behind ``python -m diffjax.train``.

One call validates the config, builds the data pipeline, the network, the optimizer and the
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
- Ctrl-C (SIGINT) or SIGTERM (preemption, SLURM) stops the run at the end of the current
  step with a checkpoint of that step, so rerunning continues from it, bit for bit;
- a NaN/Inf loss or gradient stops the run with the step named (or is skipped, with
  ``config.training.nan_policy='skip'``), and a state holding NaN/Inf is never saved.

The step is compiled once; metrics stay on the devices and are fetched (one host sync) only
every ``config.training.log_every_steps`` steps.

The workdir's layout is described in :mod:`diffjax.training.workdir`.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.errors import ConfigError
from diffjax.images import save_loss_curve
from diffjax.models.conditioning import data_cond_keys
from diffjax.models.unet import count_params
from diffjax.sharding import prefetch_to_mesh
from diffjax.training.config import check_keys, config_to_dict, import_modules, resume_conflicts
from diffjax.training.console import log, report_progress
from diffjax.training.frozen import load_frozen
from diffjax.training.hooks import build_hooks
from diffjax.training.metrics_writer import MetricsWriter, read_metrics
from diffjax.training.programs import (
    build_programs,
    mesh_from_config,
    program_spec,
    validate_config,
)
from diffjax.training.train_state import TrainState, create_train_state
from diffjax.training.workdir import (
    CHECKPOINT_DIR,
    LOSS_PLOT_FILE,
    RUN_POINTER_FILE,
    SAMPLES_DIR,
    IncompatibleResumeError,
    check_free_space,
    check_workdir,
    load_run_record,
    resolve_run_dir,
    write_run_record,
)

__all__ = ["NonFiniteLossError", "train_and_evaluate"]

# Per-step decay of the "loss_ema" curve: a time constant of 1 / (1 - 0.99) = 100 steps,
# whatever the logging interval.
_LOSS_EMA_DECAY_PER_STEP = 0.99


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or Inf loss or gradient (with ``nan_policy='stop'``)."""


def _keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(init, train, eval) keys, all derived from the run's seed."""
    base = jax.random.key(seed)
    return jax.random.fold_in(base, 0), jax.random.fold_in(base, 1), jax.random.fold_in(base, 2)


def _check_dataset_fits(values: Mapping[str, Any], info: Any, module: Any) -> None:
    """The model's classes and conditioning must match what the dataset's batches hold."""
    num_classes = values["model"]["num_classes"]
    if num_classes is not None and info.num_classes != num_classes:
        if info.num_classes is None:
            fix = "set config.model.num_classes to None (unconditional)"
        else:
            fix = f"set config.model.num_classes={info.num_classes}, or None (unconditional)"
        raise ConfigError(
            f"config.model.num_classes={num_classes}, but the dataset {info.name!r} has "
            f"{info.num_classes or 'no'} classes: {fix}."
        )
    missing = [key for key in data_cond_keys(module) if key not in info.cond_keys]
    if missing:
        raise ConfigError(
            f"the network reads cond keys {list(data_cond_keys(module))}, but the batches of "
            f"{info.name!r} hold {list(info.cond_keys)} (missing {missing})."
        )


def _mesh_and_values(config: Any, devices: Sequence[jax.Device] | None) -> tuple[Any, dict]:
    """The mesh of the config's sharding section, and the config validated for its devices."""
    values = config_to_dict(config)
    import_modules(values)
    check_keys(values)
    mesh = mesh_from_config(values, devices)
    return mesh, validate_config(values, num_devices=mesh.devices.size)


_STEP_METRICS = frozenset(
    ("loss", "grad_norm", "param_norm", "ema_decay", "is_finite", "learning_rate")
)
"""The generic step's metrics; the rest are the objective's."""


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
        # The objective's own metrics (mse, kl, d_loss, ...), summed over finite steps.
        objective={
            key: jnp.where(finite, value.astype(jnp.float32), zero)
            for key, value in metrics.items()
            if key not in _STEP_METRICS
        },
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
        objective=jax.tree.map(jnp.add, totals["objective"], new["objective"]),
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
        totals = jax.tree.map(np.asarray, jax.device_get(self.totals))
        totals["num_steps"] = self.num_steps
        self.totals, self.num_steps = None, 0
        return totals


class _Run:
    """The state of one call of :func:`train_and_evaluate` (setup, then the loop).

    The periodic jobs (:mod:`diffjax.training.hooks`) read its ``values``, ``programs``,
    ``mesh``, ``state``, ``frozen``, ``workdir``, ``info`` and ``eval_key``.
    """

    def __init__(
        self, config: Any, workdir: str | os.PathLike, devices: Sequence[jax.Device] | None
    ) -> None:
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.mesh, self.values = _mesh_and_values(config, devices)
        if resolve_run_dir(self.workdir) != self.workdir:
            raise IncompatibleResumeError(
                f"The workdir {self.workdir} is a folder of chained runs (it holds "
                f"{RUN_POINTER_FILE}, e.g. a distillation's rounds); train in a new --workdir."
            )
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
        from diffjax.data.pipeline import dataset_from_config  # grain and TFDS load here.

        if values["training"]["pairs_dir"]:
            from diffjax.data.pairs import pair_dataset

            self.dataset = pair_dataset(
                values["training"]["pairs_dir"],
                batch_size=values["data"]["batch_size"] // jax.process_count(),
                seed=values["seed"], process_index=jax.process_index(),
                process_count=jax.process_count(),
            )  # fmt: skip
        else:
            self.dataset = dataset_from_config(
                values, self.mesh, values["data"]["split"], values["data"]["batch_size"],
                random_flip=values["data"]["random_flip"],
            )  # fmt: skip
        self.info = self.dataset.info
        dataset = dict(image_shape=self.info.image_shape, cond_spec=self.info.cond_spec)
        self.programs = build_programs(program_spec(values, dataset), self.mesh)
        _check_dataset_fits(values, self.info, self.programs.model)
        self.init_key, self.train_key, self.eval_key = _keys(values["seed"])
        self.hooks = build_hooks(self, self.programs.hooks)
        self.frozen, self.frozen_record = load_frozen(values, self.programs, self.mesh)
        if values["training"]["latent_cache"]:
            from diffjax.training.latent_data import latent_training_data

            self.dataset = latent_training_data(
                values, self.mesh, self.info, self.programs.codec, self.frozen,
                self.frozen_record,
            )  # fmt: skip
        abstract = self.programs.abstract_state
        self.num_params = count_params(abstract.params)
        state_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(abstract))
        # Only now, with the config, data and networks found good, is the workdir created.
        check_workdir(self.workdir)
        check_free_space(self.workdir, state_bytes)

        from diffjax.training.checkpoint import CheckpointManager  # orbax loads here.

        self.checkpoints = CheckpointManager(
            os.path.join(self.workdir, CHECKPOINT_DIR),
            max_to_keep=values["training"]["keep_checkpoints"],
            async_save=values["training"]["async_checkpointing"],
            report=log,
        )
        try:
            restored = self.checkpoints.restore_latest(abstract)
            if restored is None:
                self.state = self._initial_state()
                self.start_step, self.data_state, self.last_saved_step = 0, None, None
            else:
                self.state, self.start_step = restored.state, restored.step
                self.data_state, self.last_saved_step = restored.data_state, restored.step
            num_steps = values["training"]["num_steps"]
            if self.start_step > num_steps:
                raise IncompatibleResumeError(
                    f"The workdir {self.workdir} holds a run at step {self.start_step}, past "
                    f"config.training.num_steps={num_steps}: set num_steps above "
                    f"{self.start_step} to train on, or choose a new --workdir; nothing was "
                    f"changed."
                )
        except BaseException:
            self.checkpoints.close()
            raise

    def _initial_state(self) -> TrainState:
        """A fresh state: the network's initialiser, or the EMA weights of
        ``training.init_from``'s run (restored parameters-only onto the mesh, then an argument
        of the compiled initialiser)."""
        programs, values = self.programs, self.values
        objective = programs.objective
        common = dict(
            shardings=lambda abstract: jax.tree.map(
                lambda leaf: leaf.sharding, programs.abstract_state
            ),
            trainable=programs.trainable,
            init_extra=objective.init_extra,
        )
        source = values["training"]["init_from"]
        if not source and objective.init_from_frozen is not None:
            # The objective's first parameters come from the frozen pytrees (a ControlNet's
            # copy of its base); they enter the initialiser as an argument.
            params = jax.jit(
                objective.init_from_frozen,
                out_shardings=jax.tree.map(
                    lambda leaf: leaf.sharding, programs.abstract_state.params
                ),
            )(self.init_key, self.frozen)
            log(f"diffjax: initialised from the frozen {sorted(self.frozen)} weights")
            return create_train_state(
                programs.init_fn, self.init_key, programs.optimizer, self.mesh, params=params,
                **common,
            )  # fmt: skip
        if not source:
            return create_train_state(
                programs.init_fn, self.init_key, programs.optimizer, self.mesh, **common
            )
        from diffjax.training.trained_run import load_trained_run, place

        teacher = load_trained_run(source, self.mesh)
        params = teacher.state.ema_params
        if teacher.config["model"] != values["model"]:
            params = self._extended(source, teacher.config["model"], params)
        log(f"diffjax: initialised from the EMA weights of {source} (step {teacher.step})")
        params = place(params, programs.abstract_state.params)
        return create_train_state(
            programs.init_fn, self.init_key, programs.optimizer, self.mesh, params=params,
            **common,
        )  # fmt: skip

    def _extended(self, source: str, source_model: Any, source_params: Any) -> Any:
        """This network's fresh parameters with every one of ``source_params`` copied in: a
        network that adds modules to the source's (a guidance embedding) starts from it.

        Raises:
          ConfigError: a source parameter this network lacks or shapes differently.
        """
        from flax import traverse_util

        fresh = traverse_util.flatten_dict(jax.jit(self.programs.init_fn)(self.init_key))
        for path, value in traverse_util.flatten_dict(source_params).items():
            if path not in fresh or fresh[path].shape != value.shape:
                raise ConfigError(
                    f"config.training.init_from={source!r} holds a {source_model} network, "
                    f"whose parameter {'/'.join(path)} {value.shape} this run's "
                    f"{self.values['model']} network does not have; use the same config.model "
                    f"(or one that only adds modules)."
                )
            fresh[path] = value
        return traverse_util.unflatten_dict(fresh)

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
            f"{jax.process_count()} process(es), mesh {dict(self.mesh.shape)}; "
            f"{self.values['model']['name']} "
            f"{self.num_params / 1e6:.2f}M params; global batch {batch} "
            f"({batch // len(devices)} per device); dataset {info.name}:{info.split} ({size}, "
            f"{'x'.join(map(str, info.image_shape))}); workdir {self.workdir}{resumed}"
        )


def _autoencoder_lines(workdir: str, grids: list[str], kept: int) -> list[str]:
    lines = []
    if grids:
        lines.append(f"  {SAMPLES_DIR}/{grids[-1]:<22} test images beside their reconstructions")
    return lines + [
        f"  {'latent_statistics.json':<30} the latents' mean and std (the latent run's scale)",
        f"  {'metrics.jsonl':<30} every logged number (tensorboard --logdir {workdir})",
        f"  {CHECKPOINT_DIR + '/':<30} the newest {kept} checkpoints",
        "Next: latent diffusion in its latent space, e.g.",
        f"  python -m diffjax.train --config configs/fashion_mnist_latent.py "
        f"--config.codec.options.workdir={workdir} --workdir <latent run>",
    ]


def _classifier_lines(workdir: str, kept: int) -> list[str]:
    """What a noisy classifier's run wrote and how to guide another run with it."""
    return [
        f"  {LOSS_PLOT_FILE:<30} the training and held-out cross-entropy",
        f"  {'metrics.jsonl':<30} the accuracy by noise level (accuracy_q1: least noise)",
        f"  {CHECKPOINT_DIR + '/':<30} the newest {kept} checkpoints",
        "Next: guide a run trained on the same process (classifier guidance):",
        f"  python -m diffjax.sample --workdir RUN --classifier {workdir} --classifier_scale 2",
    ]


def _final_message(run: _Run, seconds: float) -> str:
    """What the run wrote and what to do next, in a few lines."""
    values, workdir = run.values, run.workdir
    sampling = values["sampling"]
    num_steps, kept = values["training"]["num_steps"], values["training"]["keep_checkpoints"]
    lines = [f"diffjax: done at step {num_steps} ({seconds / 60:.1f} min). In {workdir}:"]
    grids = sorted(os.listdir(os.path.join(workdir, SAMPLES_DIR))) if os.path.isdir(
        os.path.join(workdir, SAMPLES_DIR)) else []  # fmt: skip
    grids = [name for name in grids if name.startswith("step_")]
    if values["objective"]["name"] == "autoencoder":
        return "\n".join(lines + _autoencoder_lines(workdir, grids, kept))
    if values["objective"]["name"] == "classifier":
        return "\n".join(lines + _classifier_lines(workdir, kept))
    if grids:
        lines.append(
            f"  {SAMPLES_DIR}/{grids[-1]:<22} EMA samples ({sampling['sampler']}, "
            f"{sampling['num_steps']} steps)"
        )
    lines += [
        f"  {LOSS_PLOT_FILE:<30} the training and held-out loss",
        f"  {'metrics.jsonl':<30} every logged number (tensorboard --logdir {workdir})",
        f"  {CHECKPOINT_DIR + '/':<30} the newest {kept} checkpoints",
        "Next:",
        f"  python -m diffjax.sample --workdir {workdir}      more samples",
    ]
    if tuple(run.info.image_shape) == (28, 28, 1):
        lines.append(
            f"  python -m diffjax.evaluate --workdir {workdir}    FD-FMNIST of 10k samples (offline)"
        )
    else:
        lines += [
            f"  python -m diffjax.evaluate --workdir {workdir} --metrics bpd    bits/dim (offline)",
            f"  python -m diffjax.evaluate --workdir {workdir}    FID of 10k samples (needs the "
            f"Inception weights: --inception_weights, or a download)",
        ]
    lines.append(
        "  the same train command with --config.training.num_steps=<more>: trains on from here"
    )
    return "\n".join(lines)


def _write_loss_plot(workdir: str) -> None:
    all_records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    records = [r for r in all_records if r.get("loss") is not None]
    held_out = [r for r in all_records if r.get("eval_loss") is not None]
    if not records or jax.process_index() != 0:
        return
    save_loss_curve(
        [r["step"] for r in records],
        [r["loss"] for r in records],
        os.path.join(workdir, LOSS_PLOT_FILE),
        smoothed=[r.get("loss_ema", r["loss"]) for r in records],
        held_out=([r["step"] for r in held_out], [r["eval_loss"] for r in held_out]),
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
    log(f"diffjax: skipped {num_bad} non-finite step(s), the first at step {first}.")
    return num_bad


def train_and_evaluate(
    config: Any, workdir: str | os.PathLike, devices: Sequence[jax.Device] | None = None
) -> TrainState:
    """Trains a diffusion model as ``config`` says, resuming from ``workdir`` if it holds a run.

    Re-running the same call (or command) after an interruption continues from the newest
    good checkpoint and ends exactly where an uninterrupted run would.

    Args:
      config: an ``ml_collections.ConfigDict`` with the sections of ``configs/base.py``
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

            # No tqdm rate or remaining time: its clock would count the evaluations and saves
            # as step time; the postfix carries the training's own (report_progress).
            self.progress = tqdm(
                total=self.num_steps, initial=run.start_step, unit="step", dynamic_ncols=True,
                desc="train", bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                "[{elapsed}{postfix}]",
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
                **{
                    key: float(value) / num_finite
                    for key, value in sorted(totals["objective"].items())
                },
            ),
        )
        report_progress(
            self.progress, step, self.num_steps, loss, images_per_s, num_steps / train_seconds,
            now - self.run_start,
        )  # fmt: skip
        self.restart_interval(step)

    def close(self) -> None:
        self.writer.close()
        if self.progress is not None:
            self.progress.close()


class _StopSignals:
    """Turns SIGINT and SIGTERM into a request the loop answers at the end of its current step
    (saving a checkpoint of that step first), instead of an exception anywhere inside it.

    Preemptible TPU VMs and SLURM send SIGTERM before they kill a job; Ctrl-C sends SIGINT.
    Installed only in the main thread (the only one Python delivers signals to) of a
    single-process run: a save is collective, and one process of several stopping alone would
    leave the others waiting (those runs keep their checkpoint intervals). A second signal
    while saving is left to the previous handler.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: Any) -> None:
        self.received = number
        signal.signal(number, self._previous.get(number, signal.SIG_DFL))

    def __exit__(self, *exc_info: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def _save(run: _Run, step: int, data_state: Any) -> None:
    run.checkpoints.save(step, run.state, data_state=data_state, metadata=dict(config=run.values))
    run.last_saved_step = step


def _stop_on_signal(run: _Run, logger: "_Logger", number: int, step: int, data_state: Any) -> None:
    """Saves the state of ``step`` (if it is not saved yet) and stops the run."""
    if run.last_saved_step != step:
        logger.log(step)  # a NaN stops the run here, before anything is written
        _save(run, step, data_state)
    run.checkpoints.wait_until_finished()
    name = signal.Signals(number).name
    log(f"diffjax: {name} at step {step}: saved a checkpoint of step {step}; rerun the same "
        f"command to resume from it.")  # fmt: skip
    if number == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + number)


def _train(run: _Run) -> TrainState:
    values = run.values
    training = values["training"]
    num_steps = training["num_steps"]
    if run.start_step >= num_steps:
        log(f"diffjax: the run in {run.workdir} already reached step {num_steps}; nothing to do.")
        return run.state
    write_run_record(run.workdir, run.values, run.info, run.frozen_record)
    log(run.summary())
    train_step = run.programs.train_step

    def due(every: int, step: int) -> bool:
        return step == num_steps or (every > 0 and step % every == 0)

    for hook in run.hooks:
        if hook.prepare is not None:
            hook.prepare(run)
    logger = _Logger(run)
    iterator = iter(run.dataset)
    signals = _StopSignals().__enter__()
    try:
        if run.data_state is not None:
            iterator.set_state(run.data_state)
        step = run.start_step
        batches = prefetch_to_mesh(iterator, run.mesh)
        for step in range(run.start_step, num_steps):
            batch, data_state = next(batches)
            run.state, metrics = train_step(run.state, batch, run.train_key, run.frozen)
            logger.accumulator.add(metrics, step)
            done = step + 1
            if step == run.start_step:
                jax.block_until_ready(metrics["loss"])
                log(
                    f"diffjax: compiled and ran the first train step in "
                    f"{time.perf_counter() - logger.interval_start:.1f} s"
                )
                logger.restart_interval(done)
            save_now = due(training["checkpoint_every_steps"], done)
            if due(training["log_every_steps"], done) or save_now:
                # Also before every save: a NaN must stop the run before it is written.
                logger.log(done)
            start = time.perf_counter()
            for hook in run.hooks:
                if due(hook.every, done):
                    hook.run(run, done, logger.writer)
            if save_now:
                _save(run, done, data_state)
            logger.exclude(time.perf_counter() - start)
            if signals.received is not None:
                _stop_on_signal(run, logger, signals.received, done, data_state)
        run.checkpoints.wait_until_finished()
        logger.writer.flush()
        _write_loss_plot(run.workdir)
        log(_final_message(run, time.perf_counter() - logger.run_start))
        return run.state
    except KeyboardInterrupt:
        if signals.received is not None:
            raise  # _stop_on_signal has said what was saved.
        saved = run.last_saved_step
        kept = (
            f"the newest checkpoint is step {saved}" if saved else "no checkpoint was written yet"
        )
        log(f"diffjax: interrupted at step {step}; {kept}. Rerun the same command to resume.")
        raise
    finally:
        signals.__exit__(None, None, None)
        iterator.close()
        logger.close()
