"""The classifier objective: a noise-conditional classifier for classifier guidance.

``config.objective.name = 'classifier'`` trains the network ``config.model`` names (a
:class:`~diffjax.models.classifier.NoisyClassifier`, ``'unet_classifier'``, or any registered
network returning ``[B, K]`` logits) to predict each image's label from its noised version
x_t = alpha_t x_0 + sigma_t eps under the run's process (Dhariwal & Nichol 2021, Sec. 4: the
cross-entropy -log p(y | x_t, t), averaged over t uniform on the process's range and the data).
The network sees what a denoiser of ``config.diffusion.prediction_type`` sees
(:func:`diffjax.predictions.network_inputs`), which is what :func:`diffjax.classifier_log_prob`
feeds it when guiding.

The batch is split into ``num_bins`` equal groups (the data order is random); group k draws its
times stratified in the k-th slice of [0, 1) (of the T timesteps for a schedule), so the times
are exactly uniform over the batch and every slice is measured at every step: the metrics
are the cross-entropy, the accuracy, and the accuracy per slice, ``accuracy_q1`` (least noise)
to ``accuracy_q{num_bins}`` (most). The loop's held-out job reports the cross-entropy on
``config.eval.split``. Checkpoints, resuming after a kill and the sharded step are the training
program's, as for every objective.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from diffjax.diffusion import q_sample
from diffjax.errors import ConfigError
from diffjax.models.conditioning import make_model_fn
from diffjax.predictions import network_inputs
from diffjax.processes import check_process, is_discrete, marginal
from diffjax.training.objectives.base import Objective, ObjectiveContext, ObjectiveEntry
from diffjax.training.objectives.denoising import no_frozen

__all__ = ["CLASSIFIER", "make_classifier_loss", "stratified_times"]


def stratified_times(key: jax.Array, batch_size: int, num_bins: int, process: Any) -> jnp.ndarray:
    """Times uniform over the batch, example i in the i-th of ``batch_size`` equal slices of
    [0, 1): u_i = (i + U_i) / B, U_i ~ U[0, 1) (so group k of the ``num_bins`` contiguous
    groups lies in the k-th ``num_bins``-th of the range).

    Returns:
      ``[B]`` process times: int32 floor(T u) for a schedule of T steps, float32 u otherwise.
    """
    if batch_size % num_bins:
        raise ValueError(f"batch_size={batch_size} must be divisible by num_bins={num_bins}.")
    u = (jnp.arange(batch_size) + jax.random.uniform(key, (batch_size,))) / batch_size
    if is_discrete(process):
        steps = process.num_timesteps
        return jnp.minimum(jnp.floor(u * steps), steps - 1).astype(jnp.int32)
    return u.astype(jnp.float32)


def make_classifier_loss(
    module: Any, process: Any, *, prediction_type: str = "eps", num_bins: int = 4
) -> Any:
    """The noisy classifier's cross-entropy as a train-step ``loss_fn``.

    Args:
      module: the registered classifier network (``module(x, t, cond, train=...) -> [B, K]``).
      process: the schedule or continuous process whose noise it learns to see through.
      prediction_type: whose network inputs it takes (:func:`diffjax.predictions.
        network_inputs`; only ``'edm'`` scales x_t).
      num_bins: noise-level slices of the accuracy metrics.

    Returns:
      ``loss_fn(params, frozen, batch, key, train) -> (loss, metrics)``; ``batch`` holds
      ``'image'`` ``[B, H, W, C]`` in [-1, 1] and ``cond['label']`` int ``[B]`` in [0, K), B
      divisible by ``num_bins``. Metrics: ``cross_entropy``, ``accuracy``,
      ``accuracy_q1`` .. ``accuracy_q{num_bins}``.
    """
    check_process(process)

    def loss_fn(params, frozen, batch, key, train):
        labels = (batch.get("cond") or {}).get("label")
        if labels is None or "image" not in batch:
            raise ValueError(
                "the classifier objective needs batches with 'image' [B, H, W, C] and "
                f"cond['label'] [B] (a labelled dataset); got keys {sorted(batch)}."
            )
        x0 = batch["image"]
        batch_size = x0.shape[0]
        time_key, noise_key, dropout_key = jax.random.split(key, 3)
        t = stratified_times(time_key, batch_size, num_bins, process)
        x_t = q_sample(process, x0, t, jax.random.normal(noise_key, x0.shape, x0.dtype))
        x_in, t_in = network_inputs(prediction_type, process, marginal(process, t, x0.ndim), x_t, t)
        logits_fn = make_model_fn(module, params, train=train, rng=dropout_key if train else None)
        logits = logits_fn(x_in, t_in).astype(jnp.float32)
        if logits.ndim != 2:
            raise ValueError(
                f"the classifier must return logits [B, K]; {type(module).__name__} returned "
                f"shape {logits.shape}."
            )
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        labels = labels.astype(jnp.int32)
        cross_entropy = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
        correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
        by_bin = correct.reshape(num_bins, batch_size // num_bins).mean(axis=1)
        metrics = dict(cross_entropy=jnp.mean(cross_entropy), accuracy=jnp.mean(correct))
        metrics.update({f"accuracy_q{k + 1}": by_bin[k] for k in range(num_bins)})
        return jnp.mean(cross_entropy), metrics

    return loss_fn


def _defaults() -> dict[str, Any]:
    return dict(
        # Noise-level slices of the accuracy metrics (the global batch must divide by it).
        num_bins=4,
    )


def _check(values: Mapping[str, Any]) -> None:
    section = values["objective"]
    if not section["num_bins"] >= 1:
        raise ConfigError(f"config.objective.num_bins must be >= 1, got {section['num_bins']}.")
    batch_size = values["data"]["batch_size"]
    if batch_size % section["num_bins"]:
        raise ConfigError(
            f"config.data.batch_size={batch_size} must be divisible by "
            f"config.objective.num_bins={section['num_bins']} (the batch's noise-level groups)."
        )
    if values["model"]["num_classes"] is None or values["model"]["num_classes"] < 2:
        raise ConfigError(
            f"config.objective.name='classifier' needs config.model.num_classes >= 2 (the "
            f"classes it predicts, those of the dataset), got {values['model']['num_classes']}."
        )
    if values["codec"]["name"] != "identity":
        raise ConfigError(
            f"the classifier objective trains on pixels: config.codec.name must be 'identity', "
            f"got {values['codec']['name']!r}."
        )
    if values["training"]["cond_dropout"] > 0:
        raise ConfigError(
            f"config.training.cond_dropout={values['training']['cond_dropout']} drops the "
            f"condition of a denoiser; the classifier's label is its target: set it to 0."
        )


def _build(context: ObjectiveContext) -> Objective:
    return Objective(
        make_classifier_loss(
            context.model,
            context.process,
            prediction_type=context.values["diffusion"]["prediction_type"],
            num_bins=context.values["objective"]["num_bins"],
        )
    )


CLASSIFIER = ObjectiveEntry(
    defaults=_defaults,
    check=_check,
    build=_build,
    frozen=no_frozen,
    hooks=("held_out_loss",),
    state_keys=(),
)
"""The ``'classifier'`` objective."""
