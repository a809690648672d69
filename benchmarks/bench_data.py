"""Throughput of the input pipeline alone: Fashion-MNIST images/s, per batch size and flip.

Measures what :func:`diffjax.data.pipeline.create_dataset` delivers to the training loop (read,
crop/resize, flip, scale to [-1, 1], batch, thread prefetch), with no model. Each setting is
warmed up, then timed over ``--seconds``; the table is printed and the numbers are written to
``benchmarks/out/bench_data.json``.

Usage::

    python benchmarks/bench_data.py                      # prepares Fashion-MNIST if needed
    python benchmarks/bench_data.py --seconds 5 --num_threads 2 --data_dir /tmp/tfds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from diffjax.data import pipeline as data
from diffjax.data.datasets import fashion_mnist

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "bench_data.json")


def measure(dataset: data.Dataset, seconds: float, warmup_batches: int = 5) -> dict:
    """Images/s of one dataset's iterator over a time window, after a warm-up.

    Args:
      dataset: the pipeline to drain.
      seconds: length of the timed window (at least one batch is timed).
      warmup_batches: batches taken before timing (thread start, first reads).

    Returns:
      ``{"images_per_s", "batches", "seconds"}``.
    """
    with iter(dataset) as iterator:
        for _ in range(warmup_batches):
            next(iterator)
        batches = 0
        start = time.perf_counter()
        while True:
            next(iterator)
            batches += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
    return {
        "images_per_s": batches * dataset.batch_size / elapsed,
        "batches": batches,
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS's).")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed window per setting")
    parser.add_argument("--num_threads", type=int, default=4, help="prefetch threads")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[64, 128])
    args = parser.parse_args()

    start = time.perf_counter()
    fashion_mnist.prepare_fashion_mnist(data_dir=args.data_dir)
    prepare_s = time.perf_counter() - start

    results = []
    for batch_size in args.batch_sizes:
        for random_flip in (False, True):
            dataset = data.create_dataset(
                name="fashion_mnist",
                split="train",
                image_size=28,
                batch_size=batch_size,
                seed=0,
                data_dir=args.data_dir,
                random_flip=random_flip,
                num_threads=args.num_threads,
                process_index=0,
                process_count=1,
            )
            row = {"batch_size": batch_size, "random_flip": random_flip}
            row.update(measure(dataset, args.seconds))
            results.append(row)

    print(f"Fashion-MNIST train, 28x28x1, {args.num_threads} threads, {os.cpu_count()} CPUs")
    print(f"prepare (or find prepared) data: {prepare_s:.1f} s")
    print(f"{'batch':>6} {'flip':>5} {'images/s':>10} {'batches':>8}")
    for row in results:
        print(
            f"{row['batch_size']:>6} {str(row['random_flip']):>5} "
            f"{row['images_per_s']:>10.0f} {row['batches']:>8}"
        )
    os.makedirs(os.path.dirname(OUT_PATH), exist_ok=True)
    with open(OUT_PATH, "w") as f:
        json.dump(
            {
                "benchmark": "input pipeline, fashion_mnist train",
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "num_threads": args.num_threads,
                "prepare_s": prepare_s,
                "results": results,
            },
            f,
            indent=2,
        )
    print(f"wrote {OUT_PATH}")


if __name__ == "__main__":
    main()
