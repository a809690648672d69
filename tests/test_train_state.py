"""Tests for diffjax.training.train_state: schedules, AdamW against NumPy, EMA, sharded creation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffjax.sharding import make_mesh, replicated_sharding
from diffjax.training.train_state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    ema_decay_at,
    learning_rate_from_opt_state,
    learning_rate_schedule,
    make_optimizer,
    update_ema,
)

# Adam's update and the EMA are a handful of float32 operations per element: rounding ~1e-7.
FLOAT32_RTOL = 1e-6


def _init_params(key):
    kernel_key, bias_key = jax.random.split(key)
    return {
        "dense": {
            "kernel": jax.random.normal(kernel_key, (3, 2)),
            "bias": jax.random.normal(bias_key, (2,)),
        }
    }


def test_learning_rate_schedule_warmup_then_cosine():
    peak, warmup, total = 1e-3, 10, 110
    schedule = learning_rate_schedule(peak, warmup_steps=warmup, total_steps=total)
    steps = np.arange(0, 130)
    expected = np.where(
        steps < warmup,
        peak * steps / warmup,
        0.5 * peak * (1 + np.cos(np.pi * np.clip((steps - warmup) / (total - warmup), 0, 1))),
    )
    np.testing.assert_allclose([schedule(s) for s in steps], expected, rtol=1e-5, atol=1e-9)


def test_learning_rate_schedule_linear_decay_reaches_zero_at_the_end():
    """Progressive distillation anneals each round linearly to 0 (Salimans & Ho 2022)."""
    schedule = learning_rate_schedule(1e-3, total_steps=4, decay="linear")
    np.testing.assert_allclose(
        [schedule(s) for s in range(6)], [1e-3, 7.5e-4, 5e-4, 2.5e-4, 0, 0], rtol=1e-6, atol=1e-12
    )
    warm = learning_rate_schedule(1e-3, warmup_steps=2, total_steps=6, decay="linear")
    np.testing.assert_allclose(
        [warm(s) for s in range(7)], [0, 5e-4, 1e-3, 7.5e-4, 5e-4, 2.5e-4, 0], rtol=1e-6, atol=1e-12
    )
    with pytest.raises(ValueError, match="'cosine' or 'linear'"):
        learning_rate_schedule(1e-3, total_steps=4, decay="step")


def test_learning_rate_schedule_warmup_then_constant():
    schedule = learning_rate_schedule(2e-4, warmup_steps=4)
    np.testing.assert_allclose(
        [schedule(s) for s in range(7)], [0, 5e-5, 1e-4, 1.5e-4, 2e-4, 2e-4, 2e-4], rtol=1e-6
    )
    assert float(learning_rate_schedule(2e-4)(0)) == pytest.approx(2e-4)


def _numpy_adamw(params, grads_per_step, learning_rates, clip, weight_decay, b1, b2, eps):
    """AdamW (Loshchilov & Hutter 2019, Alg. 2) after global-norm clipping, in float64."""
    params = {k: np.float64(v) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    for count, (grads, learning_rate) in enumerate(zip(grads_per_step, learning_rates), start=1):
        grads = {k: np.float64(g) for k, g in grads.items()}
        norm = np.sqrt(sum(np.sum(g**2) for g in grads.values()))
        scale = min(1.0, clip / norm)
        for name in params:
            g = grads[name] * scale
            m[name] = b1 * m[name] + (1 - b1) * g
            v[name] = b2 * v[name] + (1 - b2) * g**2
            m_hat, v_hat = m[name] / (1 - b1**count), v[name] / (1 - b2**count)
            decay = weight_decay * params[name] if params[name].ndim > 1 else 0.0
            params[name] = params[name] - learning_rate * (m_hat / (np.sqrt(v_hat) + eps) + decay)
    return params


def test_make_optimizer_matches_numpy_adamw_with_clipping_and_warmup():
    peak, warmup, clip, weight_decay, b1, b2, eps = 1e-2, 2, 1.0, 0.1, 0.8, 0.95, 1e-6
    optimizer = make_optimizer(
        peak,
        warmup_steps=warmup,
        grad_clip_norm=clip,
        weight_decay=weight_decay,
        b1=b1,
        b2=b2,
        eps=eps,
    )
    params = _init_params(jax.random.key(0))["dense"]
    rng = np.random.default_rng(1)
    grads_per_step = [
        {"kernel": rng.normal(size=(3, 2)) * 3, "bias": rng.normal(size=2) * 3} for _ in range(4)
    ]
    opt_state = optimizer.init(params)
    updated = params
    for step, grads in enumerate(grads_per_step):
        grads = jax.tree.map(jnp.float32, grads)
        updates, opt_state = optimizer.update(grads, opt_state, updated)
        updated = optax.apply_updates(updated, updates)
        # The recorded rate is the one this update used: schedule(step).
        assert float(learning_rate_from_opt_state(opt_state)) == pytest.approx(
            peak * min(step, warmup) / warmup
        )
    learning_rates = [peak * min(step, warmup) / warmup for step in range(4)]
    expected = _numpy_adamw(
        jax.tree.map(np.asarray, params),
        grads_per_step,
        learning_rates,
        clip,
        weight_decay,
        b1,
        b2,
        eps,
    )
    # Norms are ~3-5 so the clip is active; the bias (ndim 1) must not decay.
    for name in params:
        np.testing.assert_allclose(updated[name], expected[name], rtol=FLOAT32_RTOL * 10)


def test_make_optimizer_without_clipping_is_plain_adam():
    optimizer = make_optimizer(1e-3, grad_clip_norm=None)
    params = {"w": jnp.ones((2, 2))}
    grads = {"w": jnp.full((2, 2), 100.0)}
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    # First Adam step: m_hat / sqrt(v_hat) = sign(g), unclipped and undecayed.
    np.testing.assert_allclose(updates["w"], -1e-3 * np.ones((2, 2)), rtol=FLOAT32_RTOL)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(learning_rate=0.0), "learning_rate must be > 0"),
        (dict(learning_rate=1e-3, warmup_steps=-1), "warmup_steps must be >= 0"),
        (dict(learning_rate=1e-3, warmup_steps=10, total_steps=10), r"total_steps \(10\)"),
        (dict(learning_rate=1e-3, grad_clip_norm=0.0), "grad_clip_norm must be > 0 or None"),
        (dict(learning_rate=1e-3, weight_decay=-1.0), "weight_decay must be >= 0"),
        (dict(learning_rate=1e-3, b2=1.0), r"b1 and b2 must lie in \[0, 1\)"),
    ],
)
def test_make_optimizer_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_optimizer(**kwargs)


def test_learning_rate_is_none_without_inject_hyperparams():
    optimizer = optax.sgd(0.1)
    assert learning_rate_from_opt_state(optimizer.init({"w": jnp.ones(2)})) is None


def test_ema_decay_warmup_formula():
    steps = np.array([0, 1, 8, 100, 10**6])
    expected = np.minimum(0.999, (1 + steps) / (10 + steps))
    np.testing.assert_allclose(ema_decay_at(jnp.asarray(steps), 0.999), expected, rtol=FLOAT32_RTOL)
    assert float(ema_decay_at(0, 0.999)) == pytest.approx(0.1)


def test_update_ema_follows_its_recurrence():
    decay = 0.9
    rng = np.random.default_rng(2)
    params_per_step = [{"w": rng.normal(size=(3,)).astype(np.float32)} for _ in range(30)]
    ema = {"w": np.zeros(3, np.float32)}
    expected = np.zeros(3)
    for step, params in enumerate(params_per_step):
        ema = update_ema(ema, params, jnp.int32(step), decay)
        decay_t = min(decay, (1 + step) / (10 + step))
        expected = decay_t * expected + (1 - decay_t) * np.float64(params["w"])
    assert ema["w"].dtype == jnp.float32
    np.testing.assert_allclose(ema["w"], expected, rtol=FLOAT32_RTOL * 10, atol=1e-7)


def test_create_train_state_is_replicated_and_matches_plain_init():
    mesh = make_mesh()
    optimizer = make_optimizer(1e-3, warmup_steps=5)
    key = jax.random.key(3)
    state = create_train_state(_init_params, key, optimizer, mesh)
    assert isinstance(state, TrainState)
    assert state.step.dtype == jnp.int32 and int(state.step) == 0
    replicated = replicated_sharding(mesh)
    for leaf in jax.tree.leaves(state):
        assert leaf.sharding.is_equivalent_to(replicated, leaf.ndim)
        assert len(leaf.addressable_shards) == 8
    expected_params = _init_params(key)
    chex.assert_trees_all_equal(state.params, expected_params)
    chex.assert_trees_all_equal(state.ema_params, expected_params)
    chex.assert_trees_all_equal(state.opt_state, optimizer.init(expected_params))


def test_abstract_train_state_matches_the_created_state():
    mesh = make_mesh()
    optimizer = make_optimizer(1e-3)
    key = jax.random.key(3)
    abstract = abstract_train_state(_init_params, key, optimizer, mesh)
    state = create_train_state(_init_params, key, optimizer, mesh)
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    for spec, leaf in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
        assert isinstance(spec, jax.ShapeDtypeStruct)
        assert (spec.shape, spec.dtype) == (leaf.shape, leaf.dtype)
        assert spec.sharding.is_equivalent_to(leaf.sharding, leaf.ndim)
    unsharded = abstract_train_state(_init_params, key, optimizer)
    assert all(getattr(leaf, "sharding", None) is None for leaf in jax.tree.leaves(unsharded))
    assert unsharded.params["dense"]["kernel"].shape == (3, 2)
