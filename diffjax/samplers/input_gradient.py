"""The gradient of a network's scalar output with respect to its input, fast inside a loop.

Gradient guidance differentiates a network (a classifier, or the denoiser itself) with respect
to x_t at every step of a sampler's ``lax.scan``. Reverse mode turns each convolution into a
convolution of the cotangent with the reversed kernel whose input and output feature axes are
swapped; JAX expresses the swap in the dimension numbers (``rhs_spec``), not in the kernel.
XLA's CPU backend runs such a convolution on its fast (YNNPACK) path when it is compiled alone,
but inside a while loop it keeps the swapped kernel layout and falls back to a generic kernel
40 times slower (jax-ml/jax#12868; measured in benchmarks/bench_guidance.py).

:func:`input_gradient` computes the same gradient with every convolution's kernel transposed
into the canonical (spatial..., in, out) order first: the same products of the same values,
but each convolution is an ordinary one that XLA:CPU runs on its fast path in any loop (the
fast kernel sums them in another order, so inside a loop the two differ by float32 rounding;
compiled alone, where XLA makes the same choice itself, they are bit-identical). The rewrite walks the gradient's jaxpr (inlining ``jit`` calls; other
higher-order primitives such as ``scan`` or ``checkpoint`` are bound unchanged) and is only
applied on the CPU backend, where it is measured; elsewhere the plain gradient is returned.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core

__all__ = ["canonical_kernel_layout", "input_gradient"]

_CALL_PRIMITIVES = ("pjit", "jit", "closed_call", "core_call")


def _canonical_convolution(lhs: jax.Array, rhs: jax.Array, **params: Any) -> jax.Array:
    """``conv_general_dilated`` with ``rhs`` transposed to (spatial..., in, out) and its
    dimension numbers updated to match: the same convolution, an ordinary kernel layout."""
    numbers = params["dimension_numbers"]
    out_axis, in_axis, *spatial = numbers.rhs_spec
    order = (*spatial, in_axis, out_axis)
    if order == tuple(range(rhs.ndim)):
        return lax.conv_general_dilated_p.bind(lhs, rhs, **params)
    rank = len(spatial)
    canonical = numbers._replace(rhs_spec=(rank + 1, rank, *range(rank)))
    return lax.conv_general_dilated_p.bind(
        lhs, jnp.transpose(rhs, order), **dict(params, dimension_numbers=canonical)
    )


def _evaluate(jaxpr: core.Jaxpr, consts: list[Any], *args: Any) -> list[Any]:
    env: dict[Any, Any] = {}

    def read(var: Any) -> Any:
        return var.val if isinstance(var, core.Literal) else env[var]

    for var, value in zip(jaxpr.constvars, consts):
        env[var] = value
    for var, value in zip(jaxpr.invars, args):
        env[var] = value
    for equation in jaxpr.eqns:
        inputs = [read(var) for var in equation.invars]
        primitive = equation.primitive
        if primitive is lax.conv_general_dilated_p:
            outputs = [_canonical_convolution(*inputs, **equation.params)]
        elif primitive.name in _CALL_PRIMITIVES and "jaxpr" in equation.params:
            closed = equation.params["jaxpr"]
            outputs = _evaluate(closed.jaxpr, closed.consts, *inputs)
        else:
            params = primitive.get_bind_params(equation.params)
            outputs = primitive.bind(*inputs, **params)
            if not primitive.multiple_results:
                outputs = [outputs]
        for var, value in zip(equation.outvars, outputs):
            if not isinstance(var, core.DropVar):
                env[var] = value
    return [read(var) for var in jaxpr.outvars]


def canonical_kernel_layout(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with every convolution's kernel transposed to the canonical layout before it runs
    (see the module docstring); same outputs, same pytree structure.

    Args:
      fn: a function of arrays (pytrees of arrays in, a pytree of arrays out).

    Returns:
      A function with the signature of ``fn``.
    """

    def rewritten(*args: Any) -> Any:
        flat, in_tree = jax.tree.flatten(args)
        closed, out_shape = jax.make_jaxpr(
            lambda *leaves: fn(*jax.tree.unflatten(in_tree, leaves)), return_shape=True
        )(*flat)
        outputs = _evaluate(closed.jaxpr, closed.consts, *flat)
        return jax.tree.unflatten(jax.tree.structure(out_shape), outputs)

    return rewritten


def input_gradient(scalar_fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """∇_x sum(scalar_fn(x)), with convolutions laid out for XLA:CPU's fast path in loops.

    Args:
      scalar_fn: ``scalar_fn(x [B, ...]) -> [B]`` (or a scalar); per-example outputs that do
        not mix examples give per-example gradients.
      x: ``[B, ...]`` float.

    Returns:
      ``[B, ...]``, the gradient, in the dtype of ``x``.
    """

    def gradient(x: jax.Array) -> jax.Array:
        return jax.grad(lambda x: jnp.sum(scalar_fn(x)))(x)

    if jax.default_backend() == "cpu":
        return canonical_kernel_layout(gradient)(x)
    return gradient(x)
