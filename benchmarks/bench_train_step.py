"""Training-step throughput of diffjax's UNet: images/s, compile time, FLOPs per image.

Builds the real training step (:func:`diffjax.training.make_train_step` with the DDPM UNet,
eps-prediction, AdamW with clipping, EMA) jitted over all local devices by
:func:`diffjax.training.jit_train_step`, compiles it ahead of time, reads XLA's cost analysis,
and times repeated steps on a fixed random batch. Two presets (the same sizes as the PyTorch
peers in ``benchmarks/peers``):

- ``fashion_mnist``: 28x28x1, batch 64, UNet(32, (1, 2, 2), 2 res blocks, attention at 14):
  1,623,169 params.
- ``cifar10``: 32x32x3, batch 128, UNet(128, (1, 2, 2, 2), 2 res blocks, attention at 16):
  35,746,307 params (Ho et al. 2020's CIFAR-10 model).

Usage::

    python benchmarks/bench_train_step.py                                # both presets
    python benchmarks/bench_train_step.py --presets fashion_mnist --steps 20
    python benchmarks/bench_train_step.py --presets cifar10 --steps 2 --dtype bfloat16

Prints one line per preset and writes ``benchmarks/out/bench_train_step.json``. The functions
(:func:`build_benchmark`, :func:`compile_step`, :func:`time_steps`, :func:`run_preset`) are
importable for side-by-side comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import get_schedule
from diffjax.models import UNet, count_params, make_model_fn
from diffjax.training import (
    create_train_state,
    jit_train_step,
    make_denoising_loss,
    make_mesh,
    make_optimizer,
    make_train_step,
)

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "bench_train_step.json")

PRESETS: dict[str, dict[str, Any]] = {
    "fashion_mnist": dict(
        image_shape=(28, 28, 1),
        batch_size=64,
        model=dict(
            base_channels=32,
            channel_mults=(1, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(14,),
            dropout=0.1,
        ),
    ),
    "cifar10": dict(
        image_shape=(32, 32, 3),
        batch_size=128,
        model=dict(
            base_channels=128,
            channel_mults=(1, 2, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(16,),
            dropout=0.1,
        ),
    ),
}


def build_benchmark(
    image_shape: tuple[int, int, int],
    batch_size: int,
    model_kwargs: dict[str, Any],
    *,
    dtype: Any = jnp.float32,
    remat: bool = False,
    prediction_type: str = "eps",
    seed: int = 0,
) -> dict[str, Any]:
    """Everything one timed step needs: the sharded state, jitted step, a batch and a key.

    Args:
      image_shape: ``(H, W, C)``.
      batch_size: global batch size (a multiple of the local device count).
      model_kwargs: keyword arguments of :class:`diffjax.models.UNet`.
      dtype: the UNet's compute dtype (parameters stay float32).
      remat: rematerialise ResNet blocks in the backward pass.
      prediction_type: ``'eps' | 'x0' | 'v'``.
      seed: seed of the parameters, the batch and the step key.

    Returns:
      dict with ``state``, ``train_step`` (from :func:`jit_train_step`), ``batch`` (a global
      sharded batch of uniform images in [-1, 1]), ``key``, ``num_params``, ``mesh``.
    """
    model = UNet(**model_kwargs, dtype=dtype, remat=remat)
    sample = jnp.zeros((1,) + tuple(image_shape), jnp.float32)

    def init_fn(key):
        return model.init(key, sample, jnp.zeros((1,), jnp.int32))["params"]

    mesh = make_mesh()
    optimizer = make_optimizer(2e-4, warmup_steps=100, grad_clip_norm=1.0)
    state = create_train_state(init_fn, jax.random.key(seed), optimizer, mesh)
    train_step = jit_train_step(
        make_train_step(
            make_denoising_loss(
                model, get_schedule("linear", 1000), prediction_type=prediction_type
            ),
            optimizer,
        ),
        mesh,
    )
    images = np.random.default_rng(seed).uniform(-1, 1, (batch_size,) + tuple(image_shape))
    batch = {"image": jnp.asarray(images, jnp.float32)}
    return dict(
        state=state,
        train_step=train_step,
        batch=batch,
        key=jax.random.key(seed + 1),
        num_params=count_params(state.params),
        mesh=mesh,
        model=model,
    )


def _cost(compiled: Any) -> dict[str, float]:
    analysis = compiled.cost_analysis()
    # Older JAX returned one dict per device program; newer returns the dict itself.
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return dict(
        flops=float(analysis.get("flops", float("nan"))),
        bytes_accessed=float(analysis.get("bytes accessed", float("nan"))),
    )


def forward_flops_per_image(setup: dict[str, Any]) -> float:
    """Model FLOPs of one forward pass per image (inference mode), from XLA's cost analysis.

    Args:
      setup: from :func:`build_benchmark`.

    Returns:
      FLOPs per image (``nan`` when the backend reports none).
    """
    images = setup["batch"]["image"]
    timesteps = jnp.zeros((images.shape[0],), jnp.int32)

    def forward(params, x, t):
        return make_model_fn(setup["model"], params)(x, t)

    compiled = jax.jit(forward).lower(setup["state"].params, images, timesteps).compile()
    return _cost(compiled)["flops"] / images.shape[0]


def compile_step(setup: dict[str, Any]) -> tuple[Any, float, dict[str, float]]:
    """Compiles the step ahead of time and reads XLA's cost analysis.

    Args:
      setup: from :func:`build_benchmark`.

    Returns:
      ``(compiled, compile_seconds, costs)``: the compiled executable (callable like the
      step), the wall time of tracing + lowering + compiling, and ``costs`` with
      ``flops_per_step`` and ``bytes_accessed_per_step`` (forward, backward, optimizer, EMA)
      and ``temp_bytes`` (XLA's scratch memory for activations); ``nan`` when the backend
      reports none.
    """
    start = time.perf_counter()
    lowered = setup["train_step"].jitted.lower(setup["state"], setup["batch"], setup["key"], {})
    compiled = lowered.compile()
    compile_seconds = time.perf_counter() - start
    cost = _cost(compiled)
    memory = compiled.memory_analysis()
    costs = dict(
        flops_per_step=cost["flops"],
        bytes_accessed_per_step=cost["bytes_accessed"],
        temp_bytes=float(getattr(memory, "temp_size_in_bytes", float("nan"))),
    )
    return compiled, compile_seconds, costs


def time_steps(
    compiled: Any, setup: dict[str, Any], num_steps: int, warmup_steps: int = 1
) -> tuple[list[float], Any]:
    """Wall-clock seconds of each of ``num_steps`` steps after ``warmup_steps`` untimed ones.

    Each step is synchronised (``block_until_ready`` on the loss) so a time is one step's.

    Args:
      compiled: from :func:`compile_step`.
      setup: from :func:`build_benchmark`; its state is consumed (donated) and replaced.
      num_steps: timed steps, >= 1.
      warmup_steps: untimed steps first (first-call allocations, thread pools).

    Returns:
      ``(seconds, metrics)``: per-step seconds and the last step's metrics.
    """
    state, batch, key = setup["state"], setup["batch"], setup["key"]
    seconds = []
    metrics = None
    for index in range(warmup_steps + num_steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, key, {})
        metrics["loss"].block_until_ready()
        if index >= warmup_steps:
            seconds.append(time.perf_counter() - start)
    setup["state"] = state
    return seconds, metrics


def run_preset(
    name: str,
    *,
    num_steps: int,
    warmup_steps: int = 1,
    batch_size: int | None = None,
    dtype: Any = jnp.float32,
    remat: bool = False,
) -> dict[str, Any]:
    """Builds, compiles and times one preset; returns the measured numbers as a JSON-able dict.

    Args:
      name: a key of :data:`PRESETS`.
      num_steps: timed steps.
      warmup_steps: untimed steps before them.
      batch_size: overrides the preset's batch size.
      dtype: the UNet's compute dtype.
      remat: rematerialise ResNet blocks.

    Returns:
      dict: preset, image shape, batch size, params, devices, compile seconds, median step
      seconds, images/s, forward and train-step GFLOPs per image (XLA cost analysis, summed
      over the devices), achieved GFLOP/s, XLA scratch memory of all devices, final loss.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; expected one of {tuple(PRESETS)}.")
    preset = PRESETS[name]
    batch_size = batch_size or preset["batch_size"]
    setup = build_benchmark(
        preset["image_shape"], batch_size, preset["model"], dtype=dtype, remat=remat
    )
    compiled, compile_seconds, costs = compile_step(setup)
    forward_flops = forward_flops_per_image(setup)
    seconds, metrics = time_steps(compiled, setup, num_steps, warmup_steps)
    median = float(np.median(seconds))
    # XLA's cost and memory analysis describe one device's program (its share of the batch).
    num_devices = setup["mesh"].devices.size
    flops_per_step = costs["flops_per_step"] * num_devices
    flops_per_image = flops_per_step / batch_size
    return dict(
        preset=name,
        image_shape=list(preset["image_shape"]),
        batch_size=batch_size,
        num_params=setup["num_params"],
        dtype=jnp.dtype(dtype).name,
        remat=remat,
        devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        compile_seconds=compile_seconds,
        step_seconds=seconds,
        median_step_seconds=median,
        images_per_second=batch_size / median,
        forward_gflops_per_image=forward_flops / 1e9,
        train_gflops_per_image=flops_per_image / 1e9,
        achieved_gflops_per_second=flops_per_step / median / 1e9,
        temp_gib=costs["temp_bytes"] * num_devices / 2**30,
        final_loss=float(metrics["loss"]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="fashion_mnist,cifar10", help="comma-separated")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10 / 2)")
    parser.add_argument("--warmup_steps", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=None, help="override the preset's")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--out", default=OUT_PATH)
    args = parser.parse_args()

    default_steps = {"fashion_mnist": 10, "cifar10": 2}
    results = []
    for name in args.presets.split(","):
        result = run_preset(
            name,
            num_steps=args.steps or default_steps.get(name, 2),
            warmup_steps=args.warmup_steps,
            batch_size=args.batch_size,
            dtype=jnp.dtype(args.dtype),
            remat=args.remat,
        )
        results.append(result)
        print(
            f"{name}: {result['num_params'] / 1e6:.2f}M params, batch {result['batch_size']}, "
            f"compile {result['compile_seconds']:.1f} s, "
            f"step {result['median_step_seconds']:.3f} s, "
            f"{result['images_per_second']:.1f} img/s, "
            f"forward {result['forward_gflops_per_image']:.3f} GFLOP/img, "
            f"train step {result['train_gflops_per_image']:.3f} GFLOP/img, "
            f"{result['achieved_gflops_per_second']:.1f} GFLOP/s achieved, "
            f"{result['temp_gib']:.2f} GiB XLA scratch",
            flush=True,
        )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as file:
        json.dump(
            dict(
                jax_version=jax.__version__,
                machine=platform.machine(),
                cpu_count=os.cpu_count(),
                results=results,
            ),
            file,
            indent=2,
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
