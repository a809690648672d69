"""FID feature-extraction throughput: diffjax's Inception-v3 against torch-fidelity's.

Both networks get the same seeded random weights (tests/inception_reference.py; the speed does
not depend on the values) and the same batches of uint8 32 x 32 images, resized to 299 x 299 by
the TF1 bilinear resize inside each extractor, as FID on CIFAR-10 does. diffjax runs jitted in
this process, with the CPU convolution flag of ``python -m diffjax.train``
(:func:`diffjax.cli.enable_fast_cpu_convolutions`); torch-fidelity's
``FeatureExtractorInceptionV3`` runs afterwards in a subprocess of the PyTorch peer venv, under
``torch.no_grad``, with as many threads as this process may use. Each side does one untimed
warm-up batch (diffjax's compiles), then ``--batches`` timed ones; images/s is the number of
timed images over their total time.

    .venv/bin/python benchmarks/bench_inception.py                      # batch 50, 3 batches
    .venv/bin/python benchmarks/bench_inception.py --batch-size 32 --batches 5

Results go to benchmarks/out/bench_inception.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

import inception_reference  # noqa: E402  (tests/inception_reference.py, NumPy only)

OUT_PATH = os.path.join(REPO, "benchmarks", "out", "bench_inception.json")
WEIGHTS_SEED = 0
IMAGE_SIZE = 32


def _batches(batch_size: int, count: int) -> list[np.ndarray]:
    """``count`` uint8 ``[batch_size, 32, 32, 3]`` batches of uniform noise (seeded)."""
    rng = np.random.default_rng(1)
    return [
        rng.integers(0, 256, (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        for _ in range(count)
    ]


def _timings(run, batches: list[np.ndarray]) -> dict[str, float]:
    """Runs ``run(batch)`` (which must block until done) on each batch; the first is warm-up."""
    start = time.perf_counter()
    run(batches[0])
    warmup_s = time.perf_counter() - start
    seconds = []
    for batch in batches[1:]:
        start = time.perf_counter()
        run(batch)
        seconds.append(time.perf_counter() - start)
    images = sum(len(batch) for batch in batches[1:])
    return {
        "warmup_s": warmup_s,
        "batch_s_median": float(np.median(seconds)),
        "images_per_s": images / sum(seconds),
    }


def torch_worker(batch_size: int, num_batches: int, threads: int) -> dict[str, float]:
    """(peer venv) torch-fidelity's extractor on the same batches; returns its timings."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.set_num_threads(threads)
    state_dict = inception_reference.random_inception_state_dict(WEIGHTS_SEED)
    with tempfile.TemporaryDirectory(prefix="bench-inception-") as workdir:
        path = os.path.join(workdir, "inception-random.pth")
        torch.save({key: torch.from_numpy(value) for key, value in state_dict.items()}, path)
        model = FeatureExtractorInceptionV3(
            "inception-v3-compat",
            ["2048", "logits_unbiased", "logits"],
            feature_extractor_weights_path=path,
        )

    def run(batch: np.ndarray) -> None:
        with torch.no_grad():
            model(torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous())

    result = _timings(run, _batches(batch_size, num_batches + 1))
    return dict(result, torch=torch.__version__, threads=torch.get_num_threads())


def diffjax_timings(batch_size: int, num_batches: int) -> dict[str, float]:
    """diffjax's jitted extractor on the batches; returns its timings."""
    from diffjax.cli import enable_fast_cpu_convolutions

    enable_fast_cpu_convolutions()
    import jax

    from diffjax.metrics.inception import inception_features, inception_variables_from_state_dict

    variables = inception_variables_from_state_dict(
        inception_reference.random_inception_state_dict(WEIGHTS_SEED), source="random weights"
    )

    def run(batch: np.ndarray) -> None:
        jax.block_until_ready(inception_features(variables, batch))

    result = _timings(run, _batches(batch_size, num_batches + 1))
    return dict(result, jax=jax.__version__, backend=jax.default_backend())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per extractor")
    parser.add_argument(
        "--peers-python",
        default=os.path.join(REPO, "benchmarks", ".peers-venv", "bin", "python"),
        help="the PyTorch peer venv's python (benchmarks/setup_peers.sh)",
    )
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    if args.torch_worker:
        print(json.dumps(torch_worker(args.batch_size, args.batches, args.threads)))
        return 0

    results = {"batch_size": args.batch_size, "batches": args.batches, "image_size": IMAGE_SIZE}
    results["diffjax"] = diffjax_timings(args.batch_size, args.batches)
    command = [
        args.peers_python,
        os.path.abspath(__file__),
        "--torch-worker",
        "--batch-size",
        str(args.batch_size),
        "--batches",
        str(args.batches),
        "--threads",
        str(args.threads),
    ]
    worker = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if worker.returncode != 0:
        print(worker.stderr, file=sys.stderr)
        return worker.returncode
    results["torch_fidelity"] = json.loads(worker.stdout.strip().splitlines()[-1])
    results["speedup"] = (
        results["diffjax"]["images_per_s"] / results["torch_fidelity"]["images_per_s"]
    )

    print(
        f"FID Inception-v3, uint8 {IMAGE_SIZE}x{IMAGE_SIZE} -> 299x299, batch {args.batch_size}, "
        f"{args.batches} timed batches, {args.threads} CPU threads"
    )
    print(f"{'extractor':<16}{'images/s':>10}{'batch s':>10}{'warm-up s':>11}")
    for name in ("diffjax", "torch_fidelity"):
        row = results[name]
        print(
            f"{name:<16}{row['images_per_s']:>10.2f}{row['batch_s_median']:>10.2f}"
            f"{row['warmup_s']:>11.2f}"
        )
    print(f"diffjax / torch-fidelity: {results['speedup']:.2f}x")
    os.makedirs(os.path.dirname(OUT_PATH), exist_ok=True)
    with open(OUT_PATH, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {os.path.relpath(OUT_PATH, REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
