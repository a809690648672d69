"""The types every objective is made of: its built form, its context and its registry entry."""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["FROZEN_GROUP", "LossFn", "Objective", "ObjectiveContext", "ObjectiveEntry"]

Params = Any
Batch = Mapping[str, Any]

LossFn = Callable[[Params, Any, Batch, jax.Array, bool], tuple[jnp.ndarray, dict[str, jnp.ndarray]]]
"""``loss_fn(params, frozen, batch, key, train) -> (loss, metrics)``; ``metrics`` float32
scalars."""

FROZEN_GROUP = "frozen"
"""The parameter-group label of parameters that are not trained."""


class Objective(NamedTuple):
    """An objective built for one run (what :meth:`ObjectiveEntry.build` returns).

    Attributes:
      loss_fn: ``loss_fn(params, frozen, batch, key, train) -> (loss, metrics)``; with
        ``init_extra``, ``loss_fn(params, frozen, batch, key, train, extra) -> (loss,
        (metrics, new_extra))``.
      param_labels: ``param_labels(params) -> pytree of group names`` (the structure of the
        params; :data:`FROZEN_GROUP` for parameters not trained), or None: one group.
      group_options: per group name, overrides of ``config.optim``'s keys (e.g.
        ``{'learning_rate': 1e-5}``) and ``every`` / ``offset`` (update the group only on steps
        with ``step % every == offset``).
        ``when``, a function of the step count returning a bool scalar (update the group
        only on those steps; it replaces ``every`` and ``offset``).
      init_extra: ``init_extra() -> pytree`` of the state outside the gradient, or None.
      init: ``init(key) -> params`` when the trained parameters are not those of the
        network ``module(x, t, cond)`` that ``config.model`` names alone (an autoencoder with
        its discriminator), or None.
      assign: ``assign(params, extra) -> params``, parameters set from the state outside the
        gradient after each update (an EMA codebook; label them :data:`FROZEN_GROUP` so the
        optimizer leaves them alone), applied to the EMA weights too; or None.
      network_params: ``network_params(params, frozen) -> params`` of the network
        ``config.model`` names, when the trained parameters are not those (a LoRA of a frozen
        base: the merged weights); every generator of the run samples with them. None: the
        trained parameters are the network's.
      init_from_frozen: ``init_from_frozen(key, frozen) -> params``, the trained parameters'
        first values when they start from the frozen pytrees (a ControlNet copies its base's
        encoder; shapes those of ``init``), or None: ``init`` (or the network's initialiser).
        ``config.training.init_from`` takes precedence.
    """

    loss_fn: Callable
    param_labels: Callable[[Params], Any] | None = None
    group_options: Mapping[str, Mapping[str, Any]] = {}
    init_extra: Callable[[], Any] | None = None
    init: Callable[[jax.Array], Params] | None = None
    assign: Callable[[Params, Any], Params] | None = None
    network_params: Callable[[Params, Any], Params] | None = None
    init_from_frozen: Callable[[jax.Array, Any], Params] | None = None


class ObjectiveContext(NamedTuple):
    """What an objective is built from.

    Attributes:
      values: the validated config (a plain dict).
      model: the trained network (a registered Flax module).
      process: the noise process.
      codec: the run's codec (:mod:`diffjax.codecs`).
      frozen_modules: the networks of the frozen pytrees, by name (a teacher's module).
      model_init: ``model_init(key) -> params`` of ``model`` at the run's input shape (so
        an objective can read the shapes with ``jax.eval_shape``), or None.
    """

    values: Mapping[str, Any]
    model: Any
    process: Any
    codec: Any
    frozen_modules: Mapping[str, Any]
    model_init: Callable[[jax.Array], Params] | None = None


class ObjectiveEntry(NamedTuple):
    """A registered objective.

    Attributes:
      defaults: ``defaults() -> dict`` of its own ``config.objective`` keys (besides
        ``name``) with their defaults; the schema of the section is derived from them.
      check: ``check(values)`` raising ``ConfigError`` for a config it cannot run with (its
        own section and what it needs of the others), before anything is built.
      build: ``build(context: ObjectiveContext) -> Objective``.
      frozen: ``frozen(values) -> {name: source}``: the frozen pytrees it reads, each source
        ``{'workdir': path}`` (that run's EMA weights and network) or ``{'weights': path,
        'sha256': hex}`` (a parameter file); ``{}`` for none.
      hooks: the names of the loop's periodic jobs it runs (:mod:`diffjax.training.hooks`).
      state_keys: keys of its section that fix the state (a resume must keep them).
    """

    defaults: Callable[[], Mapping[str, Any]]
    check: Callable[[Mapping[str, Any]], None]
    build: Callable[[ObjectiveContext], Objective]
    frozen: Callable[[Mapping[str, Any]], Mapping[str, Mapping[str, Any]]]
    hooks: tuple[str, ...]
    state_keys: tuple[str, ...] = ()
