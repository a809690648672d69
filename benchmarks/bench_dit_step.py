"""DiT-S/2's training step beside diffusers' DiTTransformer2DModel, same config and batch, same run.

Both networks come from one diffusers config (``CONFIG``: 6 heads of 64, patch 2, 12 layers,
32x32x4 latents, 1000 classes, 8 output channels = learn_sigma); diffjax's is
``dit_from_diffusers_config(CONFIG)`` (``learn_sigma=True``, ``time_freq_shift=1``, diffusers'
timestep sinusoid). The step, float32, on both: draw t and noise, q_sample on the linear
schedule, eps MSE on the first 4 of the 8 output channels, backward, AdamW (lr 1e-4, betas
0.9/0.999, eps 1e-8, no weight decay; no clipping, no EMA).

- diffjax: the step is one ``jax.jit`` (state donated), on one JAX CPU device per core that
  divides the batch (the training program's setting, as in bench_latent_unet.py) and XLA's
  CPU convolution flag; "compile s" is ``lower(...).compile()`` of that step.
- diffusers: eager PyTorch (as bench_latent_unet.py: no torch.compile) in the peer venv
  (``--peer_python``), started afterwards so the two never share the CPU; ``model.train()``, so
  its label embedding drops 10% of labels as in its training.

Threads: ``--threads N`` restricts this process (and so the peer it starts) to N of its CPUs
before JAX starts. XLA sizes its CPU thread pool from that affinity mask (the printed
``xla_threads`` counts its ``tf_XLAEigen`` threads), and the peer calls
``torch.set_num_threads(N)``. Default: every CPU this process may use.

Timing: ``--warmup`` untimed steps after the compile / first step, then the median of
``--steps`` steps, each timed on its own (``jax.block_until_ready`` on the loss; torch is
synchronous on the CPU). images/s = batch / median step.

Parameters: diffusers keeps a separate timestep and class embedder in every block's
``norm1.emb`` (the published checkpoints hold identical copies; only block 0's feeds the final
layer's modulation), diffjax one shared pair. The assert compares diffjax's count with
diffusers' without blocks 1..depth-1's ``norm1.emb`` copies; the fixed sin-cos position
embedding is in neither count (diffusers: a buffer, diffjax: a constant). diffusers' full
count, which its AdamW updates and its backward fills, is printed beside it.

Usage::

    python benchmarks/bench_dit_step.py [--batch 8] [--steps 10] [--warmup 2] [--threads N]
        [--part both|diffjax|torch] [--depth 12] [--peer_python /work/peers/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

CONFIG = dict(
    _class_name="DiTTransformer2DModel", num_attention_heads=6, attention_head_dim=64,
    in_channels=4, out_channels=8, num_layers=12, sample_size=32, patch_size=2,
    num_embeds_ada_norm=1000,
)  # fmt: skip
LR, BETAS, EPS, WEIGHT_DECAY = 1e-4, (0.9, 0.999), 1e-8, 0.0
TIMESTEPS, BETA_START, BETA_END = 1000, 1e-4, 0.02  # DDPM's linear schedule
DUPLICATE_EMBEDDER = re.compile(r"transformer_blocks\.([1-9]\d*)\.norm1\.emb\.")


def config_of(depth: int) -> dict:
    """The diffusers config at ``depth`` layers."""
    return dict(CONFIG, num_layers=depth)


def xla_threads() -> int:
    """The number of XLA's CPU intra-op threads (``tf_XLAEigen``) of this process."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                count += f.read().strip() == "tf_XLAEigen"
        except OSError:
            pass
    return count


def time_diffjax(batch: int, steps: int, warmup: int, depth: int, devices: int | None) -> dict:
    """Compiles and times diffjax's step; JAX must not have started yet."""
    from diffjax.cli import cpu_device_count, enable_fast_cpu_convolutions, use_cpu_devices

    enable_fast_cpu_convolutions()
    use_cpu_devices(devices or cpu_device_count([batch]))

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import NamedSharding, PartitionSpec

    from diffjax import get_schedule
    from diffjax.models import count_params
    from diffjax.models.dit_weights import dit_from_diffusers_config
    from diffjax.sharding import make_mesh

    config = config_of(depth)
    model = dit_from_diffusers_config(config)
    assert model.learn_sigma and model.time_freq_shift == 1.0, model
    channels, side = config["in_channels"], config["sample_size"]
    schedule = get_schedule("linear", TIMESTEPS)
    ref = np.linspace(BETA_START, BETA_END, TIMESTEPS, dtype=np.float64)
    np.testing.assert_allclose(schedule.alphas_cumprod, np.cumprod(1 - ref), rtol=1e-5)
    alphas_cumprod = jnp.asarray(schedule.alphas_cumprod, jnp.float32)

    mesh = make_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    sharded = NamedSharding(mesh, PartitionSpec("data"))
    rng = np.random.default_rng(0)
    x0 = jax.device_put(rng.normal(size=(batch, side, side, channels)).astype(np.float32), sharded)
    labels = jax.device_put(rng.integers(0, 1000, batch).astype(np.int32), sharded)

    params = jax.jit(model.init, out_shardings=replicated)(
        jax.random.key(0), jnp.zeros((1, side, side, channels)), jnp.zeros((1,), jnp.int32),
        {"label": jnp.zeros((1,), jnp.int32)},
    )["params"]  # fmt: skip
    optimizer = optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY)
    state = (params, jax.jit(optimizer.init, out_shardings=replicated)(params))

    def loss_fn(params, x0, labels, key):
        t_key, noise_key = jax.random.split(key)
        t = jax.random.randint(t_key, (batch,), 0, TIMESTEPS)
        noise = jax.random.normal(noise_key, x0.shape)
        t, noise = jax.lax.with_sharding_constraint((t, noise), (sharded, sharded))
        a = jnp.sqrt(alphas_cumprod[t])[:, None, None, None]
        s = jnp.sqrt(1 - alphas_cumprod[t])[:, None, None, None]
        out = model.apply({"params": params}, a * x0 + s * noise, t, {"label": labels}, train=True)
        return jnp.mean((out[..., :channels] - noise) ** 2)  # eps; channels 4..7: variance

    def step(state, x0, labels, key):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x0, labels, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    key = jax.random.key(1)
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, x0, labels, key).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    state, loss = compiled(state, x0, labels, jax.random.fold_in(key, 0))
    jax.block_until_ready(loss)
    first_seconds = time.perf_counter() - start
    seconds = []
    for index in range(1, warmup + steps + 1):
        start = time.perf_counter()
        state, loss = compiled(state, x0, labels, jax.random.fold_in(key, index))
        jax.block_until_ready(loss)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds[warmup:])
    return dict(
        impl="diffjax DiT", batch=batch, threads=len(os.sched_getaffinity(0)),
        xla_threads=xla_threads(), devices=jax.device_count(), depth=depth,
        params=count_params(state[0]), compile_s=compile_seconds, first_step_s=first_seconds,
        ms_per_step=1000 * median, images_per_s=batch / median, loss=float(loss),
    )  # fmt: skip


def time_torch(batch: int, steps: int, warmup: int, depth: int, threads: int) -> dict:
    """Times diffusers' step (runs in the PyTorch peer venv)."""
    import torch
    from diffusers import DiTTransformer2DModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = {k: v for k, v in config_of(depth).items() if not k.startswith("_")}
    model = DiTTransformer2DModel(**config).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY
    )
    channels, side = config["in_channels"], config["sample_size"]
    alphas_cumprod = torch.cumprod(1 - torch.linspace(BETA_START, BETA_END, TIMESTEPS), 0)
    x0 = torch.randn(batch, channels, side, side)
    labels = torch.randint(0, 1000, (batch,))

    def step() -> float:
        t = torch.randint(0, TIMESTEPS, (batch,))
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t].sqrt()[:, None, None, None]
        s = (1 - alphas_cumprod[t]).sqrt()[:, None, None, None]
        out = model(a * x0 + s * noise, timestep=t, class_labels=labels).sample
        loss = torch.mean((out[:, :channels] - noise) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    start = time.perf_counter()
    step()
    first_seconds = time.perf_counter() - start
    seconds = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        loss = step()
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds[warmup:])
    names = [name for name, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    return dict(
        impl="diffusers DiTTransformer2DModel (eager)", batch=batch,
        threads=torch.get_num_threads(), depth=depth, params=sum(sizes),
        params_shared_embedder=sum(
            size for name, size in zip(names, sizes) if not DUPLICATE_EMBEDDER.match(name)
        ),
        buffers={name: list(b.shape) for name, b in model.named_buffers()},
        compile_s=None, first_step_s=first_seconds, ms_per_step=1000 * median,
        images_per_s=batch / median, loss=loss, torch=torch.__version__,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPUs for both frameworks (default: all this process may use)")  # fmt: skip
    parser.add_argument("--part", choices=("both", "diffjax", "torch"), default="both")
    parser.add_argument("--depth", type=int, default=CONFIG["num_layers"],
                        help="transformer blocks (12 = DiT-S; fewer for smoke runs)")  # fmt: skip
    parser.add_argument("--devices", type=int, default=None,
                        help="JAX CPU devices (default: one per thread that divides the batch)")  # fmt: skip
    parser.add_argument("--peer_python", default="/work/peers/bin/python")
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    threads = args.threads or len(cpus)
    if not 1 <= threads <= len(cpus):
        parser.error(f"--threads must be 1..{len(cpus)} (this process's CPUs), got {threads}.")
    if args.peer:  # the PyTorch peer: print one JSON line
        print(json.dumps(time_torch(args.batch, args.steps, args.warmup, args.depth, threads)))
        return
    os.sched_setaffinity(0, cpus[:threads])  # before JAX starts: XLA's pool follows the mask

    load = os.getloadavg()[0]
    rows = []
    if args.part in ("both", "diffjax"):
        rows.append(time_diffjax(args.batch, args.steps, args.warmup, args.depth, args.devices))
        print(json.dumps(rows[-1]), flush=True)
    if args.part in ("both", "torch"):
        command = [args.peer_python, os.path.abspath(__file__), "--peer", f"--threads={threads}"]
        command += [f"--{k}={getattr(args, k)}" for k in ("batch", "steps", "warmup", "depth")]
        peer = subprocess.run(command, capture_output=True, text=True)
        if peer.returncode:
            sys.exit(f"the PyTorch peer failed:\n{peer.stderr}")
        rows.append(json.loads(peer.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)

    header = f"{'implementation':40s} {'batch':>5s} {'threads':>7s} {'compile s':>9s} {'step ms':>8s} {'images/s':>8s}"  # fmt: skip
    print(
        f"\nDiT-S/2 at depth {args.depth}, 32x32x4 latents, float32, this CPU "
        f"(1-min load average {load:.2f} at the start; wait for < 0.5)\n{header}"
    )
    for row in rows:
        compile_s = "-" if row["compile_s"] is None else f"{row['compile_s']:.1f}"
        print(f"{row['impl']:40s} {row['batch']:5d} {row['threads']:7d} {compile_s:>9s} "
              f"{row['ms_per_step']:8.1f} {row['images_per_s']:8.2f}")  # fmt: skip
    if len(rows) == 2:
        ours, theirs = rows
        print(
            f"parameters: diffjax {ours['params']:,}; diffusers {theirs['params']:,}, of which "
            f"{theirs['params'] - theirs['params_shared_embedder']:,} in the {args.depth - 1} "
            f"duplicate norm1.emb embedders of blocks 1 and up; without them "
            f"{theirs['params_shared_embedder']:,} "
            f"(position embedding in neither: diffusers buffer {theirs['buffers']})"
        )  # fmt: skip
        assert ours["params"] == theirs["params_shared_embedder"], (ours, theirs)
        print(f"diffusers / diffjax images/s: {theirs['images_per_s'] / ours['images_per_s']:.2f}")


if __name__ == "__main__":
    main()
