"""Reference FID Inception-v3 features from torch-fidelity, and a check of diffjax's port.

Run with the PyTorch peer venv (torch and torch-fidelity; no network)::

    benchmarks/.peers-venv/bin/python benchmarks/metrics_reference/make_inception_fixture.py

1. It writes the seeded random weights of tests/inception_reference.py with ``torch.save`` as a
   state dict, in the zip format and in torch's legacy format, to a temporary folder;
2. builds torch-fidelity's ``FeatureExtractorInceptionV3`` from the zip file (its
   ``load_state_dict`` is strict, so this checks the test helper's names and shapes against
   torch-fidelity's architecture), once in float32 and once with float64 inside;
3. runs both on deterministic uint8 images, 3 of 32x32 and 3 of 64x80, and runs torch-fidelity's
   ``interpolate_bilinear_2d_like_tensorflow1x`` on a few small resizes;
4. writes tests/fixtures/inception_reference.npz: the images, the weights' seed and SHA-256
   fingerprint, ``pool3`` / ``logits_unbiased`` / ``logits`` in float32 and from the float64
   network, and the resize outputs (the 299 x 299 ones only on a grid of rows and columns);
5. runs this file again in the diffjax venv (``--compare``, which imports no torch): diffjax
   reads both ``.pth`` files with ``diffjax.weights.read_torch_state_dict``, checks that they
   hold the same arrays as the seeded state dict, loads them through the Inception key table
   and prints the largest relative errors of the features and the largest resize error against
   torch-fidelity. It fails when a feature error exceeds 1e-4 or the resize is off by more than
   a few float32 roundings.

The relative error of a feature vector is ``max_i |a_i - b_i| / max_i |b_i|`` (elementwise
ratios mean nothing for the features near zero), the largest over the images.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests"))

import inception_reference  # noqa: E402  (tests/inception_reference.py, NumPy only)

FIXTURE = os.path.join(REPO, "tests", "fixtures", "inception_reference.npz")
WEIGHTS_SEED = 0
IMAGE_SEED = 1
NUM_IMAGES = 3  # per size; both groups share one compiled network in the test
SMALL_SIZE = (32, 32)
LARGE_SIZE = (64, 80)
FEATURES = ("pool3", "logits_unbiased", "logits")
TORCH_FIDELITY_FEATURES = ("2048", "logits_unbiased", "logits")
# Rows and columns of the 299 x 299 resizes kept in the fixture: every 13th and the last three.
GRID_299 = np.r_[0:299:13, 296:299]
MAX_RELATIVE_ERROR = 1e-4
# Resize outputs are convex combinations of values <= 255 made in six float32 roundings:
# twelve half-ulps of 256 bound any reordering or fused multiply-add (see test_inception.py).
MAX_RESIZE_ERROR = 12 * 2.0**-16


def _images(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """uint8 [3, H, W, 3]: uniform noise; smooth coloured waves; a 4-pixel 0/255 checkerboard."""
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    noise = rng.integers(0, 256, (height, width, 3))
    waves = np.full((height, width, 3), 127.5)
    for _ in range(3):
        fy, fx = rng.uniform(-3.0, 3.0, 2)
        phase = 2 * np.pi * (fy * yy / height + fx * xx / width) + rng.uniform(0, 2 * np.pi)
        waves += rng.uniform(20.0, 40.0, 3) * np.sin(phase)[..., None]
    checker = np.repeat(255 * ((yy // 4 + xx // 4) % 2)[..., None], 3, axis=-1)
    return np.stack([noise, np.clip(np.round(waves), 0, 255), checker]).astype(np.uint8)


def _resize_cases(
    rng: np.random.Generator, small: np.ndarray, large: np.ndarray
) -> dict[str, tuple[np.ndarray, tuple[int, int], np.ndarray | None]]:
    """``{name: (float32 NHWC input, output (H', W'), rows and columns kept or None for all)}``."""
    return {
        "up_8x8_to_13x13": (rng.integers(0, 256, (2, 8, 8, 3)).astype(np.float32), (13, 13), None),
        "down_37x23_to_11x17": (
            rng.integers(0, 256, (2, 37, 23, 3)).astype(np.float32),
            (11, 17),
            None,
        ),
        "fractional_8x8_to_13x13": (
            rng.uniform(0, 255, (2, 8, 8, 3)).astype(np.float32),
            (13, 13),
            None,
        ),
        "32x32_to_299": (small.astype(np.float32), (299, 299), GRID_299),
        "64x80_to_299": (large.astype(np.float32), (299, 299), GRID_299),
    }


def make_fixture(workdir: str) -> None:
    """The torch-fidelity side: weight files into ``workdir``, the fixture into tests/."""
    import torch
    import torch_fidelity
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x,
    )

    torch.set_num_threads(2)
    state_dict = inception_reference.random_inception_state_dict(WEIGHTS_SEED)
    tensors = {key: torch.from_numpy(value) for key, value in state_dict.items()}
    zip_path = os.path.join(workdir, "inception-random.pth")
    torch.save(tensors, zip_path)
    torch.save(
        tensors,
        os.path.join(workdir, "inception-random-legacy.pth"),
        _use_new_zipfile_serialization=False,
    )

    rng = np.random.default_rng(IMAGE_SEED)
    groups = {"small": _images(rng, SMALL_SIZE), "large": _images(rng, LARGE_SIZE)}
    fixture: dict[str, np.ndarray] = {
        "weights_seed": np.array(WEIGHTS_SEED),
        "weights_fingerprint": np.array(inception_reference.state_dict_fingerprint(state_dict)),
        "torch_fidelity_version": np.array(torch_fidelity.__version__),
        "torch_version": np.array(torch.__version__),
    }
    for dtype in ("float32", "float64"):
        model = FeatureExtractorInceptionV3(
            "inception-v3-compat",
            list(TORCH_FIDELITY_FEATURES),
            feature_extractor_weights_path=zip_path,
        )
        if dtype == "float64":
            # torch-fidelity 0.4.0's text_to_dtype maps "float64" to torch.float32, so
            # feature_extractor_internal_dtype="float64" runs in float32; set it directly.
            model.feature_extractor_internal_dtype = torch.float64
            model.to(torch.float64)
        for group, images in groups.items():
            with torch.no_grad():
                outputs = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
            for name, value in zip(FEATURES, outputs):
                fixture[f"{group}_{name}_{dtype}"] = value.numpy()
    for group, images in groups.items():
        fixture[f"{group}_images"] = images

    for name, (inputs, size, grid) in _resize_cases(rng, groups["small"], groups["large"]).items():
        nchw = torch.from_numpy(inputs).permute(0, 3, 1, 2)
        out = interpolate_bilinear_2d_like_tensorflow1x(nchw, size=size, align_corners=False)
        rows, cols = (np.arange(side) if grid is None else grid for side in size)
        fixture[f"resize_{name}_input"] = inputs
        fixture[f"resize_{name}_size"] = np.array(size)
        fixture[f"resize_{name}_rows"] = rows
        fixture[f"resize_{name}_cols"] = cols
        fixture[f"resize_{name}_output"] = out.permute(0, 2, 3, 1).numpy()[:, rows][:, :, cols]

    os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
    np.savez_compressed(FIXTURE, **fixture)
    print(f"wrote {os.path.relpath(FIXTURE, REPO)} ({os.path.getsize(FIXTURE) / 1024:.0f} KiB)")


def _relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    """``max_i |a_i - b_i| / max_i |b_i|`` per row, the largest over the rows."""
    scale = np.abs(reference).max(axis=-1)
    return float((np.abs(actual - reference).max(axis=-1) / scale).max())


def compare(workdir: str) -> int:
    """The diffjax side: reads the weight files, prints the errors; 0 when within bounds."""
    from diffjax.cli import enable_fast_cpu_convolutions

    enable_fast_cpu_convolutions()
    import jax.numpy as jnp

    from diffjax.metrics.inception import (
        inception_features,
        inception_variables_from_state_dict,
        resize_bilinear_tf1,
    )
    from diffjax.weights import read_torch_state_dict

    expected = inception_reference.random_inception_state_dict(WEIGHTS_SEED)
    zip_path = os.path.join(workdir, "inception-random.pth")
    read = {
        "zip": read_torch_state_dict(zip_path),
        "legacy": read_torch_state_dict(os.path.join(workdir, "inception-random-legacy.pth")),
    }
    for form, state_dict in read.items():
        if inception_reference.state_dict_fingerprint(state_dict) != (
            inception_reference.state_dict_fingerprint(expected)
        ):
            print(f"the {form} file does not read back as the state dict that was saved")
            return 1
    print("zip and legacy .pth files read back bit-identical to the saved state dict")

    fixture = np.load(FIXTURE)
    variables = inception_variables_from_state_dict(read["zip"], source=zip_path)
    report: dict[str, float] = {}
    for group in ("small", "large"):
        outputs = inception_features(variables, fixture[f"{group}_images"])
        for name in FEATURES:
            for dtype in ("float32", "float64"):
                reference = fixture[f"{group}_{name}_{dtype}"]
                key = f"{name} vs torch-fidelity {dtype}"
                error = _relative_error(np.asarray(outputs[name]), reference)
                report[key] = max(report.get(key, 0.0), error)
    for name in FEATURES:
        key = f"{name}: torch-fidelity float32 vs float64"
        report[key] = max(
            _relative_error(fixture[f"{group}_{name}_float32"], fixture[f"{group}_{name}_float64"])
            for group in ("small", "large")
        )
    resize_error = 0.0
    names = sorted(
        key[len("resize_") : -len("_input")] for key in fixture.files if key.endswith("_input")
    )
    for name in names:
        inputs, size, rows, cols = (
            fixture[f"resize_{name}_{part}"] for part in ("input", "size", "rows", "cols")
        )
        out = np.asarray(resize_bilinear_tf1(jnp.asarray(inputs), tuple(int(s) for s in size)))
        error = float(np.abs(out[:, rows][:, :, cols] - fixture[f"resize_{name}_output"]).max())
        print(f"resize {name:<26} max abs error {error:.3g}")
        resize_error = max(resize_error, error)
    report["resize max abs error"] = resize_error

    width = max(len(key) for key in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value:.3g}")
    print(json.dumps(report))
    feature_errors = [value for key, value in report.items() if "vs torch-fidelity float32" in key]
    ok = max(feature_errors) <= MAX_RELATIVE_ERROR and resize_error <= MAX_RESIZE_ERROR
    print("within bounds" if ok else "OUT OF BOUNDS")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", metavar="WORKDIR", help="(diffjax venv) compare in WORKDIR")
    parser.add_argument(
        "--diffjax-python",
        default=os.path.join(REPO, ".venv", "bin", "python"),
        help="the diffjax venv's python, for the comparison",
    )
    args = parser.parse_args()
    if args.compare:
        return compare(args.compare)
    with tempfile.TemporaryDirectory(prefix="inception-fixture-") as workdir:
        make_fixture(workdir)
        return subprocess.call(
            [args.diffjax_python, os.path.abspath(__file__), "--compare", workdir], cwd=REPO
        )


if __name__ == "__main__":
    sys.exit(main())
