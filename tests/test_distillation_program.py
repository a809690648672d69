"""``python -m diffjax.distill`` (diffjax/pipelines/distillation.py, diffjax/distill.py): rounds,
their bookkeeping, the evaluations, resumption after SIGKILL, guidance distillation and the
errors raised before anything compiles, on tiny teachers."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.errors import ConfigError
from diffjax.models import UNet
from diffjax.models.conditioning import make_model_fn
from diffjax.pipelines import distillation
from diffjax.training.loop import train_and_evaluate
from diffjax.training.objectives.distillation import _teacher_fn
from diffjax.training.workdir import IncompatibleResumeError

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import (  # noqa: E402
    PYTHON,
    REPO,
    assert_states_equal,
    fast_compiles,
    make_image_folder,
    make_test_config,
    restore_full,
    run_cli,
    subprocess_env,
)

V_ZERO_SNR = {
    "data.image_size": 28, "model.attn_resolutions": (14,), "diffusion.prediction_type": "v",
    "diffusion.zero_terminal_snr": True, "training.num_steps": 4,
}  # fmt: skip
SETTINGS = dict(start_steps=4, end_steps=1, steps_per_round=4, fd_num_samples=8, fd_batch_size=8)


def _distill_config(**overrides):
    config = distillation.distill_config()
    for key, value in {**SETTINGS, **overrides}.items():
        config[key] = value
    return config


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 4-step v-prediction teacher on zero-terminal-SNR cosine, 28x28 (FD-FMNIST works)."""
    data_dir = make_image_folder(tmp_path_factory.mktemp("images28"), num_per_class=8, size=28)
    workdir = str(tmp_path_factory.mktemp("teacher"))
    config = make_test_config(data_dir, **V_ZERO_SNR)
    config.sampling.options = {"spacing": "trailing"}
    with fast_compiles():
        train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def distilled(teacher, tmp_path_factory):
    """The uninterrupted distillation 8 -> 4 -> 2 -> 1 steps, with every evaluation."""
    workdir = str(tmp_path_factory.mktemp("distilled"))
    before = sorted(os.listdir(teacher))
    with fast_compiles():
        report = distillation.distill(_distill_config(), teacher, workdir)
    assert sorted(os.listdir(teacher)) == before  # the teacher's folder is read only
    return workdir, report


@pytest.mark.slow
def test_rounds_halve_the_steps_and_chain_their_teachers(teacher, distilled):
    workdir, report = distilled
    assert [entry["steps"] for entry in report["rounds"]] == [4, 2, 1]
    expected_teacher = teacher
    for entry in report["rounds"]:
        folder = os.path.join(workdir, entry["folder"])
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)["config"]
        objective = config["objective"]
        assert objective["name"] == "progressive_distillation"
        assert objective["student_steps"] == entry["steps"]
        assert objective["teacher"] == config["training"]["init_from"] == expected_teacher
        assert config["optim"]["lr_decay"] == "linear" and config["optim"]["ema_decay"] == 0.0
        assert config["sampling"]["num_steps"] == entry["steps"]
        assert config["sampling"]["options"] == {"spacing": "trailing"}
        # The learning rate of the round's last update: 1/4 of the peak, annealing to 0.
        records = [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl"))]
        rates = [r["learning_rate"] for r in records if "learning_rate" in r]
        assert rates[-1] == pytest.approx(config["optim"]["learning_rate"] / 4, rel=1e-5)
        assert set(entry["fd"]) == {"student", "teacher_ddim", "teacher_dpm_solver"}
        assert all(np.isfinite(value) for value in entry["fd"].values())
        expected_teacher = folder


@pytest.mark.slow
def test_the_workdir_samples_as_its_last_student_and_cannot_be_trained_in(distilled):
    workdir, report = distilled
    run = dj.load_trained_run(workdir)
    assert run.config["objective"]["student_steps"] == 1
    assert run.config["sampling"]["num_steps"] == 1
    last = os.path.join(workdir, report["rounds"][-1]["folder"])
    assert run.step == dj.load_trained_run(last).step == 4
    images = dj.sample_run(run, 4)
    assert images.shape == (4, 28, 28, 1) and np.all(np.isfinite(images))
    with pytest.raises(IncompatibleResumeError, match="folder of chained runs"):
        train_and_evaluate(run.config, workdir)


@pytest.mark.slow
def test_a_rerun_resumes_from_the_records_and_refuses_other_settings(teacher, distilled):
    workdir, report = distilled
    again = distillation.distill(_distill_config(), teacher, workdir)
    assert again["rounds"] == report["rounds"]
    with pytest.raises(ConfigError, match="other settings"):
        distillation.distill(_distill_config(steps_per_round=6), teacher, workdir)


def _bad_teacher(teacher, tmp_path, **diffusion):
    """A copy of the teacher's folder whose config.json says other diffusion settings."""
    copy = tmp_path / "bad_teacher"
    shutil.copytree(teacher, copy)
    record = json.loads((copy / "config.json").read_text())
    record["config"]["diffusion"].update(diffusion)
    (copy / "config.json").write_text(json.dumps(record))
    return str(copy)


def test_bad_input_is_one_clear_error_before_anything_compiles(teacher, tmp_path):
    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    shutil.copy(os.path.join(teacher, "config.json"), no_checkpoint)
    cases = [
        (dict(), str(no_checkpoint), "holds no checkpoint yet"),
        (dict(), str(tmp_path / "nothing"), "holds no diffjax run"),
        (dict(start_steps=6, end_steps=4), teacher, "not reachable from start_steps=6"),
        (dict(start_steps=512), teacher, "needs a teacher grid of 1024"),
        (dict(student_prediction="eps"), teacher, "student prediction 'eps' cannot express"),
        (dict(guidance=True), teacher, "needs a class-conditional teacher"),
        (dict(fd_features="clip"), teacher, "fd_features must be"),
        (dict(student={"optim": {"nope": 1}}), teacher, "config.optim has no key 'nope'"),
        (dict(), _bad_teacher(teacher, tmp_path, prediction_type="eps"), "zero SNR"),
    ]
    for overrides, source, message in cases:
        workdir = tmp_path / "student"
        with pytest.raises(ConfigError, match=message):
            distillation.distill(_distill_config(**overrides), source, workdir)
        assert not workdir.exists()
    with pytest.raises(ConfigError, match="outside --teacher"):
        distillation.distill(_distill_config(), teacher, os.path.join(teacher, "pd"))


def test_the_cli_reports_a_bad_config_in_one_line(teacher, tmp_path):
    result = run_cli(
        [PYTHON, "-m", "diffjax.distill", f"--config={REPO / 'configs/fashion_mnist_distill.py'}",
         f"--teacher={teacher}", f"--workdir={tmp_path / 'pd'}", "--config.end_steps=3"],
        num_devices=2,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("diffjax.distill:")]
    assert lines == [
        "diffjax.distill: error: end_steps=3 is not reachable from start_steps=64 by halving; "
        "each round halves the steps, so start_steps must be end_steps times a power of two "
        "(e.g. 48)."
    ]


# --------------------------------------------------------------------------- SIGKILL, resume


class _Child:
    """``python -m diffjax.distill`` in a subprocess, its stderr read in a thread."""

    def __init__(self, command):
        self.process = subprocess.Popen(
            command, cwd=REPO, env=subprocess_env(), stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line)

    def kill_when(self, predicate, timeout=300):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.process.poll() is None, "".join(self.lines[-20:])
            assert time.monotonic() < deadline, "the moment to kill never came"
            time.sleep(0.002)
        self.process.send_signal(signal.SIGKILL)
        return self.process.wait(30)


def _checkpoints(folder):
    path = os.path.join(folder, "checkpoints")
    return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


@pytest.mark.slow
def test_sigkill_mid_round_and_at_a_round_boundary_resumes_bit_identically(
    teacher, distilled, tmp_path
):
    reference, report = distilled
    config_file = tmp_path / "distill_config.py"
    config_file.write_text(
        "from diffjax.pipelines.distillation import distill_config\n\n\n"
        "def get_config():\n"
        "    config = distill_config()\n"
        + "".join(f"    config.{key} = {value!r}\n" for key, value in SETTINGS.items())
        + "    return config\n"
    )
    workdir = str(tmp_path / "killed")
    command = [
        PYTHON, "-m", "diffjax.distill", f"--config={config_file}", f"--teacher={teacher}",
        f"--workdir={workdir}",
    ]  # fmt: skip
    first, second = (os.path.join(workdir, entry["folder"]) for entry in report["rounds"][:2])
    # Mid-round: round 1 has saved step 2 of 4 (polled every 2 ms, so before step 4's save).
    child = _Child(command)
    assert child.kill_when(lambda: 2 in _checkpoints(first)) == -signal.SIGKILL
    # At the boundary: round 1 is finished (its record written), round 2 has not saved yet.
    child = _Child(command)
    assert child.kill_when(lambda: os.path.exists(os.path.join(second, "config.json"))) == (
        -signal.SIGKILL
    )
    assert os.path.exists(os.path.join(first, distillation.ROUND_FILE))
    finished = run_cli(command, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    for entry in report["rounds"]:
        got = restore_full(os.path.join(workdir, entry["folder"]))
        want = restore_full(os.path.join(reference, entry["folder"]))
        assert got.step == want.step == SETTINGS["steps_per_round"]
        assert_states_equal(got.state, want.state)
    with open(os.path.join(workdir, distillation.REPORT_FILE)) as f:
        fd = [entry["fd"] for entry in json.load(f)["rounds"]]
    # Each round's evaluation is deterministic too: the same weights, samples and reference.
    assert fd == [entry["fd"] for entry in report["rounds"]]


# ------------------------------------------------------------------------ guidance distillation


def test_the_guided_teacher_is_classifier_free_guidance_with_each_examples_scale():
    unet = UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(),
                num_classes=3, num_groups=4, dropout=0.0)  # fmt: skip
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    t = jnp.asarray([10, 200, 500, 999])
    labels = jnp.asarray([0, 1, 2, 1])
    params = unet.init(jax.random.key(1), x, t, {"label": labels})["params"]
    params = jax.tree.map(
        lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape), params
    )
    scales = jnp.asarray([0.0, 1.0, 2.5, 4.0])
    guided = _teacher_fn(unet, params, {"label": labels}, scales)(x, t)
    for i, scale in enumerate(np.asarray(scales)):
        want = make_model_fn(unet, params, {"label": labels}, guidance_scale=float(scale))(x, t)
        np.testing.assert_allclose(guided[i], want[i], rtol=1e-5, atol=1e-6)


def test_a_guidance_embedding_starts_as_the_network_without_it():
    common = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(),
                  num_classes=2, num_groups=4, dropout=0.0)  # fmt: skip
    plain, embedded = UNet(**common), UNet(**common, guidance_embedding=True)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    t, labels = jnp.asarray([3, 900]), jnp.asarray([0, 1])
    params = plain.init(jax.random.key(1), x, t, {"label": labels})["params"]
    grown = embedded.init(jax.random.key(2), x, t, {"label": labels, "guidance": jnp.ones(2)})
    grown = {**grown["params"], **params}
    cond = {"label": labels, "guidance": jnp.asarray([1.0, 3.0])}
    np.testing.assert_array_equal(
        embedded.apply({"params": grown}, x, t, cond),
        plain.apply({"params": params}, x, t, {"label": labels}),
    )
    assert embedded.cond_keys == ("label", "guidance")
    with pytest.raises(ValueError, match="needs cond\\['guidance'\\] float"):
        embedded.apply({"params": grown}, x, t, {"label": labels})


@pytest.mark.slow
def test_guidance_distillation_gives_a_one_call_student_of_the_guided_teacher(tmp_path):
    data_dir = make_image_folder(tmp_path / "images", num_per_class=8)
    config = make_test_config(
        data_dir, **{"diffusion.prediction_type": "v", "diffusion.zero_terminal_snr": True,
                     "model.num_classes": 2, "training.cond_dropout": 0.2,
                     "training.num_steps": 2, "sampling.guidance_scale": 2.0},
    )  # fmt: skip
    config.sampling.options = {"spacing": "trailing"}
    with fast_compiles():
        train_and_evaluate(config, str(tmp_path / "teacher"))
        report = distillation.distill(
            _distill_config(start_steps=2, steps_per_round=2, guidance=True, evaluate=False),
            tmp_path / "teacher", tmp_path / "pd",
        )  # fmt: skip
        student = dj.load_trained_run(tmp_path / "pd")
        samples = {w: dj.sample_run(student, 4, guidance_scale=w) for w in (1.0, 4.0)}
    objectives = []
    for entry in report["rounds"]:
        with open(tmp_path / "pd" / entry["folder"] / "config.json") as f:
            config = json.load(f)["config"]
        objectives.append(config["objective"]["teacher_guidance"])
        assert config["model"]["guidance_embedding"] and config["training"]["cond_dropout"] == 0
    assert objectives == [True, False]
    assert student.model.cond_keys == ("label", "guidance")
    assert not np.array_equal(samples[1.0], samples[4.0])  # w reaches the network


def test_condition_dropout_drops_the_same_examples_for_teacher_and_student(tmp_path):
    """A class-conditional student keeps learning the unconditional prediction: with
    ``cond_dropout`` each example's label is replaced by the null label with one draw that the
    teacher's two steps and the student share, so the training loss equals the loss of the
    batch whose dropped labels were nulled beforehand."""
    from diffjax.sharding import make_mesh
    from diffjax.training.programs import build_programs, program_spec, validate_config

    config = make_test_config(
        str(tmp_path), **{"diffusion.prediction_type": "v", "diffusion.zero_terminal_snr": True,
                          "model.num_classes": 2, "training.cond_dropout": 0.5},
    )  # fmt: skip
    config.objective = dict(
        name="progressive_distillation", teacher=str(tmp_path / "never_read"),
        teacher_prediction="v", teacher_guidance=False, student_steps=2, teacher_clip_x0=True,
        weighting="truncated_snr", guidance_min=1.0, guidance_max=4.0,
    )  # fmt: skip
    values = validate_config(config)
    dataset = dict(image_shape=(8, 8, 1), cond_spec=(("label", (), "int32"),))
    with fast_compiles():
        programs = build_programs(program_spec(values, dataset), make_mesh())
        params = programs.init_fn(jax.random.key(0))
        teacher = jax.tree.map(lambda p: p + 0.1, params)
        images = jax.random.uniform(jax.random.key(1), (8, 8, 8, 1), minval=-1, maxval=1)
        labels = jnp.asarray([0, 1, 0, 1, 1, 0, 1, 0])
        key = jax.random.key(2)
        loss_fn = programs.objective.loss_fn
        trained, _ = loss_fn(params, {"teacher": teacher}, {"image": images,
                             "cond": {"label": labels}}, key, True)  # fmt: skip
        dropped = jax.random.bernoulli(jax.random.fold_in(key, 4), 0.5, (8,))
        assert 0 < int(dropped.sum()) < 8
        nulled = {"label": jnp.where(dropped, 2, labels)}
        expected, _ = loss_fn(params, {"teacher": teacher}, {"image": images, "cond": nulled},
                              key, False)  # fmt: skip
        unchanged, _ = loss_fn(params, {"teacher": teacher}, {"image": images,
                               "cond": {"label": labels}}, key, False)  # fmt: skip
    assert float(trained) == float(expected) != float(unchanged)


@pytest.mark.parametrize(
    "model, training, objective, message",
    [
        ({}, {}, dict(teacher=""), "must name the teacher's workdir"),
        ({}, {}, dict(student_steps=0), "student_steps must be >= 1"),
        ({}, {}, dict(teacher_guidance=True), "set config.model.guidance_embedding=True"),
        (dict(guidance_embedding=True), {"cond_dropout": 0.1}, {}, "no condition dropout"),
        (dict(guidance_embedding=True), {}, dict(guidance_min=3.0, guidance_max=2.0),
         "0 <= guidance_min <= guidance_max"),
        ({}, {}, dict(teacher_prediction="eps"), "zero SNR"),
    ],
)  # fmt: skip
def test_the_objective_refuses_settings_it_cannot_train(model, training, objective, message):
    from diffjax.training.programs import validate_config

    config = make_test_config("/nonexistent", **{
        "diffusion.prediction_type": "v", "diffusion.zero_terminal_snr": True,
        "model.num_classes": 2, "training.cond_dropout": 0.0,
    })  # fmt: skip
    config.model.update(model)
    config.training.update(training)
    config.objective = dict(
        name="progressive_distillation", teacher="/teacher", teacher_prediction="v",
        teacher_guidance=False, student_steps=2, teacher_clip_x0=True,
        weighting="truncated_snr", guidance_min=1.0, guidance_max=4.0,
    )  # fmt: skip
    config.objective.update(objective)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)
