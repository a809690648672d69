"""Tests for diffjax.training.step: learning, sharding equivalence, compilation, multi-process."""

import logging
import os
import socket
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import train_step_worker

from diffjax import get_schedule
from diffjax.diffusion import alpha_sigma, eps_from_x0, v_from_x0_eps
from diffjax.losses import denoising_loss
from diffjax.models import UNet, make_model_fn
from diffjax.training import (
    TrainState,
    create_train_state,
    group_optimizer,
    jit_train_step,
    make_denoising_loss,
    make_mesh,
    make_optimizer,
    make_train_step,
    trainable_part,
)

# One SGD step is linear in the gradient; the device layouts differ only in the float32
# summation order of the gradient reduction over 16 examples x 32 pixels: relative error
# ~ sqrt(512) * 6e-8 ~ 1.4e-6 of the gradient's magnitude (lr 0.5, |g| <~ 1): atol 1e-5.
LAYOUT_ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("unoptimized_module")


@pytest.fixture(scope="module")
def worker_setup():
    return train_step_worker.make_setup()


def _tiny_unet():
    return UNet(
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        dropout=0.0,
        num_groups=4,
    )


def _fixed_images():
    """Eight 8x8x1 plane waves in [-1, 1]: distinct, smooth images to memorise."""
    directions = np.random.default_rng(0).uniform(-1, 1, (8, 2))
    rows, cols = np.mgrid[0:8, 0:8] / 7.0
    waves = [np.sin(2 * np.pi * (a * cols + b * rows)) for a, b in directions]
    return np.stack(waves)[..., None].astype(np.float32)


def _optimal_denoiser(images, schedule, prediction_type):
    """The exact denoiser of the 8-image training set: the posterior mean of x0 given x_t,
    E[x0 | x_t] = sum_i softmax_i(-||x_t - alpha x_i||^2 / (2 sigma^2)) x_i, in any
    parametrisation. Its loss is the lowest any model can reach."""

    def model_fn(x_t, t):
        alpha, sigma = alpha_sigma(schedule, t, x_t.ndim)
        distances = jnp.sum((x_t[:, None] - alpha[:, None] * images[None]) ** 2, axis=(2, 3, 4))
        weights = jax.nn.softmax(-distances / (2 * sigma[:, 0, 0, 0, None] ** 2), axis=1)
        x0 = jnp.einsum("bn,nhwc->bhwc", weights, images)
        eps = eps_from_x0(x_t, x0, alpha, sigma)
        return {"x0": x0, "eps": eps, "v": v_from_x0_eps(x0, eps, alpha, sigma)}[prediction_type]

    return model_fn


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_overfits_a_fixed_batch(prediction_type):
    """200 Adam steps on 8 fixed images close most of the loss gap to the optimal denoiser.

    The gap runs from the zero predictor (the zero-initialised UNet output) to the exact
    posterior-mean denoiser of the 8 images; both losses and the trained model's are measured
    on the same 256 fixed (t, eps) draws. Measured (2-core CPU, 200 steps): 88% (eps),
    90% (x0), 74% (v) of the gap closed; an untrained or broken step closes ~0%.
    """
    images = _fixed_images()
    model = _tiny_unet()
    schedule = get_schedule("cosine", 100)
    optimizer = make_optimizer(3e-3, warmup_steps=10)
    mesh = make_mesh(jax.devices()[:1])
    sample = jnp.zeros((1, 8, 8, 1))

    def init_fn(key):
        return model.init(key, sample, jnp.zeros((1,), jnp.int32))["params"]

    state = create_train_state(init_fn, jax.random.key(0), optimizer, mesh)
    train_step = jit_train_step(
        make_train_step(
            make_denoising_loss(model, schedule, prediction_type=prediction_type), optimizer
        ),
        mesh,
    )
    eval_images = jnp.tile(images, (32, 1, 1, 1))

    def eval_loss(model_fn):
        return denoising_loss(
            model_fn, schedule, eval_images, jax.random.key(9), prediction_type=prediction_type
        )[0]

    @jax.jit
    def model_loss(params):
        return eval_loss(make_model_fn(model, params))

    initial_loss = float(model_loss(state.params))
    optimal_loss = float(
        jax.jit(eval_loss, static_argnums=0)(_optimal_denoiser(images, schedule, prediction_type))
    )
    batch = {"image": images}
    for _ in range(200):
        state, metrics = train_step(state, batch, jax.random.key(1))
    final_loss = float(model_loss(state.params))
    assert bool(metrics["is_finite"])
    gap_closed = (initial_loss - final_loss) / (initial_loss - optimal_loss)
    assert gap_closed > 0.5, (initial_loss, final_loss, optimal_loss)


def test_sharded_step_matches_single_device_step(worker_setup):
    """One step on 8 devices equals the same step on 1 device for the same global batch."""
    single = train_step_worker.run_one_step(
        worker_setup, make_mesh(jax.devices()[:1]), worker_setup["batch"]
    )
    sharded = train_step_worker.run_one_step(worker_setup, make_mesh(), worker_setup["batch"])
    assert single.keys() == sharded.keys()
    for name in single:
        np.testing.assert_allclose(sharded[name], single[name], atol=LAYOUT_ATOL, err_msg=name)
    # The step really moved the params (lr 0.5): equality is not trivially of untouched state.
    init_params = worker_setup["init_fn"](worker_setup["init_key"])
    kernel = np.asarray(init_params["Dense_0"]["kernel"])
    assert np.abs(single["[0]['Dense_0']['kernel']"] - kernel).max() > 1e-3


@pytest.mark.parametrize("mesh_shape", [(1, 8), (4, 2)])
def test_fsdp_layouts_match_single_device_step(worker_setup, mesh_shape):
    """The 'fsdp' rule (state split over the 'fsdp' axis, batch over both axes) computes the
    same step as one device: only the summation order of the gradient differs (LAYOUT_ATOL)."""
    single = train_step_worker.run_one_step(
        worker_setup, make_mesh(jax.devices()[:1]), worker_setup["batch"]
    )
    mesh = make_mesh(axes=("data", "fsdp"), shape=mesh_shape)
    sharded = train_step_worker.run_one_step(worker_setup, mesh, worker_setup["batch"], "fsdp")
    assert single.keys() == sharded.keys()
    for name in single:
        np.testing.assert_allclose(sharded[name], single[name], atol=LAYOUT_ATOL, err_msg=name)


def test_two_processes_match_one_process(worker_setup, tmp_path):
    """Two jax.distributed processes x 4 devices, each feeding half of the batch, end with the
    params of one process x 8 devices fed the whole batch."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",
        DIFFJAX_TEST_COMPILATION_CACHE=jax.config.jax_compilation_cache_dir or "",
    )
    worker = os.path.join(os.path.dirname(__file__), "train_step_worker.py")
    processes = [
        subprocess.Popen(
            [sys.executable, worker, str(process_id), str(port), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for process_id in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=240)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    expected = train_step_worker.run_one_step(worker_setup, make_mesh(), worker_setup["batch"])
    for process_id in range(2):
        result = np.load(tmp_path / f"process_{process_id}.npz")
        assert set(result.files) == set(expected)
        for name in expected:
            np.testing.assert_allclose(
                result[name], expected[name], atol=LAYOUT_ATOL, err_msg=f"{process_id}:{name}"
            )


class _CompileCounter(logging.Handler):
    def __init__(self, name):
        super().__init__()
        self.name_fragment, self.count = name, 0

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Compiling") and self.name_fragment in message:
            self.count += 1


def test_second_call_does_not_recompile():
    # A setup of its own: JAX's caches are keyed on the step function, and the other tests'
    # compilations of the shared one would hide the first compile from the count.
    worker_setup = train_step_worker.make_setup()
    mesh = make_mesh()
    state = create_train_state(
        worker_setup["init_fn"], worker_setup["init_key"], worker_setup["optimizer"], mesh
    )
    train_step = jit_train_step(worker_setup["train_step"], mesh)
    counter = _CompileCounter("train_step")
    logger = logging.getLogger("jax")
    logger.addHandler(counter)
    try:
        with jax.log_compiles(True):
            compiles = []
            for _ in range(3):
                state, metrics = train_step(state, worker_setup["batch"], worker_setup["step_key"])
                compiles.append(counter.count)
    finally:
        logger.removeHandler(counter)
    assert compiles == [1, 1, 1]
    assert int(state.step) == 3 and bool(metrics["is_finite"])


class _LabelProbe(nn.Module):
    """An x0-prediction of 1 exactly where cond['label'] is the null label, so with all-zero
    images the unweighted MSE metric is the fraction of conditions dropped."""

    num_classes: int

    cond_keys = ("label",)

    def null_cond(self, cond):
        return {"label": jnp.full_like(cond["label"], self.num_classes)}

    @nn.compact
    def __call__(self, x_t, t, cond, train=False):
        unused = self.param("unused", nn.initializers.zeros, ())
        is_null = (cond["label"] == self.num_classes).astype(x_t.dtype)[:, None, None, None]
        return jnp.zeros_like(x_t) + is_null + 0.0 * unused


@pytest.mark.parametrize("cond_dropout", [0.0, 0.25])
def test_cond_dropout_reaches_the_model(cond_dropout):
    num_classes, batch_size = 5, 4096
    optimizer = optax.sgd(0.0)
    loss_fn = make_denoising_loss(
        _LabelProbe(num_classes), get_schedule("cosine", 10), prediction_type="x0",
        cond_dropout=cond_dropout,
    )  # fmt: skip
    train_step = make_train_step(loss_fn, optimizer)
    params = {"unused": jnp.zeros(())}
    state = TrainState(jnp.int32(0), params, params, optimizer.init(params))
    batch = {
        "image": jnp.zeros((batch_size, 1, 1, 1)),
        "cond": {"label": jnp.asarray(np.arange(batch_size) % num_classes, jnp.int32)},
    }
    _, metrics = jax.jit(train_step)(state, batch, jax.random.key(0), {})
    # Binomial(4096, p) / 4096 has std sqrt(p (1 - p) / 4096) ~ 0.0068 at p = 0.25: 5 std.
    tolerance = 5 * np.sqrt(cond_dropout * (1 - cond_dropout) / batch_size)
    assert abs(float(metrics["mse"]) - cond_dropout) <= tolerance


@pytest.fixture(scope="module")
def single_device(worker_setup):
    """A fresh single-device state per call and one compiled step shared by the tests."""
    mesh = make_mesh(jax.devices()[:1])
    state = create_train_state(
        worker_setup["init_fn"], worker_setup["init_key"], worker_setup["optimizer"], mesh
    )
    # The jitted step donates its input state: hand each caller its own copy.
    return lambda: jax.tree.map(jnp.copy, state), jit_train_step(worker_setup["train_step"], mesh)


def test_step_updates_ema_and_counts(worker_setup, single_device):
    fresh_state, train_step = single_device
    state = fresh_state()
    initial_params = jax.tree.map(np.asarray, state.params)
    new_state, metrics = train_step(state, worker_setup["batch"], worker_setup["step_key"])
    assert int(new_state.step) == 1
    # decay_0 = min(0.99, 1/10) = 0.1: ema = 0.1 * params_0 + 0.9 * params_1.
    assert float(metrics["ema_decay"]) == pytest.approx(0.1)
    expected_ema = jax.tree.map(
        lambda p0, p1: 0.1 * p0 + 0.9 * np.asarray(p1), initial_params, new_state.params
    )
    chex.assert_trees_all_close(new_state.ema_params, expected_ema, rtol=1e-6, atol=1e-7)
    for name in ("loss", "mse", "grad_norm", "param_norm", "ema_decay", "is_finite"):
        assert metrics[name].shape == ()


def test_per_step_noise_comes_from_the_step_counter(worker_setup, single_device):
    """Same state + key -> same result (a resumed run replays its noise); another step index
    -> other noise."""
    fresh_state, train_step = single_device
    batch, key = worker_setup["batch"], worker_setup["step_key"]
    _, first = train_step(fresh_state(), batch, key)
    _, again = train_step(fresh_state(), batch, key)
    _, later = train_step(fresh_state().replace(step=jnp.int32(7)), batch, key)
    assert float(first["loss"]) == float(again["loss"])
    assert float(first["loss"]) != float(later["loss"])


@pytest.mark.parametrize("skip_nonfinite", [False, True])
def test_nonfinite_batch(skip_nonfinite):
    model = train_step_worker.TinyDenoiser()
    optimizer = make_optimizer(1e-2)
    loss_fn = make_denoising_loss(model, get_schedule("cosine", train_step_worker.NUM_TIMESTEPS))
    train_step = make_train_step(loss_fn, optimizer, skip_nonfinite=skip_nonfinite)
    mesh = make_mesh(jax.devices()[:1])

    def init_fn(key):
        return model.init(key, jnp.zeros((1, 4, 4, 2)), jnp.zeros((1,), jnp.int32))["params"]

    state = create_train_state(init_fn, jax.random.key(0), optimizer, mesh)
    before = jax.tree.map(np.asarray, state)
    image = np.random.default_rng(0).uniform(-1, 1, (4, 4, 4, 2)).astype(np.float32)
    image[3, 0, 0, 0] = np.nan
    new_state, metrics = jax.jit(train_step)(state, {"image": image}, jax.random.key(1), {})
    assert not bool(metrics["is_finite"])
    assert int(new_state.step) == 1
    if skip_nonfinite:
        chex.assert_trees_all_equal(
            (new_state.params, new_state.ema_params, new_state.opt_state),
            (before.params, before.ema_params, before.opt_state),
        )
    else:
        assert not np.all(np.isfinite(np.asarray(new_state.params["Dense_0"]["kernel"])))


def test_batch_not_divisible_by_devices_names_both_numbers(worker_setup):
    mesh = make_mesh()
    state = create_train_state(
        worker_setup["init_fn"], worker_setup["init_key"], worker_setup["optimizer"], mesh
    )
    batch = jax.tree.map(lambda value: value[:12], worker_setup["batch"])
    with pytest.raises(ValueError, match=r"batch size 12 .* devices 8"):
        jit_train_step(worker_setup["train_step"], mesh)(state, batch, worker_setup["step_key"])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(prediction_type="score"), ValueError, r"'eps', 'x0', 'v'"),
        (dict(weighting="p2"), ValueError, r"'uniform', 'min_snr'"),
        (dict(cond_dropout=0.1), ValueError, "an unconditional network has nothing to drop"),
        (dict(cond_dropout=1.0), ValueError, r"cond_dropout must lie in \[0, 1\)"),
    ],
)
def test_loss_factory_rejects_bad_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        make_denoising_loss(train_step_worker.TinyDenoiser(), get_schedule("cosine", 10), **kwargs)


def test_make_train_step_rejects_bad_options():
    loss_fn = make_denoising_loss(train_step_worker.TinyDenoiser(), get_schedule("cosine", 10))
    with pytest.raises(ValueError, match=r"ema_decay must lie in \[0, 1\]"):
        make_train_step(loss_fn, optax.sgd(0.1), ema_decay=1.5)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        make_train_step("loss", optax.sgd(0.1))


@pytest.mark.parametrize(
    "batch, error, message",
    [
        ({"pixels": np.zeros((2, 4, 4, 2), np.float32)}, ValueError, "needs an 'image'"),
        (
            {"image": np.zeros((2, 4, 4, 2), np.uint8), "cond": {"label": np.zeros(2, np.int32)}},
            TypeError,
            "float array",
        ),
        ({"image": np.zeros((2, 4, 4, 2), np.float32)}, ValueError, r"needs cond keys \['label'\]"),
    ],
)
def test_bad_batches_raise_before_compiling(worker_setup, single_device, batch, error, message):
    fresh_state, _ = single_device
    with pytest.raises(error, match=message):
        worker_setup["train_step"](fresh_state(), batch, worker_setup["step_key"], {})


def _frozen_teacher_loss(params, frozen, batch, key, train):
    """A distillation-shaped loss: regress onto a frozen 'teacher' matrix applied to the batch."""
    teacher = jnp.tanh(batch["image"].reshape(batch["image"].shape[0], -1) @ frozen["teacher"])
    student = batch["image"].reshape(batch["image"].shape[0], -1) @ params["w"]
    return jnp.mean((student - teacher) ** 2), {}


def test_frozen_arrays_are_arguments_not_constants_and_compile_once():
    dim = 256
    optimizer = optax.sgd(0.1)
    params = {"w": jnp.zeros((dim, dim))}
    state = TrainState(jnp.int32(0), params, params, optimizer.init(params))
    batch = {"image": np.ones((8, 16, 16, 1), np.float32)}
    teacher = {"teacher": jax.random.normal(jax.random.key(0), (dim, dim))}
    mesh = make_mesh(jax.devices()[:1])
    train_step = jit_train_step(make_train_step(_frozen_teacher_loss, optimizer), mesh)
    hlo = train_step.jitted.lower(state, batch, jax.random.key(1), teacher).as_text()
    # The teacher's 256 x 256 float32 values (256 KiB) would be printed into the HLO if they
    # were closed over; as an argument they are a parameter of a few bytes of text.
    assert len(hlo) < dim * dim, len(hlo)
    baked = jax.jit(
        lambda s, b, k: make_train_step(_frozen_teacher_loss, optimizer)(s, b, k, teacher)
    )
    assert len(baked.lower(state, batch, jax.random.key(1)).as_text()) > 4 * dim * dim
    first, _ = train_step(jax.tree.map(jnp.copy, state), batch, jax.random.key(1), teacher)
    other_teacher = {"teacher": -teacher["teacher"]}
    second, _ = train_step(jax.tree.map(jnp.copy, state), batch, jax.random.key(1), other_teacher)
    assert train_step.jitted._cache_size() == 1
    assert not np.allclose(first.params["w"], second.params["w"])


def test_bfloat16_params_keep_float32_ema_and_optimizer_state_and_compile_once():
    """Adam's b2 = 0.999 is 1.0 in bfloat16 (its bias correction would divide by zero), and an
    EMA that turned float32 after one step would recompile: both stay float32 from the start."""
    model = UNet(
        base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(),
        dropout=0.0, num_groups=4, param_dtype=jnp.bfloat16,
    )  # fmt: skip
    schedule = get_schedule("cosine", 100)
    optimizer = make_optimizer(1e-3, warmup_steps=1)
    mesh = make_mesh(jax.devices()[:1])

    def init_fn(key):
        return model.init(key, jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32))["params"]

    state = create_train_state(init_fn, jax.random.key(0), optimizer, mesh)
    step = jit_train_step(make_train_step(make_denoising_loss(model, schedule), optimizer), mesh)

    def dtypes(tree):
        return {
            leaf.dtype for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)
        }

    for _ in range(3):
        state, metrics = step(state, {"image": _fixed_images()}, jax.random.key(1))
        assert bool(metrics["is_finite"]), metrics
    assert dtypes(state.params) == {jnp.dtype(jnp.bfloat16)}
    assert dtypes(state.ema_params) == dtypes(state.opt_state) == {jnp.dtype(jnp.float32)}
    assert step.jitted._cache_size() == 1


def _two_layer_loss(params, frozen, batch, key, train):
    hidden = jnp.tanh(batch["image"].reshape(batch["image"].shape[0], -1) @ params["body"]["w"])
    prediction = hidden @ params["head"]["w"]
    return jnp.mean((prediction - 1.0) ** 2), {}


def _two_layer_params():
    keys = jax.random.split(jax.random.key(0), 2)
    return {
        "body": {"w": jax.random.normal(keys[0], (16, 8)) / 4},
        "head": {"w": jax.random.normal(keys[1], (8, 1)) / 3},
    }


def test_a_frozen_group_stays_bit_identical_and_has_no_optimizer_state():
    params = _two_layer_params()
    labels = {"body": {"w": "frozen"}, "head": {"w": "head"}}
    trainable = jax.tree.map(lambda label: label != "frozen", labels)
    optimizer = group_optimizer(trainable_part(labels, trainable), {"head": optax.adam(1e-2)})
    mesh = make_mesh(jax.devices()[:1])
    state = create_train_state(lambda key: params, jax.random.key(0), optimizer, mesh,
                               trainable=trainable)  # fmt: skip
    # Adam's two moments for the head's 8 weights, nothing for the body's 128.
    moments = [leaf.size for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim]
    assert sum(moments) == 2 * 8
    step = jit_train_step(make_train_step(_two_layer_loss, optimizer, trainable=trainable), mesh)
    batch = {"image": np.random.default_rng(0).normal(size=(8, 4, 4, 1)).astype(np.float32)}
    for _ in range(3):
        state, metrics = step(state, batch, jax.random.key(1))
    np.testing.assert_array_equal(state.params["body"]["w"], params["body"]["w"])
    np.testing.assert_array_equal(state.ema_params["body"]["w"], params["body"]["w"])
    assert not np.array_equal(state.params["head"]["w"], params["head"]["w"])
    assert float(metrics["loss"]) < float(_two_layer_loss(params, {}, batch, None, True)[0])


def test_groups_with_their_own_rates_and_updates_in_alternation():
    """Two groups of SGD with rates 0.1 and 0.2, the second updated only on odd steps (a GAN
    discriminator's schedule): each group's change is its rate times its gradient, on its steps."""
    params = _two_layer_params()
    labels = {"body": {"w": "body"}, "head": {"w": "head"}}
    optimizer = group_optimizer(
        labels,
        {
            "body": optax.sgd(0.1),
            "head": optax.transforms.conditionally_mask(optax.sgd(0.2), lambda n: n % 2 == 1),
        },
    )
    state = TrainState(jnp.int32(0), params, params, optimizer.init(params))
    step = jax.jit(make_train_step(_two_layer_loss, optimizer))
    batch = {"image": np.random.default_rng(0).normal(size=(8, 4, 4, 1)).astype(np.float32)}
    for number in range(3):
        grads = jax.grad(lambda p: _two_layer_loss(p, {}, batch, None, True)[0])(state.params)
        before = state.params
        state, _ = step(state, batch, jax.random.key(1), {})
        np.testing.assert_allclose(
            state.params["body"]["w"], before["body"]["w"] - 0.1 * grads["body"]["w"], atol=1e-7
        )
        head_rate = 0.2 if number % 2 == 1 else 0.0
        np.testing.assert_allclose(
            state.params["head"]["w"], before["head"]["w"] - head_rate * grads["head"]["w"],
            atol=1e-7,
        )  # fmt: skip


def _running_mean_loss(params, frozen, batch, key, train, extra):
    """A loss that keeps state outside the gradient: the running mean of the batch means."""
    mean = jnp.mean(batch["image"])
    count = extra["count"] + 1
    new_extra = {"count": count, "mean": extra["mean"] + (mean - extra["mean"]) / count}
    loss = jnp.mean((batch["image"] * params["w"] - new_extra["mean"]) ** 2)
    return loss, ({}, new_extra)


def test_state_outside_the_gradient_is_carried_by_the_step():
    optimizer = optax.sgd(0.01)
    params = {"w": jnp.float32(0.5)}
    extra = {"count": jnp.float32(0.0), "mean": jnp.float32(0.0)}
    state = TrainState(jnp.int32(0), params, params, optimizer.init(params), extra)
    step = jax.jit(make_train_step(_running_mean_loss, optimizer, stateful=True))
    means = []
    for index in range(4):
        image = np.full((2, 1, 1, 1), float(index), np.float32)
        means.append(float(index))
        state, _ = step(state, {"image": image}, jax.random.key(0), {})
    assert float(state.extra["count"]) == 4.0
    np.testing.assert_allclose(float(state.extra["mean"]), np.mean(means), rtol=1e-6)
