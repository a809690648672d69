"""Sampler benchmark: accuracy with exact denoisers, and speed with the UNet.

Accuracy (no network): data from a Gaussian (exact law of every sampler, noise-free) and from
mixtures of narrow Gaussians (8 modes of width 0.05, in 2-D and 32-D), fed the Bayes-optimal
denoiser of tests/gaussian_oracle.py. For each sampler and step count it reports
* ``chi2/dof``: (weights + widths + means chi^2) / dof of the per-mode statistics; about 1 for
  exact samples (its null spread is +- sqrt(2 / dof));
* ``width``: pooled mode width / true width (null: 1 +- 1 / sqrt(2 N D));
* for the Gaussian, the exact std ratio (law / data) of the narrowest (s = 0.05) axis.

The accuracy part also compares samplers at equal cost: at each budget of model calls
(``NFE_BUDGETS``; the two-call samplers take the step counts of ``HEUN_STEPS`` and
``MIDPOINT_STEPS``, whose NFE is the budget or next to it, and each row states its NFE) it runs
DDIM, DPM-Solver++ and EDM's Euler and Heun on the discrete linear schedule, Euler and Heun on
the EDM process with its preconditioned prediction, and the flow samplers on rectified flow
with the velocity prediction, all on the same mixtures and from the same start noise z
(x_T = z times each sampler's starting scale). Each row's reference widths are the mixture
denoised at the last noise level the sampler calls the model at when that level does not
shrink with the step count (the schedule's first timestep, EDM's sigma_min), and the data
widths for the flow samplers, which integrate to t = 0. With ``--peers`` the same problem is
sampled by diffusers' schedulers in the peer venv (benchmarks/peers/accuracy_peer.py, driven
by the same exact denoiser from the same z); that script only samples, and every statistic of
both libraries is computed here, by one code path.

Speed: samples per second of DDPM-1000, DDIM-50 and DPM-Solver++-20 with the Fashion-MNIST and
CIFAR-10 UNets of configs/, and the compile time as a function of the number of steps (it
should be flat: the loop is one lax.scan).

  python benchmarks/bench_sampling.py                  # both parts (the speed part takes long)
  python benchmarks/bench_sampling.py --part accuracy
  python benchmarks/bench_sampling.py --part accuracy --peers  # diffusers beside diffjax
  python benchmarks/bench_sampling.py --part speed --smoke --presets fashion_mnist  # quick check

Results go to benchmarks/out/bench_sampling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import diffjax as dj
from diffjax import samplers
from diffjax.sharding import batch_sharding, make_mesh

# The exact denoisers live with the tests, which check them.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import gaussian_oracle as oracle  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
OUT_PATH = os.path.join(BENCH_DIR, "out", "bench_sampling.json")
PEER_SCRIPT = os.path.join(BENCH_DIR, "peers", "accuracy_peer.py")
PEERS_PYTHON = os.path.join(BENCH_DIR, ".peers-venv", "bin", "python")
T = 1000
STEPS = (10, 20, 50, 100)
# Model-call budgets of the equal-cost comparison, and the step counts N of the two-call
# samplers there: Heun-type ones make 2N - 1 calls (the last step is Euler), the midpoint rule 2N.
NFE_BUDGETS = (10, 20, 35)
HEUN_STEPS = dict(zip(NFE_BUDGETS, (6, 10, 18)))
MIDPOINT_STEPS = dict(zip(NFE_BUDGETS, (5, 10, 18)))
NFE_DIMS = (2, 32)
NFE_SEED = 0

PRESETS: dict[str, dict[str, Any]] = {
    "fashion_mnist": dict(
        image_shape=(28, 28, 1),
        model=dict(
            base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=2, attn_resolutions=(14,)
        ),
    ),
    "cifar10": dict(
        image_shape=(32, 32, 3),
        model=dict(
            base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,)
        ),
    ),
}


# --------------------------------------------------------------------------------- accuracy


def _mixture_rows(schedule, dim: int, num: int) -> list[dict[str, Any]]:
    mixture = oracle.ring_mixture(8, 1.0, 0.05, dim)
    model_fn = oracle.exact_model_fn(mixture, schedule, "eps")
    target = oracle.effective_stds(mixture, schedule)
    key = jax.random.key(0)
    runs: list[tuple[str, int, str, dict[str, Any]]] = [("ddpm", T, "ddpm", {})]
    for num_steps in STEPS + (T,):
        runs.append(("ddim leading", num_steps, "ddim", dict(num_steps=num_steps)))
    for num_steps in (10, 20):
        runs.append(
            ("ddim trailing", num_steps, "ddim", dict(num_steps=num_steps, spacing="trailing"))
        )
    for num_steps in STEPS:
        runs.append(("dpm++ logsnr", num_steps, "dpm_solver", dict(num_steps=num_steps)))
    for num_steps in (10, 20):
        for spacing in ("karras", "trailing", "linspace"):
            runs.append(
                (
                    f"dpm++ {spacing}",
                    num_steps,
                    "dpm_solver",
                    dict(num_steps=num_steps, spacing=spacing),
                )
            )
    reference = oracle.denoised_reference(mixture, schedule, np.random.default_rng(0), num)
    rows = [("independent exact samples", 0, reference)]
    for label, num_steps, name, kwargs in runs:
        rows.append(
            (
                label,
                num_steps,
                samplers.sample(
                    name, model_fn, schedule, key, (num, dim), prediction_type="eps", **kwargs
                ),
            )
        )
    return [
        dict(sampler=label, steps=num_steps, dim=dim, **_statistics(mixture, target, samples))
        for label, num_steps, samples in rows
    ]


def _statistics(mixture, target: np.ndarray, samples) -> dict[str, float]:
    """The per-mode statistics of ``samples`` against ``target`` widths, with their null
    scales: chi^2 / dof and its 3-sigma bound, the pooled width ratio and its null std, and the
    weights' chi^2 / dof alone."""
    num, dim = np.shape(samples)
    num_modes = len(mixture.weights)
    result = oracle.mode_statistics(mixture, target, samples)
    return dict(
        chi2_per_dof=result.normalized(num_modes, dim),
        chi2_floor=1.0 + 3.0 * np.sqrt(2.0 / result.dof(num_modes, dim)),
        width_ratio=result.width_ratio,
        width_floor=1.0 / np.sqrt(2 * num * dim),
        weights_chi2_per_dof=result.weights_chi2 / (num_modes - 1),
    )


def _gaussian_rows(schedule) -> list[dict[str, Any]]:
    """Noise-free: the exact output std of each sampler on the narrowest (0.05) and widest axis."""
    gauss = oracle.gaussian(np.zeros(2), np.array([0.05, 1.0]))
    target = oracle.effective_stds(gauss, schedule)[0]
    alpha = np.asarray(schedule.sqrt_alphas_cumprod, np.float64)
    sigma = np.asarray(schedule.sqrt_one_minus_alphas_cumprod, np.float64)
    runs = [
        ("ddpm small", T, "ddpm", np.arange(T)[::-1], {}),
        ("ddpm large", T, "ddpm", np.arange(T)[::-1], dict(variance="large")),
    ]
    for num_steps in STEPS + (T,):
        runs.append(
            ("ddim leading", num_steps, "ddim", samplers.spaced_timesteps(T, num_steps), {})
        )
    for num_steps in STEPS:
        grid = samplers.solver_timesteps(alpha, sigma, num_steps, start_at_t_max=False)
        runs.append(("dpm++ logsnr", num_steps, "dpm_solver", grid, {}))
    rows = []
    for label, num_steps, kind, grid, kwargs in runs:
        law = oracle.gaussian_sampler_law(gauss, schedule, grid, kind, **kwargs)
        ratio = law.std / target
        rows.append(
            dict(sampler=label, steps=num_steps, std_ratio_s005=ratio[0], std_ratio_s1=ratio[1])
        )
    return rows


# ------------------------------------------------------------------- accuracy at equal NFE


class _NfeRun(NamedTuple):
    """One diffjax sampler of the equal-cost comparison: ``process`` is 'linear' (the discrete
    schedule) or a continuous process name; ``grid`` names the grid it uses, for the table."""

    family: str
    sampler: str
    process: str
    prediction_type: str
    grid: str


NFE_RUNS: tuple[_NfeRun, ...] = (
    _NfeRun("ddim (VP)", "ddim", "linear", "eps", "leading"),
    _NfeRun("dpm++ 2M (VP)", "dpm_solver", "linear", "eps", "logsnr"),
    _NfeRun("euler (VP)", "euler", "linear", "eps", "karras on timesteps"),
    _NfeRun("heun (VP)", "heun", "linear", "eps", "karras on timesteps"),
    _NfeRun("euler (EDM)", "euler", "edm", "edm", "karras"),
    _NfeRun("heun (EDM)", "heun", "edm", "edm", "karras"),
    _NfeRun("flow euler (RF)", "flow_euler", "rectified_flow", "flow", "uniform"),
    _NfeRun("flow midpoint (RF)", "flow_midpoint", "rectified_flow", "flow", "uniform"),
    _NfeRun("flow heun (RF)", "flow_heun", "rectified_flow", "flow", "uniform"),
)
_FLOW_SAMPLERS = ("flow_euler", "flow_midpoint", "flow_heun")


def _steps_for_budget(sampler: str, budget: int) -> int:
    if sampler in ("heun", "flow_heun"):
        return HEUN_STEPS[budget]
    if sampler == "flow_midpoint":
        return MIDPOINT_STEPS[budget]
    return budget


def _model_calls(sampler: str, grid_points: int) -> int:
    """The model calls of a deterministic run over ``grid_points`` points (as the samplers'
    docstrings state and tests/test_samplers_continuous.py counts)."""
    if sampler in ("heun", "flow_heun"):
        return 2 * grid_points - 1
    if sampler == "flow_midpoint":
        return 2 * grid_points
    return grid_points


def _denoised_stds(mixture, ratio: float) -> np.ndarray:
    """Per-mode widths of the exact denoiser's output at noise ratio r = sigma / alpha,
    s^2 / sqrt(s^2 + r^2) (:func:`oracle.effective_stds` at any level; the data at r = 0)."""
    stds = mixture.stds
    return stds**2 / np.sqrt(stds**2 + ratio**2)


def _ratio(sigma, alpha) -> float:
    """sigma / alpha in float64 (inf at alpha = 0, the start of rectified flow)."""
    with np.errstate(divide="ignore"):
        return float(np.float64(sigma) / np.float64(alpha))


def _nfe_problem(dim: int, num: int):
    """The mixture, the start noise z [num, dim] (float32) and independent exact draws."""
    mixture = oracle.ring_mixture(8, 1.0, 0.05, dim)
    z = np.random.default_rng([NFE_SEED, dim]).standard_normal((num, dim)).astype(np.float32)
    exact, _ = mixture.sample(np.random.default_rng([NFE_SEED, dim, 1]), num)
    return mixture, z, exact


def _diffjax_nfe_rows(dim: int, num: int) -> tuple[list[dict[str, Any]], Any]:
    """Runs every entry of ``NFE_RUNS`` at every budget from the shared z; returns the rows and
    the mixture."""
    mixture, z, exact = _nfe_problem(dim, num)
    processes = {"linear": dj.get_schedule("linear", T)}
    rows = [
        dict(
            library="exact", family="exact samples", sampler="independent exact samples",
            grid="", dim=dim, budget=0, num_steps=0, nfe=0, terminal_ratio=0.0,
            **_statistics(mixture, mixture.stds, exact),
        )
    ]  # fmt: skip
    for run in NFE_RUNS:
        if run.process not in processes:
            processes[run.process] = dj.get_process(run.process)
        process = processes[run.process]
        model_fn = oracle.exact_model_fn(mixture, process, run.prediction_type)
        for budget in NFE_BUDGETS:
            num_steps = _steps_for_budget(run.sampler, budget)
            kwargs = dict(num_steps=num_steps, prediction_type=run.prediction_type)
            plan = samplers.SAMPLERS[run.sampler].plan(process, **kwargs)
            grid = plan.grid
            # The flow samplers integrate to t = 0; the others return the denoiser's output at
            # their last grid point, whose level is fixed (sigma_min, the first timestep).
            ratio = 0.0 if run.sampler in _FLOW_SAMPLERS else _ratio(grid.sigma[-2], grid.alpha[-2])
            x_T = jnp.asarray(np.float32(plan.start_scale) * z)
            start = time.perf_counter()
            samples = samplers.sample(
                run.sampler, model_fn, process, jax.random.key(NFE_SEED), z.shape, x_T=x_T,
                **kwargs,
            )  # fmt: skip
            samples = np.asarray(jax.block_until_ready(samples))
            rows.append(
                dict(
                    library="diffjax", family=run.family, sampler=run.sampler, grid=run.grid,
                    process=run.process, prediction_type=run.prediction_type, dim=dim,
                    budget=budget, num_steps=num_steps,
                    nfe=_model_calls(run.sampler, grid.num_points), terminal_ratio=ratio,
                    start_ratio=_ratio(grid.sigma[0], grid.alpha[0]),
                    seconds=time.perf_counter() - start,
                    **_statistics(mixture, _denoised_stds(mixture, ratio), samples),
                )
            )  # fmt: skip
    return rows, mixture


def _peer_nfe_rows(python: str, num: int) -> tuple[dict[int, list[dict[str, Any]]], dict]:
    """Runs benchmarks/peers/accuracy_peer.py on the same problem and scores its samples here.

    The problem file holds each dimension's mixture and z, the float64 linear betas of
    :func:`diffjax.schedules.linear_betas` and the budgets with the Heun step counts.

    Returns:
      ({dim: rows}, the peer's summary line with its package versions).
    """
    from diffjax.schedules import linear_betas

    problems = {dim: _nfe_problem(dim, num) for dim in NFE_DIMS}
    arrays: dict[str, np.ndarray] = dict(
        dims=np.asarray(NFE_DIMS), budgets=np.asarray(NFE_BUDGETS),
        two_call_steps=np.asarray([HEUN_STEPS[b] for b in NFE_BUDGETS]), betas=linear_betas(T),
    )  # fmt: skip
    for dim, (mixture, z, _) in problems.items():
        arrays.update(
            {f"weights_{dim}": mixture.weights, f"means_{dim}": mixture.means,
             f"stds_{dim}": mixture.stds, f"z_{dim}": z}
        )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="accuracy_peer_") as folder:
        inputs = os.path.join(folder, "problem.npz")
        np.savez(inputs, **arrays)
        out_dir = os.path.join(folder, "out")
        completed = subprocess.run(
            [python, PEER_SCRIPT, "--inputs", inputs, "--out-dir", out_dir],
            capture_output=True, text=True, check=False, cwd=os.path.dirname(BENCH_DIR),
        )  # fmt: skip
        if completed.returncode != 0:
            raise RuntimeError(
                f"{PEER_SCRIPT} failed with exit code {completed.returncode}:\n"
                f"{completed.stderr[-4000:]}"
            )
        with open(os.path.join(out_dir, "rows.json")) as handle:
            report = json.load(handle)
        with np.load(os.path.join(out_dir, "samples.npz")) as data:
            samples = {key: data[key] for key in data.files}
    by_dim: dict[int, list[dict[str, Any]]] = {dim: [] for dim in NFE_DIMS}
    for row in report.pop("rows"):
        mixture = problems[row["dim"]][0]
        target = _denoised_stds(mixture, row["terminal_ratio"])
        by_dim[row["dim"]].append(dict(row, **_statistics(mixture, target, samples[row["key"]])))
    return by_dim, report


def _format_cells(row: dict[str, Any] | None, width: int) -> str:
    if row is None:
        return " " * (width + 22)
    name = f"{row['sampler']} {row['grid']}".strip()
    return f"{name:<{width}} {row['nfe']:>3} {row['chi2_per_dof']:10.2f} {row['width_ratio']:7.3f}"


def _print_nfe_table(dim: int, num: int, rows: list[dict[str, Any]], seconds: float) -> None:
    """diffjax's rows on the left, diffusers' rows of the same family and budget on the right."""
    exact = next(row for row in rows if row["library"] == "exact")
    print(
        f"\n== equal NFE: 8 modes of width 0.05 in {dim}-D, N = {num}, one start noise for all "
        f"({seconds:.0f} s); null: chi2/dof < {exact['chi2_floor']:.2f}, "
        f"width 1 +- {exact['width_floor']:.3f}"
    )
    left, right = 28, 42
    print(
        f"  {'budget':>6}  {'method':<18} | {'diffjax':<{left}} {'NFE':>3} {'chi2/dof':>10} "
        f"{'width':>7} | {'diffusers':<{right}} {'NFE':>3} {'chi2/dof':>10} {'width':>7}"
    )
    print(f"  {'-':>6}  {'exact samples':<18} | {_format_cells(exact, left)} |")
    for budget in NFE_BUDGETS:
        for family in dict.fromkeys(run.family for run in NFE_RUNS):
            ours = [
                r for r in rows
                if r["library"] == "diffjax" and r["family"] == family and r["budget"] == budget
            ]  # fmt: skip
            theirs = [
                r for r in rows
                if r["library"] == "diffusers" and r["family"] == family and r["budget"] == budget
            ]  # fmt: skip
            for index in range(max(len(ours), len(theirs))):
                mine = ours[index] if index < len(ours) else None
                peer = theirs[index] if index < len(theirs) else None
                label = (f"{budget:>6}", family) if index == 0 else ("", "")
                print(
                    f"  {label[0]:>6}  {label[1]:<18} | {_format_cells(mine, left)} | "
                    f"{_format_cells(peer, right) if peer else ''}".rstrip()
                )


def run_nfe_accuracy(num: int, peers_python: str | None) -> dict[str, Any]:
    """The equal-NFE comparison (module docstring): diffjax's rows and, with ``peers_python``,
    diffusers' rows of the same problem, printed side by side per dimension."""
    results: dict[str, Any] = dict(
        budgets=list(NFE_BUDGETS), heun_steps=HEUN_STEPS, midpoint_steps=MIDPOINT_STEPS,
        seed=NFE_SEED,
    )  # fmt: skip
    peer_rows: dict[int, list[dict[str, Any]]] = {dim: [] for dim in NFE_DIMS}
    if peers_python is not None:
        start = time.perf_counter()
        peer_rows, report = _peer_nfe_rows(peers_python, num)
        results["peer"] = dict(report, wall_seconds=time.perf_counter() - start)
        print(
            f"\n(diffusers {report['env']['diffusers']}, torch {report['env']['torch']}: "
            f"{report['seconds']:.0f} s of sampling in the peer venv)"
        )
    for dim in NFE_DIMS:
        start = time.perf_counter()
        rows, _ = _diffjax_nfe_rows(dim, num)
        rows += peer_rows[dim]
        _print_nfe_table(dim, num, rows, time.perf_counter() - start)
        results[f"rings_{dim}d"] = rows
    return results


def run_accuracy(num: int, peers_python: str | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in ("linear", "cosine"):
        schedule = dj.get_schedule(name, T)
        print(f"\n== {name} schedule: exact Gaussian law (std ratio to the data, noise-free)")
        rows = _gaussian_rows(schedule)
        for row in rows:
            print(
                f"  {row['sampler']:<14} {row['steps']:>5}  s=0.05: {row['std_ratio_s005']:.4f}"
                f"  s=1: {row['std_ratio_s1']:.4f}"
            )
        results[f"{name}/gaussian"] = rows
        for dim in (2, 32):
            start = time.perf_counter()
            rows = _mixture_rows(schedule, dim, num)
            print(
                f"\n== {name} schedule: 8 modes of width 0.05 in {dim}-D, N = {num} "
                f"({time.perf_counter() - start:.0f} s)"
            )
            print(
                f"  {'sampler':<26} {'steps':>5} {'chi2/dof':>9} {'(floor)':>8} {'width':>7} "
                f"{'(+-)':>6} {'weights':>8}"
            )
            for row in rows:
                print(
                    f"  {row['sampler']:<26} {row['steps']:>5} {row['chi2_per_dof']:9.2f} "
                    f"{row['chi2_floor']:8.2f} {row['width_ratio']:7.3f} {row['width_floor']:6.3f} "
                    f"{row['weights_chi2_per_dof']:8.2f}"
                )
            results[f"{name}/rings_{dim}d"] = rows
    results["nfe"] = run_nfe_accuracy(num, peers_python)
    return results


# ------------------------------------------------------------------------------------ speed


class _CompileTimer:
    """Sums JAX's trace, lowering and XLA compile durations reported while it is active."""

    EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    def __init__(self) -> None:
        self.seconds = 0.0
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **_) -> None:
        if self.active and event in self.EVENTS:
            self.seconds += duration

    def measure(self, fn):
        self.seconds, self.active = 0.0, True
        start = time.perf_counter()
        jax.block_until_ready(fn())
        wall = time.perf_counter() - start
        self.active = False
        return wall, self.seconds


def _unet_model_fn(preset: dict[str, Any]):
    from diffjax.models import UNet, count_params, make_model_fn

    model = UNet(**preset["model"])
    height, width, channels = preset["image_shape"]
    x = jnp.zeros((1, height, width, channels))
    params = jax.jit(model.init)(jax.random.key(0), x, jnp.zeros((1,), jnp.int32))["params"]
    return make_model_fn(model, params), count_params(params)


def run_speed(
    preset_names: list[str],
    batch: int,
    ddpm_steps: int,
    compile_steps: tuple[int, ...],
    repeats: int,
) -> dict[str, Any]:
    timer = _CompileTimer()
    schedule = dj.get_schedule("linear", T)
    # Like `python -m diffjax.sample`: the batch is split over the devices when it can be.
    mesh = make_mesh()
    out_sharding = batch_sharding(mesh) if batch % mesh.devices.size == 0 else None
    results: dict[str, Any] = {}
    for preset_name in preset_names:
        preset = PRESETS[preset_name]
        model_fn, num_params = _unet_model_fn(preset)
        shape = (batch, *preset["image_shape"])
        print(
            f"\n== {preset_name}: UNet {num_params / 1e6:.2f}M params, batch {batch} on "
            f"{mesh.devices.size if out_sharding else 1} device(s)"
        )
        rows = []
        for label, name, num_steps in [
            ("ddpm", "ddpm", ddpm_steps),
            ("ddim", "ddim", 50),
            ("dpm_solver++", "dpm_solver", 20),
        ]:

            def run(seed, name=name, num_steps=num_steps):
                return samplers.sample(
                    name,
                    model_fn,
                    schedule,
                    jax.random.key(seed),
                    shape,
                    num_steps=num_steps,
                    prediction_type="eps",
                    out_sharding=out_sharding,
                )

            first_wall, compile_seconds = timer.measure(lambda: run(0))
            walls = [
                timer.measure(lambda seed=seed: run(seed))[0] for seed in range(1, repeats + 1)
            ]
            run_seconds = min(walls)
            per_step = run_seconds / num_steps
            row = dict(
                sampler=label,
                steps=num_steps,
                batch=batch,
                compile_s=compile_seconds,
                first_call_s=first_wall,
                run_s=run_seconds,
                samples_per_s=batch / run_seconds,
                ms_per_step=1e3 * per_step,
            )
            if name == "ddpm" and num_steps != T:
                row["samples_per_s_at_1000_steps"] = batch / (per_step * T)
            rows.append(row)
            print(
                f"  {label:<13} {num_steps:>5} steps: {batch / run_seconds:8.3f} samples/s "
                f"({1e3 * per_step:.1f} ms/step, compile {compile_seconds:.1f} s)"
            )
        compile_rows = []
        for num_steps in compile_steps:
            _, compile_seconds = timer.measure(
                lambda num_steps=num_steps: samplers.ddim_sample(
                    model_fn,
                    schedule,
                    jax.random.key(0),
                    (1, *preset["image_shape"]),
                    num_steps=num_steps,
                    prediction_type="eps",
                )
            )
            compile_rows.append(dict(num_steps=num_steps, compile_s=compile_seconds))
            print(f"  DDIM compile with {num_steps:>4} steps: {compile_seconds:.2f} s")
        results[preset_name] = dict(
            num_params=num_params, samplers=rows, compile_vs_steps=compile_rows
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("accuracy", "speed", "all"), default="all")
    parser.add_argument("--num", type=int, default=4000, help="samples per accuracy run")
    parser.add_argument("--presets", default="fashion_mnist,cifar10")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--ddpm_steps",
        type=int,
        default=T,
        help="DDPM chain length timed (samples/s is also scaled to 1000 steps)",
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--peers",
        action="store_true",
        help="accuracy part: also sample the equal-NFE problem with diffusers' schedulers",
    )
    parser.add_argument(
        "--peers-python",
        default=PEERS_PYTHON,
        help="the peer venv's python for --peers (made by benchmarks/setup_peers.sh)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="speed part with batch 2, 20 DDPM steps, 1 repeat",
    )
    args = parser.parse_args()
    if args.peers and args.part == "speed":
        parser.error("--peers compares sampler accuracy: use it with --part accuracy or all")
    if args.peers and not os.path.exists(args.peers_python):
        parser.error(f"{args.peers_python} is missing: run `bash benchmarks/setup_peers.sh` first")
    results: dict[str, Any] = dict(
        jax_version=jax.__version__,
        devices=[str(d) for d in jax.devices()],
        cpu_count=os.cpu_count(),
        smoke=args.smoke,
    )
    if args.part in ("accuracy", "all"):
        results["accuracy"] = run_accuracy(args.num, args.peers_python if args.peers else None)
    if args.part in ("speed", "all"):
        presets = args.presets.split(",")
        if args.smoke:
            batch, ddpm_steps, compile_steps, repeats = 2, 20, (5, 20), 1
        else:
            batch, ddpm_steps, repeats = args.batch, args.ddpm_steps, args.repeats
            compile_steps = (10, 50, 250)
        results["speed"] = run_speed(presets, batch, ddpm_steps, compile_steps, repeats)
    os.makedirs(os.path.dirname(OUT_PATH), exist_ok=True)
    out_path = OUT_PATH if not args.smoke else OUT_PATH.replace(".json", "_smoke.json")
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1, default=float)
    print(f"\nwrote {out_path}")


if __name__ == "__main__":
    main()
