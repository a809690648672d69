"""Classifier guidance of a trained run by a trained noisy classifier: the run-level wiring of
:func:`diffjax.gradient_guidance` that ``python -m diffjax.sample --classifier``, ``python -m
diffjax.evaluate --classifier`` and :func:`~diffjax.training.run_sampling.run_sampler` use.

A classifier run (``config.objective.name = 'classifier'``) is loaded read-only from its
workdir (its EMA weights); it must have been trained on the same noise process as the run it
guides, whose network it then sees as the denoiser does. The target class of sample i is the
one it is drawn for (``--class``, or every class in turn), fixed by its index like its key.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np
from jax.sharding import Mesh

from diffjax.errors import ConfigError

__all__ = ["RunClassifier", "load_run_classifier"]

_PROCESS_KEYS = ("process", "process_options", "schedule", "num_timesteps", "zero_terminal_snr")
"""The keys of ``config.diffusion`` that fix the noise process."""


class RunClassifier(NamedTuple):
    """A trained noisy classifier, ready to guide a run's samples.

    Attributes:
      workdir: the classifier run's folder.
      step: the step of its checkpoint.
      module: its network.
      params: its EMA parameters.
      process: the noise process (the guided run's).
      prediction_type: whose network inputs it takes (its config's).
      num_classes: K, the classes it predicts.
      scale: the guidance scale s.
      t_range: ``(t_low, t_high)`` process times to guide at, or None (all).
    """

    workdir: str
    step: int
    module: Any
    params: Any
    process: Any
    prediction_type: str
    num_classes: int
    scale: float
    t_range: tuple[float, float] | None = None

    def guide(self, labels: np.ndarray) -> Any:
        """The guide towards class ``labels[i]`` for sample i (int ``[n]``)."""
        import jax.numpy as jnp

        from diffjax.models.conditioning import make_model_fn
        from diffjax.samplers.guidance import classifier_log_prob, gradient_guidance

        log_prob = classifier_log_prob(
            make_model_fn(self.module, self.params), self.process,
            jnp.asarray(labels, jnp.int32), prediction_type=self.prediction_type,
        )  # fmt: skip
        return gradient_guidance(log_prob, self.scale, self.t_range)

    def record(self) -> dict[str, Any]:
        """What an evaluation records of it."""
        return dict(
            workdir=self.workdir, step=self.step, scale=self.scale,
            t_range=None if self.t_range is None else list(self.t_range),
        )  # fmt: skip


def load_run_classifier(
    workdir: str | os.PathLike,
    guided_config: dict[str, Any],
    scale: float,
    *,
    t_range: tuple[float, float] | None = None,
    mesh: Mesh | None = None,
) -> RunClassifier:
    """Loads a classifier run to guide the run whose config is ``guided_config``.

    Args:
      workdir: the classifier run's folder (``config.objective.name = 'classifier'``).
      guided_config: the guided run's validated config.
      scale: the guidance scale s (finite).
      t_range: process times to guide at, or None.
      mesh: where to place its parameters.

    Raises:
      ConfigError: not a classifier run, another noise process than the guided run's, or a
        non-finite scale; WorkdirError / NoUsableCheckpointError: no run or checkpoint.
    """
    import math

    from diffjax.training.config import upgrade_config
    from diffjax.training.trained_run import load_trained_run
    from diffjax.training.workdir import RUN_RECORD_FILE, WorkdirError, load_run_record

    workdir = os.path.abspath(os.fspath(workdir))
    record = load_run_record(workdir)
    if record is None:
        raise WorkdirError(
            f"--classifier {workdir} holds no diffjax run (no {RUN_RECORD_FILE}); pass the "
            f"workdir of a run trained with config.objective.name='classifier'."
        )
    config = upgrade_config(record["config"])
    if config["objective"]["name"] != "classifier":
        raise ConfigError(
            f"--classifier {workdir} is a {config['objective']['name']!r} run; classifier "
            f"guidance needs a run trained with config.objective.name='classifier'."
        )
    mismatched = [
        key for key in _PROCESS_KEYS
        if config["diffusion"].get(key) != guided_config["diffusion"].get(key)
    ]  # fmt: skip
    if mismatched:
        differences = ", ".join(
            f"{key}: {config['diffusion'].get(key)!r} vs {guided_config['diffusion'].get(key)!r}"
            for key in mismatched
        )
        raise ConfigError(
            f"the classifier in {workdir} was trained on another noise process than the run it "
            f"would guide (config.diffusion {differences}); train it with the run's process."
        )
    if guided_config["codec"]["name"] != "identity":
        raise ConfigError(
            f"classifier guidance reads the guided run's samples as pixels; that run samples in "
            f"the latent space of codec {guided_config['codec']['name']!r}, which a pixel "
            f"classifier cannot read."
        )
    if not math.isfinite(scale):
        raise ConfigError(f"the classifier guidance scale must be finite, got {scale}.")
    run = load_trained_run(workdir, mesh)
    return RunClassifier(
        workdir=workdir, step=run.step, module=run.model, params=run.state.ema_params,
        process=run.process, prediction_type=run.config["diffusion"]["prediction_type"],
        num_classes=run.config["model"]["num_classes"], scale=float(scale), t_range=t_range,
    )  # fmt: skip
