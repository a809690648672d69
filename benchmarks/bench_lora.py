"""LoRA against full fine-tuning: the training state's memory, and Fashion-MNIST samples.

Memory (``--part memory``; from the abstract shapes, nothing allocated): the float32 bytes of
the training state (parameters, EMA, AdamW's two moments) for full fine-tuning and for a LoRA
of the attention projections at ranks 4 and 16, for the default Fashion-MNIST UNet and the SD
1.5 UNet layout (the frozen base of a LoRA run is a step argument: one float32 copy, no EMA,
no moments; counted beside).

Quality (``--part quality``): from the default run (README command 1, ``--base``), 500 more
steps of full fine-tuning (``training.init_from``) and of a rank-4 LoRA (``objective.name =
'lora'``) on the same data, then FD-FMNIST of 1000 EMA samples (flow Euler, 50 steps, seed 0)
of the base and of both, by ``python -m diffjax.evaluate``; the seconds per training step
are the runs' own (``metrics.jsonl``).

  .venv/bin/python benchmarks/bench_lora.py --part memory
  .venv/bin/python benchmarks/bench_lora.py --part quality --base runs/fmnist --root runs/lora
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bytes(tree) -> int:
    import jax

    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def memory() -> None:
    import jax
    import jax.numpy as jnp

    from diffjax.configs import get_config
    from diffjax.lora import init_lora
    from diffjax.models import build_model
    from diffjax.models.unet_weights import unet_from_diffusers_config

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_fsdp import SD15_UNET

    fmnist = build_model(get_config("fashion_mnist").model)
    sd15 = unet_from_diffusers_config(SD15_UNET)
    cases = {
        "Fashion-MNIST UNet": jax.eval_shape(
            lambda: fmnist.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), 0)["params"]
        ),
        "SD 1.5 UNet layout": jax.eval_shape(
            lambda: sd15.init(
                jax.random.key(0),
                jnp.zeros((1, 64, 64, 4)),
                0,
                {"context": jnp.zeros((1, 77, 768))},
            )["params"]  # fmt: skip
        ),
    }
    print(
        "| network | training | trained parameters | state (params, EMA, 2 moments) | frozen base |"
    )
    print("| --- | --- | ---: | ---: | ---: |")
    for name, params in cases.items():
        size = _bytes(params)
        count = sum(leaf.size for leaf in jax.tree.leaves(params))
        print(f"| {name} | full fine-tuning | {count:,} | {4 * size / 2**20:,.1f} MiB | - |")
        for rank in (4, 16):
            lora = jax.eval_shape(lambda: init_lora(jax.random.key(0), params, rank))
            lora_count = sum(leaf.size for leaf in jax.tree.leaves(lora))
            print(f"| {name} | LoRA r={rank}, attention | {lora_count:,} | "
                  f"{4 * _bytes(lora) / 2**20:,.2f} MiB | {size / 2**20:,.1f} MiB |")  # fmt: skip


def _run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def _seconds_per_step(workdir: str) -> float:
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    rates = [row["images_per_second"] for row in rows if "images_per_second" in row][2:]
    return 64 / (sum(rates) / len(rates))


def _fd(workdir: str) -> float:
    """FD-FMNIST of 1000 EMA samples: a result the evaluate CLI already wrote, else a new one."""
    out = os.path.join(workdir, "eval")

    def written() -> list[str]:
        names = os.listdir(out) if os.path.isdir(out) else []
        return sorted(name for name in names if name.endswith(".json") and "-1000-" in name)

    if not written():
        _run([sys.executable, "-m", "diffjax.evaluate", f"--workdir={workdir}", "--num=1000",
              "--metrics=fd", "--seed=0"])  # fmt: skip
    record = json.load(open(os.path.join(out, written()[-1])))
    return float(record["results"]["fd_fmnist"])


def quality(base: str, root: str, steps: int) -> None:
    config = os.path.join(REPO, "configs", "fashion_mnist.py")
    lora_config = os.path.join(REPO, "configs", "fashion_mnist_lora.py")
    total = 1000 + steps
    full, lora = os.path.join(root, "full"), os.path.join(root, "lora")
    common = [f"--config.training.num_steps={steps}", "--config.eval.fd_every_steps=0",
              "--config.sampling.every_steps=0"]  # fmt: skip
    if not os.path.exists(os.path.join(full, "eval")):
        _run([sys.executable, "-m", "diffjax.train", f"--config={config}", f"--workdir={full}",
              f"--config.training.init_from={base}", *common])  # fmt: skip
    if not os.path.exists(os.path.join(lora, "eval")):
        _run([sys.executable, "-m", "diffjax.train", f"--config={lora_config}",
              f"--workdir={lora}", f"--config.objective.base={base}", *common])  # fmt: skip
    rows = {"base (step 1000)": (base, None), f"full fine-tuning (+{steps})": (full, full),
            f"LoRA r=4, attention (+{steps})": (lora, lora)}  # fmt: skip
    print(f"| model | FD-FMNIST (1000 samples) | s per step | steps in total: {total} |")
    for name, (workdir, trained) in rows.items():
        speed = f"{_seconds_per_step(trained):.3f}" if trained else "-"
        print(f"| {name} | {_fd(workdir):.2f} | {speed} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("memory", "quality"), required=True)
    parser.add_argument("--base", default=None)
    parser.add_argument("--root", default=os.path.join(REPO, "runs", "lora"))
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    if args.part == "memory":
        memory()
    else:
        quality(args.base, args.root, args.steps)


if __name__ == "__main__":
    main()
