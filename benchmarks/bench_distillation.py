"""Progressive distillation on Fashion-MNIST: the ladder and what it is compared with.

  .venv/bin/python benchmarks/bench_distillation.py --root runs/distill

Every stage resumes when rerun (each is one of diffjax's programs):

1. the teacher, ``configs/fashion_mnist_modern.py`` (v-prediction, zero terminal SNR), 1000
   steps, FD-FMNIST at the end only;
2. ``python -m diffjax.distill --config configs/fashion_mnist_distill.py``: seven rounds from
   128 -> 64 to 2 -> 1 DDIM steps; after each, FD-FMNIST of the student at N steps beside the
   teacher's DDIM (trailing) and DPM-Solver++ with N network calls (in ``distill.json``);
3. the same teacher with EDM's Heun sampler at S = 4, 2, 1 steps (2S - 1 network calls: 7, 3,
   1), in the rows of 8, 4 and 2 (and 1) calls: the most Heun steps within N calls;
4. the default recipe's rectified flow (``configs/fashion_mnist.py``) with Euler at 8, 4, 2 and
   1 steps, and ``python -m diffjax.reflow --distill`` of it (5000 pairs of its 20-step Euler
   samples, 300 steps at t = 1), scored at one step.

Every FD-FMNIST uses one protocol: 1000 EMA samples (sample i from ``fold_in(key(0), i)``), the
shipped classifier's features, the statistics of the 10,000 test images. The table goes to
``benchmarks/out/bench_distillation.json`` and is printed (markdown); the wall time of each
round's training and evaluation is in the distillation's ``distill.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_quality import OUT, evaluate, run  # noqa: E402

NO_EVAL = ["--config.eval.fd_every_steps=0", "--config.eval.every_steps=0",
           "--config.sampling.every_steps=0"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="runs/distill")
    parser.add_argument("--num", type=int, default=1000)
    args = parser.parse_args()
    python, root = sys.executable, args.root
    teacher, flow = os.path.join(root, "modern"), os.path.join(root, "flow")
    students, reflowed = os.path.join(root, "pd"), os.path.join(root, "flow_distill")
    run([python, "-m", "diffjax.train", "--config=configs/fashion_mnist_modern.py",
         f"--workdir={teacher}", "--config.eval.fd_every_steps=1000"])  # fmt: skip
    run([python, "-m", "diffjax.distill", "--config=configs/fashion_mnist_distill.py",
         f"--teacher={teacher}", f"--workdir={students}"])  # fmt: skip
    with open(os.path.join(students, "distill.json")) as f:
        rounds = json.load(f)["rounds"]
    heun = {steps: evaluate(teacher, "heun", steps, [], args.num) for steps in (4, 2, 1)}
    # Heun in S steps calls the network 2S - 1 times: the most steps within N calls.
    heun_within = {8: 4, 4: 2, 2: 1, 1: 1}
    run([python, "-m", "diffjax.train", "--config=configs/fashion_mnist.py",
         f"--workdir={flow}"])  # fmt: skip
    euler = {steps: evaluate(flow, "flow_euler", steps, [], args.num) for steps in (8, 4, 2, 1)}
    run([python, "-m", "diffjax.reflow", f"--teacher={flow}", f"--workdir={reflowed}",
         "--distill", "--num_pairs=5000", "--sampler=flow_euler", "--steps=20",
         "--train_steps=300", *[f"--config_override={flag[9:]}" for flag in NO_EVAL]])  # fmt: skip
    one_step = evaluate(reflowed, "flow_euler", 1, [], args.num)
    rows = []
    for entry in rounds:
        calls = entry["steps"]
        rows.append(dict(
            calls=calls, student=entry["fd"]["student"], teacher_ddim=entry["fd"]["teacher_ddim"],
            teacher_dpm_solver=entry["fd"]["teacher_dpm_solver"],
            teacher_heun=heun[heun_within[calls]]["fd_fmnist"] if calls in heun_within else None,
            flow_euler=euler[calls]["fd_fmnist"] if calls in euler else None,
            reflow_distill=one_step["fd_fmnist"] if calls == 1 else None,
            round_minutes=(entry["train_seconds"] + entry["eval_seconds"]) / 60,
        ))  # fmt: skip
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "bench_distillation.json"), "w") as f:
        json.dump(dict(rows=rows, heun=heun, euler=euler, reflow_distill=one_step), f, indent=2)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + " ---: |" * len(columns))
    for row in rows:
        cells = ["" if row[c] is None else f"{row[c]:.1f}" if isinstance(row[c], float)
                 else str(row[c]) for c in columns]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
