"""Measured peak matmul throughput of this machine: the denominator of the CPU MFU figures.

A large square matmul is the most compute-bound kernel a framework runs, so its best GFLOP/s is
the practical ceiling for a model's training step on the same machine (the model FLOPs
utilisation, MFU, is achieved model FLOP/s over this number). The script runs under either
interpreter: the diffjax venv for JAX (XLA's CPU dot) and benchmarks/.peers-venv for PyTorch
(oneDNN/MKL), so that each framework's fraction of peak uses its own and the best of both.

Usage:
    .venv/bin/python benchmarks/peak_matmul.py --framework jax
    benchmarks/.peers-venv/bin/python benchmarks/peak_matmul.py --framework torch

It prints a table and, with ``--json PATH``, writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Sequence

import numpy as np

DEFAULT_SIZES = (1024, 2048, 4096)
DEFAULT_DTYPES = ("float32", "bfloat16")


def time_calls(fn: Callable[[], object], *, repeats: int, min_seconds: float) -> list[float]:
    """Times ``fn`` after one warm-up call.

    Args:
      fn: A callable that runs the kernel once and blocks until its result is ready.
      repeats: Minimum number of timed calls.
      min_seconds: Keep calling until at least this much wall time has been timed, so that a
        fast kernel is not judged on a handful of microsecond samples.

    Returns:
      The wall-clock seconds of each timed call.
    """
    fn()
    seconds: list[float] = []
    while len(seconds) < repeats or sum(seconds) < min_seconds:
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def _jax_matmul(size: int, dtype_name: str) -> Callable[[], object]:
    import jax
    import jax.numpy as jnp

    dtype = jnp.dtype(dtype_name)
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (size, size), dtype)
    b = jax.random.normal(key_b, (size, size), dtype)
    matmul = jax.jit(jnp.matmul)
    return lambda: matmul(a, b).block_until_ready()


def _torch_matmul(size: int, dtype_name: str) -> Callable[[], object]:
    import torch

    dtype = getattr(torch, dtype_name)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)

    def run() -> object:
        with torch.no_grad():
            return torch.matmul(a, b)

    return run


def framework_version(framework: str) -> str:
    """Returns ``name==version`` of the framework doing the matmul.

    Args:
      framework: 'jax' or 'torch'.

    Returns:
      For example ``'jax==0.10.2'``.
    """
    if framework == "jax":
        import jax

        return f"jax=={jax.__version__}"
    import torch

    return f"torch=={torch.__version__} threads={torch.get_num_threads()}"


def measure_peak(
    framework: str,
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    dtypes: Sequence[str] = DEFAULT_DTYPES,
    repeats: int = 5,
    min_seconds: float = 1.0,
) -> list[dict[str, object]]:
    """Measures square matmul GFLOP/s for every size and dtype.

    A [N, N] x [N, N] matmul does 2 N^3 floating-point operations.

    Args:
      framework: 'jax' or 'torch'.
      sizes: Matrix sizes N.
      dtypes: dtype names, e.g. 'float32', 'bfloat16'.
      repeats: Minimum timed calls per case.
      min_seconds: Minimum timed wall seconds per case.

    Returns:
      One dict per case: framework, dtype, size, best and median GFLOP/s, seconds per call.

    Raises:
      ValueError: if ``framework`` is not 'jax' or 'torch'.
    """
    builders = {"jax": _jax_matmul, "torch": _torch_matmul}
    if framework not in builders:
        raise ValueError(f"framework must be one of {sorted(builders)}, got {framework!r}")
    rows = []
    for dtype_name in dtypes:
        for size in sizes:
            seconds = time_calls(
                builders[framework](size, dtype_name), repeats=repeats, min_seconds=min_seconds
            )
            flops = 2.0 * size**3
            rows.append(
                {
                    "framework": framework,
                    "dtype": dtype_name,
                    "size": size,
                    "best_gflops": flops / min(seconds) / 1e9,
                    "median_gflops": flops / float(np.median(seconds)) / 1e9,
                    "median_seconds": float(np.median(seconds)),
                }
            )
    return rows


def peak_gflops(rows: Sequence[dict[str, object]], dtype: str = "float32") -> float:
    """Returns the best GFLOP/s over all sizes for one dtype.

    Args:
      rows: Output of :func:`measure_peak`.
      dtype: dtype name to select.

    Returns:
      The highest ``best_gflops`` among rows of that dtype.

    Raises:
      ValueError: if no row has that dtype.
    """
    values = [float(row["best_gflops"]) for row in rows if row["dtype"] == dtype]
    if not values:
        raise ValueError(f"no rows with dtype {dtype!r}; have {sorted({r['dtype'] for r in rows})}")
    return max(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--framework", choices=("jax", "torch"), required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--dtypes", nargs="+", default=list(DEFAULT_DTYPES))
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--json", help="write the rows here as JSON")
    args = parser.parse_args()

    rows = measure_peak(
        args.framework, sizes=args.sizes, dtypes=args.dtypes, min_seconds=args.min_seconds
    )
    print(f"# {framework_version(args.framework)}  cpus={os.cpu_count()}  {platform.processor()}")
    print(f"{'dtype':<10}{'N':>6}{'best GFLOP/s':>14}{'median GFLOP/s':>16}")
    for row in rows:
        print(
            f"{row['dtype']:<10}{row['size']:>6}{row['best_gflops']:>14.1f}"
            f"{row['median_gflops']:>16.1f}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"version": framework_version(args.framework), "rows": rows}, handle, indent=2
            )


if __name__ == "__main__":
    main()
