"""The training loop's periodic jobs, registered by name (big_vision's evaluators).

An objective names the jobs it runs (:attr:`~diffjax.training.objectives.ObjectiveEntry.hooks`);
the loop builds each from the run when the run starts (so a job that cannot run, a feature
network that does not fit the data, say, fails before the workdir is written), prepares it
once before the first step, and calls it every ``every`` steps and at the end:

=====================  ===================================================================
``sample_grid``        EMA samples with the config's sampler, written to ``samples/`` and
                       TensorBoard (``config.sampling``)
``frechet_distance``   the Fréchet distance of EMA samples against the evaluation split
                       (``config.eval.fd_*``), logged as ``fid`` / ``fd_fmnist`` beside
                       the recipe's measured value (``config.eval.quoted_fd``) while the
                       run's settings are the recipe's; left out of a run shorter than
                       ``fd_every_steps`` (a smoke run)
``held_out_loss``      the objective's loss of the EMA weights on fixed held-out batches
                       (``config.eval.every_steps``), logged as ``eval_loss``
``reconstruction_grid``  an autoencoder's inputs beside its EMA reconstructions, in
                       ``samples/`` (``config.sampling.every_steps`` and ``num_samples``)
``reconstruction_metrics``  PSNR and SSIM of the EMA reconstructions of fixed held-out
                       batches (``config.eval.every_steps``)
``latent_statistics``  at the end: the mean and standard deviation of posterior draws of
                       ``eval.num_batches`` training batches, written to
                       ``latent_statistics.json`` (a latent run's default scale is 1/std)
=====================  ===================================================================

A job sees the run through these attributes: ``values`` (the validated config), ``programs``,
``mesh``, ``state``, ``frozen``, ``workdir``, ``info`` (the training data's description) and
``eval_key``. :func:`register_hook` adds a job for an objective of your own.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from diffjax.errors import ConfigError
from diffjax.images import make_grid, save_image_grid, to_uint8
from diffjax.sharding import gather_to_host, host_batch_to_global
from diffjax.training.config import quoted_fd
from diffjax.training.console import log
from diffjax.training.latent_codec import LATENT_STATISTICS_FILE
from diffjax.training.programs import SampleConditions, make_run_generator, sample_drawer
from diffjax.training.workdir import SAMPLES_DIR

__all__ = ["HOOKS", "Hook", "build_hooks", "register_hook"]


class Hook(NamedTuple):
    """A periodic job of the loop.

    Attributes:
      name: its registered name.
      every: run it every this many steps (0: only at the end).
      run: ``run(training_run, step, writer)``; ``writer`` takes scalars and images.
      prepare: ``prepare(training_run)`` once before the first step, or None.
    """

    name: str
    every: int
    run: Callable[[Any, int, Any], None]
    prepare: Callable[[Any], None] | None = None


def _sample_grid(training: Any) -> Hook | None:
    sampling = training.values["sampling"]
    if sampling["num_samples"] == 0:
        return None
    count = sampling["num_samples"]
    generate = make_run_generator(training.values, training.programs, count, training.mesh)
    conditions = SampleConditions(training.values, training.programs.model)

    def run(training: Any, step: int, writer: Any) -> None:
        log(
            f"diffjax: sampling {count} images ({sampling['sampler']}, {sampling['num_steps']} "
            f"steps) at step {step}..."
        )
        start = time.perf_counter()
        draw = sample_drawer(
            generate, training.state.ema_params, seed=sampling["seed"], conditions=conditions,
            frozen=training.frozen, blocks=count,
        )  # fmt: skip
        images = gather_to_host(draw(0, count))
        if jax.process_index() != 0:
            return
        height = images.shape[1]
        path = os.path.join(training.workdir, SAMPLES_DIR, f"step_{step:07d}.png")
        save_image_grid(images, path, scale=max(1, 64 // height))
        writer.write_image("samples", step, make_grid(to_uint8(images)))
        log(f"diffjax: wrote {path} ({time.perf_counter() - start:.1f} s)")

    return Hook("sample_grid", sampling["every_steps"], run)


def _frechet_distance(training: Any) -> Hook | None:
    evaluation = training.values["eval"]
    # A run shorter than one interval (a smoke run of the default config) would spend most of
    # its time drawing the FD's samples at its end.
    if not 0 < evaluation["fd_every_steps"] <= training.values["training"]["num_steps"]:
        return None
    from diffjax.metrics import load_feature_network

    try:
        network = load_feature_network(evaluation["fd_features"])
        network.check_image_shape(training.info.image_shape)
    except ValueError as error:
        raise ConfigError(f"config.eval.fd_features: {error}") from error
    generate = make_run_generator(
        training.values, training.programs, evaluation["fd_batch_size"], training.mesh
    )
    conditions = SampleConditions(training.values, training.programs.model)
    reference = {}

    def prepare(training: Any) -> None:
        from diffjax.evaluation.references import run_reference
        from diffjax.metrics import load_statistics

        path = evaluation["fd_reference"] or run_reference(
            training.workdir, training.values, network, training.mesh,
            batch_size=evaluation["batch_size"], progress=False,
        )  # fmt: skip
        try:
            reference["statistics"], _ = load_statistics(path, expected_dim=network.dim)
        except (OSError, ValueError) as error:
            raise ConfigError(f"config.eval.fd_reference: {error}") from error

    def run(training: Any, step: int, writer: Any) -> None:
        from diffjax.evaluation.features import frechet_distance_of_samples

        start = time.perf_counter()
        draw = sample_drawer(
            generate, training.state.ema_params, seed=training.values["sampling"]["seed"],
            conditions=conditions, frozen=training.frozen,
        )  # fmt: skip
        value = frechet_distance_of_samples(
            network, draw, reference["statistics"], num_samples=evaluation["fd_num_samples"],
            batch_size=evaluation["fd_batch_size"], mesh=training.mesh,
        )  # fmt: skip
        writer.write_scalars(step, {network.fd_name: value})
        quoted = quoted_fd(training.values, step)
        log(
            f"diffjax: {network.fd_name} of {evaluation['fd_num_samples']} EMA samples at step "
            f"{step}: {value:.3f} ({time.perf_counter() - start:.1f} s)"
            + ("" if quoted is None else f"; the recipe's measured value here: {quoted:.1f}")
        )

    return Hook("frechet_distance", evaluation["fd_every_steps"], run, prepare)


def _held_out_loss(training: Any) -> Hook | None:
    evaluation = training.values["eval"]
    if evaluation["every_steps"] == 0:
        return None
    from diffjax.data.pipeline import dataset_from_config

    dataset = dataset_from_config(
        training.values, training.mesh, evaluation["split"], evaluation["batch_size"],
        shuffle=False,
    )  # fmt: skip

    def run(training: Any, step: int, writer: Any) -> None:
        """Mean loss over the first ``eval.num_batches`` batches, the same keys every time."""
        total = 0.0
        eval_loss = training.programs.eval_loss
        with iter(dataset) as iterator:
            for index in range(evaluation["num_batches"]):
                batch = host_batch_to_global(next(iterator), training.mesh)
                key = jax.random.fold_in(training.eval_key, index)
                state = training.state
                total += float(
                    eval_loss(state.ema_params, training.frozen, batch, key, state.extra)
                )
        value = total / evaluation["num_batches"]
        writer.write_scalars(step, {"eval_loss": value})
        log(f"diffjax: held-out loss of the EMA weights at step {step}: {value:.5f}")

    return Hook("held_out_loss", evaluation["every_steps"], run)


def _eval_batches(training: Any, split: str) -> Any:
    """The first ``eval.num_batches`` batches of ``split``, the same every time."""
    from diffjax.data.pipeline import dataset_from_config

    evaluation = training.values["eval"]
    dataset = dataset_from_config(
        training.values, training.mesh, split, evaluation["batch_size"], shuffle=False
    )

    def batches():
        with iter(dataset) as iterator:
            for _ in range(evaluation["num_batches"]):
                yield host_batch_to_global(next(iterator), training.mesh)

    return batches


def _autoencoder_functions(training: Any) -> tuple[Callable, Callable]:
    """Jitted ``reconstruct(params, images)`` (through the posterior mean, or the quantized
    encodings) and ``sample_latents(params, images, key)`` (the latents a diffusion model runs
    on) of an autoencoder run."""
    module = training.programs.model

    @jax.jit
    def reconstruct(params: Any, images: jax.Array) -> jax.Array:
        return module.apply({"params": params["autoencoder"]}, images)[0]

    @jax.jit
    def sample_latents(params: Any, images: jax.Array, key: jax.Array) -> jax.Array:
        return module.apply({"params": params["autoencoder"]}, images, key, method="latents")

    return reconstruct, sample_latents


def _reconstruction_grid(training: Any) -> Hook | None:
    sampling = training.values["sampling"]
    count = sampling["num_samples"]
    if count == 0:
        return None
    batches = _eval_batches(training, training.values["eval"]["split"])
    reconstruct, _ = _autoencoder_functions(training)

    def run(training: Any, step: int, writer: Any) -> None:
        images = next(iter(batches()))["image"][:count]
        recon = gather_to_host(reconstruct(training.state.ema_params, images))
        images = gather_to_host(images)
        if jax.process_index() != 0:
            return
        # Each input beside its reconstruction.
        pairs = np.concatenate([np.asarray(images), np.asarray(recon)], axis=2)
        path = os.path.join(training.workdir, SAMPLES_DIR, f"step_{step:07d}.png")
        save_image_grid(pairs, path, scale=max(1, 64 // pairs.shape[1]))
        writer.write_image("reconstructions", step, make_grid(to_uint8(pairs)))
        log(f"diffjax: wrote {path} (inputs beside EMA reconstructions)")

    return Hook("reconstruction_grid", sampling["every_steps"], run)


def _reconstruction_metrics(training: Any) -> Hook | None:
    from diffjax.metrics.image_quality import psnr, ssim

    batches = _eval_batches(training, training.values["eval"]["split"])
    reconstruct, _ = _autoencoder_functions(training)

    # SSIM's 11x11 window needs images at least that large.
    metrics = {"psnr": psnr}
    if min(training.info.image_shape[:2]) >= 11:
        metrics["ssim"] = ssim

    def run(training: Any, step: int, writer: Any) -> None:
        totals = dict.fromkeys(metrics, 0.0)
        count = 0
        for batch in batches():
            recon = reconstruct(training.state.ema_params, batch["image"])
            count += batch["image"].shape[0]
            for name, metric in metrics.items():
                totals[name] += float(np.sum(metric(batch["image"], recon)))
        means = {f"reconstruction_{name}": total / count for name, total in totals.items()}
        writer.write_scalars(step, means)
        log(
            f"diffjax: reconstruction of {count} {training.values['eval']['split']} images by the "
            f"EMA weights at step {step}: "
            + ", ".join(f"{name.upper()} {totals[name] / count:.4f}" for name in metrics)
        )

    return Hook("reconstruction_metrics", training.values["eval"]["every_steps"], run)


def _latent_statistics(training: Any) -> Hook:
    import json

    from diffjax.images import atomic_write

    batches = _eval_batches(training, training.values["data"]["split"])
    _, sample_latents = _autoencoder_functions(training)

    def run(training: Any, step: int, writer: Any) -> None:
        """Mean and standard deviation over every element of posterior draws of the first
        ``eval.num_batches`` training batches (float64 sums)."""
        total, total_sq, count, num_images = 0.0, 0.0, 0, 0
        for index, batch in enumerate(batches()):
            key = jax.random.fold_in(training.eval_key, index)
            latents = gather_to_host(sample_latents(training.state.ema_params, batch["image"], key))
            latents = np.asarray(latents, np.float64)
            total += latents.sum()
            total_sq += np.square(latents).sum()
            count += latents.size
            num_images += latents.shape[0]
        mean = total / count
        std = float(np.sqrt(max(total_sq / count - mean**2, 0.0)))
        record = dict(
            step=step, num_images=num_images, mean=float(mean), std=std, scaling_factor=1.0 / std
        )
        writer.write_scalars(step, {"latent_mean": float(mean), "latent_std": std})
        log(
            f"diffjax: latents of {num_images} training images at step {step}: mean {mean:.4f}, "
            f"std {std:.4f} (scaling factor {1.0 / std:.5f}, in {LATENT_STATISTICS_FILE})"
        )
        if jax.process_index() != 0:
            return
        payload = json.dumps(record, indent=1) + "\n"

        def write(tmp_path: str) -> None:
            with open(tmp_path, "w", encoding="utf-8") as file:
                file.write(payload)

        atomic_write(os.path.join(training.workdir, LATENT_STATISTICS_FILE), write)

    return Hook("latent_statistics", 0, run)


HOOKS: dict[str, Callable[[Any], Hook | None]] = {
    "sample_grid": _sample_grid,
    "frechet_distance": _frechet_distance,
    "held_out_loss": _held_out_loss,
    "reconstruction_grid": _reconstruction_grid,
    "reconstruction_metrics": _reconstruction_metrics,
    "latent_statistics": _latent_statistics,
}
"""Periodic jobs by name: ``factory(training_run) -> Hook``, or None when the config turns
the job off."""


def register_hook(name: str, factory: Callable[[Any], Hook | None]) -> None:
    """Adds a periodic job that an objective can name.

    Raises:
      ValueError: the name is taken or empty.
    """
    if not isinstance(name, str) or not name or name in HOOKS:
        raise ValueError(
            f"register_hook needs a new, non-empty name; {name!r} is taken or empty "
            f"(registered: {tuple(HOOKS)})."
        )
    HOOKS[name] = factory


def build_hooks(training: Any, names: tuple[str, ...]) -> list[Hook]:
    """The jobs ``names`` of a run, built (those its config turns off are left out).

    Raises:
      ConfigError: an unknown job name, or a job that cannot run with this config and data.
    """
    unknown = [name for name in names if name not in HOOKS]
    if unknown:
        raise ConfigError(f"Unknown loop jobs {unknown}; registered: {tuple(HOOKS)}.")
    hooks = [HOOKS[name](training) for name in names]
    return [hook for hook in hooks if hook is not None]
