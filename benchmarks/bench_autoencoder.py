"""Autoencoder throughput: encode and decode images/s of diffjax's AutoencoderKL beside
diffusers' at the Fashion-MNIST recipe's size (1.1M parameters, 28x28x1 -> 7x7x4), batch 64,
float32, measured in the same run.

Usage::

    python benchmarks/bench_autoencoder.py [--batch 64] [--repeats 20] [--peer_python PATH]

The diffusers peer runs in the PyTorch peer venv (``benchmarks/setup_peers.sh``; default
``/work/peers/bin/python``) as a subprocess after diffjax's timing, so the two never share the
CPU. Prints both JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import jax
import jax.numpy as jnp

from diffjax.cli import cpu_device_count, enable_fast_cpu_convolutions, use_cpu_devices
from diffjax.models import AUTOENCODER_PRESETS, AutoencoderKL, count_params

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers", "autoencoder_peer.py")


def time_diffjax(batch: int, repeats: int) -> dict:
    module = AutoencoderKL(**AUTOENCODER_PRESETS["fashion_mnist_f4"], image_channels=1)
    images = jax.random.uniform(jax.random.key(0), (batch, 28, 28, 1), minval=-1, maxval=1)
    params = jax.jit(module.init)(jax.random.key(1), images)["params"]
    encode = jax.jit(lambda p, x: module.apply({"params": p}, x, method="encode")[0])
    decode = jax.jit(lambda p, z: module.apply({"params": p}, z, method="decode"))
    result = dict(params=count_params(params), devices=jax.device_count())
    for name, run, argument in (
        ("encode", encode, images),
        ("decode", decode, jnp.zeros((batch, 7, 7, 4))),
    ):
        jax.block_until_ready(run(params, argument))  # compile
        start = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(run(params, argument))
        result[f"{name}_images_per_s"] = batch * repeats / (time.perf_counter() - start)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--peer_python", default="/work/peers/bin/python")
    args = parser.parse_args()
    # The training program's CPU settings: XLA's convolutions, one JAX device per core.
    enable_fast_cpu_convolutions()
    use_cpu_devices(cpu_device_count([args.batch]))
    print("diffjax  ", json.dumps(time_diffjax(args.batch, args.repeats)))
    peer = subprocess.run(
        [args.peer_python, PEER, str(args.batch), str(args.repeats)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    print("diffusers", peer.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
