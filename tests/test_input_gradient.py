"""The input gradient with canonical convolution kernels (diffjax/samplers/input_gradient.py):
bit-identical to jax.grad for plain, strided, dilated, grouped and transposed convolutions
compiled alone, and equal up to float32 summation order inside a scan; every convolution of
the rewritten program has its kernel in the (spatial..., in, out) order."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from diffjax.samplers.input_gradient import canonical_kernel_layout, input_gradient

pytestmark = pytest.mark.usefixtures("unoptimized")


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Conv(8, (3, 3))(x)
        h = nn.Conv(8, (3, 3), strides=2)(jnp.tanh(h))
        h = nn.Conv(8, (3, 3), kernel_dilation=2)(jnp.tanh(h))
        h = nn.Conv(8, (3, 3), feature_group_count=8)(jnp.tanh(h))  # depthwise
        h = nn.ConvTranspose(4, (2, 2), strides=(2, 2))(jnp.tanh(h))
        return jnp.sum(jnp.tanh(h) ** 2, axis=(1, 2, 3))


def _net_and_input():
    net = _Net()
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 2))
    params = net.init(jax.random.key(1), x)
    return (lambda y: net.apply(params, y)), x


def test_equals_jax_grad_bit_for_bit():
    fn, x = _net_and_input()
    expected = jax.jit(jax.grad(lambda y: jnp.sum(fn(y))))(x)
    np.testing.assert_array_equal(jax.jit(lambda y: input_gradient(fn, y))(x), expected)
    # The rewrite itself, whatever the backend.
    rewritten = canonical_kernel_layout(jax.grad(lambda y: jnp.sum(fn(y))))
    np.testing.assert_array_equal(jax.jit(rewritten)(x), expected)


def test_kernels_are_canonical_after_the_rewrite_and_not_before():
    """jax.grad's input-gradient convolutions name swapped kernel axes in their dimension
    numbers; after the rewrite every convolution's rhs_spec is (out, in, spatial...) = (3, 2,
    0, 1), the ordinary HWIO layout."""
    fn, x = _net_and_input()

    def specs(function):
        jaxpr = jax.make_jaxpr(function)(x)
        found = []

        def walk(inner):
            for equation in inner.eqns:
                if equation.primitive is lax.conv_general_dilated_p:
                    found.append(tuple(equation.params["dimension_numbers"].rhs_spec))
                if "jaxpr" in equation.params:
                    walk(equation.params["jaxpr"].jaxpr)

        walk(jaxpr.jaxpr)
        return found

    gradient = jax.grad(lambda y: jnp.sum(fn(y)))
    before = specs(gradient)
    after = specs(canonical_kernel_layout(gradient))
    assert any(spec != (3, 2, 0, 1) for spec in before)
    assert after and all(spec == (3, 2, 0, 1) for spec in after)


def test_closes_over_traced_parameters_inside_a_scan():
    """The guide's situation: the network's parameters are traced (scan carry, jit argument)
    and the gradient is taken in the scan body."""
    net = _Net()
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 2))
    params = net.init(jax.random.key(1), x)

    def run(gradient, params, x):
        def body(carry, _):
            return carry + 1e-2 * gradient(lambda y: net.apply(params, y), carry), None

        return lax.scan(body, x, None, length=3)[0]

    plain = jax.jit(lambda p, y: run(lambda f, z: jax.grad(lambda v: jnp.sum(f(v)))(z), p, y))(
        params, x
    )
    rewritten = jax.jit(lambda p, y: run(input_gradient, p, y))(params, x)
    # In a loop the two programs run different convolution kernels (that is the point), which
    # sum the same products in another order: float32 rounding, at most the number of terms of
    # an output (3 x 3 x 8 = 72) times 2^-24 relative, i.e. 5e-6, per step.
    np.testing.assert_allclose(rewritten, plain, rtol=5e-6, atol=5e-6 * np.abs(plain).max())
