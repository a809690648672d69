"""Sampler benchmark: accuracy with exact denoisers, and speed with the UNet.

Accuracy (no network): data from a Gaussian (exact law of every sampler, noise-free) and from
mixtures of narrow Gaussians (8 modes of width 0.05, in 2-D and 32-D), fed the Bayes-optimal
denoiser of tests/gaussian_oracle.py. For each sampler and step count it reports
* ``chi2/dof``: (weights + widths + means chi^2) / dof of the per-mode statistics; about 1 for
  exact samples (its null spread is +- sqrt(2 / dof));
* ``width``: pooled mode width / true width (null: 1 +- 1 / sqrt(2 N D));
* for the Gaussian, the exact std ratio (law / data) of the narrowest (s = 0.05) axis.

Speed: samples per second of DDPM-1000, DDIM-50 and DPM-Solver++-20 with the Fashion-MNIST and
CIFAR-10 UNets of configs/, and the compile time as a function of the number of steps (it
should be flat: the loop is one lax.scan).

  python benchmarks/bench_sampling.py                  # both parts (the speed part takes long)
  python benchmarks/bench_sampling.py --part accuracy
  python benchmarks/bench_sampling.py --part speed --smoke --presets fashion_mnist  # quick check

Results go to benchmarks/out/bench_sampling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import diffjax as dj
from diffjax import samplers
from diffjax.training.sharding import batch_sharding, make_mesh

# The exact denoisers live with the tests, which check them.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import gaussian_oracle as oracle  # noqa: E402

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "bench_sampling.json")
T = 1000
STEPS = (10, 20, 50, 100)

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
            (label, num_steps, samplers.sample(name, model_fn, schedule, key, (num, dim), **kwargs))
        )
    out = []
    for label, num_steps, samples in rows:
        result = oracle.mode_statistics(mixture, target, samples)
        out.append(
            dict(
                sampler=label,
                steps=num_steps,
                dim=dim,
                chi2_per_dof=result.normalized(8, dim),
                chi2_floor=1.0 + 3.0 * np.sqrt(2.0 / result.dof(8, dim)),
                width_ratio=result.width_ratio,
                width_floor=1.0 / np.sqrt(2 * num * dim),
                weights_chi2_per_dof=result.weights_chi2 / 7,
            )
        )
    return out


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


def run_accuracy(num: int) -> dict[str, Any]:
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
    from diffjax.models import UNet, count_params

    model = UNet(**preset["model"])
    height, width, channels = preset["image_shape"]
    x = jnp.zeros((1, height, width, channels))
    params = jax.jit(model.init)(jax.random.key(0), x, jnp.zeros((1,), jnp.int32))["params"]

    def apply(params, x_t, t):
        return model.apply({"params": params}, x_t, t)

    return jax.tree_util.Partial(apply, params), count_params(params)


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
                    name, model_fn, schedule, jax.random.key(seed), shape, num_steps=num_steps,
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
        "--smoke",
        action="store_true",
        help="speed part with batch 2, 20 DDPM steps, 1 repeat",
    )
    args = parser.parse_args()
    results: dict[str, Any] = dict(
        jax_version=jax.__version__,
        devices=[str(d) for d in jax.devices()],
        cpu_count=os.cpu_count(),
        smoke=args.smoke,
    )
    if args.part in ("accuracy", "all"):
        results["accuracy"] = run_accuracy(args.num)
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
