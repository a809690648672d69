"""Training throughput of README command 1's program, A/B between two source trees.

The training CLI is the one entry point every version shares, so the same command is run against
each tree (PYTHONPATH), alternating, and only the library differs:

    .venv/bin/python benchmarks/ab_train.py /tmp/old_worktree . --pairs 2 --steps 150

Each run trains ``configs/fashion_mnist.py`` (the default run: 1.1M-parameter UNet, batch 64,
one JAX device per core, the CLI's CPU convolution flag) for ``--steps`` steps with the sample
grids, Fréchet distance and held-out loss off and one checkpoint at the end, in a fresh workdir,
and reports the median of the logged images/s over the intervals after the first (which holds
the compilation). Prints one line per run and the median of each tree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tree: str, steps: int) -> float:
    """Median images/s of one training run of ``tree``'s library (excluding the first interval)."""
    workdir = tempfile.mkdtemp(prefix="ab_train_")
    try:
        command = [
            sys.executable, "-m", "diffjax.train",
            f"--config={os.path.join(REPO, 'configs', 'fashion_mnist.py')}",
            f"--workdir={workdir}", f"--config.training.num_steps={steps}",
            "--config.training.log_every_steps=10", f"--config.training.checkpoint_every_steps={steps}",
            "--config.training.progress_bar=False", "--config.eval.every_steps=0",
            "--config.eval.fd_every_steps=0", "--config.sampling.num_samples=0",
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
        subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        rates = [r["images_per_second"] for r in records if "images_per_second" in r]
        return statistics.median(rates[1:])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, help="The two source trees, A then B.")
    parser.add_argument("--pairs", type=int, default=2, help="Alternating A, B runs.")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    results: dict[str, list[float]] = {tree: [] for tree in args.trees}
    for pair in range(args.pairs):
        for tree in args.trees:
            rate = run(tree, args.steps)
            results[tree].append(rate)
            print(f"pair {pair}: {tree}: {rate:.1f} images/s", flush=True)
    for tree, rates in results.items():
        print(f"{tree}: median {statistics.median(rates):.1f} images/s over {rates}")


if __name__ == "__main__":
    main()
