"""The latent UNet's training step beside diffusers' UNet2DConditionModel, same size, same run.

Both: 16x16x4 latents, batch 32, two levels of 64 and 128 channels with two ResNet blocks,
SD's spatial transformer (8 heads, cross-attention on an 8-token, 64-wide context) at the first
level and in the middle, eps-prediction MSE on the linear schedule, gradient clipping at 1,
Adam; float32 on the CPU. diffjax's network is its UNet (``context_dim=64``) on all local JAX
devices; diffusers' runs in the PyTorch peer venv afterwards (``--peer_python``), so the two
never share the CPU. The two architectures differ in details (time-embedding MLP, where the
skip connections are taken), so the parameter counts are printed beside the speeds.

Usage::

    python benchmarks/bench_latent_unet.py [--steps 10] [--peer_python /work/peers/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import get_schedule
from diffjax.cli import cpu_device_count, enable_fast_cpu_convolutions, use_cpu_devices
from diffjax.models import UNet, count_params
from diffjax.training import (
    create_train_state,
    jit_train_step,
    make_denoising_loss,
    make_mesh,
    make_optimizer,
    make_train_step,
)

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers", "latent_unet_peer.py")
BATCH, SIDE, TOKENS, CONTEXT_DIM = 32, 16, 8, 64


def time_diffjax(steps: int) -> dict:
    model = UNet(base_channels=64, channel_mults=(1, 2), num_res_blocks=2, attn_resolutions=(16,),
                 dropout=0.0, context_dim=CONTEXT_DIM, transformer_heads=8)  # fmt: skip
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.uniform(-1, 1, (BATCH, SIDE, SIDE, 4)).astype(np.float32),
        "cond": {"context": rng.normal(size=(BATCH, TOKENS, CONTEXT_DIM)).astype(np.float32)},
    }
    example = {"context": jnp.zeros((1, TOKENS, CONTEXT_DIM))}

    def init_fn(key):
        return model.init(key, jnp.zeros((1, SIDE, SIDE, 4)), jnp.zeros((1,), jnp.int32), example)[
            "params"
        ]

    mesh = make_mesh()
    optimizer = make_optimizer(2e-4, grad_clip_norm=1.0)
    state = create_train_state(init_fn, jax.random.key(0), optimizer, mesh)
    step = jit_train_step(
        make_train_step(make_denoising_loss(model, get_schedule("linear", 1000)), optimizer), mesh
    )
    key = jax.random.key(1)
    start = time.perf_counter()
    state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics["loss"])
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics["loss"])
    seconds = time.perf_counter() - start
    return dict(
        params=count_params(state.params), devices=jax.device_count(),
        images_per_s=BATCH * steps / seconds, ms_per_step=1000 * seconds / steps,
        compile_and_first_step_s=compile_seconds,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peer_python", default="/work/peers/bin/python")
    args = parser.parse_args()
    # The training program's CPU settings: XLA's convolutions, one JAX device per core.
    enable_fast_cpu_convolutions()
    use_cpu_devices(cpu_device_count([BATCH]))
    print("diffjax  ", json.dumps(time_diffjax(args.steps)))
    peer = subprocess.run(
        [args.peer_python, PEER, str(BATCH), str(args.steps), str(SIDE), str(TOKENS), str(CONTEXT_DIM)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    print("diffusers", peer.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
