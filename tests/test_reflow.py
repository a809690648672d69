"""Reflow: the pair dataset (resumable, device-invariant), straightness, the paired loss, and
``python -m diffjax.reflow``'s program end to end on a tiny run.

The science test uses an exact coupling: two Gaussian modes in 2-D, whose 1-rectified flow
(the independent coupling's velocity E[eps - x0 | x_t]) is closed-form (tests/gaussian_oracle.py).
Its ODE maps noise to data along curved paths (noise near the boundary between the modes is
bent towards one of them); a small network trained on the (noise, ODE sample) pairs, the
2-rectified flow, must have straighter paths and better one-step samples.
"""

import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

import diffjax as dj
from diffjax import samplers
from diffjax.data.pairs import load_pairs, pair_dataset
from diffjax.errors import ConfigError
from diffjax.metrics import straightness
from diffjax.pipelines import reflow
from diffjax.training.loop import train_and_evaluate

sys.path.insert(0, str(Path(__file__).parent))
import gaussian_oracle as oracle  # noqa: E402
from train_helpers import (  # noqa: E402
    fast_compiles,
    make_image_folder,
    make_test_config,
    mlp,
    mlp_init,
)

PROCESS = dj.RectifiedFlow()
TWO_MODES = oracle.GaussianMixture(
    np.asarray([0.5, 0.5]), np.asarray([[-1.5, 0.0], [1.5, 0.0]]), np.full((2, 2), 0.2)
)


def test_straightness_of_a_straight_path_is_zero_and_of_a_bent_one_its_closed_form():
    times = jnp.linspace(1.0, 0.0, 5)
    start, end = jnp.asarray([[1.0, 2.0]]), jnp.asarray([[3.0, -1.0]])
    line = start[None] + (1.0 - times)[:, None, None] * (end - start)[None]
    assert float(straightness(line, times)) == pytest.approx(0.0, abs=1e-12)
    # Out along one axis and back (x = 0 -> 1 -> 0 over t in [1, 0]): chord 0, speed 2.
    bent = jnp.asarray([[[0.0]], [[1.0]], [[0.0]]])
    assert float(straightness(bent, jnp.asarray([1.0, 0.5, 0.0]))) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="path must be"):
        straightness(line, times[:3])


def _exact_pairs(noise):
    model_fn = oracle.exact_model_fn(TWO_MODES, PROCESS, "flow")
    return samplers.flow_heun_sample(
        model_fn, PROCESS, jax.random.key(0), noise.shape, x_T=noise, num_steps=100,
        prediction_type="flow",
    )  # fmt: skip


def _euler_paths(model_fn, noise, num_steps):
    samples, trajectory = samplers.flow_euler_sample(
        model_fn, PROCESS, jax.random.key(0), noise.shape, x_T=noise, num_steps=num_steps,
        prediction_type="flow", return_trajectory=True,
    )  # fmt: skip
    path = jnp.concatenate([trajectory.x_t, samples[None]])
    return path, jnp.concatenate([trajectory.timesteps, jnp.zeros(1)])


def _one_step_error(model_fn, noise):
    """Mean squared distance of one-step Euler samples to the nearest mode centre."""
    x = samplers.flow_euler_sample(
        model_fn, PROCESS, jax.random.key(0), noise.shape, x_T=noise, num_steps=1,
        prediction_type="flow",
    )  # fmt: skip
    distances = ((np.asarray(x)[:, None] - TWO_MODES.means[None]) ** 2).sum(-1)
    return float(distances.min(1).mean())


def _train_on_pairs(params, pairs_dir, num_steps, time_sampler=None):
    """Adam on the paired flow-matching loss (the noise of each pair given)."""
    dataset = pair_dataset(pairs_dir, batch_size=512, seed=0)
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state, batch, key):
        def loss_fn(params):
            return dj.denoising_loss(
                jax.tree_util.Partial(mlp, params), PROCESS, batch["image"], key,
                prediction_type="flow", noise=batch["noise"], time_sampler=time_sampler,
            )[0]  # fmt: skip

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    iterator = iter(dataset)
    for step in range(num_steps):
        batch = jax.tree.map(jnp.asarray, next(iterator))
        params, opt_state, _ = train_step(params, opt_state, batch, jax.random.key(step))
    return params


@pytest.fixture(scope="module")
def two_rectified(tmp_path_factory):
    """The 2-rectified flow of the exact two-mode flow: an MLP trained on its ODE's pairs."""
    folder = tmp_path_factory.mktemp("two_rectified")
    manifest = reflow.generate_pairs(
        jax.jit(_exact_pairs), folder / "pairs", num_pairs=4096, batch_size=1024, seed=0,
        shape=(2,), settings=dict(teacher="exact two-mode flow"), progress=False,
    )  # fmt: skip
    assert manifest["num_pairs"] == 4096
    return _train_on_pairs(mlp_init(jax.random.key(1)), folder / "pairs", 3000), folder


def test_reflow_of_an_exact_two_mode_flow_straightens_it(two_rectified):
    params, _ = two_rectified
    noise = jax.random.normal(jax.random.key(2), (2048, 2))
    teacher = oracle.exact_model_fn(TWO_MODES, PROCESS, "flow")
    student = jax.tree_util.Partial(mlp, params)
    before = float(straightness(*_euler_paths(teacher, noise, 16)))
    after = float(straightness(*_euler_paths(student, noise, 16)))
    assert after < before / 4, (before, after)
    # One Euler step of the 1-rectified flow lands between the modes (at E[x0] = 0 for t = 1);
    # the 2-rectified flow's one step lands near a mode.
    assert _one_step_error(student, noise) < _one_step_error(teacher, noise) / 4


@pytest.mark.slow
def test_distilling_the_two_rectified_flow_makes_its_one_step_its_ode(two_rectified):
    # k-RF + distillation (Liu et al. 2022, Sec. 2.3): pairs of the 2-RF's own 16-step ODE, and
    # training at t = 1 only, where the one Euler step starts. The one step must then reproduce
    # the 2-RF's ODE sample of fresh noise much better than the 2-RF's own one step does.
    params, folder = two_rectified
    two_rf = jax.tree_util.Partial(mlp, params)

    @jax.jit
    def ode_of_two_rf(noise):
        return samplers.flow_heun_sample(
            two_rf, PROCESS, jax.random.key(0), noise.shape, x_T=noise, num_steps=16,
            prediction_type="flow",
        )  # fmt: skip

    reflow.generate_pairs(
        ode_of_two_rf, folder / "distill_pairs", num_pairs=4096, batch_size=1024, seed=1,
        shape=(2,), settings=dict(teacher="2-RF"), progress=False,
    )  # fmt: skip
    distilled = jax.tree_util.Partial(
        mlp, _train_on_pairs(params, folder / "distill_pairs", 3000, dj.constant_times(1.0))
    )
    noise = jax.random.normal(jax.random.key(3), (2048, 2))
    target = np.asarray(ode_of_two_rf(noise))

    def distance(model_fn):
        one_step = samplers.flow_euler_sample(
            model_fn, PROCESS, jax.random.key(0), noise.shape, x_T=noise, num_steps=1,
            prediction_type="flow",
        )  # fmt: skip
        return float(np.mean((np.asarray(one_step) - target) ** 2))

    assert distance(distilled) < distance(two_rf) / 4, (distance(distilled), distance(two_rf))


def _sample_first(noise):
    model_fn = oracle.exact_model_fn(TWO_MODES, PROCESS, "flow")
    return samplers.flow_euler_sample(
        model_fn, PROCESS, jax.random.key(0), noise.shape, x_T=noise, num_steps=5,
        prediction_type="flow",
    )  # fmt: skip


class Interrupted(Exception):
    pass


def test_pairs_resume_after_an_interruption_and_do_not_depend_on_the_devices(tmp_path):
    settings = dict(teacher="exact")
    mesh = Mesh(np.asarray(jax.devices()), ("data",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    sharded = jax.jit(_sample_first, in_shardings=sharding, out_shardings=sharding)
    kwargs = dict(num_pairs=40, batch_size=16, seed=3, shape=(2,), settings=settings,
                  progress=False)  # fmt: skip
    reflow.generate_pairs(sharded, tmp_path / "whole", **kwargs)
    calls = []

    def dies_on_the_third_call(noise):
        calls.append(1)
        if len(calls) == 3:
            raise Interrupted
        return _sample_first(noise)

    with pytest.raises(Interrupted):
        reflow.generate_pairs(dies_on_the_third_call, tmp_path / "resumed", **kwargs)
    assert sorted(os.listdir(tmp_path / "resumed")) == [
        "pairs.json", "pairs_00000.npz", "pairs_00001.npz"
    ]  # fmt: skip
    # A write killed half-way leaves only a temporary file, which is ignored.
    (tmp_path / "resumed" / ".pairs_00002.npz.tmp").write_bytes(b"half a file")
    jitted = jax.jit(_sample_first)

    def one_device(noise):
        return jitted(jax.device_put(noise, jax.devices()[0]))

    reflow.generate_pairs(one_device, tmp_path / "resumed", **kwargs)
    whole, resumed = load_pairs(tmp_path / "whole"), load_pairs(tmp_path / "resumed")
    np.testing.assert_array_equal(whole["noise"], resumed["noise"])
    # The samples are the same function of the same noise; XLA compiles the sharded and the
    # one-device program with different fusions, so they may differ in the float32 rounding of
    # the model's arithmetic: a few ulps (|x| ~ 1.5: 1e-7 each) over 5 steps.
    np.testing.assert_allclose(whole["image"], resumed["image"], rtol=0, atol=2e-6)
    assert whole["image"].shape == (40, 2)
    with pytest.raises(ValueError, match="other settings"):
        reflow.generate_pairs(one_device, tmp_path / "resumed", **dict(kwargs, seed=4))


def test_the_pair_iterator_resumes_and_is_host_invariant(tmp_path):
    reflow.generate_pairs(
        jax.jit(_sample_first), tmp_path, num_pairs=48, batch_size=16, seed=0, shape=(2,),
        settings={}, progress=False,
    )  # fmt: skip
    one_host = iter(pair_dataset(tmp_path, batch_size=8, seed=5))
    batches = [next(one_host) for _ in range(7)]  # 6 per epoch: crosses into epoch 2
    state = json.loads(json.dumps(one_host.get_state()))
    following = next(one_host)
    hosts = [
        iter(pair_dataset(tmp_path, batch_size=4, seed=5, process_index=i, process_count=2))
        for i in range(2)
    ]  # fmt: skip
    for batch in batches:
        halves = [next(host) for host in hosts]
        np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), batch["image"])
    fresh = iter(pair_dataset(tmp_path, batch_size=8, seed=5))
    fresh.set_state(state)
    np.testing.assert_array_equal(next(fresh)["noise"], following["noise"])
    other = iter(pair_dataset(tmp_path, batch_size=8, seed=6))
    with pytest.raises(ValueError, match="other arguments"):
        other.set_state(state)


def test_the_denoising_loss_uses_given_noise():
    x0 = jnp.ones((4, 2))
    noise = jnp.full((4, 2), 2.0)
    _, aux = dj.denoising_loss(
        lambda x, t: jnp.zeros_like(x), PROCESS, x0, jax.random.key(0),
        prediction_type="flow", noise=noise,
    )  # fmt: skip
    np.testing.assert_array_equal(aux["noise"], noise)
    with pytest.raises(ValueError, match="noise has shape"):
        dj.denoising_loss(lambda x, t: x, PROCESS, x0, jax.random.key(0), noise=jnp.ones((4, 3)))


FLOW_8 = {
    "diffusion.process": "rectified_flow", "diffusion.prediction_type": "flow",
    "sampling.sampler": "flow_euler", "training.num_steps": 4,
}  # fmt: skip


@pytest.fixture(scope="module")
def flow_teacher(tmp_path_factory):
    data_dir = make_image_folder(tmp_path_factory.mktemp("images"))
    workdir = str(tmp_path_factory.mktemp("teacher"))
    with fast_compiles():
        train_and_evaluate(make_test_config(data_dir, **FLOW_8), workdir)
    return workdir, data_dir


@pytest.mark.slow
def test_the_reflow_program_runs_end_to_end_and_resumes(flow_teacher, tmp_path):
    teacher, _ = flow_teacher
    kwargs = dict(
        num_pairs=24, pair_batch=8, sampler="flow_euler", num_steps=3, options={}, seed=0,
        train_steps=3, overrides={"training.checkpoint_every_steps": 3},
        straightness_num=8, straightness_steps=4,
    )  # fmt: skip
    with fast_compiles():
        report = reflow.reflow(teacher, tmp_path / "student", **kwargs)
        assert report["student_step"] == 3 and report["teacher_step"] == 4
        assert report["straightness"]["teacher"] > 0 and report["straightness"]["student"] > 0
        with open(tmp_path / "student" / "config.json") as f:
            saved = json.load(f)["config"]["training"]
        assert saved["init_from"] == teacher
        again = reflow.reflow(teacher, tmp_path / "student", **kwargs)
    assert again["straightness"] == report["straightness"]
    assert again["one_step_distance"] == report["one_step_distance"]
    assert report["mode"] == "reflow" and report["one_step_distance"]["student"] > 0
    with open(tmp_path / "student" / "reflow.json") as f:
        assert json.load(f)["pairs"]["num_pairs"] == 24


def test_the_distill_program_trains_at_the_noise_end_only(flow_teacher, tmp_path):
    teacher, _ = flow_teacher
    with fast_compiles():
        report = reflow.reflow(
            teacher, tmp_path / "distilled", num_pairs=16, pair_batch=8, sampler="flow_euler",
            num_steps=3, options={}, seed=0, train_steps=2, overrides={}, straightness_num=8,
            straightness_steps=4, distill=True,
        )  # fmt: skip
    assert report["mode"] == "distill" and report["straightness"]["student"] is None
    distance = report["one_step_distance"]
    assert distance["teacher"] > 0 and distance["student"] > 0
    assert distance["target"]["sampler"] == "flow_euler"
    with open(tmp_path / "distilled" / "config.json") as f:
        diffusion = json.load(f)["config"]["diffusion"]
    assert diffusion["time_sampler"] == "constant"
    assert diffusion["time_sampler_options"] == {"t": 1.0}


def test_the_reflow_program_refuses_bad_input_before_compiling(flow_teacher, tmp_path):
    teacher, data_dir = flow_teacher
    kwargs = dict(
        num_pairs=24, pair_batch=8, sampler="flow_euler", num_steps=3, options={}, seed=0,
        train_steps=3, overrides={}, straightness_num=8, straightness_steps=4,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="not deterministic"):
        reflow.reflow(teacher, tmp_path / "a", **dict(kwargs, sampler="euler_maruyama",
                                                       options={"t_max": 0.999}))  # fmt: skip
    with pytest.raises(ConfigError, match="not deterministic"):
        reflow.reflow(teacher, tmp_path / "a", **dict(kwargs, sampler="ddim",
                                                       options={"eta": 1.0}))  # fmt: skip
    with pytest.raises(ConfigError, match="must differ"):
        reflow.reflow(teacher, teacher, **kwargs)
    with pytest.raises(ConfigError, match="no key 'nope'"):
        reflow.reflow(teacher, tmp_path / "a", **dict(kwargs, overrides={"optim.nope": 1}))
