"""What every sampler shares: argument checks, the start state, per-step noise, the model call.

Checks run in Python on static values before anything is traced, so bad input fails at once
with a message naming the value and what is allowed. The traced helpers are the pieces of the
``lax.scan`` bodies that do not depend on the sampler.

Compilation: each sampler's loop is one module-level ``jax.jit``. The model function enters it
as a pytree (:func:`as_model_pytree`): a plain callable is a static leaf of the tree (one
compile per callable object), while a :class:`jax.tree_util.Partial` passes its bound arrays
(e.g. the network's params) as traced arguments, so new params do not recompile.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
import numpy as np

from diffjax.diffusion import check_prediction_type
from diffjax.schedules import DiffusionSchedule

__all__ = [
    "Trajectory",
    "as_model_pytree",
    "call_model",
    "check_common_args",
    "check_defined_x0",
    "check_flag",
    "check_key",
    "constrain",
    "initial_state",
    "step_noise",
]


class Trajectory(NamedTuple):
    """The path of a sampler, one entry per model call (returned with ``return_trajectory``).

    Attributes:
      timesteps: int32 ``[S]``, the model's timestep at each call, in visiting order.
      x_t: ``[S, B, ...]``, the state fed to the model at each call (``x_t[0]`` is x_T).
      pred_x0: ``[S, B, ...]``, the x0-prediction made at each call (the last one, or a
        solver's combination of the last ones, is the sample).
    """

    timesteps: jnp.ndarray
    x_t: jnp.ndarray
    pred_x0: jnp.ndarray


def as_model_pytree(model_fn: Callable) -> jax.tree_util.Partial:
    """Wraps ``model_fn`` so it can be an argument of ``jax.jit`` (see the module docstring)."""
    if isinstance(model_fn, jax.tree_util.Partial):
        return model_fn
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable as model_fn(x_t, t), got {model_fn!r}.")
    return jax.tree_util.Partial(model_fn)


def check_flag(value: object, name: str) -> bool:
    """Raises ``TypeError`` unless ``value`` is a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def check_key(key: object) -> None:
    """Raises ``TypeError`` unless ``key`` is one JAX PRNG key (typed, or legacy uint32[2])."""
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape == ():
            return
    elif isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape == (2,):
        return
    raise TypeError(
        "key must be a single JAX PRNG key (jax.random.key(seed), or a legacy "
        f"jax.random.PRNGKey(seed) uint32[2]), got {type(key).__name__} "
        f"{getattr(key, 'dtype', '')}{list(getattr(key, 'shape', ()))}."
    )


def _check_shape(shape) -> tuple[int, ...]:
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if (
        not shape
        or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape)
        or min(shape) < 1
    ):
        raise ValueError(
            f"shape must be a non-empty tuple of positive ints [B, ...] (e.g. (16, 32, 32, 3)), "
            f"got {shape!r}."
        )
    return tuple(int(d) for d in shape)


def _check_x_T(x_T, shape: tuple[int, ...]) -> None:
    if x_T is None:
        return
    if not hasattr(x_T, "shape") or not hasattr(x_T, "dtype"):
        raise TypeError(f"x_T must be an array of shape {shape} or None, got {type(x_T).__name__}.")
    if tuple(x_T.shape) != shape:
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={shape} was requested.")
    if not jnp.issubdtype(x_T.dtype, jnp.floating):
        raise TypeError(f"x_T must be a floating-point array, got dtype {x_T.dtype}.")


def _check_sharding(out_sharding, shape: tuple[int, ...]) -> None:
    if out_sharding is None:
        return
    if not isinstance(out_sharding, jax.sharding.Sharding):
        raise TypeError(
            "out_sharding must be a jax.sharding.Sharding (e.g. NamedSharding(mesh, P('data'))) "
            f"or None, got {out_sharding!r}."
        )
    try:
        out_sharding.shard_shape(shape)
    except ValueError as error:
        raise ValueError(
            f"out_sharding {out_sharding} cannot shard samples of shape {shape}: {error}"
        ) from error


def check_common_args(
    model_fn: Callable,
    schedule: DiffusionSchedule,
    shape: tuple[int, ...],
    prediction_type: str,
    x_T: jnp.ndarray | None,
    dtype: DTypeLike,
    out_sharding: jax.sharding.Sharding | None,
) -> tuple[jax.tree_util.Partial, tuple[int, ...], jnp.dtype]:
    """Checks the arguments every sampler takes; returns (model pytree, shape, dtype).

    Raises:
      TypeError / ValueError: naming the bad value and what is expected.
    """
    model = as_model_pytree(model_fn)
    if not isinstance(schedule, DiffusionSchedule):
        raise TypeError(
            f"schedule must be a diffjax DiffusionSchedule (get_schedule / make_schedule), "
            f"got {type(schedule).__name__}."
        )
    shape = _check_shape(shape)
    check_prediction_type(prediction_type)
    _check_x_T(x_T, shape)
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}.")
    _check_sharding(out_sharding, shape)
    return model, shape, dtype


def check_defined_x0(
    schedule: DiffusionSchedule, first_timestep: int, prediction_type: str
) -> None:
    """With alpha_t = 0 (zero terminal SNR) an eps-prediction carries no information on x0.

    x0 = (x_t - sigma_t eps) / alpha_t is 0 / 0 there; only 'v' and 'x0' models can start at
    such a t (Lin et al. 2024, Sec. 3.2). Checked only for a concrete schedule.
    """
    if prediction_type != "eps" or isinstance(schedule.alphas_cumprod, jax.core.Tracer):
        return
    # NumPy indexing: under an outer jit a jnp index of even a constant array is a tracer.
    if np.asarray(schedule.alphas_cumprod)[first_timestep] == 0.0:
        raise ValueError(
            f"The schedule has zero SNR at t={first_timestep} (alphas_cumprod = 0), where an "
            "'eps' prediction cannot recover x0; use prediction_type 'v' or 'x0' with "
            "zero-terminal-SNR schedules."
        )


def constrain(x: jnp.ndarray, out_sharding: jax.sharding.Sharding | None) -> jnp.ndarray:
    """Applies the requested sharding to a ``[B, ...]`` array inside the loop (no-op for None)."""
    if out_sharding is None:
        return x
    return jax.lax.with_sharding_constraint(x, out_sharding)


def initial_state(
    key: jax.Array,
    x_T: jnp.ndarray | None,
    shape: tuple[int, ...],
    dtype: DTypeLike,
    out_sharding: jax.sharding.Sharding | None,
) -> tuple[jnp.ndarray, jax.Array]:
    """x_T (given, or drawn from N(0, I) with the first half of ``key``) and the noise key.

    JAX's partitionable threefry makes the draw independent of how it is sharded, so the same
    key gives the same x_T on one device or many.
    """
    init_key, noise_key = jax.random.split(key)
    if x_T is None:
        x_T = jax.random.normal(init_key, shape, dtype)
    return constrain(x_T.astype(dtype), out_sharding), noise_key


def step_noise(
    noise_key: jax.Array,
    t: jnp.ndarray,
    shape: tuple[int, ...],
    dtype: DTypeLike,
    out_sharding: jax.sharding.Sharding | None,
) -> jnp.ndarray:
    """Fresh N(0, I) noise for the step at model timestep ``t``: ``fold_in(noise_key, t)``.

    Keying by the timestep (not the loop index) means every sampler that visits t draws the
    same noise there, e.g. DDIM with eta = 1 and DDPM over the same timesteps.
    """
    return constrain(
        jax.random.normal(jax.random.fold_in(noise_key, t), shape, dtype), out_sharding
    )


def call_model(
    model: Callable, x_t: jnp.ndarray, t: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Calls ``model(x_t [B, ...], t int32 [B])`` for one scalar timestep ``t``.

    Returns:
      ``(prediction [B, ...] in the dtype of x_t, t broadcast to int32 [B])``; a prediction of
      the wrong shape raises ``ValueError`` while tracing, before anything is compiled.
    """
    t_batch = jnp.full((x_t.shape[0],), t, dtype=jnp.int32)
    prediction = model(x_t, t_batch)
    if getattr(prediction, "shape", None) != x_t.shape:
        raise ValueError(
            f"model_fn returned shape {getattr(prediction, 'shape', type(prediction))}; "
            f"expected the shape of x_t, {x_t.shape}."
        )
    return prediction.astype(x_t.dtype), t_batch
