"""The train state pytree, the optimizer, the EMA of the weights, and sharded state creation.

:class:`TrainState` is plain data (step, params, EMA params, optimizer state, the state an
objective keeps outside the gradient): no functions, so it checkpoints as-is and passes through
``jax.jit`` as one argument. The optimizer is an optax ``GradientTransformation`` kept beside
it and handed to the train step.

Parameter groups: a *trainable mask* (a pytree of Python bools with the structure of the
params) says which parameters are trained. The optimizer only ever sees the trainable ones
(:func:`trainable_part`: the frozen leaves are None there), so frozen parameters have no
optimizer state at all, and :func:`group_optimizer` gives each group its own settings with
``optax.multi_transform``.

Precision: the parameters are stored in the model's ``param_dtype`` (float32, or bfloat16 to
halve their memory), but the optimizer state and the EMA are always float32: the optimizer
updates a float32 copy of the parameters (:func:`float32_copy`) and the EMA is a float32 master
copy, so Adam's second moment and its bias correction (b2 = 0.999 is 1.0 in bfloat16) keep
their precision and the state's dtypes never change from one step to the next.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from diffjax.sharding import replicated_sharding

__all__ = [
    "TrainState",
    "abstract_train_state",
    "create_train_state",
    "ema_decay_at",
    "float32_copy",
    "group_optimizer",
    "merge_trainable",
    "replicated_state",
    "learning_rate_from_opt_state",
    "learning_rate_schedule",
    "make_optimizer",
    "trainable_part",
    "update_ema",
]

Params = Any
InitFn = Callable[[jax.Array], Params]
"""``init_fn(key) -> params``, e.g. ``lambda k: model.init(k, x, t)['params']``."""


@flax.struct.dataclass
class TrainState:
    """Everything a training step updates; a pytree.

    Attributes:
      step: int32 scalar, the number of optimizer updates applied so far.
      params: the model parameters (any pytree of arrays, in the model's ``param_dtype``).
      ema_params: exponential moving average of ``params``, same structure, float32 (used
        for sampling).
      opt_state: the optax optimizer state for the float32 copy of the trainable ``params``.
      extra: the state an objective keeps outside the gradient (``{}`` for none).
    """

    step: jnp.ndarray
    params: Params
    ema_params: Params
    opt_state: optax.OptState
    extra: Any = flax.struct.field(default_factory=dict)


def learning_rate_schedule(
    learning_rate: float,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    decay: str = "cosine",
) -> optax.Schedule:
    """Linear warm-up from 0 to ``learning_rate``, then constant or a decay to 0.

    The warm-up follows Ho et al. 2020 (5000 linear steps for CIFAR-10); the optional decay
    over the remaining ``total_steps - warmup_steps`` is SGDR's cosine (Loshchilov & Hutter
    2017) or linear (progressive distillation anneals each round linearly to 0, Salimans & Ho
    2022, Algorithm 2 and Appendix E).

    Args:
      learning_rate: the peak learning rate, > 0.
      warmup_steps: steps of linear warm-up, >= 0.
      total_steps: if set, the decay ends at this step (must exceed ``warmup_steps``).
      decay: ``'cosine'`` or ``'linear'`` (used with ``total_steps``).

    Returns:
      An optax schedule ``step -> learning rate``.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}.")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
    if total_steps is not None:
        if total_steps <= warmup_steps:
            raise ValueError(
                f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps}) for "
                "the cosine decay; pass total_steps=None for a constant learning rate."
            )
        if decay not in ("cosine", "linear"):
            raise ValueError(f"decay must be 'cosine' or 'linear', got {decay!r}.")
        if decay == "linear":
            return optax.join_schedules(
                [
                    optax.linear_schedule(0.0, learning_rate, warmup_steps),
                    optax.linear_schedule(learning_rate, 0.0, total_steps - warmup_steps),
                ],
                [warmup_steps],
            )
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=learning_rate,
            warmup_steps=warmup_steps,
            decay_steps=total_steps,
            end_value=0.0,
        )
    if warmup_steps == 0:
        return optax.constant_schedule(learning_rate)
    return optax.linear_schedule(0.0, learning_rate, transition_steps=warmup_steps)


def _decay_kernels_only(params: Params) -> Params:
    """Weight-decay mask: matrices and convolution kernels only, not biases or norm scales."""
    return jax.tree.map(lambda leaf: jnp.ndim(leaf) > 1, params)


def make_optimizer(
    learning_rate: float,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    grad_clip_norm: float | None = 1.0,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    decay: str = "cosine",
) -> optax.GradientTransformation:
    """Gradient clipping followed by Adam(W) on the :func:`learning_rate_schedule`.

    clip_by_global_norm (Pascanu et al. 2013; DDPM clips at 1) then AdamW (Kingma & Ba 2015;
    Loshchilov & Hutter 2019, decoupled weight decay on kernels only; ``weight_decay=0`` is
    Adam). Adam's hyperparameters are wrapped in ``optax.inject_hyperparams`` so the learning
    rate of each update is kept in the state: read it with :func:`learning_rate_from_opt_state`.

    Args:
      learning_rate: peak learning rate.
      warmup_steps: linear warm-up steps.
      total_steps: if set, the learning rate decays to 0 at this step.
      decay: the shape of that decay, ``'cosine'`` or ``'linear'``.
      grad_clip_norm: clip the global gradient norm to this value; ``None`` disables clipping.
      weight_decay: decoupled weight decay, >= 0.
      b1: Adam's first-moment decay.
      b2: Adam's second-moment decay.
      eps: Adam's denominator epsilon.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> optimizer = make_optimizer(2e-4, warmup_steps=5000, grad_clip_norm=1.0)
    """
    if grad_clip_norm is not None and not grad_clip_norm > 0:
        raise ValueError(f"grad_clip_norm must be > 0 or None, got {grad_clip_norm}.")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"b1 and b2 must lie in [0, 1), got b1={b1}, b2={b2}.")
    schedule = learning_rate_schedule(learning_rate, warmup_steps, total_steps, decay)
    # float32 hyperparameters whatever the parameters' dtype: b2 = 0.999 rounds to 1.0 in
    # bfloat16, and Adam's bias correction 1 - b2^t would then divide by zero.
    adam = optax.inject_hyperparams(
        optax.adamw, static_args=("mask",), hyperparam_dtype=jnp.float32
    )(
        learning_rate=schedule,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        mask=_decay_kernels_only,
    )
    if grad_clip_norm is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(grad_clip_norm), adam)


def learning_rate_from_opt_state(opt_state: optax.OptState) -> jnp.ndarray | None:
    """The learning rate of the latest update, if the optimizer records it.

    Args:
      opt_state: state of an optimizer built with ``optax.inject_hyperparams`` (e.g.
        :func:`make_optimizer`).

    Returns:
      float32 scalar, or ``None`` when the state holds no ``'learning_rate'`` hyperparameter.
    """
    # inject_hyperparams keeps the value under `hyperparams` and the schedule's own state under
    # `hyperparams_states`, both keyed 'learning_rate': only the former is an array. With
    # parameter groups there is one per group; the first group's is reported.
    found = optax.tree_utils.tree_get_all_with_path(
        opt_state, "learning_rate", filtering=lambda _, value: hasattr(value, "dtype")
    )
    return found[0][1] if found else None


def ema_decay_at(step: jnp.ndarray, decay: float) -> jnp.ndarray:
    """EMA decay with warm-up: min(decay, (1 + step) / (10 + step)).

    The warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=...)``: early averages
    follow the fast-changing weights instead of staying near the random initialisation.

    Args:
      step: int scalar, updates applied before this one.
      decay: the asymptotic decay (e.g. 0.9999 in Ho et al. 2020), in [0, 1].

    Returns:
      float32 scalar.
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def float32_copy(params: Params) -> Params:
    """The floating-point leaves of ``params`` as float32 (the others unchanged): the copy the
    optimizer updates and the EMA's dtype. A no-op for float32 parameters."""
    return jax.tree.map(
        lambda leaf: leaf.astype(jnp.float32) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf,
        params,
    )


def update_ema(ema_params: Params, params: Params, step: jnp.ndarray, decay: float) -> Params:
    """One EMA update: ema <- decay_t * ema + (1 - decay_t) * params, decay_t = ema_decay_at(step).

    Args:
      ema_params: the current average (float32 in a :class:`TrainState`).
      params: the freshly updated parameters (same structure, any float dtype; cast to the
        average's dtype first).
      step: int scalar, updates applied before this one.
      decay: the asymptotic decay.

    Returns:
      The new average, same structure and dtypes as ``ema_params``.
    """
    decay_t = ema_decay_at(step, decay)
    params = jax.tree.map(lambda new, old: new.astype(old.dtype), params, ema_params)
    return optax.incremental_update(params, ema_params, step_size=1.0 - decay_t)


def trainable_part(tree: Any, mask: Any) -> Any:
    """``tree`` with the leaves where ``mask`` is False replaced by None (an empty subtree).

    Args:
      tree: params (or a pytree of their structure).
      mask: a pytree of Python bools of that structure, or None (everything trainable).
    """
    if mask is None:
        return tree
    return jax.tree.map(lambda leaf, train: leaf if train else None, tree, mask)


def merge_trainable(tree: Any, trainable: Any) -> Any:
    """``tree`` with its trainable leaves taken from ``trainable`` (None there: keep ``tree``'s).

    Inverse of :func:`trainable_part`: ``merge_trainable(tree, trainable_part(tree, m))`` is
    ``tree``.
    """
    return jax.tree.map(
        lambda new, old: old if new is None else new, trainable, tree,
        is_leaf=lambda leaf: leaf is None,
    )  # fmt: skip


def group_optimizer(
    labels: Any, optimizers: Mapping[str, optax.GradientTransformation]
) -> optax.GradientTransformation:
    """One optimizer over the trainable parameters, each group with its own transformation
    (``optax.multi_transform``).

    Args:
      labels: the group name of each trainable parameter (None where frozen; see
        :func:`trainable_part`).
      optimizers: the transformation of each group named in ``labels``.

    Returns:
      The optimizer; a single group is its own transformation unchanged.
    """
    names = sorted({name for name in jax.tree.leaves(labels)})
    missing = [name for name in names if name not in optimizers]
    if missing:
        raise ValueError(f"parameter groups {missing} have no optimizer; got {sorted(optimizers)}.")
    if len(names) == 1:
        return optimizers[names[0]]
    return optax.multi_transform({name: optimizers[name] for name in names}, labels)


def abstract_train_state(
    init_fn: InitFn,
    key: jax.Array,
    optimizer: optax.GradientTransformation,
    mesh: Mesh | None = None,
    *,
    shardings: Callable[[TrainState], TrainState] | None = None,
    trainable: Any = None,
    init_extra: Callable[[], Any] | None = None,
) -> TrainState:
    """The state's shapes and dtypes without allocating it (``jax.eval_shape``).

    Args:
      init_fn: ``init_fn(key) -> params``.
      key: a PRNG key of the kind ``init_fn`` takes (only its shape and dtype are used).
      optimizer: the optax transformation (of the trainable parameters).
      mesh: if given (and no ``shardings``), each leaf carries its sharding, replicated over
        ``mesh``: the form checkpoint restoring needs.
      shardings: ``shardings(abstract_state) -> TrainState of NamedSharding`` (a mesh's
        sharding rules, :func:`diffjax.sharding.state_shardings`), instead of replicating.
      trainable: the trainable mask (see the module docstring), or None.
      init_extra: ``init_extra() -> pytree`` of the objective's state outside the gradient.

    Returns:
      A :class:`TrainState` of ``jax.ShapeDtypeStruct`` leaves.
    """
    abstract = jax.eval_shape(_init_state_fn(init_fn, optimizer, trainable, init_extra), key)
    if shardings is None and mesh is None:
        return abstract
    shardings = shardings or (lambda tree: replicated_state(tree, mesh))
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract,
        shardings(abstract),
    )


def _init_state_fn(
    init_fn: InitFn,
    optimizer: optax.GradientTransformation,
    trainable: Any = None,
    init_extra: Callable[[], Any] | None = None,
) -> Callable[[jax.Array], TrainState]:
    def init_state(key: jax.Array) -> TrainState:
        params = init_fn(key)
        master = float32_copy(params)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            ema_params=jax.tree.map(jnp.copy, master),
            opt_state=optimizer.init(trainable_part(master, trainable)),
            extra={} if init_extra is None else init_extra(),
        )

    return init_state


def create_train_state(
    init_fn: InitFn,
    key: jax.Array,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    shardings: Callable[[TrainState], TrainState] | None = None,
    trainable: Any = None,
    init_extra: Callable[[], Any] | None = None,
    params: Params = None,
) -> TrainState:
    """Initialises the state directly into its sharding on ``mesh``.

    The state's shape comes from ``jax.eval_shape``, its shardings from that shape, and the
    initialiser runs under ``jax.jit(..., out_shardings=...)``, so each device builds its own
    copy: nothing is materialised on one device and then broadcast.

    Args:
      init_fn: ``init_fn(key) -> params``, traceable.
      key: PRNG key for the initialiser (the same on every process).
      optimizer: the optax transformation whose state is created.
      mesh: the device mesh.
      shardings: the state's sharding rules (default: replicated over ``mesh``).
      trainable: the trainable mask, or None.
      init_extra: the objective's state outside the gradient, or None.
      params: start from these parameters (sharded like the state's, e.g. another run's EMA
        weights) instead of ``init_fn``; they are an argument of the compiled initialiser,
        never a constant in it.

    Returns:
      A :class:`TrainState` at step 0 with ``ema_params`` equal to ``params``.
    """
    shardings = shardings or (lambda abstract: replicated_state(abstract, mesh))
    init_state = _init_state_fn(init_fn, optimizer, trainable, init_extra)
    out_shardings = shardings(jax.eval_shape(init_state, key))
    if params is None:
        return jax.jit(
            init_state, in_shardings=replicated_sharding(mesh), out_shardings=out_shardings
        )(key)

    def from_params(given: Params) -> TrainState:
        return _init_state_fn(lambda _: given, optimizer, trainable, init_extra)(key)

    return jax.jit(from_params, in_shardings=(out_shardings.params,), out_shardings=out_shardings)(
        params
    )


def replicated_state(abstract_state: TrainState, mesh: Mesh) -> TrainState:
    """Every leaf of the state replicated over ``mesh`` (pure data parallelism)."""
    replicated = replicated_sharding(mesh)
    return jax.tree.map(lambda _: replicated, abstract_state)
