"""diffjax side by side with its PyTorch peers, measured in one run on this machine.

Peers: Hugging Face diffusers (``UNet2DModel`` + ``DDIMScheduler`` /
``DPMSolverMultistepScheduler``) and lucidrains' denoising-diffusion-pytorch (``Unet``), both in
benchmarks/.peers-venv (``bash benchmarks/setup_peers.sh`` makes it). Every measurement runs in
a process of its own, so that each training run's peak resident memory is its own and each JAX
process gets the ``XLA_FLAGS`` it needs. Sections:

1. peak matmul GFLOP/s of JAX and PyTorch (benchmarks/peak_matmul.py): the MFU denominator;
2. training throughput (forward + backward + optimizer step, images/s) at the Fashion-MNIST
   (1.6M params, 28x28x1, batch 64) and CIFAR-10 (35.7M, 32x32x3, batch 128) sizes, with
   compile / first-step time, model FLOPs per image, fraction of peak and peak RSS; diffjax
   as ``python -m diffjax.train`` runs on CPU (the XLA flag
   :data:`diffjax.FAST_CPU_CONVOLUTION_FLAG` and one JAX device per core,
   :func:`diffjax.use_cpu_devices`) and, for reference, with XLA's defaults on one device;
3. sampling throughput: DDIM 50 steps and DPM-Solver++(2M) 20 steps, same model and batch
   (diffjax as ``python -m diffjax.sample`` runs: the flag, one device per core);
4. fake-device scaling: the diffjax Fashion-MNIST step on 1, 2, 4, 8 fake CPU devices (it shows
   the sharding overhead; the devices share the same cores).

Usage:
    bash benchmarks/setup_peers.sh          # once
    .venv/bin/python benchmarks/compare.py  # everything, ~20-30 min on 2 idle cores
    .venv/bin/python benchmarks/compare.py --sections train --sizes fashion_mnist
    .venv/bin/python benchmarks/compare.py --cpus 1  # one pinned core and thread per process
    .venv/bin/python benchmarks/compare.py --quick --sizes fashion_mnist  # smoke test, ~10 min

Prints the tables with the ratios diffjax / peer and writes
``benchmarks/out/compare-<UTC time>.json`` (``--out`` to choose). Timings on a shared machine
are noisy: the 1-minute load average is recorded before and after every measurement, and
PyTorch's OpenMP threads degrade far more than XLA's under contention, so on a busy machine
use ``--cpus 1`` (each process gets one whole core, one thread) or wait for a load below 0.5.

The diffjax numbers come from benchmarks/bench_train_step.py (``run_preset``) and
benchmarks/bench_sampling.py (``run_speed``); the peers' from benchmarks/peers/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

# What diffjax's CLIs set on CPU (this import loads jax but never starts it).
from diffjax.cli import FAST_CPU_CONVOLUTION_FLAG, cpu_devices_from_flag, use_cpu_devices

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
PEERS_PYTHON = os.path.join(BENCH_DIR, ".peers-venv", "bin", "python")
PEERS = ("diffusers", "lucidrains")
SIZES = ("fashion_mnist", "cifar10")
SECTIONS = ("peak", "train", "sample", "scaling")


def _load() -> float:
    """The 1-minute load average (how busy the machine was)."""
    return os.getloadavg()[0]


def _pin(command: Sequence[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Pins a benchmark process to the CPUs of ``--cpus`` (kept in ``$DIFFJAX_BENCH_CPUS``).

    ``taskset`` restricts the process to those CPUs; XLA sizes its thread pools from the
    affinity mask, and ``OMP_NUM_THREADS`` gives PyTorch the same number of threads. Without
    ``--cpus`` the command is returned unchanged (every framework uses every core).
    """
    cpus = env.get("DIFFJAX_BENCH_CPUS")
    if not cpus:
        return list(command), env
    count = sum(
        int(b) - int(a) + 1 if "-" in part else 1
        for part in cpus.split(",")
        for a, _, b in [part.partition("-")]
    )
    return ["taskset", "-c", cpus, *command], dict(env, OMP_NUM_THREADS=str(count))


def run_json(command: Sequence[str], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs a benchmark process and parses the JSON object on the last line of its stdout.

    Args:
      command: the command line.
      env: extra environment variables.

    Returns:
      The parsed object with ``load_before`` and ``load_after`` (1-minute load averages) added.

    Raises:
      RuntimeError: when the process fails, with the end of its stderr.
    """
    full_env = dict(os.environ, **(env or {}))
    command, full_env = _pin(command, full_env)
    load_before = _load()
    completed = subprocess.run(
        command, env=full_env, capture_output=True, text=True, check=False, cwd=REPO
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed with exit code {completed.returncode}:\n"
            f"{completed.stderr[-4000:]}"
        )
    row = json.loads(completed.stdout.strip().splitlines()[-1])
    row["load_before"], row["load_after"] = load_before, _load()
    return row


# ----------------------------------------------------------------- diffjax workers (in-process)


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def diffjax_train_worker(
    size: str, steps: int, warmup: int, batch_size: int | None, cpu_devices: int
) -> None:
    """Measures the diffjax training step with bench_train_step.run_preset; prints JSON."""
    sys.path.insert(0, BENCH_DIR)
    import bench_train_step

    # Before JAX starts, as the CLIs do; a count in $XLA_FLAGS (the scaling section) is kept.
    batch_size = batch_size or bench_train_step.PRESETS[size]["batch_size"]
    use_cpu_devices(cpu_devices_from_flag(cpu_devices, [batch_size]))

    row = bench_train_step.run_preset(
        size, num_steps=steps, warmup_steps=warmup, batch_size=batch_size
    )
    row["peak_rss_mib"] = _peak_rss_mib()
    row["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    print(json.dumps(row))


def diffjax_sample_worker(size: str, batch_size: int, repeats: int) -> None:
    """Measures diffjax DDIM-50 and DPM-Solver++-20 with bench_sampling.run_speed; prints JSON."""
    sys.path.insert(0, BENCH_DIR)
    use_cpu_devices(cpu_devices_from_flag(0, [batch_size]))
    import bench_sampling
    import jax

    # ddpm_steps=2 keeps the DDPM row (which run_speed always times) negligible.
    result = bench_sampling.run_speed([size], batch_size, 2, (), repeats)[size]
    rows = [row for row in result["samplers"] if row["sampler"] != "ddpm"]
    print(
        json.dumps(
            {
                "num_params": result["num_params"],
                "samplers": rows,
                "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
                "peak_rss_mib": _peak_rss_mib(),
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
            }
        )
    )


# ------------------------------------------------------------------------------- the sections


def measure_peak(quick: bool) -> dict[str, Any]:
    """Peak matmul GFLOP/s of JAX and PyTorch, float32 and bfloat16 (benchmarks/peak_matmul.py).

    Args:
      quick: one small size and short timing (smoke test).

    Returns:
      ``{'jax': {...}, 'torch': {...}, 'peak_float32_gflops': best float32 of both}``.
    """
    sizes = ["1024"] if quick else ["1024", "2048", "4096"]
    out: dict[str, Any] = {}
    for framework, python in (("jax", sys.executable), ("torch", PEERS_PYTHON)):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "peak.json")
            load_before = _load()
            command, env = _pin(
                [
                    python,
                    os.path.join(BENCH_DIR, "peak_matmul.py"),
                    "--framework",
                    framework,
                    "--sizes",
                    *sizes,
                    "--min-seconds",
                    "0.2" if quick else "1.0",
                    "--json",
                    path,
                ],
                dict(os.environ, JAX_PLATFORMS="cpu"),
            )
            subprocess.run(command, check=True, capture_output=True, cwd=REPO, env=env)
            with open(path) as handle:
                out[framework] = json.load(handle)
            out[framework]["load_before"], out[framework]["load_after"] = load_before, _load()
    out["peak_float32_gflops"] = max(
        row["best_gflops"]
        for framework in ("jax", "torch")
        for row in out[framework]["rows"]
        if row["dtype"] == "float32"
    )
    return out


def measure_train(sizes: Sequence[str], quick: bool) -> list[dict[str, Any]]:
    """Training rows: diffjax (with and without the CLI's CPU flag) and both peers per size.

    Args:
      sizes: preset names.
      quick: 1 timed step after 1 warm-up, small batches (smoke test).

    Returns:
      One row per (size, library, variant).
    """
    rows = []
    for size in sizes:
        steps, warmup = (1, 1) if quick else ((10, 2) if size == "fashion_mnist" else (3, 1))
        batch = ["--batch-size", "8"] if quick else []
        variants = (
            ("diffjax", FAST_CPU_CONVOLUTION_FLAG, "0"),
            ("diffjax, XLA defaults", "", "1"),
        )
        for label, flags, cpu_devices in variants:
            row = run_json(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--worker",
                    "train",
                    "--sizes",
                    size,
                    "--steps",
                    str(steps),
                    "--warmup",
                    str(warmup),
                    "--cpu-devices",
                    cpu_devices,
                    *batch,
                ],
                env={"XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
            )
            rows.append(_train_row(size, label, row))
            _progress(rows[-1])
        for peer in PEERS:
            row = run_json(
                [
                    PEERS_PYTHON,
                    os.path.join(BENCH_DIR, "peers", "train_peer.py"),
                    "--peer",
                    peer,
                    "--size",
                    size,
                    "--steps",
                    str(steps),
                    "--warmup",
                    str(warmup),
                    *batch,
                ]
            )
            rows.append(_train_row(size, peer, row))
            _progress(rows[-1])
    return rows


def _train_row(size: str, label: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Normalises a diffjax or peer training result to one schema (keeps the raw one too)."""
    if raw.get("framework") == "torch":
        common = dict(
            params=raw["params"],
            batch_size=raw["batch_size"],
            compile_seconds=raw["first_step_seconds"],
            step_seconds=raw["median_step_seconds"],
            images_per_second=raw["images_per_second"],
            train_gflops_per_image=raw.get("flops_per_image_train", float("nan")) / 1e9,
            forward_gflops_per_image=raw.get("flops_per_image_forward", float("nan")) / 1e9,
            flops_source="torch FlopCounterMode (matmul/conv/attention)",
        )
    else:
        common = dict(
            params=raw["num_params"],
            batch_size=raw["batch_size"],
            compile_seconds=raw["compile_seconds"],
            step_seconds=raw["median_step_seconds"],
            images_per_second=raw["images_per_second"],
            train_gflops_per_image=raw["train_gflops_per_image"],
            forward_gflops_per_image=raw["forward_gflops_per_image"],
            flops_source="XLA cost analysis (whole step)",
        )
    return dict(
        section="train",
        size=size,
        library=label,
        peak_rss_mib=raw["peak_rss_mib"],
        load_before=raw["load_before"],
        load_after=raw["load_after"],
        raw=raw,
        **common,
    )


def measure_sample(sizes: Sequence[str], quick: bool) -> list[dict[str, Any]]:
    """Sampling rows: DDIM-50 and DPM-Solver++-20 for diffjax and both peers per size.

    Args:
      sizes: preset names.
      quick: batch 2, one repeat (smoke test; the step counts stay 50 and 20).

    Returns:
      One row per (size, sampler, library).
    """
    batch, repeats = (2, 1) if quick else (8, 2)
    rows = []
    for size in sizes:
        raw = run_json(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--worker",
                "sample",
                "--sizes",
                size,
                "--batch-size",
                str(batch),
                "--repeats",
                str(repeats),
            ],
            env={"XLA_FLAGS": FAST_CPU_CONVOLUTION_FLAG, "JAX_PLATFORMS": "cpu"},
        )
        for sampler_row in raw["samplers"]:
            sampler = "ddim" if sampler_row["sampler"] == "ddim" else "dpm_solver"
            rows.append(
                dict(
                    section="sample",
                    size=size,
                    sampler=sampler,
                    num_steps=sampler_row["steps"],
                    library="diffjax",
                    devices=raw["devices"],
                    params=raw["num_params"],
                    batch_size=batch,
                    seconds=sampler_row["run_s"],
                    images_per_second=sampler_row["samples_per_s"],
                    compile_seconds=sampler_row["compile_s"],
                    peak_rss_mib=raw["peak_rss_mib"],
                    load_before=raw["load_before"],
                    load_after=raw["load_after"],
                    raw=sampler_row,
                )
            )
            _progress(rows[-1])
        for peer in PEERS:
            for sampler, num_steps in (("ddim", 50), ("dpm_solver", 20)):
                raw_peer = run_json(
                    [
                        PEERS_PYTHON,
                        os.path.join(BENCH_DIR, "peers", "sample_peer.py"),
                        "--peer",
                        peer,
                        "--size",
                        size,
                        "--sampler",
                        sampler,
                        "--num-steps",
                        str(num_steps),
                        "--batch-size",
                        str(batch),
                        "--repeats",
                        str(repeats),
                    ]
                )
                rows.append(
                    dict(
                        section="sample",
                        size=size,
                        sampler=sampler,
                        num_steps=num_steps,
                        library=peer,
                        params=raw_peer["params"],
                        batch_size=batch,
                        seconds=raw_peer["seconds"],
                        images_per_second=raw_peer["images_per_second"],
                        compile_seconds=0.0,
                        peak_rss_mib=raw_peer["peak_rss_mib"],
                        load_before=raw_peer["load_before"],
                        load_after=raw_peer["load_after"],
                        raw=raw_peer,
                    )
                )
                _progress(rows[-1])
    return rows


def measure_scaling(quick: bool) -> list[dict[str, Any]]:
    """The diffjax Fashion-MNIST step on 1, 2, 4, 8 fake CPU devices (same global batch 64).

    Args:
      quick: 1 timed step, batch 8.

    Returns:
      One row per device count.
    """
    steps, warmup = (1, 1) if quick else (5, 2)
    batch = ["--batch-size", "8"] if quick else []
    rows = []
    for devices in (1, 2, 4, 8):
        raw = run_json(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--worker",
                "train",
                "--sizes",
                "fashion_mnist",
                "--steps",
                str(steps),
                "--warmup",
                str(warmup),
                *batch,
            ],
            env={
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                f"{FAST_CPU_CONVOLUTION_FLAG}",
                "JAX_PLATFORMS": "cpu",
            },
        )
        rows.append(
            dict(
                section="scaling",
                size="fashion_mnist",
                devices=devices,
                library="diffjax",
                batch_size=raw["batch_size"],
                step_seconds=raw["median_step_seconds"],
                images_per_second=raw["images_per_second"],
                compile_seconds=raw["compile_seconds"],
                peak_rss_mib=raw["peak_rss_mib"],
                load_before=raw["load_before"],
                load_after=raw["load_after"],
                raw=raw,
            )
        )
        _progress(rows[-1])
    return rows


def _progress(row: dict[str, Any]) -> None:
    """One line per finished measurement, so a long run shows where it is."""
    what = row.get("sampler") or (f"{row['devices']} devices" if "devices" in row else "train")
    print(
        f"  done: {row['section']:<8} {row['size']:<14} {what:<12} {row['library']:<20} "
        f"{row['images_per_second']:8.2f} images/s  (load {row['load_before']:.1f} -> "
        f"{row['load_after']:.1f})",
        file=sys.stderr,
        flush=True,
    )


# --------------------------------------------------------------------------------- reporting


def _library(row: dict[str, Any]) -> str:
    """The library's name, with the device count for diffjax (e.g. 'diffjax (2 x cpu)')."""
    devices = row.get("devices") or row["raw"].get("devices")
    return f"{row['library']} ({devices})" if devices else row["library"]


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference > 0 else "n/a"


def format_report(result: dict[str, Any]) -> str:
    """Formats the measured rows as Markdown tables (the ones RESULTS.md carries).

    Args:
      result: the dict :func:`main` writes as JSON.

    Returns:
      The tables as one string.
    """
    lines = [
        f"Measured {result['date']} on {result['machine']['cpu']} "
        f"({result['machine']['cpus']} CPUs"
        f"{', every process pinned to CPU ' + result['machine']['pinned_cpus'] + ' with that many threads' if result['machine'].get('pinned_cpus') else ''}"
        f"), load average "
        f"{result['machine']['load_start']:.2f} at start, {result['machine']['load_end']:.2f} "
        f"at end; {result['versions']}.",
        "",
    ]
    peak = result.get("peak")
    peak_gflops = peak["peak_float32_gflops"] if peak else float("nan")
    if peak:
        lines += [
            "Peak matmul (best GFLOP/s over N = 1024, 2048, 4096):",
            "",
            "| framework | float32 | bfloat16 |",
            "|---|---|---|",
        ]
        for framework in ("jax", "torch"):
            best = {
                dtype: max(
                    (r["best_gflops"] for r in peak[framework]["rows"] if r["dtype"] == dtype),
                    default=float("nan"),
                )
                for dtype in ("float32", "bfloat16")
            }
            lines.append(f"| {framework} | {best['float32']:.0f} | {best['bfloat16']:.0f} |")
        lines += [
            "",
            f"MFU below = achieved model GFLOP/s / {peak_gflops:.0f} "
            "(the best float32 matmul of either framework).",
            "",
        ]
    train = [r for r in result["rows"] if r["section"] == "train"]
    if train:
        lines += [
            "Training step (forward + backward + clip + Adam + EMA), float32:",
            "",
            "| size | library | params | batch | compile / 1st step s | step s | images/s "
            "| diffjax / this | GFLOP/image | GFLOP/s | MFU | peak RSS MiB | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for size in SIZES:
            size_rows = [r for r in train if r["size"] == size]
            base = next((r for r in size_rows if r["library"] == "diffjax"), None)
            for r in size_rows:
                achieved = r["train_gflops_per_image"] * r["images_per_second"]
                ratios = _ratio(base["images_per_second"], r["images_per_second"]) if base else ""
                lines.append(
                    f"| {size} | {_library(r)} | {r['params'] / 1e6:.2f}M | {r['batch_size']} | "
                    f"{r['compile_seconds']:.1f} | {r['step_seconds']:.3f} | "
                    f"{r['images_per_second']:.1f} | {ratios} | "
                    f"{r['train_gflops_per_image']:.2f} | {achieved:.0f} | "
                    f"{100 * achieved / peak_gflops:.0f}% | {r['peak_rss_mib']:.0f} | "
                    f"{r['load_before']:.1f} |"
                )
        lines += [
            "",
            "GFLOP/image: diffjax from XLA's cost analysis of the whole step, peers "
            "from torch's FlopCounterMode (matmul/conv/attention only).",
            "",
        ]
    sample = [r for r in result["rows"] if r["section"] == "sample"]
    if sample:
        lines += [
            "Sampling (images/s, whole sampler run, best of the repeats):",
            "",
            "| size | sampler | library | batch | seconds | images/s | diffjax / this | load |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for size in SIZES:
            for sampler in ("ddim", "dpm_solver"):
                group = [r for r in sample if r["size"] == size and r["sampler"] == sampler]
                base = next((r for r in group if r["library"] == "diffjax"), None)
                for r in group:
                    ratio = (
                        _ratio(base["images_per_second"], r["images_per_second"]) if base else ""
                    )
                    lines.append(
                        f"| {size} | {sampler}-{r['num_steps']} | {_library(r)} | "
                        f"{r['batch_size']} | {r['seconds']:.2f} | {r['images_per_second']:.2f} "
                        f"| {ratio} | {r['load_before']:.1f} |"
                    )
        lines.append("")
    scaling = [r for r in result["rows"] if r["section"] == "scaling"]
    if scaling:
        base = scaling[0]["step_seconds"]
        lines += [
            "Fake-device scaling (Fashion-MNIST step, global batch "
            f"{scaling[0]['batch_size']}, devices share the same cores):",
            "",
            "| devices | compile s | step s | images/s | step time vs 1 device | load |",
            "|---|---|---|---|---|---|",
        ]
        for r in scaling:
            lines.append(
                f"| {r['devices']} | {r['compile_seconds']:.1f} | "
                f"{r['step_seconds']:.3f} | {r['images_per_second']:.1f} | "
                f"{r['step_seconds'] / base:.2f}x | {r['load_before']:.1f} |"
            )
        lines.append("")
    lines.append("GPU: not measured (no GPU lent to this run).")
    return "\n".join(lines)


def _versions() -> str:
    import importlib.metadata as metadata

    names = ("jax", "jaxlib", "flax", "optax")
    ours = ", ".join(f"{name} {metadata.version(name)}" for name in names)
    peers = subprocess.run(
        [
            PEERS_PYTHON,
            "-c",
            "import importlib.metadata as m; print(', '.join(f'{n} ' + "
            "m.version(n) for n in ('torch', 'diffusers', 'denoising-diffusion-pytorch')))",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{ours}; {peers or 'peers venv missing'}"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny steps and batches")
    parser.add_argument("--out", help="JSON path (default benchmarks/out/compare-<time>.json)")
    parser.add_argument(
        "--cpus",
        help="pin every measurement to these CPUs (taskset list, e.g. '1' or '0-1') with as "
        "many threads; on a shared machine '--cpus 1' gives each framework one whole core",
    )
    parser.add_argument("--worker", choices=("train", "sample"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--cpu-devices", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "train":
        diffjax_train_worker(
            args.sizes[0], args.steps, args.warmup, args.batch_size, args.cpu_devices
        )
        return
    if args.worker == "sample":
        diffjax_sample_worker(args.sizes[0], args.batch_size, args.repeats)
        return
    if not os.path.exists(PEERS_PYTHON):
        parser.error(f"{PEERS_PYTHON} is missing: run `bash benchmarks/setup_peers.sh` first")

    if args.cpus:
        os.environ["DIFFJAX_BENCH_CPUS"] = args.cpus
    now = datetime.datetime.now(datetime.timezone.utc)
    result: dict[str, Any] = dict(
        date=now.strftime("%Y-%m-%d %H:%M UTC"),
        machine=dict(
            cpu=_cpu_name(), cpus=os.cpu_count(), pinned_cpus=args.cpus, load_start=_load()
        ),
        versions=_versions(),
        quick=args.quick,
        rows=[],
    )
    print(
        f"compare.py: sections {args.sections}, sizes {args.sizes}, load {_load():.2f}",
        file=sys.stderr,
        flush=True,
    )
    if "peak" in args.sections:
        result["peak"] = measure_peak(args.quick)
    if "train" in args.sections:
        result["rows"] += measure_train(args.sizes, args.quick)
    if "sample" in args.sections:
        result["rows"] += measure_sample(args.sizes, args.quick)
    if "scaling" in args.sections:
        result["rows"] += measure_scaling(args.quick)
    result["machine"]["load_end"] = _load()

    report = format_report(result)
    result["report"] = report
    out = args.out or os.path.join(
        BENCH_DIR, "out", f"compare-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(report)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
