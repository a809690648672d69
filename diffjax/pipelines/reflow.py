"""Reflow (Liu et al. 2022, "Flow Straight and Fast", arXiv:2209.03003, Algorithm 1): the
(noise, sample) coupling of a trained flow as a dataset, and the training data it becomes.

A trained model's deterministic sampler maps noise z to a sample x = ODE(z). Training the next
rectified flow on the pairs (z, x), with x_t = (1 - t) x + t z and the target z - x, gives a
flow whose paths are straighter (its straightness, :func:`diffjax.metrics.straightness`, is
smaller), so one or two steps suffice. This module

* generates the pairs (:func:`generate_pairs`): pair i's noise is N(0, I) drawn from
  ``fold_in(key(seed), i)``, its sample the sampler's output from it, with the condition
  sample i of a conditional teacher gets (:class:`~diffjax.training.programs.SampleConditions`:
  class i mod K, or the evaluation split's example i); they are written in shards of one batch
  (:mod:`diffjax.data.pairs`, each written atomically) beside a manifest of the settings. A
  rerun skips the shards already written and refuses other settings, so a killed generation
  resumes; the pairs depend neither on the device count nor on where it stopped. A latent
  teacher's pairs are latents (the codec's space), which the student trains on.
* trains the next flow on them: the training program reads a pair folder
  (``config.training.pairs_dir``) with :func:`diffjax.data.pairs.pair_dataset`, and the
  denoising loss uses each pair's noise (:func:`diffjax.losses.denoising_loss`).

``python -m diffjax.reflow`` (:mod:`diffjax.reflow`) runs the whole procedure. With
``distill=True`` it distils instead (Liu et al. 2022, Sec. 2.3, "k-rectified flow +
distillation"): the student is trained on the same pairs at t = 1 only (time sampler
'constant'), where the one Euler step x = z - v(z, 1) starts, so that its single step maps z
to the teacher's ODE(z). The report measures that directly, for both modes: the mean squared
distance per dimension between one Euler step and the teacher's sampler from fresh noises
(:func:`one_step_distance`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import samplers
from diffjax.data.pairs import (
    complete_shards,
    read_manifest,
    write_manifest,
    write_shard,
)
from diffjax.errors import ConfigError
from diffjax.evaluation.features import write_json
from diffjax.models.conditioning import cond_keys, make_model_fn
from diffjax.sharding import batch_sharding, gather_to_host, make_mesh
from diffjax.training.frozen import load_frozen, run_network_params
from diffjax.training.loop import train_and_evaluate
from diffjax.training.programs import SampleConditions, make_run_generator, sampling_settings
from diffjax.training.trained_run import load_trained_run

__all__ = [
    "generate_pairs",
    "measure_straightness",
    "one_step_distance",
    "pair_noise",
    "reflow",
]


def pair_noise(seed: int, first_index: int, count: int, shape: tuple[int, ...]) -> jax.Array:
    """The noise of pairs first_index .. first_index + count - 1: N(0, I) of ``shape`` each,
    from ``fold_in(key(seed), i)``; ``[count, *shape]`` float32."""
    keys = samplers.sample_keys(seed, first_index, count)
    return jax.vmap(lambda key: jax.random.normal(key, shape, jnp.float32))(keys)


def generate_pairs(
    sample_fn: Callable[..., jax.Array],
    pairs_dir: str | os.PathLike,
    *,
    num_pairs: int,
    batch_size: int,
    seed: int,
    shape: tuple[int, ...],
    settings: Mapping[str, Any],
    cond_fn: Callable[[np.ndarray], Mapping[str, Any] | None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Writes the (noise, sample) pairs of a deterministic sampler, resumably.

    Args:
      sample_fn: ``sample_fn(noise [b, *shape]) -> samples [b, *shape]``: the sampler started
        from that noise (scaled to the process's prior by the caller), or, with ``cond_fn``,
        ``sample_fn(noise, cond)``; called with ``batch_size`` pairs at a time (the last call
        padded to a full batch).
      pairs_dir: the output folder.
      num_pairs: N pairs in all.
      batch_size: pairs per call and per shard.
      seed: the noise seed (pair i from ``fold_in(key(seed), i)``).
      shape: one sample's shape (model space).
      settings: what produced the pairs (teacher, step, sampler, options, ...), stored in the
        manifest and compared on resume.
      cond_fn: ``cond_fn(indices [b]) -> {key: [b, ...]}``, the condition of pairs ``indices``
        (stored with them), or None for an unconditional teacher.
      progress: show a progress bar.

    Returns:
      The manifest (settings, ``num_pairs``, ``batch_size``, ``seed``, ``shape``).

    Raises:
      ValueError: the folder holds pairs made with other settings.
    """
    from tqdm import tqdm

    pairs_dir = os.fspath(pairs_dir)
    manifest = dict(
        settings=json.loads(json.dumps(dict(settings))), num_pairs=int(num_pairs),
        batch_size=int(batch_size), seed=int(seed), shape=list(shape),
    )  # fmt: skip
    os.makedirs(pairs_dir, exist_ok=True)
    try:
        saved = read_manifest(pairs_dir)
    except FileNotFoundError:
        saved = None
    if saved is not None and saved != manifest:
        raise ValueError(
            f"{pairs_dir} holds pairs made with other settings ({saved}); these are "
            f"{manifest}. Use another folder or the original settings; nothing was changed."
        )
    if saved is None and jax.process_index() == 0:
        write_manifest(pairs_dir, manifest)
    done = complete_shards(pairs_dir, manifest)
    num_shards = -(-num_pairs // batch_size)
    bar = tqdm(
        total=num_shards, initial=done, unit="batch", desc="reflow pairs",
        disable=not progress or jax.process_index() != 0, dynamic_ncols=True,
    )  # fmt: skip
    for shard in range(done, num_shards):
        first = shard * batch_size
        count = min(batch_size, num_pairs - first)
        noise = pair_noise(seed, first, batch_size, tuple(shape))
        cond = None if cond_fn is None else cond_fn(np.arange(first, first + batch_size))
        drawn = sample_fn(noise) if cond_fn is None else sample_fn(noise, cond)
        samples = np.asarray(gather_to_host(drawn), np.float32)[:count]
        if jax.process_index() == 0:
            cond_host = {key: np.asarray(value)[:count] for key, value in (cond or {}).items()}
            write_shard(pairs_dir, shard, np.asarray(noise)[:count], samples, cond_host)
        bar.update(1)
    bar.close()
    return manifest


def _flow_paths(
    run: Any, conditions: SampleConditions, indices: np.ndarray, noise: jax.Array, num_steps: int
) -> tuple[jax.Array, jax.Array]:
    """Euler paths of the run's EMA flow from ``noise`` (sample i with its condition):
    (path [N + 1, B, ...], times [N + 1]). The model function is the one adapter's, so every
    batch reuses one compiled sampler."""
    flow = make_model_fn(run.model, run_network_params(run, run.state.ema_params),
                         conditions(indices))  # fmt: skip
    samples, trajectory = samplers.flow_euler_sample(
        flow, run.process, jax.random.key(0), noise.shape, num_steps=num_steps,
        prediction_type=run.config["diffusion"]["prediction_type"], x_T=noise,
        return_trajectory=True,
    )  # fmt: skip
    path = jnp.concatenate([trajectory.x_t, samples[None]])
    times = jnp.concatenate([trajectory.timesteps, jnp.zeros((1,), jnp.float32)])
    return path, times


def measure_straightness(
    run: Any, *, num: int, num_steps: int, seed: int, batch_size: int
) -> float:
    """Straightness (:func:`diffjax.metrics.straightness`) of a rectified-flow run's EMA flow
    along ``num_steps``-step Euler paths from ``num`` noises (``fold_in(key(seed), i)``, with
    sample i's condition), mean over batches of ``batch_size``."""
    from diffjax.metrics import straightness

    values = []
    conditions = SampleConditions(run.config, run.model)
    for first in range(0, num, batch_size):
        count = min(batch_size, num - first)
        noise = pair_noise(seed, first, count, run.programs.latent_shape)
        path, times = _flow_paths(run, conditions, np.arange(first, first + count), noise,
                                  num_steps)  # fmt: skip
        values.append(float(straightness(path, times)) * count)
    return sum(values) / num


def one_step_distance(
    runs: Mapping[str, Any], target_fn: Callable[[jax.Array, np.ndarray], jax.Array], *,
    num: int, seed: int, batch_size: int,
) -> dict[str, float]:  # fmt: skip
    """For each rectified-flow run, the mean over ``num`` noises z (``fold_in(key(seed), i)``)
    and dimensions of (x_1(z) - target(z))^2: x_1 the one-step Euler sample of the run's EMA
    flow, ``target_fn(z [B, ...], indices [B]) -> [B, ...]`` the sample it should reproduce
    (the teacher's pair sampler), computed once per batch for all runs. Returns
    ``{name: distance}``."""
    totals = dict.fromkeys(runs, 0.0)
    conditions = {name: SampleConditions(run.config, run.model) for name, run in runs.items()}
    shape = next(iter(runs.values())).programs.latent_shape
    for first in range(0, num, batch_size):
        count = min(batch_size, num - first)
        indices = np.arange(first, first + count)
        noise = pair_noise(seed, first, count, shape)
        target = target_fn(noise, indices)
        for name, run in runs.items():
            path, _ = _flow_paths(run, conditions[name], indices, noise, 1)
            totals[name] += float(jnp.mean(jnp.square(path[-1] - target))) * count
    return {name: total / num for name, total in totals.items()}


def _student_config(teacher_config: Mapping[str, Any], teacher: str, pairs_dir: str,
                    train_steps: int, overrides: Mapping[str, Any], distill: bool):  # fmt: skip
    import ml_collections

    values = json.loads(json.dumps(teacher_config))
    values["training"].update(init_from=teacher, pairs_dir=pairs_dir, num_steps=train_steps)
    if distill:
        values["diffusion"].update(time_sampler="constant", time_sampler_options={"t": 1.0})
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in values or not isinstance(values[section], dict) or not name:
            raise ConfigError(f"--config_override {key}={value!r}: no config key {key!r}.")
        if name not in values[section]:
            raise ConfigError(
                f"--config_override {key}={value!r}: config.{section} has no key {name!r}; its "
                f"keys are {sorted(values[section])}."
            )
        values[section][name] = value
    return ml_collections.ConfigDict(values)


def reflow(
    teacher: str | os.PathLike, workdir: str | os.PathLike, *, num_pairs: int,
    pair_batch: int, sampler: str, num_steps: int, options: Mapping[str, Any], seed: int,
    train_steps: int, overrides: Mapping[str, Any], straightness_num: int,
    straightness_steps: int, distill: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """``python -m diffjax.reflow`` (:mod:`diffjax.reflow`): pairs, training, report.

    Every stage resumes: the pairs skip written shards, the training resumes from its newest
    checkpoint, and the report is recomputed from the final weights. ``distill``: train the
    student at t = 1 only (one-step distillation, module docstring) instead of reflowing. A
    conditional teacher's pairs carry each sample's condition (drawn with the teacher's
    ``config.sampling.guidance_scale``), and the student trains on them.

    Returns:
      The report written to ``workdir/reflow.json``: settings, training steps, the
      straightness of teacher and student (the teacher's only when distilling: a distilled
      student is trained at t = 1 alone), and the one-step distance of both to the teacher's
      sampler.

    Raises:
      ConfigError: a teacher that is not a rectified flow, a sampler that is not
        deterministic, or a bad option, before anything is compiled.
    """
    teacher, workdir = os.path.abspath(os.fspath(teacher)), os.path.abspath(os.fspath(workdir))
    if teacher == workdir:
        raise ConfigError("--workdir must differ from --teacher (the teacher is read only).")
    for name, value, low in (("num_pairs", num_pairs, 2), ("pair_batch", pair_batch, 1),
                             ("train_steps", train_steps, 1), ("straightness_num",
                             straightness_num, 1), ("straightness_steps", straightness_steps, 1)):  # fmt: skip
        if value < low:
            raise ConfigError(f"--{name} must be >= {low}, got {value}.")
    mesh = make_mesh()
    if pair_batch % mesh.devices.size:
        raise ConfigError(
            f"--pair_batch={pair_batch} must be a multiple of the {mesh.devices.size} devices."
        )
    run = load_trained_run(teacher, mesh)
    process_name = run.config["diffusion"]["process"]
    if process_name != "rectified_flow":
        raise ConfigError(
            f"reflow straightens a rectified flow; the teacher {teacher} was trained with "
            f"diffusion.process={process_name!r}. Train one with configs/fashion_mnist.py."
        )
    sampler, sampler_options = sampling_settings(
        run.config, sampler=sampler, num_steps=num_steps, options=options
    )
    try:
        samplers.check_sampler_options(sampler, run.process, sampler_options)
        deterministic = samplers.is_deterministic(sampler, sampler_options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"--sampler={sampler} --steps={num_steps}: {error}") from error
    if not deterministic:
        raise ConfigError(
            f"--sampler={sampler} with options {dict(options)} is not deterministic; reflow "
            f"pairs need a sampler that maps noise to its sample (eta = 0, s_churn = 0; e.g. "
            f"flow_euler, flow_heun, ode, dpm_solver)."
        )
    config = _student_config(
        run.config, teacher, os.path.join(workdir, "pairs"), train_steps, overrides, distill
    )
    sharding = batch_sharding(mesh)
    generate = make_run_generator(
        run.config, run.programs, pair_batch, mesh, sampler=sampler, options=sampler_options
    )
    frozen, _ = load_frozen(run.config, run.programs, mesh)
    params = run.state.ema_params
    conditions = SampleConditions(run.config, run.model)

    def sample_pairs(noise: jax.Array, cond: Any = None) -> jax.Array:
        noise = jax.device_put(noise, sharding)
        return generate(params, jax.random.key(0), cond, frozen=frozen, x_T=noise, decode=False)

    os.makedirs(workdir, exist_ok=True)
    manifest = generate_pairs(
        sample_pairs, os.path.join(workdir, "pairs"), num_pairs=num_pairs, batch_size=pair_batch,
        seed=seed, shape=run.programs.latent_shape,
        settings=dict(teacher=teacher, step=run.step, sampler=sampler, options=sampler_options),
        cond_fn=conditions if cond_keys(run.model) else None,
    )  # fmt: skip
    train_and_evaluate(config, workdir)
    student = load_trained_run(workdir, mesh)
    measure = dict(
        num=straightness_num, num_steps=straightness_steps, seed=seed + 1,
        batch_size=pair_batch,
    )  # fmt: skip
    one_step = dict(num=straightness_num, seed=seed + 1, batch_size=pair_batch)

    def target_fn(noise: jax.Array, indices: np.ndarray) -> jax.Array:
        count = noise.shape[0]
        padded = jnp.concatenate([noise, jnp.zeros((pair_batch - count, *noise.shape[1:]))])
        cond = conditions(np.resize(indices, pair_batch))
        return sample_pairs(padded, cond)[:count]

    report = dict(
        teacher=teacher, teacher_step=run.step, student_step=student.step, pairs=manifest,
        mode="distill" if distill else "reflow",
        straightness=dict(
            teacher=measure_straightness(run, **measure),
            student=None if distill else measure_straightness(student, **measure),
            euler_steps=straightness_steps, num=straightness_num, noise_seed=seed + 1,
        ),
        one_step_distance=dict(
            **one_step_distance(dict(teacher=run, student=student), target_fn, **one_step),
            target=dict(sampler=sampler, options=sampler_options), num=straightness_num,
            noise_seed=seed + 1,
        ),
    )  # fmt: skip
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, "reflow.json"), report)
    return report
