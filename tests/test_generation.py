"""Generation: sample -> guide -> decode in one place, and the condition of sample i
(diffjax/generation.py)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import user_extensions  # noqa: E402

import diffjax as dj  # noqa: E402
from diffjax.generation import class_labels, make_generator  # noqa: E402


def test_class_labels_cycle_for_evaluations_and_come_in_blocks_for_grids():
    np.testing.assert_array_equal(class_labels(np.arange(7), 3), [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(class_labels(np.arange(6), 3, blocks=6), [0, 0, 1, 1, 2, 2])
    # The index fixes the label, whatever batch it is drawn in.
    np.testing.assert_array_equal(class_labels(np.arange(4, 6), 3, blocks=6), [2, 2])


def _toy():
    module = user_extensions.ToyCondNet(features=4)
    cond = {
        "context": jax.random.normal(jax.random.key(1), (4, *user_extensions.CONTEXT_SHAPE)),
        "control": jax.random.normal(jax.random.key(2), (4, 4, 4, 4)),
    }
    x = jnp.zeros((4, 4, 4, 4))
    params = module.init(jax.random.key(3), x, jnp.zeros(4, jnp.int32), cond)["params"]
    return module, jax.tree.map(lambda leaf: leaf + 0.05, params), cond


def test_generate_is_the_sampler_on_the_adapter_then_the_decoder():
    module, params, cond = _toy()
    process = dj.RectifiedFlow()
    options = dict(num_steps=3, prediction_type="flow")
    codec = user_extensions.SpaceToDepth()
    generate = make_generator(
        module, process, shape=(4, 4, 4), num_samples=4, sampler="flow_euler", options=options,
        guidance_scale=1.5, clip_x0=True, codec=codec,
    )  # fmt: skip
    keys = dj.sample_keys(0, 0, 4)
    images = generate(params, keys, cond)
    latents = generate(params, keys, cond, decode=False)
    model_fn = dj.models.make_model_fn(module, params, cond, guidance_scale=1.5)
    # clip_x0 does not apply where the codec's space is not [-1, 1].
    expected = dj.sample("flow_euler", model_fn, process, keys, (4, 4, 4, 4), **options)
    np.testing.assert_array_equal(latents, expected)
    assert images.shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(images, codec.decode(None, latents))
    start = jax.random.normal(jax.random.key(9), (4, 4, 4, 4))
    from_start = generate(params, keys, cond, x_T=start, decode=False)
    np.testing.assert_array_equal(
        from_start, dj.sample("flow_euler", model_fn, process, keys, (4, 4, 4, 4), x_T=start,
                              **options),
    )  # fmt: skip
