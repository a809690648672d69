"""Sampling throughput of a PyTorch peer UNet with diffusers' DDIM and DPM-Solver schedulers.

    benchmarks/.peers-venv/bin/python benchmarks/peers/sample_peer.py \
        --peer diffusers --size fashion_mnist --sampler ddim --num-steps 50 --batch-size 64

The model is freshly initialised (speed does not depend on the weights). The best of
``--repeats`` full sampling runs is timed after an untimed warm-up run of ``--warmup-steps``
model calls (as benchmarks/bench_sampling.py does for diffjax); the JSON row on the last line
of stdout gives images/s, seconds per model call and the peak RSS.

Schedulers: ``DDIMScheduler`` (Song et al. 2021, eta = 0, 'leading' spacing) and
``DPMSolverMultistepScheduler`` (Lu et al. 2022, DPM-Solver++ 2M), both on DDPM's linear betas,
as diffusers users run them: a Python loop of ``model`` + ``scheduler.step``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    PEERS,
    SIZES,
    build_model,
    count_params,
    environment,
    peak_rss_mib,
)

SAMPLERS = ("ddim", "dpm_solver")


def make_scheduler(sampler: str, num_steps: int):
    """Builds a diffusers scheduler on DDPM's linear schedule with ``num_steps`` steps.

    Args:
      sampler: 'ddim' or 'dpm_solver'.
      num_steps: number of sampling steps (model calls).

    Returns:
      A diffusers scheduler with its timesteps set.

    Raises:
      ValueError: for an unknown sampler.
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    common = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    if sampler == "ddim":
        scheduler = DDIMScheduler(clip_sample=False, timestep_spacing="leading", **common)
    elif sampler == "dpm_solver":
        scheduler = DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++", solver_order=2, **common
        )
    else:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    scheduler.set_timesteps(num_steps)
    return scheduler


@torch.inference_mode()
def sample(model: torch.nn.Module, scheduler, shape: tuple[int, ...], max_calls: int | None = None):
    """Runs the reverse process from Gaussian noise.

    Args:
      model: eps-predicting UNet ``model(x [B, C, H, W], t [B]) -> eps``.
      scheduler: a diffusers scheduler with timesteps set.
      shape: ``(B, C, H, W)``.
      max_calls: stop after this many model calls (for a warm-up run).

    Returns:
      The final ``x`` [B, C, H, W].
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    for index, t in enumerate(scheduler.timesteps):
        if max_calls is not None and index >= max_calls:
            break
        eps = model(x, t.expand(shape[0]))
        x = scheduler.step(eps, t, x).prev_sample
    return x


def run(
    peer: str,
    size: str,
    sampler: str,
    *,
    num_steps: int,
    batch_size: int,
    warmup_steps: int = 2,
    repeats: int = 1,
) -> dict[str, object]:
    """Measures one full sampling run.

    Args:
      peer: 'diffusers' or 'lucidrains'.
      size: 'fashion_mnist' or 'cifar10'.
      sampler: 'ddim' or 'dpm_solver'.
      num_steps: sampling steps.
      batch_size: images sampled at once.
      warmup_steps: model calls of the untimed warm-up run.
      repeats: timed full runs; the fastest is reported.

    Returns:
      The measured row as a JSON-serialisable dict.
    """
    torch.manual_seed(0)
    spec = SIZES[size]
    model = build_model(peer, size).eval()
    shape = (batch_size, spec["channels"], spec["image_size"], spec["image_size"])
    sample(model, make_scheduler(sampler, num_steps), shape, max_calls=warmup_steps)
    runs = []
    for _ in range(repeats):
        scheduler = make_scheduler(sampler, num_steps)
        start = time.perf_counter()
        x = sample(model, scheduler, shape)
        runs.append(time.perf_counter() - start)
        if not torch.isfinite(x).all():
            raise RuntimeError(f"{peer} {sampler} produced non-finite samples")
    seconds = min(runs)
    return {
        "framework": "torch",
        "library": peer,
        "size": size,
        "sampler": sampler,
        "num_steps": num_steps,
        "params": count_params(model),
        "batch_size": batch_size,
        "seconds": seconds,
        "all_seconds": runs,
        "images_per_second": batch_size / seconds,
        "seconds_per_model_call": seconds / num_steps,
        "peak_rss_mib": peak_rss_mib(),
        "env": environment(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", choices=PEERS, required=True)
    parser.add_argument("--size", choices=tuple(SIZES), required=True)
    parser.add_argument("--sampler", choices=SAMPLERS, required=True)
    parser.add_argument("--num-steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="also write the row here")
    args = parser.parse_args()
    row = run(
        args.peer,
        args.size,
        args.sampler,
        num_steps=args.num_steps,
        batch_size=args.batch_size,
        warmup_steps=args.warmup_steps,
        repeats=args.repeats,
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(row, handle, indent=2)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
