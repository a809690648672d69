"""What checkpoints and input transfers cost the training loop: step time with and without them.

Two measurements on the real training step of ``bench_train_step.py``'s presets:

1. **The checkpoint digest** (``diffjax.training.checkpoint.state_digest``, the per-array
   checksum and finiteness record that lets a restore detect corruption): computed on the
   devices in one jitted call, against the earlier way, a host copy of every array and the same
   formula in NumPy (reproduced here as the baseline).
2. **Step time in a loop** (``--loop-presets``) of ``--steps`` steps fed from host batches: with no checkpoint, and
   with an asynchronous orbax save (``CheckpointManager.save``, digest included) every
   ``--every`` steps; each with the host-to-device transfer one batch ahead
   (``prefetch_to_mesh(depth=2)``, what ``train_and_evaluate`` does) or in step
   (``depth=1``).

Usage (the CLI's CPU settings: the convolution flag, one device per core)::

    .venv/bin/python benchmarks/bench_checkpoint.py
    .venv/bin/python benchmarks/bench_checkpoint.py --loop-presets fashion_mnist,cifar10

Prints a table and writes ``benchmarks/out/bench_checkpoint.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "bench_checkpoint.json")


def host_digest(state: Any) -> dict[str, tuple[int, bool]]:
    """The earlier digest: every array copied to the host, the same checksum in NumPy."""
    import jax
    import numpy as np

    digest = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if jax.numpy.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        values = np.asarray(leaf).reshape(-1)
        bits = values.view(f"uint{8 * values.dtype.itemsize}").astype(np.uint32)
        weights = np.arange(bits.size, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        finite = bool(np.isfinite(values).all()) if values.dtype.kind == "f" else True
        digest[jax.tree_util.keystr(path)] = (int(np.sum(bits * weights, dtype=np.uint32)), finite)
    return digest


def best_seconds(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls (after one untimed call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def loop_seconds_per_step(setup: dict, steps: int, every: int, depth: int, folder: str) -> float:
    """Seconds per step of ``steps`` steps fed through ``prefetch_to_mesh(depth)``, saving a
    checkpoint every ``every`` steps (0: never), until the last save has committed."""
    import jax
    import numpy as np

    from diffjax.sharding import prefetch_to_mesh
    from diffjax.training.checkpoint import CheckpointManager

    host_images = np.asarray(setup["batch"]["image"])

    class HostBatches:
        position = 0

        def __next__(self):
            self.position += 1
            return {"image": host_images.copy()}

        def get_state(self):
            return {"position": self.position}

    state, step_fn, key = setup["state"], setup["train_step"], setup["key"]
    shutil.rmtree(folder, ignore_errors=True)
    with CheckpointManager(folder, max_to_keep=2, report=lambda _: None) as manager:
        batches = prefetch_to_mesh(HostBatches(), setup["mesh"], depth)
        state, metrics = step_fn(state, next(batches)[0], key)  # warm: compiled, cached
        jax.block_until_ready(metrics["loss"])
        start = time.perf_counter()
        for index in range(1, steps + 1):
            batch, data_state = next(batches)
            state, metrics = step_fn(state, batch, key)
            if every and index % every == 0:
                manager.save(int(state.step), state, data_state=data_state)
        jax.block_until_ready(state)
        manager.wait_until_finished()
        seconds = time.perf_counter() - start
    setup["state"] = state
    return seconds / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="fashion_mnist,cifar10")
    parser.add_argument(
        "--loop-presets", default="fashion_mnist", help="presets whose loop is timed too"
    )
    parser.add_argument("--steps", type=int, default=12, help="timed loop steps")
    parser.add_argument("--every", type=int, default=3, help="checkpoint every N steps")
    parser.add_argument("--repeats", type=int, default=3, help="digest timings: best of N")
    parser.add_argument("--out", default=OUT_PATH)
    args = parser.parse_args()

    from diffjax.cli import cpu_device_count, enable_fast_cpu_convolutions, use_cpu_devices

    enable_fast_cpu_convolutions()
    use_cpu_devices(cpu_device_count([64, 128]))
    import jax
    from bench_train_step import PRESETS, build_benchmark

    from diffjax.training.checkpoint import state_digest

    rows = []
    for name in args.presets.split(","):
        preset = PRESETS[name]
        setup = build_benchmark(preset["image_shape"], preset["batch_size"], preset["model"])
        state = setup["state"]
        state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
        device = best_seconds(lambda state=state: state_digest(state), args.repeats)
        host = best_seconds(lambda state=state: host_digest(state), args.repeats)
        loop = {}
        if name in args.loop_presets.split(","):
            folder = tempfile.mkdtemp(prefix="bench_checkpoint_")
            for every in (0, args.every):
                for depth in (1, 2):
                    loop[f"every{every}_depth{depth}"] = loop_seconds_per_step(
                        setup, args.steps, every, depth, folder
                    )
            shutil.rmtree(folder, ignore_errors=True)
        row = dict(
            preset=name,
            state_mib=state_bytes / 2**20,
            digest_device_s=device,
            digest_host_copy_s=host,
            loop_s_per_step=loop,
            steps=args.steps,
            every=args.every,
            devices=jax.device_count(),
            platform=jax.devices()[0].platform,
        )
        rows.append(row)
        print(
            f"{name}: state {row['state_mib']:.0f} MiB; digest on the devices {device * 1e3:.0f} ms, "
            f"host copy + NumPy {host * 1e3:.0f} ms"
        )
        for label, seconds in loop.items():
            print(f"  {label:<16} {seconds * 1e3:8.0f} ms/step")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
