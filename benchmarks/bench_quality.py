"""Sample quality of the Fashion-MNIST runs: FD-FMNIST by sampler, steps and training method.

Trains (or reuses) the four Fashion-MNIST configs with the default run's budget, then scores
each with ``python -m diffjax.evaluate`` (FD-FMNIST of ``--num`` EMA samples against the 10,000
test images, the shipped classifier's features), and optionally the samples of a PyTorch peer
written by ``benchmarks/peers/train_fmnist_peer.py``, scored by the same code:

  .venv/bin/python benchmarks/bench_quality.py --root runs/quality --only-train
  .venv/bin/python benchmarks/bench_quality.py --root runs/quality --only-evaluate
  .venv/bin/python benchmarks/bench_quality.py --root runs/quality --only-evaluate \
      --peer-samples benchmarks/out/peer_lucidrains_fmnist_samples.npz

Rows: the DDPM run with DDIM at 1, 2, 4, 10 and 50 steps and DPM-Solver++ at 4, 10 and 20 (and
DDPM-1000 with ``--ddpm-1000``: 20x the sampling cost of DDIM-50 and DPM-Solver++-20 together); EDM with Heun at 1, 2, 4, 10 and 20 steps
(NFE 2N - 1) and DPM-Solver++-20; rectified flow with Euler at 1, 2, 4, 10, 20 and 50 steps;
with ``--runs ... modern``, the modern recipe with DDIM-50 (trailing) and DPM-Solver++-20. The
DDPM run logs FD-FMNIST of 1000 samples every 250 steps, which ``fd_vs_steps.png`` plots. Every evaluation
records its full protocol in ``<run>/eval/<step>.json``; this script gathers them into
``benchmarks/out/bench_quality.json`` and prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "benchmarks", "out")
RUNS = {
    "ddpm": ("configs/fashion_mnist_ddpm.py", ["--config.eval.fd_every_steps=250"]),
    "edm": ("configs/fashion_mnist_edm.py", []),
    "flow": ("configs/fashion_mnist.py", []),
    "modern": ("configs/fashion_mnist_modern.py", []),
}
EVALUATIONS = {
    "ddpm": [("ddim", n, []) for n in (1, 2, 4, 10, 50)]
    + [("dpm_solver", n, []) for n in (4, 10, 20)],
    "edm": [("heun", n, []) for n in (1, 2, 4, 10, 20)] + [("dpm_solver", 20, [])],
    "flow": [("flow_euler", n, []) for n in (1, 2, 4, 10, 20, 50)],
    "modern": [("ddim", 50, ["--option=spacing=trailing"]), ("dpm_solver", 20, [])],
}


def run(command: list[str]) -> float:
    """Runs a command from the repository root, streaming its output; returns its seconds."""
    start = time.perf_counter()
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)
    return time.perf_counter() - start


def evaluate(
    workdir: str, sampler: str | None, steps: int | None, extra: list[str], num: int
) -> dict:
    """Scores a run with the evaluate CLI (sampler and steps None: the run's own)."""
    chosen = [f"--sampler={sampler}"] * (sampler is not None)
    chosen += [f"--steps={steps}"] * (steps is not None)
    seconds = run([
        sys.executable, "-m", "diffjax.evaluate", f"--workdir={workdir}", f"--num={num}",
        "--batch=250", *chosen, "--metrics=fd", *extra,
    ])  # fmt: skip
    results = sorted(
        (os.path.join(workdir, "eval", name) for name in os.listdir(os.path.join(workdir, "eval"))
         if name.endswith(".json")),
        key=os.path.getmtime,
    )  # fmt: skip
    with open(results[-1]) as f:
        record = json.load(f)
    protocol = record["protocol"]
    sampler = protocol.get("sampler", sampler)
    steps = protocol.get("options", {}).get("num_steps", steps)
    return dict(sampler=sampler, steps=steps, fd_fmnist=record["results"]["fd_fmnist"],
                seconds=seconds, protocol=record["protocol"])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="runs/quality")
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--only-evaluate", action="store_true")
    parser.add_argument("--only-train", action="store_true")
    parser.add_argument("--runs", nargs="*", default=["ddpm", "edm", "flow"])
    parser.add_argument("--peer-samples", help="npz of a peer's samples to score too")
    parser.add_argument("--ddpm-1000", action="store_true", help="also DDPM-1000 on the DDPM run")
    args = parser.parse_args()
    if args.ddpm_1000:
        EVALUATIONS["ddpm"].insert(0, ("ddpm", 1000, []))
    os.makedirs(OUT, exist_ok=True)
    rows, training = [], {}
    for name in args.runs:
        config, extra = RUNS[name]
        workdir = os.path.join(args.root, name)
        if not args.only_evaluate:
            training[name] = run([sys.executable, "-m", "diffjax.train", f"--config={config}",
                                  f"--workdir={workdir}", *extra])  # fmt: skip
        if args.only_train:
            continue
        for sampler, steps, options in EVALUATIONS[name]:
            rows.append(dict(run=name, **evaluate(workdir, sampler, steps, options, args.num)))
    if args.peer_samples:
        workdir = os.path.join(args.root, "ddpm")
        reference = os.path.join(workdir, "eval", "reference_fmnist_fashion_mnist_test_all.npz")
        seconds = run([sys.executable, "-m", "diffjax.evaluate", f"--samples={args.peer_samples}",
                       f"--reference={reference}", "--features=fmnist", "--metrics=fd",
                       f"--out={os.path.join(OUT, 'peer_fd.json')}"])  # fmt: skip
        with open(os.path.join(OUT, "peer_fd.json")) as f:
            record = json.load(f)
        rows.append(
            dict(
                run="lucidrains",
                sampler="its DDIM",
                steps=50,
                seconds=seconds,
                fd_fmnist=record["results"]["fd_fmnist"],
                protocol=record["protocol"],
            )
        )
    fd_curve = []
    metrics_path = os.path.join(args.root, "ddpm", "metrics.jsonl")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            fd_curve = [json.loads(line) for line in f if '"fd_fmnist"' in line]
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plt.figure(figsize=(5, 3.2))
        plt.plot([r["step"] for r in fd_curve], [r["fd_fmnist"] for r in fd_curve], marker="o")
        plt.xlabel("training step")
        plt.ylabel("FD-FMNIST (1000 samples, DDIM-50)")
        plt.yscale("log")
        plt.title("configs/fashion_mnist_ddpm.py")
        plt.tight_layout()
        plt.savefig(os.path.join(OUT, "fd_vs_steps.png"), dpi=120)
    with open(os.path.join(OUT, "bench_quality.json"), "w") as f:
        json.dump(dict(rows=rows, training_seconds=training, fd_curve=fd_curve), f, indent=2)
    print(f"\n{'run':<11} {'sampler':<12} {'steps':>5} {'FD-FMNIST':>10} {'seconds':>8}")
    for row in rows:
        print(f"{row['run']:<11} {row['sampler']:<12} {row['steps']:>5} "
              f"{row['fd_fmnist']:>10.2f} {row['seconds']:>8.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
