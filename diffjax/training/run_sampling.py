"""Samples from a trained run with the run's own settings: what ``python -m diffjax.sample``
draws, from Python.

:func:`run_sampler` builds the run's generator (its sampler, steps and options by
:func:`~diffjax.training.programs.sampling_settings`, ``config.sampling``'s ``clip_x0``,
guidance and seed, the EMA weights, the codec's frozen parameters) and :func:`sample_run`
draws N samples with it. The command line calls the same functions, so the two agree.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from diffjax.training.frozen import load_frozen
from diffjax.training.programs import (
    SampleConditions,
    make_run_generator,
    sample_drawer,
    sampling_settings,
)
from diffjax.training.trained_run import TrainedRun

__all__ = ["RunSampler", "run_sampler", "sample_run"]


class RunSampler(NamedTuple):
    """A run's sampler, ready to draw (see :func:`run_sampler`).

    Attributes:
      draw: ``draw(start, count) -> images [count, H, W, C]`` (on the devices, float32 in about
        [-1, 1]) of samples ``start .. start + count - 1``, sample i with the key
        ``fold_in(key(seed), i)``; ``count`` is the batch size it was built for. With
        ``stats`` (the adaptive ``'ode'`` sampler), ``(images, stats)``.
      sampler: the sampler's name.
      options: its keyword arguments (``num_steps``, ``prediction_type``, ...).
      seed: the samples' seed.
      guidance_scale: the classifier-free guidance weight.
    """

    draw: Callable[[int, int], Any]
    sampler: str
    options: dict[str, Any]
    seed: int
    guidance_scale: float


def run_sampler(
    run: TrainedRun,
    batch_size: int,
    *,
    sampler: str | None = None,
    num_steps: int | None = None,
    options: Mapping[str, Any] | None = None,
    guidance_scale: float | None = None,
    ema: bool = True,
    seed: int | None = None,
    labels: Any = None,
    stats: bool = False,
    classifier: Any = None,
    control: Any = None,
) -> RunSampler:
    """A run's sampler with the defaults ``python -m diffjax.sample`` uses.

    The sampler, steps and options follow
    :func:`~diffjax.training.programs.sampling_settings` (the config's, or another sampler's
    own defaults; ``prediction_type`` always the run's); ``clip_x0``, guidance and seed default
    to ``config.sampling``'s; the condition of sample i is
    :class:`~diffjax.training.programs.SampleConditions`' (class i mod K) unless ``labels``.

    Args:
      run: from :func:`~diffjax.training.trained_run.load_trained_run`.
      batch_size: samples per compiled call.
      sampler: see :func:`~diffjax.training.programs.sampling_settings`.
      num_steps: see :func:`~diffjax.training.programs.sampling_settings`.
      options: see :func:`~diffjax.training.programs.sampling_settings`.
      guidance_scale: classifier-free guidance weight; None: the config's.
      ema: the EMA weights (else the raw ones).
      seed: the samples' seed; None: ``config.sampling.seed`` (the training grids' seed).
      labels: int ``[N]`` classes of samples ``0 .. N - 1`` (class-conditional runs).
      stats: ``draw`` also returns the solve's statistics (adaptive samplers: ``'ode'``).
      classifier: a :class:`~diffjax.training.classifier_guidance.RunClassifier`
        (:func:`~diffjax.training.classifier_guidance.load_run_classifier`) guiding sample i
        towards ``labels[i]`` (default: class i mod K; the CLI's grids: one class per row).
      control: float ``[H_c, W_c, C_c]`` in [0, 1], the control image of every sample (a
        ControlNet run; default: those of the evaluation split, in order).

    Raises:
      ConfigError: options the sampler does not take or refuses, or a prediction type other
        than the run's, before anything compiles.
    """
    name, chosen = sampling_settings(
        run.config, sampler=sampler, num_steps=num_steps, options=options, process=run.process
    )
    if stats:
        chosen = dict(chosen, return_stats=True)
    sampling = run.config["sampling"]
    scale = sampling["guidance_scale"] if guidance_scale is None else guidance_scale
    seed = sampling["seed"] if seed is None else seed
    generate = make_run_generator(
        run.config, run.programs, batch_size, run.mesh, sampler=name, options=chosen,
        guidance_scale=scale,
    )  # fmt: skip
    frozen, _ = load_frozen(run.config, run.programs, run.mesh)
    draw = sample_drawer(
        generate, run.state.ema_params if ema else run.state.params, seed=seed,
        conditions=SampleConditions(
            run.config, run.model, None if control is None else {"control": control}
        ),
        frozen=frozen, labels=labels,
        classifier=classifier,
    )  # fmt: skip
    return RunSampler(draw, name, chosen, seed, scale)


def sample_run(
    run: TrainedRun, num_samples: int, *, batch_size: int = 256, **settings: Any
) -> np.ndarray:
    """``num_samples`` samples of a run as NumPy float32 ``[N, H, W, C]`` in about [-1, 1]:
    what ``python -m diffjax.sample`` draws with the same settings (up to float rounding).

    Args:
      run: from :func:`~diffjax.training.trained_run.load_trained_run`.
      num_samples: N.
      batch_size: samples per compiled call (at most N).
      **settings: the keyword arguments of :func:`run_sampler`.
    """
    from diffjax.sharding import gather_to_host

    batch = min(batch_size, num_samples)
    draw = run_sampler(run, batch, **settings).draw
    chunks = []
    for start in range(0, num_samples, batch):
        images = draw(start, batch)
        chunks.append(gather_to_host(images[0] if isinstance(images, tuple) else images))
    return np.concatenate(chunks)[:num_samples].astype(np.float32)
