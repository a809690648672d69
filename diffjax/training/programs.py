"""What a run builds from its config: the network, process, optimizer and jitted functions.

The train step, the sample-grid function and the held-out loss are built once per (settings,
mesh) and cached. The training loop and
:func:`~diffjax.training.trained_run.load_trained_run` share :func:`build_programs`, so a run
loaded for sampling has exactly the model and state layout it was trained with. The network
comes from the model registry (:mod:`diffjax.models.registry`), the process and time sampler
from :func:`~diffjax.training.config_validation.build_process` and ``build_time_sampler``, and
the loss from :func:`~diffjax.training.objectives.make_denoising_loss`, which the held-out
evaluation reuses.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from diffjax.models.registry import build_model
from diffjax.processes import is_discrete
from diffjax.sharding import batch_sharding, replicated_sharding
from diffjax.training.config_validation import build_process, build_time_sampler, sampler_options
from diffjax.training.objectives import LossFn, flax_apply_fn, make_denoising_loss
from diffjax.training.sampling import make_sample_fn
from diffjax.training.step import jit_train_step, make_train_step
from diffjax.training.train_state import TrainState, abstract_train_state, make_optimizer

__all__ = ["Programs", "build_programs", "program_spec"]


class Programs(NamedTuple):
    """Everything a run compiles, built once per (settings, mesh) and kept for later runs.

    Attributes:
      model: the network (a Flax module from the registry).
      process: the noise process (a schedule or a continuous process).
      optimizer: the optax optimizer (learning-rate schedule and clipping included).
      init_fn: ``init(key) -> params`` of the network.
      abstract_state: the train state's shapes, dtypes and shardings (no arrays).
      loss_fn: ``loss_fn(params, frozen, batch, key, train) -> (loss, metrics)``.
      train_step: the jitted ``train_step(state, batch, key, frozen) -> (state, metrics)``.
      sample_fn: the jitted ``sample(params, key, labels) -> images [N, H, W, C]`` of the
        sample grids, or None when ``config.sampling.num_samples`` is 0.
      eval_loss: the jitted ``eval_loss(params, batch, key) -> scalar`` held-out loss (the
        training loss without dropout), or None when ``config.eval.every_steps`` is 0.
      fd_sample_fn: the sampler of the Fréchet distance during training
        (``config.eval.fd_batch_size`` samples per call), or None when
        ``config.eval.fd_every_steps`` is 0.
    """

    model: nn.Module
    process: Any
    optimizer: optax.GradientTransformation
    init_fn: Callable[[jax.Array], Any]
    abstract_state: TrainState
    loss_fn: LossFn
    train_step: Callable
    sample_fn: Callable | None
    eval_loss: Callable | None
    fd_sample_fn: Callable | None


def program_spec(values: Mapping[str, Any], image_shape: tuple[int, ...]) -> str:
    """The settings that the compiled functions depend on, as a canonical JSON key.

    Args:
      values: a validated config as a plain dict.
      image_shape: ``(H, W, C)`` of the training images.

    Returns:
      The key for :func:`build_programs` (JSON with sorted keys: equal settings, equal key).
    """
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
        fd_batch_size=values["eval"]["fd_batch_size"] if values["eval"]["fd_every_steps"] else None,
        image_shape=list(image_shape),
    )
    return json.dumps(spec, sort_keys=True)


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
    values = json.loads(spec)
    model = build_model(values["model"])
    diffusion, sampling = values["diffusion"], values["sampling"]
    process = build_process(diffusion)
    optimizer = _make_optimizer(values["optim"], values["num_steps"])
    image_shape = tuple(values["image_shape"])
    init_fn = _init_fn(model, image_shape, is_discrete(process))
    # Only the key's type matters for the shapes; the run's own key initialises.
    abstract = abstract_train_state(init_fn, jax.random.key(0), optimizer, mesh)
    num_classes = values["model"]["num_classes"]
    loss_fn = make_denoising_loss(
        flax_apply_fn(model),
        process,
        prediction_type=diffusion["prediction_type"],
        weighting=diffusion["loss_weighting"],
        min_snr_gamma=diffusion["min_snr_gamma"],
        offset_noise=diffusion["offset_noise"],
        time_sampler=build_time_sampler(diffusion, process),
        num_classes=num_classes,
        label_dropout=values["label_dropout"],
    )
    train_step = jit_train_step(
        make_train_step(
            loss_fn,
            optimizer,
            ema_decay=values["optim"]["ema_decay"],
            skip_nonfinite=values["nan_policy"] == "skip",
        ),
        mesh,
    )

    def sampler_for(num_samples: int) -> Callable:
        return make_sample_fn(
            model,
            process,
            image_shape=image_shape,
            num_samples=num_samples,
            sampler=sampling["sampler"],
            options=sampler_options(values),
            guidance_scale=sampling["guidance_scale"],
            clip_x0=sampling["clip_x0"],
            mesh=mesh,
        )

    sample_fn = sampler_for(sampling["num_samples"]) if sampling["num_samples"] > 0 else None
    fd_sample_fn = sampler_for(values["fd_batch_size"]) if values["fd_batch_size"] else None
    eval_loss = _eval_loss_fn(loss_fn, mesh) if values["evaluate"] else None
    return Programs(
        model, process, optimizer, init_fn, abstract, loss_fn, train_step, sample_fn, eval_loss,
        fd_sample_fn,
    )  # fmt: skip


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


def _init_fn(
    model: nn.Module, image_shape: tuple[int, int, int], discrete: bool
) -> Callable[[jax.Array], Any]:
    def init(key: jax.Array) -> Any:
        x = jnp.zeros((1, *image_shape), jnp.float32)
        t = jnp.zeros((1,), jnp.int32 if discrete else jnp.float32)
        labels = None if model.num_classes is None else jnp.zeros((1,), jnp.int32)
        return model.init({"params": key}, x, t, labels, train=False)["params"]

    return init


def _eval_loss_fn(loss_fn: LossFn, mesh: Mesh) -> Callable[[Any, dict, jax.Array], jax.Array]:
    """Jitted held-out loss of given params on one batch: the training loss with train=False."""

    def loss(params: Any, batch: dict, key: jax.Array) -> jax.Array:
        return loss_fn(params, {}, batch, key, False)[0]

    return jax.jit(
        loss,
        in_shardings=(replicated_sharding(mesh), batch_sharding(mesh), None),
        out_shardings=replicated_sharding(mesh),
    )
