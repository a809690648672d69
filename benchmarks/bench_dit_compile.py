"""Compile time of a DiT's training gradient against depth, with the blocks unrolled and as
one ``nn.scan`` (``scan_blocks=True``).

Usage::

    python benchmarks/bench_dit_compile.py [--depths 4 12 28]

DiT-S widths (hidden 384, 6 heads), patch 2 on 32x32x4 latents, batch 8, float32, 1000
classes: the seconds to trace, lower and compile ``jax.grad`` of a squared-error loss, and the
seconds of one compiled call, per depth and layout, on this machine's CPU.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from diffjax.models import DIT_PRESETS, DiT


def measure(depth: int, scan: bool) -> tuple[float, float]:
    model = DiT(patch_size=2, num_classes=1000, scan_blocks=scan,
                **dict(DIT_PRESETS["DiT-S"], depth=depth))  # fmt: skip
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 4))
    t, cond = jnp.arange(8) * 100, {"label": jnp.arange(8)}
    params = jax.jit(model.init)(jax.random.key(1), x, t, cond)["params"]

    def loss(params):
        return jnp.mean((model.apply({"params": params}, x, t, cond) - x) ** 2)

    start = time.perf_counter()
    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    compile_seconds = time.perf_counter() - start
    jax.block_until_ready(compiled(params))
    start = time.perf_counter()
    jax.block_until_ready(compiled(params))
    return compile_seconds, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 12, 28])
    args = parser.parse_args()
    print("depth  layout    compile (s)  one call (s)")
    for depth in args.depths:
        for scan in (False, True):
            compile_seconds, call_seconds = measure(depth, scan)
            layout = "scan" if scan else "unrolled"
            print(
                f"{depth:5d}  {layout:8s}  {compile_seconds:11.1f}  {call_seconds:12.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
