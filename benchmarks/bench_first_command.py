"""Why README command 1's samples trail the PyTorch peer: FD-FMNIST one factor at a time.

The factor study of the default Fashion-MNIST run against lucidrains' denoising-diffusion-pytorch
trained with the same recipe (``benchmarks/peers/train_fmnist_peer.py``). Each row changes one
thing against the DDPM run's DDIM-50 ('leading' grid, clipped x0, EMA weights) and is scored by
``python -m diffjax.evaluate`` with the same protocol (``--num`` samples, sample i from
``fold_in(key(seed), i)``, the shipped classifier's features, the 10,000 test images):

  .venv/bin/python benchmarks/bench_first_command.py --root runs/first --only-train
  .venv/bin/python benchmarks/bench_first_command.py --root runs/first --seeds 0 1

Runs (``--runs``): ``ddpm`` (configs/fashion_mnist_ddpm.py: cosine schedule, eps, the 1.1M
UNet with one ResNet block per level and attention at 7x7), ``ddpm_2blocks`` (the same recipe
with the peer's two ResNet blocks per level, 24 base channels: 0.92M parameters against the
peer's 1.10M, at the default's step cost) and ``default`` (configs/fashion_mnist.py, the
rectified flow command 1 trains, logging FD-FMNIST every 250 steps). The sampler factors (the
grid, the last step, clipping, EMA, noise) are rows on the ``ddpm`` run; the layout is
``ddpm_2blocks``' DDIM-50. Every evaluation records its full protocol in ``<run>/eval/*.json``;
the table is written to ``benchmarks/out/bench_first_command.json`` and printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_quality import OUT, evaluate, run  # noqa: E402

# The peer's two ResNet blocks per level at about the same parameter count (24 channels: 0.92M
# against 1.11M) and the same step cost; attention stays at 7x7. The peer's attention at every
# level is left out: at 28x28 and 14x14 it is linear attention, and diffjax's full attention
# there costs 2-3.5x the default step on a CPU (benchmarks/RESULTS.md).
PEER_LAYOUT = [
    "--config.model.num_res_blocks=2",
    "--config.model.attn_resolutions=(7,)",
    "--config.model.base_channels=24",
]
RUNS = {
    "ddpm": ("configs/fashion_mnist_ddpm.py", ["--config.eval.fd_every_steps=0"]),
    "ddpm_2blocks": ("configs/fashion_mnist_ddpm.py", ["--config.eval.fd_every_steps=0",
                                                       *PEER_LAYOUT]),
    "default": ("configs/fashion_mnist.py", ["--config.eval.fd_every_steps=250"]),
}  # fmt: skip
# (row label, sampler, steps, evaluate flags)
FACTORS = {
    "ddpm": [
        ("baseline: DDIM-50 'leading' (k T/S; last call at t = 0), clipped x0, EMA", "ddim", 50,
         ["--option=spacing=leading"]),
        ("grid 'trailing' = the peer's linspace(-1, T-1, S+1): T-1 .. T/S-1", "ddim", 50,
         ["--option=spacing=trailing"]),
        ("grid 'linspace': T-1 .. 0 (a last call at t = 0)", "ddim", 50,
         ["--option=spacing=linspace"]),
        ("no x0 clipping, 'leading'", "ddim", 50,
         ["--option=spacing=leading", "--option=clip_x0=false"]),
        ("no x0 clipping, 'trailing'", "ddim", 50,
         ["--option=spacing=trailing", "--option=clip_x0=false"]),
        ("raw weights instead of EMA", "ddim", 50, ["--option=spacing=leading", "--noema"]),
        ("DPM-Solver++(2M), 20 steps", "dpm_solver", 20, []),
        ("DDIM-50 with eta = 1 (ancestral noise)", "ddim", 50, ["--option=eta=1.0"]),
        ("DDIM-200", "ddim", 200, []),
    ],
    "ddpm_2blocks": [("two ResNet blocks per level, 24 channels", "ddim", 50, [])],
    "default": [("the default recipe's own sampler", None, None, [])],
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="runs/first")
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--runs", nargs="*", default=list(RUNS))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--only-train", action="store_true")
    parser.add_argument("--only-evaluate", action="store_true")
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    rows = []
    for name in args.runs:
        config, extra = RUNS[name]
        workdir = os.path.join(args.root, name)
        if not args.only_evaluate:
            run([sys.executable, "-m", "diffjax.train", f"--config={config}",
                 f"--workdir={workdir}", *extra])  # fmt: skip
        if args.only_train:
            continue
        for label, sampler, steps, flags in FACTORS[name]:
            for seed in args.seeds:
                row = evaluate(workdir, sampler, steps, [*flags, f"--seed={seed}"], args.num)
                rows.append(dict(run=name, factor=label, seed=seed, **row))
    with open(os.path.join(OUT, "bench_first_command.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(f"\n{'run':<17} {'seed':>4} {'FD-FMNIST':>10} {'seconds':>8}  factor")
    for row in rows:
        print(f"{row['run']:<17} {row['seed']:>4} {row['fd_fmnist']:>10.2f} "
              f"{row['seconds']:>8.0f}  {row['factor']}")  # fmt: skip


if __name__ == "__main__":
    main()
