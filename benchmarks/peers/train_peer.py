"""Training throughput of one PyTorch peer UNet: forward + backward + Adam, images/s.

Run it in its own process (benchmarks/compare.py does) so that the peak resident memory it
reports belongs to this one training run:

    benchmarks/.peers-venv/bin/python benchmarks/peers/train_peer.py \
        --peer diffusers --size fashion_mnist --steps 10

Prints a JSON object on the last line of stdout (and writes it to ``--json``): parameters,
batch size, median step seconds, images/s, the first step's seconds, model FLOPs per image,
achieved GFLOP/s and the peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    PEERS,
    SIZES,
    build_model,
    count_params,
    environment,
    make_train_step,
    peak_rss_mib,
    time_repeated,
    training_flops_per_image,
)


def run(
    peer: str,
    size: str,
    *,
    steps: int,
    warmup: int,
    batch_size: int | None = None,
    bf16: bool = False,
    count_flops: bool = True,
) -> dict[str, object]:
    """Measures the training step of one peer at one size.

    Args:
      peer: 'diffusers' or 'lucidrains'.
      size: 'fashion_mnist' or 'cifar10'.
      steps: timed steps.
      warmup: untimed steps before them (the first one is reported separately).
      batch_size: overrides the size's default batch (64 for Fashion-MNIST, 128 for CIFAR-10).
      bf16: run the model under ``torch.autocast('cpu', torch.bfloat16)`` (oneDNN uses AMX
        tiles on CPUs that have them); parameters and Adam stay float32.
      count_flops: also count model FLOPs per image (one extra forward + backward).

    Returns:
      The measured row as a JSON-serialisable dict.
    """
    torch.manual_seed(0)
    spec = SIZES[size]
    batch = batch_size or spec["batch_size"]
    model = build_model(peer, size)
    x0 = torch.rand(batch, spec["channels"], spec["image_size"], spec["image_size"]) * 2 - 1
    step = make_train_step(model)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def one_step() -> None:
        with autocast:
            step(x0)

    timing = time_repeated(one_step, warmup=warmup, steps=steps)
    rss = peak_rss_mib()
    row: dict[str, object] = {
        "framework": "torch",
        "library": peer,
        "size": size,
        "dtype": "bf16-autocast" if bf16 else "float32",
        "params": count_params(model),
        "batch_size": batch,
        "steps": steps,
        "median_step_seconds": timing.median,
        "min_step_seconds": min(timing.seconds),
        "median_step_cpu_seconds": float(np.median(timing.cpu_seconds)),
        "images_per_second": batch / timing.median,
        "first_step_seconds": timing.first_seconds,
        "peak_rss_mib": rss,
        "env": environment(),
    }
    if count_flops:
        flops = training_flops_per_image(model, x0)
        row["flops_per_image_forward"] = flops["forward"]
        row["flops_per_image_train"] = flops["train"]
        row["achieved_gflops"] = flops["train"] * batch / timing.median / 1e9
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", choices=PEERS, required=True)
    parser.add_argument("--size", choices=tuple(SIZES), required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--no-flops", action="store_true")
    parser.add_argument("--json", help="also write the row here")
    args = parser.parse_args()
    row = run(
        args.peer,
        args.size,
        steps=args.steps,
        warmup=args.warmup,
        batch_size=args.batch_size,
        bf16=args.bf16,
        count_flops=not args.no_flops,
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(row, handle, indent=2)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
