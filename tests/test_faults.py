"""Fault injection (issue 8): kills, damaged checkpoints, bad inputs. Nothing may be lost.

- Kills: the CLI trains ``configs/test.py`` (24 steps, a checkpoint every 4, a sample grid
  every 8) in a subprocess that is SIGKILLed at seeded random moments during training, in the
  middle of an asynchronous checkpoint write, and in the middle of a sample grid; after each
  kill the newest complete checkpoint must still restore, and rerunning the same command must
  finish with exactly (bit for bit, CPU) the state of an uninterrupted run.
- Damage: the newest checkpoint of a finished run is truncated, loses a file, or gets garbage
  metadata; rerunning must report it in one line naming the step, fall back to the previous
  step, and again end bit-identical to the uninterrupted run.
- Bad inputs: each is a clear error before training starts, and the workdir is unchanged.
"""

import hashlib
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import threading
import time

import jax
import pytest
from train_helpers import (
    PYTHON,
    REPO,
    TEST_CONFIG,
    assert_states_equal,
    fast_compiles,
    make_image_folder,
    make_test_config,
    restore_full,
    run_cli,
    subprocess_env,
    train_command,
)

from diffjax.data.datasets import DatasetUnavailableError
from diffjax.errors import ConfigError
from diffjax.sharding import make_mesh
from diffjax.training import loop
from diffjax.training.checkpoint import CheckpointManager
from diffjax.training.programs import build_programs, program_spec
from diffjax.training.workdir import IncompatibleResumeError, WorkdirError, load_run_record

# A run long enough to be killed in several places, short enough for CI.
RUN = {
    "training.num_steps": 24,
    "training.checkpoint_every_steps": 4,
    "training.log_every_steps": 2,
    "sampling.every_steps": 8,
}
KILL_SEED = 20261121


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """The uninterrupted run: (workdir, final state)."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    with fast_compiles():
        state = loop.train_and_evaluate(make_test_config(data_dir, **RUN), workdir)
    return workdir, state


def complete_steps(workdir):
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


def newest_restorable_step(workdir, abstract_state):
    """The step a resume would use (read-only: moves nothing)."""
    with CheckpointManager(
        os.path.join(workdir, "checkpoints"), read_only=True, report=lambda line: None
    ) as manager:
        restored = manager.restore_latest(abstract_state)
    return None if restored is None else restored.step


class Child:
    """A training subprocess whose stderr is read line by line in a thread."""

    def __init__(self, workdir, data_dir, run=RUN):
        self.workdir = workdir
        self.process = subprocess.Popen(
            train_command(workdir, data_dir, **run), cwd=REPO, env=subprocess_env(),
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_until(self, predicate, timeout=180):
        """Waits for a stderr line satisfying ``predicate``; returns it."""
        deadline, seen = time.monotonic() + timeout, 0
        while True:
            while seen < len(self.lines):
                seen += 1
                if predicate(self.lines[seen - 1]):
                    return self.lines[seen - 1]
            assert self.process.poll() is None, "".join(self.lines[-20:])
            assert time.monotonic() < deadline, f"no matching line within {timeout} s"
            time.sleep(0.001)

    def start_step(self):
        summary = self.wait_until(lambda line: "resuming at step" in line or "starting at" in line)
        return int(re.search(r"at step (\d+)", summary).group(1))

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self._reader.join(30)
        return self.process.returncode


def kill_at_random_moment(child, rng):
    """SIGKILL a random 0-50 ms after a random training step (seeded) has been logged."""
    target = rng.randint(child.start_step() + 2, RUN["training.num_steps"] - 2)
    child.wait_until(
        lambda line: (match := re.match(r"step (\d+)/", line)) and int(match.group(1)) >= target
    )
    time.sleep(rng.uniform(0.0, 0.05))
    return f"random moment after step {target}"


def kill_mid_save(child, rng):
    """SIGKILL as soon as orbax's temporary folder of an asynchronous save appears."""
    folder = os.path.join(child.workdir, "checkpoints")
    while child.process.poll() is None:
        if os.path.isdir(folder) and any(".orbax-checkpoint-tmp" in n for n in os.listdir(folder)):
            return "mid-save"
        time.sleep(0.0005)
    raise AssertionError("the run ended before a save could be interrupted")


def kill_mid_sampling(child, rng):
    child.wait_until(lambda line: line.startswith("diffjax: sampling"))
    return "mid-sampling"


KILLS = [kill_at_random_moment, kill_mid_save, kill_at_random_moment, kill_mid_sampling]


def test_sigkill_at_any_moment_loses_nothing(reference, data_dir, tmp_path):
    expected_workdir, expected = reference
    dataset = dict(image_shape=(8, 8, 1), cond_spec=(("label", (), "int32"),))
    abstract = build_programs(
        program_spec(load_run_record(expected_workdir)["config"], dataset), make_mesh()
    ).abstract_state
    rng = random.Random(KILL_SEED)
    workdir = str(tmp_path / "killed")
    survived, newest = [], None
    for kill in KILLS:
        # A save can commit between its detection and the kill; then aim at the next one.
        for _ in range(3):
            child = Child(workdir, data_dir)
            moment = kill(child, rng)
            assert child.kill() == -signal.SIGKILL, f"the run finished before the {moment} kill"
            names = os.listdir(os.path.join(workdir, "checkpoints"))
            if moment != "mid-save" or any(".orbax-checkpoint-tmp" in n for n in names):
                break
        else:
            raise AssertionError("three saves committed before the kill reached them")
        # Nothing lost: the newest complete checkpoint restores and never goes backwards.
        restorable = newest_restorable_step(workdir, abstract)
        assert restorable == (complete_steps(workdir) or [None])[-1]
        assert newest is None or (restorable is not None and restorable >= newest)
        newest = restorable
        survived.append((moment, restorable))
    finished = run_cli(train_command(workdir, data_dir, **RUN))
    assert finished.returncode == 0, finished.stderr[-3000:]
    final = restore_full(workdir)
    assert final.step == 24
    assert_states_equal(final.state, expected)
    leftovers = os.listdir(os.path.join(workdir, "checkpoints"))
    assert not any(".orbax-checkpoint-tmp" in name for name in leftovers)
    print(f"kills survived: {len(survived)}: {survived}")


# Checkpoints only at the end: any earlier one was written because of the signal.
SIGNAL_RUN = {**RUN, "training.checkpoint_every_steps": 1000, "sampling.every_steps": 0}


@pytest.mark.slow
def test_sigterm_and_ctrl_c_save_the_current_step_and_the_rerun_loses_nothing(
    reference, data_dir, tmp_path
):
    workdir = str(tmp_path / "stopped")
    stopped_at = []
    for number, status, target in [
        (signal.SIGTERM, 128 + signal.SIGTERM, 6),
        (signal.SIGINT, 130, 14),
    ]:
        child = Child(workdir, data_dir, run=SIGNAL_RUN)
        child.wait_until(
            lambda line: (match := re.match(r"step (\d+)/", line)) and int(match.group(1)) >= target
        )
        child.process.send_signal(number)
        assert child.process.wait(120) == status, "".join(child.lines[-20:])
        child._reader.join(30)
        message = next(line for line in child.lines if f"{number.name} at step" in line)
        step = int(re.search(r"saved a checkpoint of step (\d+)", message).group(1))
        assert (
            complete_steps(workdir)[-1] == step
            and target <= step < SIGNAL_RUN["training.num_steps"]
        )
        stopped_at.append(step)
    assert stopped_at[1] > stopped_at[0]
    finished = run_cli(train_command(workdir, data_dir, **SIGNAL_RUN))
    assert finished.returncode == 0, finished.stderr[-3000:]
    final = restore_full(workdir)
    assert final.step == 24
    assert_states_equal(final.state, reference[1])


BFLOAT16_RUN = {
    **RUN,
    "training.num_steps": 12,
    "sampling.every_steps": 0,
    "model.param_dtype": "bfloat16",
}


@pytest.mark.slow
def test_bfloat16_params_train_and_resume_after_a_kill(data_dir, tmp_path):
    """bfloat16 parameters with a float32 EMA and optimizer state: the run trains (no NaN at
    step 2, no recompile at step 2), and killed then rerun it ends bit-identical to an
    uninterrupted run, restoring the checkpoint's mixed dtypes."""
    import jax.numpy as jnp
    import numpy as np

    with fast_compiles():
        expected = loop.train_and_evaluate(
            make_test_config(data_dir, **BFLOAT16_RUN), str(tmp_path / "whole")
        )
    assert {leaf.dtype for leaf in jax.tree.leaves(expected.params)} == {jnp.dtype(jnp.bfloat16)}
    assert {leaf.dtype for leaf in jax.tree.leaves(expected.ema_params)} == {jnp.dtype(jnp.float32)}
    assert all(
        np.all(np.isfinite(np.asarray(leaf, np.float32))) for leaf in jax.tree.leaves(expected)
    )
    workdir = str(tmp_path / "killed")
    child = Child(workdir, data_dir, BFLOAT16_RUN)
    # Killed once a checkpoint has committed, so that the rerun resumes from it.
    child.wait_until(lambda line: bool(complete_steps(workdir)))
    assert child.kill() == -signal.SIGKILL
    assert "compiled and ran the first train step" in "".join(child.lines)
    finished = run_cli(train_command(workdir, data_dir, **BFLOAT16_RUN))
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "resuming at step" in finished.stderr
    assert_states_equal(restore_full(workdir).state, expected)


def _largest_file(folder):
    paths = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
    return max(paths, key=os.path.getsize)


def _truncate(step_dir):
    path = _largest_file(os.path.join(step_dir, "state", "d"))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _remove(step_dir):
    os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))


def _garbage_metadata(step_dir):
    with open(os.path.join(step_dir, "meta", "metadata"), "wb") as f:
        f.write(b"\x00\xffnot json at all")


CORRUPTIONS = {
    "truncated file": _truncate,
    "missing file": _remove,
    "garbage metadata": _garbage_metadata,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_damaged_newest_checkpoint_falls_back_and_ends_identical(
    reference, data_dir, tmp_path, capsys, corruption
):
    expected_workdir, expected = reference
    workdir = str(tmp_path / "run")
    shutil.copytree(expected_workdir, workdir)
    CORRUPTIONS[corruption](os.path.join(workdir, "checkpoints", "24"))
    with fast_compiles():
        state = loop.train_and_evaluate(make_test_config(data_dir, **RUN), workdir)
    reports = [line for line in capsys.readouterr().err.splitlines() if "is unusable" in line]
    assert len(reports) == 1
    assert "checkpoint step 24" in reports[0] and "trying step 20" in reports[0]
    assert_states_equal(state, expected)
    assert complete_steps(workdir) == [20, 24]
    assert len(os.listdir(os.path.join(workdir, "checkpoints_corrupt"))) == 1


def test_resume_runs_no_pickle(reference, data_dir, tmp_path, monkeypatch):
    expected_workdir, expected = reference
    workdir = str(tmp_path / "run")
    shutil.copytree(expected_workdir, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "24"))

    def forbidden(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    with fast_compiles():
        state = loop.train_and_evaluate(make_test_config(data_dir, **RUN), workdir)
    assert_states_equal(state, expected)


def snapshot(folder):
    """{relative path: sha256} of every file under a folder."""
    digests = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def _full_disk(monkeypatch):
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(
        "diffjax.training.workdir.shutil.disk_usage", lambda path: usage._replace(free=2**20)
    )


# case: (config overrides, patch, error, message, start from a copy of a finished run?)
BAD_INPUTS = {
    "full disk": (
        {},
        _full_disk,
        WorkdirError,
        r"has 1 MiB free; a checkpoint of this state needs",
        True,
    ),
    "missing image folder": (
        {"data.data_dir": "/nonexistent/images"},
        None,
        ConfigError,
        r"config.data \('folder'",
        True,
    ),
    "missing fashion-mnist": (
        {
            "data.name": "fashion_mnist",
            "data.download": False,
            "data.manual_dir": "/nonexistent",
            "data.data_dir": "/nonexistent/tfds",
        },
        None,
        DatasetUnavailableError,
        "dataset-fashion-mnist",
        False,
    ),
    "dataset name typo": (
        {"data.name": "fashon_mnist"},
        None,
        ConfigError,
        "did you mean 'fashion_mnist'",
        False,
    ),
    "image size the model cannot take": (
        {"data.image_size": 6, "model.attn_resolutions": (5,)},
        None,
        ConfigError,
        "attn_resolutions",
        True,
    ),
    "classes the dataset does not have": (
        {"model.num_classes": 3},
        None,
        ConfigError,
        "dataset 'folder' has 2 classes",
        False,
    ),
    "batch not divisible by the devices": (
        {"data.batch_size": 12},
        None,
        ConfigError,
        r"multiple of the number of devices \(8\)",
        True,
    ),
    "num_steps below the saved step": (
        {"training.num_steps": 20},
        None,
        IncompatibleResumeError,
        r"holds a run at step 24, past config.training.num_steps=20.*nothing was changed",
        True,
    ),
    "incompatible resume": (
        {"model.base_channels": 16},
        None,
        IncompatibleResumeError,
        "model.base_channels: 8 in the workdir, 16 now.*nothing was changed",
        True,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_clear_error_before_training_and_changes_nothing(
    reference, data_dir, tmp_path, monkeypatch, case
):
    overrides, patch, error, match, from_finished_run = BAD_INPUTS[case]
    workdir = str(tmp_path / "run")
    if from_finished_run:
        shutil.copytree(reference[0], workdir)
    before = snapshot(workdir)
    if patch is not None:
        patch(monkeypatch)
    with fast_compiles(), pytest.raises(error, match=match):
        loop.train_and_evaluate(make_test_config(data_dir, **{**RUN, **overrides}), workdir)
    assert snapshot(workdir) == before
    # A workdir is created only once the config, data and networks are found good.
    assert from_finished_run or not os.path.exists(workdir)


def test_unwritable_workdir_is_a_clear_error(data_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(WorkdirError, match=r"cannot be written.*choose another --workdir"):
        loop.train_and_evaluate(make_test_config(data_dir), str(blocker / "run"))


def test_garbage_run_record_is_a_clear_error(reference, data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[0], workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write("{not json")
    before = snapshot(workdir)
    with pytest.raises(IncompatibleResumeError, match="config.json is unreadable"):
        loop.train_and_evaluate(make_test_config(data_dir, **RUN), workdir)
    assert snapshot(workdir) == before


def test_cli_reports_a_bad_config_in_one_line(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    result = run_cli(train_command(workdir, data_dir, **{"sampling.guidance_scale": 3.0}))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("diffjax.train:")]
    assert len(errors) == 1
    assert errors[0].startswith("diffjax.train: error: config.sampling.guidance_scale=3.0")
    assert "Traceback" not in result.stderr and not os.path.exists(workdir)


@pytest.mark.parametrize(
    "config, override, expected",
    [
        (TEST_CONFIG, "--config.training.num_stepz=3",
         "diffjax.train: error: a --config.* override names a key the config does not have: "
         "'num_stepz'"),
        (TEST_CONFIG, "--config.training.num_steps=abc",
         "diffjax.train: error: flag --config.training.num_steps=abc: invalid literal for int()"),
        ("configs/no_such_config.py", "--config.training.num_steps=3",
         "diffjax.train: error: --config: the config file cannot be loaded ([Errno 2] No such "
         "file or directory: 'configs/no_such_config.py')"),
    ],
)  # fmt: skip
def test_cli_reports_a_config_flag_it_cannot_read_in_one_line(tmp_path, config, override, expected):
    workdir = str(tmp_path / "run")
    result = run_cli([PYTHON, "-m", "diffjax.train", f"--config={config}", f"--workdir={workdir}",
                      override])  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(expected), result.stderr
    assert not os.path.exists(workdir)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def get_config(:\n    pass\n",
         r"diffjax\.train: error: --config: the config file \S+bad\.py has a syntax error at "
         r"line 1: invalid syntax\.$"),
        ("def get_config():\n    return undefined_name\n",
         r"diffjax\.train: error: --config: the config file raised NameError \(\S+bad\.py, line "
         r"2\): name 'undefined_name' is not defined$"),
    ],
)  # fmt: skip
def test_cli_reports_a_config_file_that_fails_in_one_line(tmp_path, source, expected):
    config = tmp_path / "bad.py"
    config.write_text(source)
    workdir = str(tmp_path / "run")
    result = run_cli([PYTHON, "-m", "diffjax.train", f"--config={config}", f"--workdir={workdir}"])
    assert result.returncode == 2
    assert re.match(expected, result.stderr.strip()), result.stderr[-2000:]
    assert not os.path.exists(workdir)


def test_cli_takes_a_samplers_own_options_in_the_dotted_form(data_dir, tmp_path):
    """--config.sampling.options.eta reaches the config (the validation sees and refuses 2.0)."""
    workdir = str(tmp_path / "run")
    command = train_command(workdir, data_dir) + ["--config.sampling.options.eta=2"]
    result = run_cli(command)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert re.search(r"options \{'eta': 2\}\): eta must be in \[0, 1\]", result.stderr), (
        result.stderr[-2000:]
    )
    assert not os.path.exists(workdir)
