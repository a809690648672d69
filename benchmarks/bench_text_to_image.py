"""Text to image on CPU: seconds per image of diffjax's pipeline beside diffusers'
StableDiffusionPipeline, the same random weights at a small SD-shaped config (SD 1.5's layout,
narrow), the same latents and steps, measured in the same run; and the largest difference
between their images (the whole pipeline, float32).

Usage::

    python benchmarks/bench_text_to_image.py [--steps 10] [--batch 2] [--side 128]

The diffusers peer runs first in the PyTorch peer venv (``benchmarks/setup_peers.sh``; default
``/work/peers/bin/python``) as a subprocess: it writes the pipeline folder, times its pipeline
(after a warm-up call) and saves its images; then diffjax loads that folder and times its
compiled call (after the compiling one). Prints both JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(REPO, "benchmarks", "peers", "text_to_image_peer.py")
TOKENIZER = os.path.join(REPO, "tests", "fixtures", "clip_text", "tokenizer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--peer_python", default="/work/peers/bin/python")
    parser.add_argument(
        "--cpu_settings", action="store_true",
        help="XLA's CPU convolution flag and one JAX device per core (the training CLI's)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.cpu_settings:
        from diffjax.cli import cpu_device_count, enable_fast_cpu_convolutions, use_cpu_devices

        enable_fast_cpu_convolutions()
        use_cpu_devices(cpu_device_count([args.batch]))
    with tempfile.TemporaryDirectory() as folder:
        peer = subprocess.run(
            [args.peer_python, PEER, folder, TOKENIZER, str(args.steps), str(args.batch),
             str(args.side)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        import jax

        from diffjax.pipelines import load_stable_diffusion, text_to_image

        reference = np.load(os.path.join(folder, "peer_outputs.npz"))
        pipeline = load_stable_diffusion(folder)

        def run() -> np.ndarray:
            return text_to_image(
                pipeline, list(reference["prompts"]), steps=args.steps, guidance_scale=7.5,
                height=args.side, width=args.side, latents=reference["latents"],
            )  # fmt: skip

        start = time.perf_counter()
        run()
        first = time.perf_counter() - start
        start = time.perf_counter()
        images = run()
        seconds = time.perf_counter() - start
        difference = float(np.max(np.abs(images / 2 + 0.5 - reference["images"])))
        print("diffjax  ", json.dumps(dict(
            seconds_per_image=seconds / args.batch, first_call_seconds=first,
            devices=jax.device_count(), max_abs_image_difference=difference,
        )))  # fmt: skip
        print("diffusers", peer.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
