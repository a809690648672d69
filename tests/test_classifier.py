"""The noise-conditional classifier (diffjax/models/classifier.py): logits of the right shape,
uniform at initialisation, dependent on the noise level, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import build_model, default_model_config
from diffjax.models.classifier import NoisyClassifier
from diffjax.models.unet import count_params

pytestmark = pytest.mark.usefixtures("unoptimized")


def _tiny(**changes):
    options = dict(num_classes=3, base_channels=8, channel_mults=(1, 2), num_groups=4)
    return NoisyClassifier(**{**options, **changes})


def test_logits_are_per_example_and_start_uniform():
    """[B, K] float32 logits; the zero-initialised head gives every class the same logit (the
    uniform distribution) until trained; the body reads x and t (nonzero head: they matter)."""
    model = _tiny(attn_resolutions=(4,))
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    t = jnp.asarray([10, 900])
    params = model.init(jax.random.key(1), x, t)["params"]
    logits = model.apply({"params": params}, x, t)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    np.testing.assert_array_equal(logits, 0.0)
    # Zero-initialised layers hide t at initialisation; perturb every parameter.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree.unflatten(
        tree, [leaf + 0.3 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)]
    )
    moved = model.apply({"params": params}, x, t)
    assert not np.allclose(moved, model.apply({"params": params}, x, jnp.asarray([500, 500])))
    assert not np.allclose(moved, model.apply({"params": params}, -x, t))
    # Per example: reversing the batch reverses the logits.
    np.testing.assert_allclose(model.apply({"params": params}, x[::-1], t[::-1]), moved[::-1],
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert model.cond_keys == () and model.null_cond({}) == {}


def test_the_fashion_mnist_classifier_has_the_parameters_its_recipe_quotes():
    """configs/fashion_mnist_classifier.py's network (its docstring quotes 420,618)."""
    from diffjax.configs import get_config

    model = build_model(get_config("fashion_mnist_classifier").model)
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jnp.zeros((1,))
    )
    assert count_params(shapes["params"]) == 420_618


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(num_classes=1), "num_classes must be an int >= 2"),
        (dict(num_classes=None), "num_classes must be an int >= 2"),
        (dict(num_groups=3), "num_groups=3 must divide base_channels=8"),
        (dict(num_res_blocks=0), "num_res_blocks must be >= 1"),
        (dict(dropout=1.0), r"dropout must lie in \[0, 1\)"),
    ],
)
def test_bad_options_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        _tiny(**changes)


def test_bad_inputs_are_named():
    model = _tiny()
    with pytest.raises(ValueError, match="H and W divisible by 2"):
        model.init(jax.random.key(0), jnp.zeros((1, 7, 7, 1)), jnp.zeros((1,)))
    with pytest.raises(TypeError, match="must be a float array"):
        model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1), jnp.uint8), jnp.zeros((1,)))


def test_the_registry_builds_it_and_checks_the_image_size():
    from diffjax.models.registry import check_model_config

    section = default_model_config("unet_classifier")
    section.num_classes = 10
    check_model_config(section, (28, 28, 1))
    section.attn_resolutions = (5,)
    with pytest.raises(ValueError, match=r"attn_resolutions \(5,\) never occur for image size 28"):
        check_model_config(section, (28, 28, 1))
