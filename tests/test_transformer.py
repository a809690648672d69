"""SD's spatial transformer (diffjax/models/transformer.py) against diffusers'
Transformer2DModel with random weights, with convolution (SD 1) and linear (SD 2) projections;
the fixture is written by benchmarks/port_reference/make_transformer_fixture.py."""

import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from diffjax.models.diffusers_weights import key_table
from diffjax.models.transformer import SpatialTransformer
from diffjax.weights import apply_key_table

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "spatial_transformer")

# float32 rounding through two blocks of attention and GEGLU on O(1) activations (measured
# differences are ~1e-6).
PORT_ATOL = 2e-5


@pytest.mark.parametrize("projection", ["conv", "linear"])
def test_spatial_transformer_matches_diffusers(projection):
    reference = np.load(os.path.join(FIXTURE, "outputs.npz"))
    module = SpatialTransformer(
        num_heads=2, depth=2, linear_projection=projection == "linear", num_groups=4
    )
    shapes = jax.eval_shape(module.init, jax.random.key(0), reference["x"], reference["context"])
    state = load_file(os.path.join(FIXTURE, f"{projection}.safetensors"))
    variables = apply_key_table(state, key_table(shapes["params"]), source=projection)
    out = module.apply(variables, reference["x"], reference["context"])
    np.testing.assert_allclose(out, reference[f"out_{projection}"], atol=PORT_ATOL)
