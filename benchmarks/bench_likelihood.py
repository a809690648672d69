"""The ODE likelihood's cost on CPU: forward- against reverse-mode Jacobian products.

``diffjax.likelihood.ode_likelihood`` evaluates one Jacobian product of the network per
function evaluation, inside diffrax's while loop. On XLA's CPU backend a convolution's input
gradient (the reverse-mode product) compiled inside a while-loop body keeps a transposed kernel
layout (``dim_labels=..._01oi->...``) and misses the fast convolution path
(jax-ml/jax#12868), while the forward-mode product is an ordinary convolution. This script
measures, in one run:

1. a 3x3 convolution (32 channels, 28x28, batch 8): its input gradient (VJP) and its JVP per
   call, jitted alone and inside a ``lax.fori_loop``; PyTorch's input gradient of the same
   convolution beside it when ``benchmarks/.peers-venv`` exists;
2. the Fashion-MNIST UNet (``configs/fashion_mnist_ddpm.py``, trained weights from ``--workdir`` if
   given, else perturbed random ones): VJP and JVP per call, alone and in the loop;
3. ``ode_likelihood`` of ``--batch`` random 8-bit images (uniform levels: a cost measurement,
   not a likelihood of data) with both ``autodiff`` modes: wall time, NFE and bits/dim (they
   must agree to the solve's tolerance).

Each product is timed with its forward pass (``jax.vjp``/``jax.jvp`` of the network from the
input), as the solver evaluates it; PyTorch's row is the forward pass and the input gradient.

    .venv/bin/python benchmarks/bench_likelihood.py --workdir runs/quality/ddpm --rtol 1e-3

Prints a table and writes ``benchmarks/out/likelihood.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_PYTHON = os.path.join(REPO, "benchmarks", ".peers-venv", "bin", "python")

TORCH_CONV = """
import json, time, torch
torch.set_num_threads({threads})
conv = torch.nn.Conv2d(32, 32, 3, padding=1)
x = torch.randn(8, 32, 28, 28, requires_grad=True)
def call():
    out = conv(x)
    return torch.autograd.grad(out, x, out)[0]
for _ in range(3): call()
start = time.perf_counter()
for _ in range({repeats}): call()
print(json.dumps((time.perf_counter() - start) / {repeats} * 1e3))
"""


def _per_call_ms(fn, *args, repeats: int, calls_per_run: int = 1) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - start) / (repeats * calls_per_run) * 1e3


def _alone_and_in_loop(product, x, repeats: int, loop_length: int = 10) -> tuple[float, float]:
    """ms per call of ``product(x)`` jitted alone and as the body of a fori_loop."""
    import jax

    alone = _per_call_ms(jax.jit(product), x, repeats=repeats)
    looped = jax.jit(
        lambda y: jax.lax.fori_loop(0, loop_length, lambda i, z: z + 1e-3 * product(z), y)
    )
    in_loop = _per_call_ms(looped, x, repeats=max(1, repeats // loop_length),
                           calls_per_run=loop_length)  # fmt: skip
    return alone, in_loop


def _products(fn):
    import jax

    def vjp(x):
        return jax.vjp(fn, x)[1](x)[0]

    def jvp(x):
        return jax.jvp(fn, (x,), (x,))[1]

    return {"vjp (reverse)": vjp, "jvp (forward)": jvp}


def _unet(workdir: str | None):
    import jax
    import numpy as np

    if workdir:
        from diffjax.training.trained_run import load_trained_run

        run = load_trained_run(workdir)
        return run.model, run.state.ema_params, run.process, run.config
    import runpy

    import diffjax as dj
    from diffjax.models import build_model

    config = runpy.run_path(os.path.join(REPO, "configs", "fashion_mnist_ddpm.py"))["get_config"]()
    model = build_model(config.model)
    params = model.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32), np.zeros(1))
    leaves, treedef = jax.tree.flatten(params["params"])
    keys = dj.sample_keys(1, 0, len(leaves))
    noisy = [p + 0.05 * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)]
    schedule = dj.get_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)
    return model, jax.tree.unflatten(treedef, noisy), schedule, config.to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="A trained Fashion-MNIST run.")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rtol", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads.")
    args = parser.parse_args()

    from diffjax.cli import enable_fast_cpu_convolutions

    enable_fast_cpu_convolutions()
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    import diffjax as dj
    from diffjax.likelihood import ode_likelihood
    from diffjax.models import make_model_fn

    rows = []
    x = jax.random.normal(jax.random.key(0), (8, 28, 28, 32))
    conv = nn.Conv(32, (3, 3))
    conv_params = conv.init(jax.random.key(1), x)
    for name, product in _products(lambda y: conv.apply(conv_params, y)).items():
        alone, in_loop = _alone_and_in_loop(product, x, args.repeats * 5)
        rows.append(dict(case=f"conv 3x3 {name}", alone_ms=alone, in_loop_ms=in_loop))
    if os.path.exists(PEERS_PYTHON):
        script = TORCH_CONV.format(threads=args.threads, repeats=args.repeats * 5)
        out = subprocess.run([PEERS_PYTHON, "-c", script], capture_output=True, text=True)
        if out.returncode == 0:
            rows.append(dict(case="conv 3x3 input gradient, PyTorch",
                             alone_ms=json.loads(out.stdout), in_loop_ms=None))  # fmt: skip

    model, params, process, config = _unet(args.workdir)
    images = jnp.asarray(
        np.random.default_rng(0).integers(0, 256, (args.batch, 28, 28, 1)) / 127.5 - 1.0,
        jnp.float32,
    )
    t_in = jnp.full((args.batch,), 500.0)

    def unet(y):
        return make_model_fn(model, params)(y, t_in)

    for name, product in _products(unet).items():
        alone, in_loop = _alone_and_in_loop(product, images, args.repeats)
        rows.append(dict(case=f"UNet batch {args.batch} {name}", alone_ms=alone,
                         in_loop_ms=in_loop))  # fmt: skip

    model_fn = make_model_fn(model, params)

    keys = dj.sample_keys(0, 0, args.batch)
    likelihood = {}
    for mode in ("forward", "reverse"):
        kwargs = dict(prediction_type=config["diffusion"]["prediction_type"], autodiff=mode,
                      rtol=args.rtol, atol=args.rtol)  # fmt: skip
        jax.block_until_ready(ode_likelihood(model_fn, process, images, keys, **kwargs))
        start = time.perf_counter()
        result = jax.block_until_ready(ode_likelihood(model_fn, process, images, keys, **kwargs))
        likelihood[mode] = dict(
            seconds=time.perf_counter() - start,
            nfe=int(result.stats.num_function_evals),
            bpd=float(np.mean(np.asarray(result.bpd))),
        )

    print(f"{'case':42s} {'alone ms':>10s} {'in loop ms':>11s}")
    for row in rows:
        looped = "" if row["in_loop_ms"] is None else f"{row['in_loop_ms']:11.2f}"
        print(f"{row['case']:42s} {row['alone_ms']:10.2f} {looped}")
    print(f"\node_likelihood, {args.batch} random 8-bit images, rtol = atol = {args.rtol} "
          f"({'trained ' + args.workdir if args.workdir else 'random UNet'}):")  # fmt: skip
    for mode, values in likelihood.items():
        print(f"  autodiff={mode:8s} {values['seconds']:8.2f} s  NFE {values['nfe']:4d}  "
              f"bits/dim {values['bpd']:.4f}")  # fmt: skip
    os.makedirs(os.path.join(REPO, "benchmarks", "out"), exist_ok=True)
    with open(os.path.join(REPO, "benchmarks", "out", "likelihood.json"), "w") as f:
        json.dump(dict(products=rows, likelihood=likelihood, args=vars(args),
                       jax=jax.__version__), f, indent=2)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
