"""ControlNet: how well samples follow the control by training step, and what a step costs.

Agreement (``--part agreement``): from a trained circles run (configs/circles.py, ``--base``),
a ControlNet (configs/circles_controlnet.py) is trained in stages to each of ``--steps``
(a rerun of the same command resumes), and after each stage ``--num`` EMA samples (flow Euler,
50 steps, seed 0) are drawn, sample i with control i of the test split (the outline of test
circle i). Each sample's edge map (:func:`diffjax.metrics.edges.edge_map`) is compared with its
outline: outline IoU and edge F1 at a 1-pixel tolerance. The base run's samples with the same
keys (no control), and the test images themselves (the ceiling), are measured against the
same outlines; the last stage also with classifier-free guidance on the control (w = 2).
``--recipe fashion_mnist`` does the same with configs/fashion_mnist_controlnet.py on the
default run (``--base``) and the test images' Sobel edge maps.

Cost (``--part cost``): the training state's float32 bytes (parameters, EMA, Adam's two
moments; from the abstract shapes, nothing allocated) of full fine-tuning of the UNet and of a
ControlNet of it (whose frozen base is one float32 step argument), for the circles UNet and the
SD 1.5 UNet layout; and the seconds per training step of 60 steps of each on the circles data
(``--base``'s network; full fine-tuning from its weights, ``training.init_from``), measured in
the same run.

  .venv/bin/python benchmarks/bench_controlnet.py --part agreement --base runs/circles \\
      --root runs/circles_cn --steps 100,200,400,600
  .venv/bin/python benchmarks/bench_controlnet.py --part cost --base runs/circles
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.abspath(os.path.dirname(__file__)))
RECIPES = {"circles": "circles_controlnet", "fashion_mnist": "fashion_mnist_controlnet"}
CONTROLNET_CONFIG = os.path.join(REPO, "configs", "circles_controlnet.py")
BASE_CONFIG = os.path.join(REPO, "configs", "circles.py")


def _run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def _bytes(tree) -> int:
    import jax

    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def _agreement(samples, outlines) -> tuple[float, float]:
    import numpy as np

    from diffjax.metrics.edges import edge_f1, edge_map, outline_iou

    edges = edge_map(samples)
    return (
        float(np.mean(outline_iou(edges, outlines))),
        float(np.mean(edge_f1(edges, outlines))),
    )


def agreement(recipe: str, base: str, root: str, steps: list[int], num: int) -> None:
    import diffjax as dj
    from diffjax.data.datasets.control import load_circles, load_fashion_mnist_edges

    test = (
        load_circles("test", 32)[0]
        if recipe == "circles"
        else load_fashion_mnist_edges("test", 28)[0]
    )
    config = os.path.join(REPO, "configs", f"{RECIPES[recipe]}.py")
    images, outlines = test["image"][:num], test["cond"]["control"][:num]
    settings = dict(batch_size=min(num, 256), seed=0)
    rows = [("test images (ceiling)", "-", *_agreement(images, outlines))]
    base_samples = dj.sample_run(dj.load_trained_run(base), num, **settings)
    rows.append(("base run, no control", "-", *_agreement(base_samples, outlines)))
    workdir = os.path.join(root, "controlnet")
    for count in steps:
        _run([
            sys.executable, "-m", "diffjax.train", f"--config={config}",
            f"--workdir={workdir}", f"--config.objective.base={base}",
            f"--config.training.num_steps={count}", f"--config.training.checkpoint_every_steps={count}",
            "--config.sampling.every_steps=0", "--config.eval.every_steps=0",
        ])  # fmt: skip
        run = dj.load_trained_run(workdir)
        samples = dj.sample_run(run, num, **settings)
        rows.append(("ControlNet", str(count), *_agreement(samples, outlines)))
        print(rows[-1], flush=True)
    guided = dj.sample_run(run, num, guidance_scale=2.0, **settings)
    rows.append(("ControlNet, guidance w=2", str(steps[-1]), *_agreement(guided, outlines)))
    print(f"\n{recipe}: {num} samples, flow Euler 50 steps, seed 0; 1-pixel tolerance")
    print("| samples | ControlNet steps | outline IoU | edge F1 |")
    print("| --- | ---: | ---: | ---: |")
    for name, count, iou, f1 in rows:
        print(f"| {name} | {count} | {iou:.3f} | {f1:.3f} |")


def _seconds_per_step(workdir: str, batch: int) -> float:
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    rates = [row["images_per_second"] for row in rows if "images_per_second" in row][1:]
    return batch / (sum(rates) / len(rates))


def cost(base: str) -> None:
    import jax
    import jax.numpy as jnp

    from diffjax.configs import get_config
    from diffjax.models import ControlledModel, ControlNet, build_model, controlnet_fields
    from diffjax.models.unet_weights import unet_from_diffusers_config

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_fsdp import SD15_UNET

    circles = build_model(get_config("circles_controlnet").model)
    sd15_unet = unet_from_diffusers_config(SD15_UNET)
    sd15 = ControlledModel(sd15_unet, ControlNet(**controlnet_fields(sd15_unet)))
    cases = {
        "circles UNet (32x32x3)": (
            circles, jnp.zeros((1, 32, 32, 3)), {"control": jnp.zeros((1, 32, 32, 1))},
        ),
        "SD 1.5 UNet layout (64x64x4, 512x512 control)": (
            sd15, jnp.zeros((1, 64, 64, 4)),
            {"context": jnp.zeros((1, 77, 768)), "control": jnp.zeros((1, 512, 512, 3))},
        ),
    }  # fmt: skip
    print("| network | training | trained parameters | state (params, EMA, 2 moments) | "
          "frozen base |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: |")
    for name, (module, x, cond) in cases.items():
        params = jax.eval_shape(lambda: module.init(jax.random.key(0), x, 0, cond)["params"])
        unet, controlnet = params["base"], params["controlnet"]
        for label, trained, frozen in (("full fine-tuning", unet, None),
                                       ("ControlNet", controlnet, unet)):  # fmt: skip
            count = sum(leaf.size for leaf in jax.tree.leaves(trained))
            frozen_text = "-" if frozen is None else f"{_bytes(frozen) / 2**20:,.1f} MiB"
            print(f"| {name} | {label} | {count:,} | {4 * _bytes(trained) / 2**20:,.1f} MiB | "
                  f"{frozen_text} |")  # fmt: skip
    common = ["--config.training.num_steps=60", "--config.sampling.every_steps=0",
              "--config.eval.every_steps=0", "--config.training.checkpoint_every_steps=60",
              "--config.training.log_every_steps=10"]  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        full, control = os.path.join(scratch, "full"), os.path.join(scratch, "controlnet")
        _run([sys.executable, "-m", "diffjax.train", f"--config={BASE_CONFIG}",
              f"--workdir={full}", f"--config.training.init_from={base}", *common])  # fmt: skip
        _run([sys.executable, "-m", "diffjax.train", f"--config={CONTROLNET_CONFIG}",
              f"--workdir={control}", f"--config.objective.base={base}", *common])  # fmt: skip
        batch = get_config("circles").data.batch_size
        print(f"\nseconds per training step, batch {batch} (python -m diffjax.train's devices):")
        print(f"| full fine-tuning | {_seconds_per_step(full, batch):.3f} |")
        print(f"| ControlNet | {_seconds_per_step(control, batch):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("agreement", "cost"), required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--recipe", choices=tuple(RECIPES), default="circles")
    parser.add_argument("--root", default=os.path.join(REPO, "runs", "circles_cn"))
    parser.add_argument("--steps", default="100,200,400,600")
    parser.add_argument("--num", type=int, default=256)
    args = parser.parse_args()
    if args.part == "agreement":
        agreement(
            args.recipe, args.base, args.root, [int(s) for s in args.steps.split(",")], args.num
        )
    else:
        cost(args.base)


if __name__ == "__main__":
    main()
