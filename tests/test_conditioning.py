"""The one adapter from a network to a model_fn, the cond pytree, condition dropout and
classifier-free guidance on a whole cond pytree (diffjax/models/conditioning.py)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import user_extensions  # noqa: E402

import diffjax as dj  # noqa: E402
from diffjax.models import (  # noqa: E402
    UNet,
    cond_keys,
    drop_cond,
    make_model_fn,
    null_cond,
    select_cond,
)

TINY = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(),
            num_groups=4, dropout=0.0)  # fmt: skip


def _toy():
    module = user_extensions.ToyCondNet(features=4)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    t = jnp.array([10, 500, 999], jnp.int32)
    cond = {
        "context": jax.random.normal(jax.random.key(1), (3, *user_extensions.CONTEXT_SHAPE)),
        "control": jax.random.normal(jax.random.key(2), (3, 8, 8, 1)),
    }
    params = module.init(jax.random.key(3), x, t, cond)["params"]
    # Non-zero output layer, so that the condition matters.
    params = jax.tree.map(lambda leaf: leaf + 0.1, params)
    return module, params, x, t, cond


def test_make_model_fn_is_module_apply_with_the_cond_the_network_reads():
    module, params, x, t, cond = _toy()
    model_fn = make_model_fn(module, params, {**cond, "label": jnp.zeros(3, jnp.int32)})
    expected = module.apply({"params": params}, x, t, cond)
    np.testing.assert_array_equal(model_fn(x, t), expected)
    unet = UNet(**TINY)
    unet_params = unet.init(jax.random.key(0), x, t)["params"]
    np.testing.assert_array_equal(
        make_model_fn(unet, unet_params, {"label": jnp.zeros(3, jnp.int32)})(x, t),
        unet.apply({"params": unet_params}, x, t),
    )


def test_a_new_model_fn_with_new_params_and_cond_does_not_recompile_a_sampler():
    from diffjax.samplers import runner

    module, params, x, t, cond = _toy()
    flow = dj.RectifiedFlow()
    shape = (3, 8, 8, 1)
    first = make_model_fn(module, params, cond)
    dj.sample(
        "flow_euler", first, flow, jax.random.key(0), shape, num_steps=3, prediction_type="flow"
    )
    before = runner._run._cache_size()
    second = make_model_fn(
        module, jax.tree.map(lambda leaf: 2 * leaf, params), jax.tree.map(lambda c: -c, cond)
    )
    dj.sample(
        "flow_euler", second, flow, jax.random.key(1), shape, num_steps=3, prediction_type="flow"
    )
    assert runner._run._cache_size() == before


def test_select_cond_drops_unread_keys_and_names_missing_ones():
    module, _, _, _, cond = _toy()
    assert cond_keys(module) == ("context", "control")
    assert sorted(select_cond(module, {**cond, "label": 1})) == ["context", "control"]
    with pytest.raises(
        ValueError, match=r"needs cond keys \['context', 'control'\].*missing \['control'\]"
    ):
        select_cond(module, {"context": cond["context"]})
    assert select_cond(UNet(**TINY), {"label": jnp.zeros(2)}) == {}


def test_drop_cond_replaces_whole_examples_at_the_rate_asked():
    module, _, _, _, _ = _toy()
    count = 20_000
    cond = {"context": jnp.ones((count, 2, 3)), "control": jnp.ones((count, 4, 4, 1))}
    dropped = drop_cond(jax.random.key(5), cond, null_cond(module, cond), 0.1)
    context_dropped = np.asarray(dropped["context"]).reshape(count, -1).max(1) == 0
    control_dropped = np.asarray(dropped["control"]).reshape(count, -1).max(1) == 0
    # One draw per example, shared by every key.
    np.testing.assert_array_equal(context_dropped, control_dropped)
    # Binomial(20000, 0.1): standard deviation 42 around 2000; 5 sigma.
    assert abs(context_dropped.sum() - 2000) < 5 * 42.5
    assert drop_cond(jax.random.key(5), cond, null_cond(module, cond), 0.0) == cond


def test_guidance_on_the_whole_cond_pytree_is_one_batched_call():
    module, params, x, t, cond = _toy()
    guided = make_model_fn(module, params, cond, guidance_scale=2.5)
    conditional = module.apply({"params": params}, x, t, cond)
    unconditional = module.apply({"params": params}, x, t, null_cond(module, cond))
    np.testing.assert_allclose(
        guided(x, t), unconditional + 2.5 * (conditional - unconditional), rtol=1e-5, atol=1e-6
    )
    calls = []

    def counting(x_in, t_in, cond_in):
        calls.append(x_in.shape[0])
        return module.apply({"params": params}, x_in, t_in, cond_in)

    own_null = {
        "context": jnp.ones((1, *user_extensions.CONTEXT_SHAPE)),
        "control": jnp.zeros((1, 8, 8, 1)),
    }
    guided = dj.classifier_free_guidance(counting, cond, 2.0, null_cond=own_null)
    out = guided(x, t)
    assert calls == [6]
    broadcast_null = jax.tree.map(
        lambda leaf: jnp.broadcast_to(leaf, (3, *leaf.shape[1:])), own_null
    )
    expected_uncond = module.apply({"params": params}, x, t, broadcast_null)
    np.testing.assert_allclose(
        out, expected_uncond + 2.0 * (conditional - expected_uncond), rtol=1e-5, atol=1e-6
    )


def test_guidance_refuses_what_cannot_work():
    module, params, _, _, cond = _toy()
    unet = UNet(**TINY)
    with pytest.raises(ValueError, match="needs a conditional network"):
        make_model_fn(unet, {}, None, guidance_scale=3.0)
    with pytest.raises(ValueError, match="give exactly one"):
        dj.classifier_free_guidance(lambda x, t, c: x, cond, 2.0)
    with pytest.raises(ValueError, match="structure of cond"):
        dj.classifier_free_guidance(lambda x, t, c: x, cond, 2.0, null_cond={"context": 0})
    with pytest.raises(TypeError, match="null_cond"):
        null_cond(_NoNull(), {"a": 1})


class _NoNull:
    cond_keys = ("a",)
