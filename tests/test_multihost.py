"""Multi-host runs of the command-line programs (diffjax/cli.py's ``--coordinator_address``,
``--num_processes``, ``--process_id``): two local processes of 4 CPU devices each, joined by
``jax.distributed`` over gloo, against one process of 8 devices.

The global batches do not depend on the host count (diffjax/data/pipeline.py), so the two
layouts train on the same data with the same keys, and a run may resume on another number of
processes; they differ only in how the gradient all-reduce sums (within one process, or across
two through gloo).
"""

import glob
import json
import os
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
from train_helpers import (
    PYTHON,
    REPO,
    make_image_folder,
    restore_full,
    run_cli,
    state_leaves,
    subprocess_env,
    train_command,
)

# 28x28 images for the FD-FMNIST evaluation; a checkpoint every 4 steps, a grid every 6.
RUN = {
    "data.image_size": 28,
    "model.attn_resolutions": (14,),
    "training.num_steps": 12,
    "training.checkpoint_every_steps": 4,
    "sampling.every_steps": 6,
    "sampling.num_samples": 8,
    "eval.split": "train",
}
EVALUATE = ["--num=16", "--batch=16", "--steps=2", "--metrics=fd", "--features=fmnist"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(command: list[str], port: int) -> list[subprocess.Popen]:
    """Starts ``command`` as processes 0 and 1 of a two-host run (4 CPU devices each)."""
    return [
        subprocess.Popen(
            [*command, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
             f"--process_id={process_id}", "--cpu_devices=4"],
            cwd=REPO, env=subprocess_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for process_id in range(2)
    ]  # fmt: skip


def finish(processes: list[subprocess.Popen], timeout: float = 400) -> list[str]:
    """Waits for both processes; returns their stderr; fails on a non-zero exit."""
    try:
        outputs = [process.communicate(timeout=timeout) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    return [stderr for _, stderr in outputs]


def complete_steps(workdir: str) -> list[int]:
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), num_per_class=16, size=28)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """One process of 8 devices: the trained workdir and its evaluation record."""
    workdir = str(tmp_path_factory.mktemp("one_process") / "run")
    trained = run_cli(train_command(workdir, data_dir, **RUN), timeout=400)
    assert trained.returncode == 0, trained.stderr[-3000:]
    evaluated = run_cli([PYTHON, "-m", "diffjax.evaluate", f"--workdir={workdir}", *EVALUATE])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    return workdir


@pytest.mark.slow
def test_two_hosts_train_resume_on_one_host_and_evaluate_like_one_host(
    reference, data_dir, tmp_path
):
    workdir = str(tmp_path / "run")
    command = train_command(workdir, data_dir, **RUN)
    # Killed (SIGKILL, both processes) once the step-4 checkpoint has committed.
    processes = launch(command, free_port())
    deadline = time.monotonic() + 300
    while not complete_steps(workdir):
        assert all(process.poll() is None for process in processes), "a process exited early"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    for process in processes:
        process.send_signal(signal.SIGKILL)
        process.wait()
    # Resumed on two processes up to step 8, then on one process of 8 devices up to step 12.
    to_step_8 = train_command(workdir, data_dir, **{**RUN, "training.num_steps": 8})
    (resumed, _) = finish(launch(to_step_8, free_port()))
    assert "on 2 process(es)" in resumed and "resuming at step" in resumed, resumed[-2000:]
    one_process = run_cli(command, timeout=400)
    assert one_process.returncode == 0, one_process.stderr[-3000:]
    assert "on 1 process(es)" in one_process.stderr, one_process.stderr[-2000:]
    assert "resuming at step 8" in one_process.stderr, one_process.stderr[-2000:]
    # The grids of steps 6 and 12 (and the end-of-run grid of the run that stopped at 8).
    grids = set(os.listdir(os.path.join(workdir, "samples")))
    assert grids == set(os.listdir(os.path.join(reference, "samples"))) | {"step_0000008.png"}

    # One process of 8 devices sums the same gradients in another order (within one process
    # instead of through gloo across two); over 12 Adam steps (lr 1e-3, each step moves a
    # parameter by at most about lr) a summation-order difference stays far below one step.
    two_hosts, one_host = restore_full(workdir), restore_full(reference)
    assert two_hosts.step == one_host.step == 12
    for got, want in zip(state_leaves(two_hosts.state), state_leaves(one_host.state), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

    finish(launch([PYTHON, "-m", "diffjax.evaluate", f"--workdir={workdir}", *EVALUATE],
                  free_port()))  # fmt: skip
    fd = []
    for folder in (workdir, reference):
        (result,) = glob.glob(os.path.join(folder, "eval", "12-*.json"))
        with open(result) as f:
            fd.append(json.load(f)["results"]["fd_fmnist"])
    # The samples are quantized to uint8 before the features, so params equal to 1e-4 give
    # (nearly) the same pixels: the two FDs agree far inside 1e-4 relative (measured: equal).
    np.testing.assert_allclose(fd[0], fd[1], rtol=1e-4)


@pytest.mark.slow
def test_fsdp_on_two_hosts_killed_and_resumed_on_another_layout(reference, data_dir, tmp_path):
    """The state split over an 'fsdp' axis that spans both processes (mesh 1 x 8), killed after
    the step-4 checkpoint, resumed on one process of 8 devices split 4 x 2: the checkpoint is
    restored onto the other layout and the run ends where the replicated one-process run does."""
    workdir = str(tmp_path / "run")
    layout = {"sharding.mesh_axes": ("data", "fsdp"), "sharding.rules": "fsdp"}
    processes = launch(
        train_command(workdir, data_dir, **RUN, **layout, **{"sharding.mesh_shape": (1, 8)}),
        free_port(),
    )
    deadline = time.monotonic() + 300
    while not complete_steps(workdir):
        assert all(process.poll() is None for process in processes), "a process exited early"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    for process in processes:
        process.send_signal(signal.SIGKILL)
        process.wait()
    resumed = run_cli(
        train_command(workdir, data_dir, **RUN, **layout, **{"sharding.mesh_shape": (4, 2)}),
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 4" in resumed.stderr, resumed.stderr[-2000:]
    # As above: only the summation order of the gradients differs between the layouts.
    split, replicated = restore_full(workdir), restore_full(reference)
    assert split.step == replicated.step == 12
    for got, want in zip(state_leaves(split.state), state_leaves(replicated.state), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
