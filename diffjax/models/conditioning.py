"""The one adapter from a network to a ``model_fn``, and the conditioning pytree it carries.

Conditioning is a dict of arrays whose leading axis is the batch, for example

================  ===========================  =============================================
key               array                        what
================  ===========================  =============================================
``'label'``       int32 ``[B]``                a class (``num_classes`` is the null class)
``'context'``     float ``[B, L, D]``          a token sequence for cross-attention (text)
``'pooled'``      float ``[B, D]``             one vector per example (a pooled text embedding)
``'control'``     float ``[B, H, W, C]``       a spatial condition (edges, depth; ControlNet)
``'guidance'``    float ``[B]``                a guidance scale w (a guidance-distilled network)
================  ===========================  =============================================

A guidance scale is not data: no dataset holds it; the distillation objective draws it and the
generator sets it (:data:`GUIDANCE_KEY`, :func:`data_cond_keys`).

No layer between the batch and the network looks inside it: the data pipeline puts it in the
batch as ``batch['cond']``, the losses, samplers and guidance pass it along as a pytree, and
only the network reads its keys (DESIGN rule 12).

A registered network (:mod:`diffjax.models.registry`) is a Flax Linen module called as
``module(x, t, cond, train=...)`` that declares

* ``cond_keys``: the keys of ``cond`` it reads (a tuple of str; ``()`` for an unconditional
  network), and
* ``null_cond(cond) -> cond``: the null condition of each key, of the same structure and
  shapes (for classifier-free guidance and condition dropout).

A network may also declare ``learned_variance = True``: it returns ``[B, ..., 2 C]``, its
prediction and then Improved DDPM's variance values (DiT's ``learn_sigma``).
Classifier-free guidance then guides the prediction's channels only, DDPM samples with
``variance='learned_range'`` and :func:`prediction_channels` gives every other sampler the
prediction alone.

:func:`make_model_fn` turns such a module and its parameters into the plain
``model_fn(x_t, t)`` that every loss and sampler takes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from diffjax.diffusion import split_learned_variance
from diffjax.samplers.common import as_model_pytree
from diffjax.samplers.guidance import checked_guidance_scale, classifier_free_guidance

__all__ = [
    "Cond",
    "ModuleApply",
    "GUIDANCE_KEY",
    "cond_keys",
    "data_cond_keys",
    "drop_cond",
    "learned_variance",
    "make_model_fn",
    "null_cond",
    "prediction_channels",
    "select_cond",
]

Cond = Mapping[str, Any]
"""A conditioning pytree: ``{key: array [B, ...]}`` (see the module docstring)."""


GUIDANCE_KEY = "guidance"
"""The cond key of a guidance scale w, float ``[B]``, which a guidance-distilled network embeds."""


def cond_keys(module: Any) -> tuple[str, ...]:
    """The keys of ``cond`` that ``module`` reads (its ``cond_keys``; ``()`` if it has none)."""
    return tuple(getattr(module, "cond_keys", ()))


def data_cond_keys(module: Any) -> tuple[str, ...]:
    """The keys of ``cond`` that ``module`` reads from the data: all but :data:`GUIDANCE_KEY`."""
    return tuple(key for key in cond_keys(module) if key != GUIDANCE_KEY)


def null_cond(module: Any, cond: Cond) -> dict[str, Any]:
    """The module's null condition for ``cond`` (same keys, shapes and dtypes).

    Raises:
      TypeError: the module reads conditioning but declares no ``null_cond``.
    """
    if not cond_keys(module):
        return {}
    make_null = getattr(module, "null_cond", None)
    if make_null is None:
        raise TypeError(
            f"{type(module).__name__} reads cond keys {cond_keys(module)} but has no "
            f"null_cond(cond) method; classifier-free guidance and condition dropout need it."
        )
    return dict(make_null(cond))


def select_cond(module: Any, cond: Cond | None) -> dict[str, Any]:
    """The entries of ``cond`` that ``module`` reads.

    A batch may carry more than the network takes (Fashion-MNIST's labels reach an
    unconditional network); this drops the rest and refuses a missing key.

    Args:
      module: the network.
      cond: the batch's conditioning (None: nothing).

    Returns:
      ``{key: cond[key]}`` for every key of :func:`cond_keys`.

    Raises:
      ValueError: a key the network reads is missing, naming the keys present.
    """
    cond = {} if cond is None else cond
    wanted = cond_keys(module)
    missing = [key for key in wanted if key not in cond]
    if missing:
        raise ValueError(
            f"{type(module).__name__} needs cond keys {list(wanted)}; the conditioning holds "
            f"{sorted(cond)} (missing {missing})."
        )
    return {key: cond[key] for key in wanted}


def drop_cond(key: jax.Array, cond: Cond, null: Cond, probability: float) -> dict[str, Any]:
    """Replaces each example's whole condition by the null one with ``probability``.

    One Bernoulli draw per example, shared by every key, so the model learns the fully
    unconditional prediction that classifier-free guidance subtracts (Ho & Salimans 2022,
    "Classifier-Free Diffusion Guidance", Algorithm 1).

    Args:
      key: a JAX PRNG key.
      cond: ``{key: [B, ...]}``.
      null: the null condition, same structure and shapes.
      probability: p in [0, 1).

    Returns:
      The conditioning with a Bernoulli(p) subset of the examples set to ``null``.
    """
    leaves = jax.tree.leaves(cond)
    if not leaves or probability == 0:
        return dict(cond)
    batch = leaves[0].shape[0]
    drop = jax.random.bernoulli(key, probability, (batch,))

    def choose(value, empty):
        mask = drop.reshape((batch,) + (1,) * (value.ndim - 1))
        return jnp.where(mask, jnp.asarray(empty, value.dtype), value)

    return jax.tree.map(choose, dict(cond), dict(null))


@dataclasses.dataclass(frozen=True)
class ModuleApply:
    """``module.apply`` as a function of ``(params, cond, rng, x_in, t_in)``, hashable by value.

    Two adapters of equal modules compare equal, so a sampler compiled for one is reused for
    the other (a new :func:`make_model_fn` with new parameters does not recompile).
    """

    module: Any
    train: bool = False

    def __call__(self, params: Any, cond: Cond, rng: Any, x_in: jnp.ndarray, t_in: jnp.ndarray):
        rngs = {} if rng is None else {"dropout": rng}
        return self.module.apply({"params": params}, x_in, t_in, cond, train=self.train, rngs=rngs)

    def with_cond(self, params: Any, rng: Any, x_in: jnp.ndarray, t_in: jnp.ndarray, cond: Cond):
        """The same call with ``cond`` last, the order classifier-free guidance calls in."""
        return self(params, cond, rng, x_in, t_in)


def learned_variance(module: Any) -> bool:
    """Whether a network returns a learned variance beside its prediction (module docstring;
    Improved DDPM's Sigma_theta, Nichol & Dhariwal 2021, Sec. 3.1)."""
    return bool(getattr(module, "learned_variance", False))


def _prediction_half(model_fn: Any, x_in: jnp.ndarray, t_in: jnp.ndarray) -> jnp.ndarray:
    output = model_fn(x_in, t_in)
    return split_learned_variance(output, x_in.shape)[0]


def prediction_channels(model_fn: Any) -> jax.tree_util.Partial:
    """A learned-variance ``model_fn`` (``[B, ..., C] -> [B, ..., 2 C]``) as the plain
    ``model_fn(x_t, t) -> prediction [B, ..., C]`` every sampler and loss takes: its first C
    channels (:func:`diffjax.diffusion.split_learned_variance`; the prediction half of Improved
    DDPM's output, Nichol & Dhariwal 2021, Sec. 3.1).

    Example:
      >>> model_fn = make_model_fn(dit, params, {"label": labels}, guidance_scale=4.0)
      >>> images = dj.sample("ddim", prediction_channels(model_fn), schedule, key, shape)
    """
    return jax.tree_util.Partial(_prediction_half, as_model_pytree(model_fn))


def _check_guidance(module: Any, guidance_scale: Any) -> Any:
    scale = checked_guidance_scale(guidance_scale)
    if (isinstance(scale, jax.core.Tracer) or scale != 1.0) and not cond_keys(module):
        raise ValueError(
            f"guidance_scale={scale} needs a conditional network; {type(module).__name__} reads "
            f"no conditioning (cond_keys=()). Use guidance_scale=1.0."
        )
    return scale


def make_model_fn(
    module: Any,
    params: Any,
    cond: Cond | None = None,
    *,
    train: bool = False,
    rng: jax.Array | None = None,
    guidance_scale: float = 1.0,
    null: Cond | None = None,
) -> jax.tree_util.Partial:
    """A network and its parameters as the ``model_fn(x_t, t)`` of the losses and samplers,
    with classifier-free guidance (Ho & Salimans 2022, eq. 6) when ``guidance_scale != 1``.

    The result is a :class:`jax.tree_util.Partial` whose bound arrays (params, cond, rng) are
    traced, so a sampler compiled for it is reused when they change. With
    ``guidance_scale != 1`` it is wrapped in classifier-free guidance on the whole ``cond``
    pytree (:func:`diffjax.classifier_free_guidance`: one batched call on ``[x; x]`` with
    ``[cond; null]``), of the prediction's channels only for a network with a
    :func:`learned_variance`.

    Args:
      module: a registered network, called as ``module(x, t, cond, train=...)``.
      params: its parameters (the ``'params'`` collection).
      cond: the conditioning ``{key: [B, ...]}``; keys the module does not read are dropped
        (:func:`select_cond`); None for an unconditional network.
      train: run in training mode (dropout on; needs ``rng``).
      rng: the dropout key when ``train``.
      guidance_scale: w of classifier-free guidance; 1 is the plain conditional model. A
        scalar traced inside a jitted caller always guides (one batched call of both).
      null: the null condition for guidance; default the module's :func:`null_cond`.

    Returns:
      ``model_fn(x_in [B, ...], t_in [B]) -> prediction [B, ...]`` (``[B, ..., 2 C]`` for a
      learned-variance network: :func:`prediction_channels` drops the variance).

    Raises:
      ValueError / TypeError: a missing cond key or guidance without conditioning; raised
        here, before anything is traced.

    Example:
      >>> model_fn = make_model_fn(unet, params, {"label": labels}, guidance_scale=3.0)
      >>> images = dj.sample("ddim", model_fn, schedule, keys, shape, num_steps=50)
    """
    cond = select_cond(module, cond)
    scale = _check_guidance(module, guidance_scale)
    apply = ModuleApply(module, bool(train))
    if not isinstance(scale, jax.core.Tracer) and scale == 1.0:
        return jax.tree_util.Partial(apply, params, cond, rng)
    null = null_cond(module, cond) if null is None else select_cond(module, null)
    conditional = jax.tree_util.Partial(apply.with_cond, params, rng)
    return classifier_free_guidance(
        conditional, cond, scale, null_cond=null, learned_variance=learned_variance(module)
    )
