"""Samples the Gaussian-mixture accuracy problem of benchmarks/bench_sampling.py with diffusers.

    benchmarks/.peers-venv/bin/python benchmarks/peers/accuracy_peer.py \
        --inputs problem.npz --out-dir DIR

Runs in the peer venv and only samples: ``benchmarks/bench_sampling.py --part accuracy --peers``
writes the problem (mixture parameters, the start noise z, the betas, the NFE budgets) to
``--inputs``, runs this script, and computes every statistic of both libraries' samples with
one code path in the diffjax venv. This script writes ``DIR/samples.npz`` (one ``[N, D]``
float32 array per row) and ``DIR/rows.json`` (what each row is: scheduler, grid, steps, the
model calls counted at run time, and the noise level of the last call), and prints a one-line
JSON summary as its last line of stdout.

The network is the exact denoiser of the data law: for data sum_k w_k N(m_k, diag(s_k^2)) and
x_t = alpha x_0 + sigma eps, E[x_0 | x_t] = sum_k r_k(x_t) [m_k + alpha s_k^2 / (alpha^2 s_k^2
+ sigma^2) (x_t - alpha m_k)] with r_k proportional to w_k N(x_t; alpha m_k, alpha^2 s_k^2 +
sigma^2) (the formula of tests/gaussian_oracle.py, written here in float64 NumPy). Each model
call k is evaluated at the noise level the scheduler assigns to it, ``scheduler.sigmas[k]``,
and returns what that scheduler's ``step`` expects:

* ``EulerDiscreteScheduler``, ``HeunDiscreteScheduler`` (``prediction_type='epsilon'``, the
  VP betas given by the caller): the input is ``scale_model_input``'s x / sqrt(sigma^2 + 1),
  the VP state with alpha = 1 / sqrt(1 + sigma^2); the output is its exact eps. Their default
  'linspace' grid and their Karras grid (``use_karras_sigmas=True``) are both run.
* ``EDMEulerScheduler`` (``prediction_type='epsilon'``, EDM's sigma_data): the input is
  c_in x; the output is EDM's preconditioned F = (x0_hat - c_skip x) / c_out, which the
  scheduler's ``precondition_outputs`` maps back to x0_hat.
* ``FlowMatchEulerDiscreteScheduler``, ``FlowMatchHeunDiscreteScheduler`` (no shift): x_t =
  (1 - sigma) x_0 + sigma eps; the output is the velocity eps_hat - x0_hat.

Every run starts from the caller's z, scaled as diffusers' pipelines do (``init_noise_sigma``
where the scheduler has one, else 1; for ``EDMEulerScheduler`` that is sqrt(sigma_max^2 + 1),
not sigma_max), and is the plain pipeline loop ``scale_model_input``,
model, ``step``; the schedulers keep their state in float32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from typing import Any, Callable

import numpy as np
import torch

SIGMA_DATA = 0.5


def posterior_mean(
    weights: np.ndarray, means: np.ndarray, stds: np.ndarray, x_t: np.ndarray, alpha: float,
    sigma: float,
) -> np.ndarray:  # fmt: skip
    """E[x_0 | x_t] for the mixture, float64; x_t [B, D], alpha and sigma scalars."""
    variances0 = stds**2  # [K, D]
    variances_t = alpha**2 * variances0 + sigma**2  # [K, D]
    residual = x_t[:, None, :] - alpha * means[None]  # [B, K, D]
    log_density = -0.5 * np.sum(residual**2 / variances_t + np.log(variances_t), axis=-1)
    logits = np.log(weights)[None] + log_density  # [B, K]
    logits -= logits.max(axis=1, keepdims=True)
    responsibilities = np.exp(logits)
    responsibilities /= responsibilities.sum(axis=1, keepdims=True)
    component_means = means[None] + alpha * variances0 / variances_t * residual  # [B, K, D]
    return np.einsum("bk,bkd->bd", responsibilities, component_means)


class ExactNetwork:
    """The Bayes-optimal network of one parametrisation; counts its calls.

    ``kind`` is ``'vp_eps'`` (input: the VP state; output: eps), ``'edm'`` (input: c_in x;
    output: EDM's F) or ``'flow'`` (input: the flow-path state; output: eps - x0).
    Called as ``network(model_input, sigma)`` with the scheduler's sigma of that call.
    """

    def __init__(self, kind: str, weights, means, stds) -> None:
        if kind not in ("vp_eps", "edm", "flow"):
            raise ValueError(f"unknown network kind {kind!r}")
        self.kind, self.weights, self.means, self.stds = kind, weights, means, stds
        self.calls = 0

    def __call__(self, model_input: torch.Tensor, sigma: float) -> torch.Tensor:
        self.calls += 1
        x_in = model_input.detach().cpu().numpy().astype(np.float64)
        if self.kind == "vp_eps":
            alpha = 1.0 / np.sqrt(1.0 + sigma**2)
            x_t, noise = x_in, sigma * alpha
        elif self.kind == "edm":
            norm = np.sqrt(sigma**2 + SIGMA_DATA**2)
            alpha, noise = 1.0, sigma
            x_t = x_in * norm  # undo c_in = 1 / sqrt(sigma^2 + sigma_data^2)
        else:
            alpha, noise = 1.0 - sigma, sigma
            x_t = x_in
        x0 = posterior_mean(self.weights, self.means, self.stds, x_t, alpha, noise)
        eps = (x_t - alpha * x0) / noise
        if self.kind == "vp_eps":
            out = eps
        elif self.kind == "edm":
            c_skip = SIGMA_DATA**2 / norm**2
            c_out = sigma * SIGMA_DATA / norm
            out = (x0 - c_skip * x_t) / c_out
        else:
            out = eps - x0
        return torch.from_numpy(out).to(model_input.dtype)


def _vp_kwargs(betas: np.ndarray) -> dict[str, Any]:
    return dict(
        num_train_timesteps=len(betas), trained_betas=betas, prediction_type="epsilon",
    )  # fmt: skip


def _euler_discrete(betas, karras):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(use_karras_sigmas=karras, **_vp_kwargs(betas))


def _heun_discrete(betas, karras):
    from diffusers import HeunDiscreteScheduler

    return HeunDiscreteScheduler(use_karras_sigmas=karras, **_vp_kwargs(betas))


def _edm_euler(betas, karras):
    from diffusers import EDMEulerScheduler

    return EDMEulerScheduler(
        sigma_min=0.002, sigma_max=80.0, sigma_data=SIGMA_DATA, sigma_schedule="karras", rho=7.0,
        prediction_type="epsilon",
    )  # fmt: skip


def _flow_euler(betas, karras):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def _flow_heun(betas, karras):
    from diffusers import FlowMatchHeunDiscreteScheduler

    return FlowMatchHeunDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


# family (the row of bench_sampling.py's table), scheduler, grid, factory, network, two calls
# per step (Heun: 2N - 1 model calls for N steps, the last step Euler).
RUNS: tuple[tuple[str, str, str, Callable, str, bool], ...] = (
    ("euler (VP)", "EulerDiscreteScheduler", "linspace", _euler_discrete, "vp_eps", False),
    ("euler (VP)", "EulerDiscreteScheduler", "karras", _euler_discrete, "vp_eps", False),
    ("heun (VP)", "HeunDiscreteScheduler", "linspace", _heun_discrete, "vp_eps", True),
    ("heun (VP)", "HeunDiscreteScheduler", "karras", _heun_discrete, "vp_eps", True),
    ("euler (EDM)", "EDMEulerScheduler", "karras", _edm_euler, "edm", False),
    ("flow euler (RF)", "FlowMatchEulerDiscreteScheduler", "linspace", _flow_euler, "flow", False),
    ("flow heun (RF)", "FlowMatchHeunDiscreteScheduler", "linspace", _flow_heun, "flow", True),
)


@torch.inference_mode()
def sample(scheduler, network: ExactNetwork, z: np.ndarray) -> tuple[np.ndarray, float]:
    """The pipeline loop from x_T = init_noise_sigma z.

    Returns:
      (samples [N, D] float32, the sigma / alpha of the last model call).
    """
    x = torch.from_numpy(z) * float(getattr(scheduler, "init_noise_sigma", 1.0))
    sigmas = scheduler.sigmas.to(torch.float64).numpy()
    for index, t in enumerate(scheduler.timesteps):
        if hasattr(scheduler, "scale_model_input"):
            model_input = scheduler.scale_model_input(x, t)
            if scheduler.step_index != index:
                raise RuntimeError(f"step index {scheduler.step_index} at call {index}")
        else:
            model_input = x
        sigma = float(sigmas[index])
        x = scheduler.step(network(model_input, sigma), t, x).prev_sample
    return x.numpy().astype(np.float32), _ratio(sigmas[len(scheduler.timesteps) - 1], network)


def _ratio(sigma: float, network: ExactNetwork) -> float:
    """sigma / alpha of a scheduler's sigma: the sigma itself for the VP schedulers (whose
    sigmas are sqrt((1 - abar) / abar)) and EDM, sigma / (1 - sigma) on the flow path."""
    sigma = float(sigma)
    if network.kind != "flow":
        return sigma
    return math.inf if sigma >= 1.0 else sigma / (1.0 - sigma)


def run(inputs: dict[str, np.ndarray]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Runs every scheduler at every budget and dimension of the problem file."""
    budgets = [int(b) for b in inputs["budgets"]]
    two_call_steps = dict(zip(budgets, (int(n) for n in inputs["two_call_steps"])))
    betas = np.asarray(inputs["betas"], np.float64)
    rows, samples = [], {}
    for dim in (int(d) for d in inputs["dims"]):
        weights, means, stds = (
            np.asarray(inputs[f"{name}_{dim}"], np.float64) for name in ("weights", "means", "stds")
        )
        z = np.asarray(inputs[f"z_{dim}"], np.float32)
        for budget in budgets:
            for family, scheduler_name, grid, factory, kind, two_calls in RUNS:
                num_steps = two_call_steps[budget] if two_calls else budget
                scheduler = factory(betas, grid == "karras")
                scheduler.set_timesteps(num_steps)
                network = ExactNetwork(kind, weights, means, stds)
                start = time.perf_counter()
                x, ratio = sample(scheduler, network, z)
                key = f"r{len(rows)}"
                samples[key] = x
                rows.append(
                    dict(
                        key=key, library="diffusers", family=family, sampler=scheduler_name,
                        grid=grid, dim=dim, budget=budget, num_steps=num_steps,
                        nfe=network.calls, terminal_ratio=ratio,
                        start_ratio=_ratio(scheduler.sigmas[0], network),
                        seconds=time.perf_counter() - start,
                        finite=bool(np.isfinite(x).all()),
                    )
                )  # fmt: skip
    return rows, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", required=True, help="the problem .npz of bench_sampling.py")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    import diffusers

    with np.load(args.inputs) as data:
        inputs = {name: data[name] for name in data.files}
    start = time.perf_counter()
    rows, samples = run(inputs)
    os.makedirs(args.out_dir, exist_ok=True)
    np.savez(os.path.join(args.out_dir, "samples.npz"), **samples)
    summary = dict(
        rows=len(rows),
        seconds=time.perf_counter() - start,
        env=dict(
            python=platform.python_version(), torch=torch.__version__,
            diffusers=diffusers.__version__, numpy=np.__version__,
        ),
    )  # fmt: skip
    with open(os.path.join(args.out_dir, "rows.json"), "w") as handle:
        json.dump(dict(summary, rows=rows), handle, indent=1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
