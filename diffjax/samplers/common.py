"""What every sampler shares: argument checks, start states, per-step noise, the model call.

Checks run in Python on static values before anything is traced, so bad input fails at once
with a message naming the value and what is allowed. The traced helpers are the pieces of the
``lax.scan`` bodies that do not depend on the sampler.

Compilation: the scan runner (:mod:`diffjax.samplers.runner`) is one module-level ``jax.jit``.
The model function enters it as a pytree (:func:`as_model_pytree`): a plain callable is a static
leaf of the tree (one compile per callable object), while a :class:`jax.tree_util.Partial`
passes its bound arrays (e.g. the network's params) as traced arguments, so new params do not
recompile.

Keys: ``key`` is one PRNG key for the whole batch, or a ``[B]`` array of typed keys, one per
sample (``jax.vmap(lambda i: jax.random.fold_in(seed_key, i))(indices)``). With per-sample keys,
sample i depends on its own key only, not on the batch it is drawn in or the device count.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from diffjax import predictions
from diffjax.diffusion import split_learned_variance
from diffjax.processes import Marginal, check_process

__all__ = [
    "Trajectory",
    "as_model_pytree",
    "check_common_args",
    "check_flag",
    "check_key",
    "check_real",
    "constrain",
    "denoise",
    "initial_state",
    "sample_keys",
    "step_noise",
    "takes_denoiser",
]


class Trajectory(NamedTuple):
    """The path of a sampler, one entry per step (returned with ``return_trajectory``).

    Attributes:
      timesteps: ``[S]``, the process time at the start of each step (int32 for a schedule,
        float32 for a continuous process), in visiting order.
      x_t: ``[S, B, ...]``, the state at the start of each step (``x_t[0]`` is x_T).
      pred_x0: ``[S, B, ...]``, the x0-prediction made there (the last one, or a solver's
        combination of the last ones, is the sample for first-order samplers).
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


def takes_denoiser(guide: Any) -> bool:
    """Whether a sampler's ``guide`` is called with ``denoiser=`` too: its function has the
    attribute ``takes_denoiser = True`` (:mod:`diffjax.samplers.guidance`)."""
    return bool(getattr(getattr(guide, "func", guide), "takes_denoiser", False))


def check_flag(value: object, name: str) -> bool:
    """Raises ``TypeError`` unless ``value`` is a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def check_real(value: object, name: str, low: float, high: float, hint: str = "") -> float:
    """A Python float in [low, high], or ``TypeError`` / ``ValueError`` naming ``value``."""
    try:
        number = float(value)
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError) as error:
        raise TypeError(
            f"{name} must be a real number in [{low:g}, {high:g}], got {value!r}."
        ) from error
    if isinstance(value, bool) or not low <= number <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}]{hint}, got {value}.")
    return number


def check_key(key: object, batch_size: int | None = None) -> None:
    """Raises ``TypeError`` unless ``key`` is one PRNG key (typed, or legacy uint32[2]) or a
    ``[B]`` array of typed keys with B = ``batch_size``."""
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape == () or (batch_size is not None and key.shape == (batch_size,)):
            return
    elif isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape == (2,):
        return
    raise TypeError(
        "key must be a single JAX PRNG key (jax.random.key(seed), or a legacy "
        "jax.random.PRNGKey(seed) uint32[2]) or one typed key per sample, shape [B] = "
        f"[{batch_size}]; got {type(key).__name__} "
        f"{getattr(key, 'dtype', '')}{list(getattr(key, 'shape', ()))}."
    )


def sample_keys(seed: int, first_index: int, count: int) -> jax.Array:
    """Per-sample keys ``fold_in(key(seed), i)`` for i = first_index .. first_index + count - 1.

    With these as a sampler's ``key``, sample i is the same whatever batch it is drawn in, on
    any number of devices, and after a restart (DESIGN rule 4).

    Returns:
      ``[count]`` typed PRNG keys.
    """
    indices = jnp.arange(first_index, first_index + count, dtype=jnp.uint32)
    return jax.vmap(lambda index: jax.random.fold_in(jax.random.key(seed), index))(indices)


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
    process: Any,
    shape: tuple[int, ...],
    key: Any,
    x_T: jnp.ndarray | None,
    dtype: DTypeLike,
    out_sharding: jax.sharding.Sharding | None,
) -> tuple[jax.tree_util.Partial, tuple[int, ...], jnp.dtype]:
    """Checks the arguments every sampler takes; returns (model pytree, shape, dtype).

    Raises:
      TypeError / ValueError: naming the bad value and what is expected.
    """
    model = as_model_pytree(model_fn)
    check_process(process)
    shape = _check_shape(shape)
    if key is not None:
        check_key(key, shape[0])
    _check_x_T(x_T, shape)
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}.")
    _check_sharding(out_sharding, shape)
    return model, shape, dtype


def constrain(x: jnp.ndarray, out_sharding: jax.sharding.Sharding | None) -> jnp.ndarray:
    """Applies the requested sharding to a ``[B, ...]`` array inside the loop (no-op for None)."""
    if out_sharding is None:
        return x
    return jax.lax.with_sharding_constraint(x, out_sharding)


def _per_sample(key: jax.Array) -> bool:
    return jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 1


def initial_state(
    key: jax.Array,
    x_T: jnp.ndarray | None,
    shape: tuple[int, ...],
    dtype: DTypeLike,
    out_sharding: jax.sharding.Sharding | None,
    scale: jnp.ndarray | float = 1.0,
) -> tuple[jnp.ndarray, jax.Array]:
    """x_T (given, or ``scale`` times N(0, I) drawn with the first half of ``key``) and the
    noise key (per sample for per-sample keys).

    JAX's partitionable threefry makes the draw independent of how it is sharded, so the same
    key gives the same x_T on one device or many.
    """
    if _per_sample(key):
        halves = jax.vmap(jax.random.split)(key)
        init_key, noise_key = halves[:, 0], halves[:, 1]
        if x_T is None:
            x_T = scale * jax.vmap(lambda k: jax.random.normal(k, shape[1:], dtype))(init_key)
    else:
        init_key, noise_key = jax.random.split(key)
        if x_T is None:
            x_T = scale * jax.random.normal(init_key, shape, dtype)
    return constrain(x_T.astype(dtype), out_sharding), noise_key


def step_noise(
    noise_key: jax.Array,
    index: jnp.ndarray,
    shape: tuple[int, ...],
    dtype: DTypeLike,
    out_sharding: jax.sharding.Sharding | None,
) -> jnp.ndarray:
    """Fresh N(0, I) noise for one step: ``fold_in(noise_key, index)``.

    ``index`` is the model timestep for a discrete schedule, so every sampler that visits t
    draws the same noise there (DDIM with eta = 1 and DDPM over the same timesteps); for a
    continuous process it is the step's number.
    """
    if _per_sample(noise_key):
        noise = jax.vmap(
            lambda k: jax.random.normal(jax.random.fold_in(k, index), shape[1:], dtype)
        )(noise_key)
    else:
        noise = jax.random.normal(jax.random.fold_in(noise_key, index), shape, dtype)
    return constrain(noise, out_sharding)


def denoise(
    model: Callable,
    prediction_type: str,
    m: Marginal,
    model_time: jnp.ndarray,
    x: jnp.ndarray,
    clip_x0: bool = False,
    *,
    time: jnp.ndarray | None = None,
    guide: Callable | None = None,
    learned_variance: bool = False,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """One model call at a grid point: ``(prediction, x0, eps)``, each ``[B, ...]``: x0 is the
    denoiser D(x; sigma) of Karras et al. 2022, eq. 7, and x = alpha x0 + sigma eps (Ho et al.
    2020, eq. 15 for an eps-model).

    The network sees ``x`` scaled as :func:`diffjax.predictions.input_scale` says and the
    point's model time broadcast to ``[B]``. Its prediction becomes (x0_hat, eps_hat), which
    ``guide`` may change (:mod:`diffjax.samplers.guidance`); with ``clip_x0`` the x0-prediction
    is then clipped to [-1, 1] and eps re-derived from it, so the step stays on the line
    through x. ``prediction`` is the network's raw output, before the guide and the clip.

    A ``learned_variance`` network returns ``[B, ..., 2 C]``, the prediction and then its
    variance values (:func:`diffjax.diffusion.split_learned_variance`): x0 and eps (and so the
    guide) come from the first half only; ``prediction`` is the whole output.

    Args:
      model: ``model(x_in [B, ...], t_in [B]) -> prediction``.
      prediction_type: what the model predicts.
      m: the marginal at the point (scalars, in the state's dtype).
      model_time: the network's time input, a scalar.
      x: the state ``[B, ...]``.
      clip_x0: clip the x0-prediction.
      time: the point's process time, a scalar (what ``guide`` is told, as ``[B]``).
      guide: ``guide(x_t, t, alpha, sigma, x0_hat, eps_hat) -> (x0_hat, eps_hat)``, or None;
        one that :func:`takes_denoiser` also gets ``denoiser=``, x -> (x0_hat, eps_hat) of the
        network at this point, to differentiate through.
      learned_variance: the network also returns variance values (above).

    Raises:
      ValueError: the model returned another shape (raised while tracing).
    """
    scale = predictions.input_scale(prediction_type, m)
    t_batch = jnp.full((x.shape[0],), model_time, dtype=jnp.asarray(model_time).dtype)

    def network(x: jnp.ndarray) -> jnp.ndarray:
        output = model(x if scale is None else x * scale, t_batch)
        if learned_variance:
            split_learned_variance(output, x.shape)
        elif getattr(output, "shape", None) != x.shape:
            raise ValueError(
                f"model_fn returned shape {getattr(output, 'shape', type(output))}; "
                f"expected the shape of x_t, {x.shape}."
            )
        return output.astype(x.dtype)

    def mean_part(output: jnp.ndarray) -> jnp.ndarray:
        return split_learned_variance(output, x.shape)[0] if learned_variance else output

    def denoiser(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        return predictions.to_x0_eps(prediction_type, mean_part(network(x)), x, m)

    prediction = network(x)
    x0, eps = predictions.to_x0_eps(prediction_type, mean_part(prediction), x, m)
    if guide is not None:
        if time is None:
            raise ValueError("denoise with a guide needs the point's process time.")
        time = jnp.asarray(time)
        times = jnp.full((x.shape[0],), time, dtype=time.dtype)
        extra = {"denoiser": denoiser} if takes_denoiser(guide) else {}
        x0, eps = guide(x, times, m.alpha, m.sigma, x0, eps, **extra)
        x0, eps = x0.astype(x.dtype), eps.astype(x.dtype)
    if clip_x0:
        x0 = jnp.clip(x0, -1.0, 1.0)
        eps = (x - m.alpha * x0) / m.sigma
    return prediction, x0, eps
