"""Probes XLA's CPU backend: how fast a convolution or the diffjax training step runs under
different ``XLA_FLAGS``, next to the same work under PyTorch/oneDNN.

XLA reads ``XLA_FLAGS`` once, when JAX initialises its backend, so every flag set is measured
in a fresh subprocess. Each subprocess reports the median wall time per call and the process
CPU time per call; on a shared machine pin it to one core (``--one-core``: ``taskset`` + one
thread) and compare CPU time, which contention distorts far less than wall time.

Examples:

    # the bare 3x3 convolution of issue 7 (64 ch, 28x28, batch 64), split into its three parts
    .venv/bin/python benchmarks/xla_cpu_probe.py conv --parts fwd dx dw all \
        --flags default eigen_conv

    # the diffjax Fashion-MNIST training step under the same flag sets
    .venv/bin/python benchmarks/xla_cpu_probe.py train --size fashion_mnist \
        --flags default eigen_conv --raw-flags="--xla_cpu_enable_fast_math=true"

    # the PyTorch side of the convolution (needs benchmarks/.peers-venv)
    .venv/bin/python benchmarks/xla_cpu_probe.py conv --torch --parts fwd all

What the flags do (jaxlib 0.10.2): XLA's CPU backend hands every convolution and dot to
YNNPACK by default (``kind=kCustom`` fusions named ``__ynn_fusion`` in the optimised HLO).
``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` takes convolutions away from
YNNPACK again (XLA's Eigen convolution); ``-individual_dot`` does the same for dots.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_PYTHON = os.path.join(REPO, "benchmarks", ".peers-venv", "bin", "python")
CONV_PARTS = ("fwd", "dx", "dw", "all")
# Named XLA_FLAGS sets (jaxlib 0.10.2); --raw-flags="..." takes any other value.
FLAG_PRESETS = {
    "default": "",
    # Convolutions back to XLA's Eigen kernels instead of YNNPACK.
    "eigen_conv": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    # Convolutions and dots both away from YNNPACK.
    "eigen_conv_dot": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,"
    "-individual_dot",
    # YNNPACK also for elementwise and reduction fusions.
    "ynn_all": "--xla_cpu_experimental_ynn_fusion_type=+eltwise,+reduce",
    # oneDNN graph fusions of dots with their elementwise neighbours.
    "onednn": "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise",
    "xnn_graph": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "eigen_conv_fast_math": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution "
    "--xla_cpu_enable_fast_math=true",
}
# The bare convolution of issue 7: batch 64, 28x28, 64 -> 64 channels, 3x3, SAME.
CONV_SHAPE = dict(batch=64, height=28, width=28, channels=64)


def conv_flops(part: str) -> float:
    """FLOPs of one call of a convolution part: 2 x multiply-adds; 'all' is fwd + dx + dw."""
    s = CONV_SHAPE
    one = 2.0 * s["batch"] * s["height"] * s["width"] * s["channels"] ** 2 * 9
    return 3 * one if part == "all" else one


def _timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Median wall and CPU seconds per call after two warm-up calls."""
    import numpy as np

    fn()
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "wall_s": float(np.median(wall)),
        "min_wall_s": float(min(wall)),
        "cpu_s": float(np.median(cpu)),
    }


def _jax_conv(part: str, dtype: str, repeats: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    s = CONV_SHAPE
    shape = (s["batch"], s["height"], s["width"], s["channels"])
    x = jax.random.normal(jax.random.key(0), shape, dtype)
    w = 0.05 * jax.random.normal(jax.random.key(1), (3, 3, s["channels"], s["channels"]), dtype)
    cotangent = jax.random.normal(jax.random.key(2), shape, dtype)

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    if part == "fwd":
        fn, args = jax.jit(conv), (x, w)
    elif part == "dx":
        fn = jax.jit(lambda ct, w: jax.vjp(lambda x: conv(x, w), x)[1](ct)[0])
        args = (cotangent, w)
    elif part == "dw":
        fn = jax.jit(lambda ct, x: jax.vjp(lambda w: conv(x, w), w)[1](ct)[0])
        args = (cotangent, x)
    else:
        loss = lambda w, x: jnp.sum(jnp.square(conv(x, w).astype(jnp.float32)))  # noqa: E731
        fn, args = jax.jit(jax.grad(loss, argnums=(0, 1))), (w, x)
    return _timed(lambda: jax.block_until_ready(fn(*args)), repeats)


def _torch_conv(part: str, dtype: str, repeats: int) -> dict[str, float]:
    import torch

    s = CONV_SHAPE
    torch_dtype = getattr(torch, dtype)
    conv = torch.nn.Conv2d(s["channels"], s["channels"], 3, padding=1, bias=False)
    conv = conv.to(torch_dtype).to(memory_format=torch.channels_last)
    x = torch.randn(s["batch"], s["channels"], s["height"], s["width"], dtype=torch_dtype)
    x = x.to(memory_format=torch.channels_last).requires_grad_(part in ("dx", "all"))
    conv.weight.requires_grad_(part in ("dw", "all"))
    with torch.no_grad():
        cotangent = torch.randn_like(conv(x))

    def run() -> None:
        if part == "fwd":
            with torch.no_grad():
                conv(x)
            return
        x.grad, conv.weight.grad = None, None
        conv(x).backward(cotangent)

    return _timed(run, repeats)


def _train_step(
    size: str, repeats: int, dtype: str, holder: dict[str, object] | None = None
) -> dict[str, float]:
    """The diffjax training step (UNet + loss + grad + clip + Adam + EMA) on one device.

    With ``holder``, only builds and compiles the step and leaves ``run``, ``step``, a
    ``state`` getter, ``batch`` and ``key`` in it (for profiling).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from diffjax.models.unet import UNet
    from diffjax.schedules import get_schedule
    from diffjax.sharding import make_mesh
    from diffjax.training.objectives import make_denoising_loss
    from diffjax.training.step import jit_train_step, make_train_step
    from diffjax.training.train_state import create_train_state, make_optimizer

    if size == "fashion_mnist":
        model_kwargs = dict(base_channels=32, channel_mults=(1, 2, 2), attn_resolutions=(14,))
        shape = (64, 28, 28, 1)
    else:
        model_kwargs = {}
        shape = (128, 32, 32, 3)
    model = UNet(dropout=0.1, dtype=jnp.dtype(dtype), **model_kwargs)
    optimizer = make_optimizer(2e-4)
    mesh = make_mesh(jax.devices()[:1])
    sample_x = jnp.zeros((1, *shape[1:]))
    sample_t = jnp.zeros((1,), jnp.int32)
    state = create_train_state(
        lambda key: model.init(key, sample_x, sample_t)["params"],
        jax.random.key(0),
        optimizer,
        mesh,
    )
    step = jit_train_step(
        make_train_step(make_denoising_loss(model, get_schedule("linear", 1000)), optimizer),
        mesh,
    )
    batch = {"image": np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)}
    key = jax.random.key(1)
    current = [state]

    def run() -> None:
        current[0], metrics = step(current[0], batch, key)
        jax.block_until_ready(metrics)

    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    if holder is not None:
        holder.update(run=run, step=step, state=lambda: current[0], batch=batch, key=key)
        return {"first_call_s": first}
    result = _timed(run, repeats)
    result["first_call_s"] = first
    result["batch_size"] = shape[0]
    return result


def categorize_hlo(hlo_text: str) -> dict[str, str]:
    """Maps each instruction of an optimised HLO module to a coarse kind of work.

    Args:
      hlo_text: ``compiled.as_text()`` of a jitted function.

    Returns:
      ``{instruction name: category}``; categories are 'conv (YNNPACK)', 'conv (Eigen)',
      'dot (YNNPACK)', 'dot', 'reduce', 'layout (transpose/copy)', 'elementwise + transpose'
      (a loop fusion that also transposes), 'elementwise' and 'other'.
    """
    import re

    computations: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$", line)
        if header:
            current = header.group(1)
            computations[current] = []
        elif current is not None and line.strip() and line.strip() != "}":
            computations[current].append(line)

    def opcodes(name: str, seen: set[str]) -> set[str]:
        found = set()
        for line in computations.get(name, []):
            op = re.search(r"= [^ ]+(?:\{[^}]*\})? ([a-z\-]+)\(", line)
            if op:
                found.add(op.group(1))
            for called in re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", line):
                if called not in seen:
                    seen.add(called)
                    found |= opcodes(called, seen)
        return found

    categories = {}
    for lines in computations.values():
        for line in lines:
            match = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)
            if not match:
                continue
            name = match.group(1)
            called = re.findall(r"calls=%([\w.\-]+)", line)
            ops = set()
            op = re.search(r"= [^ ]+(?:\{[^}]*\})? ([a-z\-]+)\(", line)
            if op:
                ops.add(op.group(1))
            for comp in called:
                ops |= opcodes(comp, {comp})
            ynn = "__ynn_fusion" in line
            if "convolution" in ops:
                categories[name] = "conv (YNNPACK)" if ynn else "conv (Eigen)"
            elif "dot" in ops:
                categories[name] = "dot (YNNPACK)" if ynn else "dot"
            elif "reduce" in ops or "reduce-window" in ops:
                categories[name] = "reduce"
            elif ops and ops <= {
                "transpose",
                "copy",
                "bitcast",
                "reshape",
                "parameter",
                "fusion",
                "slice",
                "concatenate",
                "pad",
                "broadcast",
            }:
                categories[name] = "layout (transpose/copy)"
            elif "transpose" in ops:
                categories[name] = "elementwise + transpose"
            elif "fusion" in ops or ops & {"add", "multiply", "exponential", "select"}:
                categories[name] = "elementwise"
            else:
                categories[name] = "other"
    return categories


def _profile_train_step(size: str, repeats: int, dtype: str) -> dict[str, object]:
    """Per-category time of the diffjax training step, from a jax.profiler trace."""
    import collections
    import glob
    import tempfile

    import jax
    from jax.profiler import ProfileData

    holder: dict[str, object] = {}
    _train_step(size, 1, dtype, holder)
    run, step, state, batch, key = (holder[k] for k in ("run", "step", "state", "batch", "key"))
    hlo = step.jitted.lower(state(), batch, key).compile().as_text()
    categories = categorize_hlo(hlo)
    trace_dir = tempfile.mkdtemp(prefix="diffjax-trace-")
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir):
        for _ in range(repeats):
            run()
    wall = (time.perf_counter() - start) / repeats
    totals: dict[str, float] = collections.Counter()
    by_op: dict[str, float] = collections.Counter()
    path = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
    for plane in ProfileData.from_file(path).planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in categories:
                    seconds = event.duration_ns / 1e9 / repeats
                    totals[categories[event.name]] += seconds
                    by_op[event.name] += seconds
    top = sorted(by_op.items(), key=lambda item: -item[1])[:15]
    return {
        "wall_s": wall,
        "category_s": dict(sorted(totals.items(), key=lambda item: -item[1])),
        "top_ops": [[name, categories[name], seconds] for name, seconds in top],
        "num_instructions": len(categories),
    }


def worker(args: argparse.Namespace) -> None:
    """Runs one measurement in this process and prints it as JSON."""
    if args.case == "conv":
        fn = _torch_conv if args.torch else _jax_conv
        result = fn(args.part, args.dtype, args.repeats)
        result["gflops_wall"] = conv_flops(args.part) / result["wall_s"] / 1e9
        result["gflops_cpu"] = conv_flops(args.part) / result["cpu_s"] / 1e9
    elif args.case == "profile":
        result = _profile_train_step(args.size, args.repeats, args.dtype)
    else:
        result = _train_step(args.size, args.repeats, args.dtype)
        result["images_per_second"] = result["batch_size"] / result["wall_s"]
    print(json.dumps(result))


def run_subprocess(
    argv: Sequence[str], *, xla_flags: str, one_core: bool, python: str
) -> dict[str, float]:
    """Runs ``worker`` in a fresh interpreter with the given ``XLA_FLAGS``.

    Args:
      argv: the worker's command-line arguments.
      xla_flags: the value of ``XLA_FLAGS`` for that process.
      one_core: pin to CPU 0 with one thread (``taskset``; OMP_NUM_THREADS=1).
      python: the interpreter.

    Returns:
      The worker's JSON result.
    """
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
    command = [python, os.path.abspath(__file__), "--worker", *argv]
    if one_core:
        env["OMP_NUM_THREADS"] = "1"
        if shutil.which("taskset"):
            command = ["taskset", "-c", "0", *command]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"worker failed ({xla_flags!r}):\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _print_profile(row: dict[str, object]) -> None:
    """Prints the per-category and per-instruction times of one profile row."""
    print(
        f"== XLA_FLAGS={row['flags']}  wall {row['wall_s'] * 1e3:.0f} ms/step "
        f"({row['num_instructions']} HLO instructions)"
    )
    for category, seconds in row["category_s"].items():
        print(f"  {category:<26} {seconds * 1e3:9.1f} ms  {100 * seconds / row['wall_s']:5.1f}%")
    print("  top instructions:")
    for name, category, seconds in row["top_ops"]:
        print(f"    {name:<40} {category:<26} {seconds * 1e3:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=("conv", "train", "profile"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=CONV_PARTS, default="all", help=argparse.SUPPRESS)
    parser.add_argument("--parts", nargs="+", choices=CONV_PARTS, default=["all"])
    parser.add_argument("--size", choices=("fashion_mnist", "cifar10"), default="fashion_mnist")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    parser.add_argument(
        "--flags",
        nargs="+",
        choices=tuple(FLAG_PRESETS),
        default=["default"],
        help="named XLA_FLAGS sets to compare (see FLAG_PRESETS)",
    )
    parser.add_argument(
        "--raw-flags",
        action="append",
        default=[],
        help='an XLA_FLAGS value to compare, written --raw-flags="--xla_..." (repeatable)',
    )
    parser.add_argument("--torch", action="store_true", help="conv under PyTorch instead")
    parser.add_argument("--one-core", action="store_true")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="write all rows here")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    python = PEERS_PYTHON if args.torch else sys.executable
    rows = []
    flag_sets = ["(torch)"] if args.torch else [FLAG_PRESETS[f] for f in args.flags]
    flag_sets += [] if args.torch else args.raw_flags
    parts = args.parts if args.case == "conv" else [args.case]
    if args.case != "profile":
        columns = "GFLOP/s  GFLOP/s(cpu)" if args.case == "conv" else "images/s  first-call-s"
        print(f"{'part':<6} {'wall-ms':>9} {'cpu-ms':>9} {columns}  XLA_FLAGS")
    for flags in flag_sets:
        for part in parts:
            argv = [
                args.case,
                "--part",
                part if part in CONV_PARTS else "all",
                "--size",
                args.size,
                "--dtype",
                args.dtype,
                "--repeats",
                str(args.repeats),
            ]
            if args.torch:
                argv.append("--torch")
            result = run_subprocess(
                argv, xla_flags="" if args.torch else flags, one_core=args.one_core, python=python
            )
            row = dict(flags=flags or "(default)", part=part, dtype=args.dtype, **result)
            rows.append(row)
            if args.case == "profile":
                _print_profile(row)
                continue
            extra = (
                f"{row['gflops_wall']:8.1f} {row['gflops_cpu']:8.1f}"
                if args.case == "conv"
                else f"{row['images_per_second']:8.1f} {row['first_call_s']:8.1f}"
            )
            print(
                f"{part:<6} {row['wall_s'] * 1e3:9.1f} {row['cpu_s'] * 1e3:9.1f} {extra}  "
                f"{row['flags']}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
