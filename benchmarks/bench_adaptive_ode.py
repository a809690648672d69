r"""The adaptive probability-flow ODE (diffrax) against fixed-step samplers of the same accuracy.

The problem of ``bench_sampling.py --part accuracy``: 8 modes of width 0.05 on a ring, in 2-D
and 32-D, sampled from one shared start noise with the exact denoiser (no network error), and
scored by the per-mode chi^2 / dof (1 for exact samples, null bound printed). For rectified
flow ('flow' predictions) and VP-linear ('eps'), the adaptive solve (Tsit5 and Dopri5, PID
controller, rtol = atol in {1e-3, 1e-5}) reports its NFE; beside it, the fewest model calls of
flow Heun (rectified flow) or DPM-Solver++(2M) (VP) whose chi^2 / dof is at least as good, from
a sweep of step counts. All samplers end with the exact denoiser's x0-prediction at t_min = 1e-3
(the ODE) or their own last grid point, whose widths the score expects. "The same accuracy"
is a chi^2 / dof no larger than the adaptive run's or than the null bound (1 + 3 sqrt(2 / dof):
indistinguishable from exact samples at this N), whichever is larger.

  python benchmarks/bench_adaptive_ode.py           # about two minutes on 2 CPU cores

Results go to benchmarks/out/bench_adaptive_ode.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_sampling import _denoised_stds, _nfe_problem, _ratio, _statistics, oracle

import diffjax as dj
from diffjax import samplers

OUT_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "out", "bench_adaptive_ode.json"
)
CASES = (
    ("rectified_flow", "flow", "flow_heun", (3, 4, 6, 8, 10, 14, 18, 25, 35, 50, 70, 100)),
    ("vp_linear", "eps", "dpm_solver", (4, 6, 8, 10, 14, 20, 30, 50, 70, 100, 150, 200)),
)
TOLERANCES = (1e-3, 1e-5)


def _fixed_calls(sampler: str, num_steps: int) -> int:
    return 2 * num_steps - 1 if sampler == "flow_heun" else num_steps


def run(num: int) -> dict:
    results = {}
    for dim in (2, 32):
        mixture, z, _ = _nfe_problem(dim, num)
        for process_name, prediction_type, fixed, steps in CASES:
            process = dj.get_process(process_name)
            model_fn = oracle.exact_model_fn(mixture, process, prediction_type)
            sweep = []
            for num_steps in steps:
                kwargs = dict(num_steps=num_steps, prediction_type=prediction_type)
                plan = samplers.SAMPLERS[fixed].plan(process, **kwargs)
                ratio = _ratio(plan.grid.sigma[-2], plan.grid.alpha[-2])
                x_T = jnp.asarray(np.float32(plan.start_scale) * z)
                x = samplers.sample(fixed, model_fn, process, jax.random.key(0), z.shape,
                                    x_T=x_T, **kwargs)  # fmt: skip
                stats = _statistics(mixture, _denoised_stds(mixture, ratio), np.asarray(x))
                sweep.append(dict(steps=num_steps, nfe=_fixed_calls(fixed, num_steps), **stats))
            alpha, sigma = process.alpha_sigma(np.float64(1e-3), np)
            target = _denoised_stds(mixture, _ratio(sigma, alpha))
            _, sigma_1 = process.alpha_sigma(np.float64(1.0), np)
            for solver in ("tsit5", "dopri5"):
                for tolerance in TOLERANCES:
                    start = time.perf_counter()
                    x, stats_ode = samplers.ode_sample(
                        model_fn, process, jax.random.key(0), z.shape, solver=solver,
                        rtol=tolerance, atol=tolerance, prediction_type=prediction_type,
                        x_T=jnp.asarray(np.float32(sigma_1) * z), t_min=1e-3,
                        return_stats=True,
                    )  # fmt: skip
                    x = np.asarray(jax.block_until_ready(x))
                    seconds = time.perf_counter() - start
                    stats = _statistics(mixture, target, x)
                    bound = max(stats["chi2_per_dof"], stats["chi2_floor"])
                    matching = [row for row in sweep if row["chi2_per_dof"] <= bound]
                    best = min(matching, key=lambda row: row["nfe"]) if matching else None
                    key = f"{dim}d/{process_name}/{solver}/{tolerance:g}"
                    results[key] = dict(
                        dim=dim, process=process_name, solver=solver, tolerance=tolerance,
                        nfe=int(stats_ode.num_function_evals), steps=int(stats_ode.num_steps),
                        rejected=int(stats_ode.num_rejected_steps), seconds=seconds, **stats,
                        fixed_sampler=fixed, fixed_nfe=None if best is None else best["nfe"],
                        fixed_chi2_per_dof=None if best is None else best["chi2_per_dof"],
                    )  # fmt: skip
                    row = results[key]
                    fixed_text = (
                        f"{fixed} needs {row['fixed_nfe']} NFE ({row['fixed_chi2_per_dof']:.2f})"
                        if best else f"no {fixed} run up to {sweep[-1]['nfe']} NFE is as accurate"
                    )  # fmt: skip
                    print(
                        f"{dim:>2}-D {process_name:<15} {solver:<7} tol {tolerance:<6g} "
                        f"NFE {row['nfe']:>4} (steps {row['steps']}, rejected {row['rejected']}) "
                        f"chi2/dof {row['chi2_per_dof']:8.2f} (floor {row['chi2_floor']:.2f}) | "
                        f"{fixed_text}", flush=True,
                    )  # fmt: skip
            results[f"{dim}d/{process_name}/sweep"] = sweep
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=4000, help="Samples per run.")
    args = parser.parse_args()
    results = dict(num=args.num, devices=jax.device_count(), rows=run(args.num))
    os.makedirs(os.path.dirname(OUT_PATH), exist_ok=True)
    with open(OUT_PATH, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {OUT_PATH}")


if __name__ == "__main__":
    main()
