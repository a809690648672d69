"""Reference LPIPS distances from the ``lpips`` package; a check of diffjax's port on real files.

Run with the PyTorch peer venv (it needs torch, torchvision and lpips; no network)::

    benchmarks/.peers-venv/bin/python benchmarks/metrics_reference/make_lpips_fixture.py

For each net (``alex``, ``vgg``) it builds ``lpips.LPIPS(net=net, pretrained=True,
pnet_rand=True)``: torchvision's trunk with random initialisation, so nothing is downloaded, and
the v0.1 heads from the lpips wheel. Then

1. it loads the seeded random backbone and random heads of tests/lpips_reference.py and computes
   the distances of 4 pairs of 32x32 and 2 pairs of 64x64 images; the images (uint8), the seeds,
   digests of the weights and the distances go to tests/fixtures/lpips_reference.npz, which
   tests/test_lpips.py checks diffjax against;
2. it computes the distances again with the same random backbone and the wheel's real heads;
3. it writes each random backbone into a complete torchvision state dict (the classifier too,
   AlexNet in torch's legacy format and VGG16 in the zip format) and the random heads with
   ``torch.save``, and runs this file again in the diffjax venv (``--compare``, which imports no
   torch): diffjax reads those files and the wheel's real heads files with
   ``diffjax.weights.read_torch_state_dict`` (the real heads after checking their published
   SHA-256), loads them through the LPIPS key tables, and prints the largest relative error
   against lpips per net, for random and for real heads. It fails above 1e-4.

The real heads and the backbone files stay in a temporary folder; the fixture holds only images,
seeds, digests and distances.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests"))

import lpips_reference  # noqa: E402  (tests/lpips_reference.py, NumPy only)

FIXTURE = os.path.join(REPO, "tests", "fixtures", "lpips_reference.npz")
NETS = ("alex", "vgg")
BACKBONE_SEED = 0
HEADS_SEED = 1
IMAGE_SEED = 2
SIZES = {32: 4, 64: 2}  # image side -> number of pairs
MAX_RELATIVE_ERROR = 1e-4


def _smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float image in [0, 1]: a few coloured plane waves plus a little pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.full((size, size, 3), 0.5)
    for _ in range(6):
        fy, fx = rng.uniform(-4.0, 4.0, 2)
        wave = np.sin(2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 2 * np.pi))
        image += rng.uniform(-0.2, 0.2, 3) * wave[..., None]
    return np.clip(image + rng.normal(0.0, 0.02, image.shape), 0.0, 1.0)


def _box_blur(image: np.ndarray) -> np.ndarray:
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = image.shape[:2]
    return sum(padded[i : i + height, j : j + width] for i in range(3) for j in range(3)) / 9.0


def _image_pairs(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """uint8 [count, 2, size, size, 3]: an image and a distorted or unrelated second image."""
    distortions = (
        lambda a: _smooth_image(rng, size),  # an unrelated image
        lambda a: a + rng.normal(0.0, 0.05, a.shape),  # noise
        lambda a: np.roll(a, 2, axis=1),  # a 2-pixel shift
        lambda a: 0.5 + 0.7 * (a - 0.5),  # lower contrast
    )
    if size > 32:
        distortions = (distortions[1], _box_blur)
    pairs = []
    for k in range(count):
        first = _smooth_image(rng, size)
        second = distortions[k % len(distortions)](first)
        pairs.append([first, np.clip(second, 0.0, 1.0)])
    return np.round(np.asarray(pairs) * 255.0).astype(np.uint8)


def _lpips_state_dict(model, backbone: dict, heads: dict) -> dict:
    """The full ``lpips.LPIPS`` state dict with ``backbone`` (torchvision names) and ``heads``."""
    import torch

    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("net.slice"):
            # `net.slice<s>.<i>.<name>` is torchvision's `features.<i>.<name>`.
            _, _, index, name = key.split(".")
            source = backbone[f"features.{index}.{name}"]
        elif key.startswith("lin"):
            # `lin<k>.model.1.weight`, and its alias `lins.<k>.model.1.weight` (a ModuleList).
            k = key.split(".")[1] if key.startswith("lins.") else key.split(".")[0][len("lin") :]
            source = heads[f"lin{k}.model.1.weight"]
        else:
            state[key] = value  # the scaling layer's constants
            continue
        state[key] = torch.as_tensor(np.asarray(source))
    return state


def _distances(model, images: np.ndarray) -> np.ndarray:
    import torch

    x = torch.from_numpy(lpips_reference.signed_unit_images(images)).permute(0, 1, 4, 2, 3)
    with torch.no_grad():
        return model(x[:, 0].contiguous(), x[:, 1].contiguous()).reshape(-1).numpy()


def _write_backbone(net: str, backbone: dict, path: str) -> None:
    """A complete torchvision state dict (classifier included) with the random ``features``."""
    import torch
    import torchvision

    torch.manual_seed(BACKBONE_SEED)
    architecture = torchvision.models.alexnet if net == "alex" else torchvision.models.vgg16
    state = architecture().state_dict()
    features = {key for key in state if key.startswith("features.")}
    if features != set(backbone):
        raise RuntimeError(f"tests/lpips_reference.py's {net} keys differ from torchvision's.")
    for key in features:
        state[key] = torch.from_numpy(backbone[key])
    torch.save(state, path, _use_new_zipfile_serialization=net != "alex")


def _write_heads(model, heads: dict, path: str) -> None:
    """The random heads as lpips' own files hold them (the module's state-dict OrderedDict)."""
    import torch

    state = model.state_dict()
    for key in [key for key in state if not key.startswith("lin") or key.startswith("lins.")]:
        del state[key]
    for key in state:
        state[key] = torch.from_numpy(heads[key])
    torch.save(state, path, _use_new_zipfile_serialization=False)


def make_fixture(workdir: str) -> dict:
    """Runs the lpips side; writes the fixture and the files for ``--compare`` into ``workdir``."""
    import lpips
    import torch

    torch.set_num_threads(2)
    # lpips asks torchvision for `pretrained=False` models, a deprecated spelling of weights=None.
    warnings.filterwarnings("ignore", category=UserWarning, module="torchvision.models._utils")
    rng = np.random.default_rng(IMAGE_SEED)
    images = {size: _image_pairs(rng, size, count) for size, count in SIZES.items()}
    fixture = {
        "backbone_seed": np.int64(BACKBONE_SEED),
        "heads_seed": np.int64(HEADS_SEED),
        "image_seed": np.int64(IMAGE_SEED),
        "versions": np.array(f"torch {torch.__version__}, lpips {_version('lpips')}"),
        **{f"images_{size}": value for size, value in images.items()},
    }
    compare = {"nets": {}}
    heads_dir = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1")
    for net in NETS:
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
        real_heads_path = os.path.join(heads_dir, f"{net}.pth")
        real_heads = {
            key: value.numpy()
            for key, value in torch.load(real_heads_path, map_location="cpu").items()
        }
        backbone = lpips_reference.random_backbone_state_dict(net, BACKBONE_SEED)
        heads = lpips_reference.random_heads_state_dict(net, HEADS_SEED)
        fixture[f"{net}_backbone_digest"] = np.array(lpips_reference.state_dict_digest(backbone))
        fixture[f"{net}_heads_digest"] = np.array(lpips_reference.state_dict_digest(heads))
        for label, head_weights in (("random_heads", heads), ("real_heads", real_heads)):
            model.load_state_dict(_lpips_state_dict(model, backbone, head_weights), strict=True)
            for size, pairs in images.items():
                fixture[f"{net}_{label}_{size}"] = _distances(model, pairs)
        backbone_path = os.path.join(workdir, f"{net}_backbone.pth")
        heads_path = os.path.join(workdir, f"{net}_random_heads.pth")
        _write_backbone(net, backbone, backbone_path)
        _write_heads(model, heads, heads_path)
        compare["nets"][net] = {
            "backbone": backbone_path,
            "random_heads": heads_path,
            "real_heads": real_heads_path,
        }
    os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
    np.savez_compressed(FIXTURE, **fixture)
    compare["fixture"] = FIXTURE
    with open(os.path.join(workdir, "compare.json"), "w") as f:
        json.dump(compare, f)
    return fixture


def _version(package: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(package)


def compare(workdir: str) -> float:
    """The diffjax side: loads the written files and prints the relative errors (no torch)."""
    import jax

    from diffjax.metrics.lpips import (
        lpips_distance,
        lpips_variables_from_state_dicts,
        lpips_weights_files,
    )
    from diffjax.weights import read_torch_state_dict, resolve_weights

    with open(os.path.join(workdir, "compare.json")) as f:
        manifest = json.load(f)
    fixture = np.load(manifest["fixture"])
    worst = 0.0
    print(f"{'net':5} {'heads':13} {'size':>5} {'max rel. error':>15}  lpips distances")
    for net, files in manifest["nets"].items():
        backbone = read_torch_state_dict(files["backbone"])
        # The wheel's heads must be the published file: resolve_weights checks the full SHA-256.
        real_heads_path = resolve_weights(
            lpips_weights_files(net).heads, files["real_heads"], download=False
        )
        for label, heads_path in (
            ("random_heads", files["random_heads"]),
            ("real_heads", real_heads_path),
        ):
            variables = lpips_variables_from_state_dicts(
                backbone, read_torch_state_dict(heads_path), net
            )
            for size in SIZES:
                pairs = lpips_reference.signed_unit_images(fixture[f"images_{size}"])
                got = np.asarray(
                    jax.jit(lpips_distance, static_argnames="net")(
                        variables, pairs[:, 0], pairs[:, 1], net=net
                    )
                )
                want = fixture[f"{net}_{label}_{size}"]
                error = float(np.max(np.abs(got - want) / np.abs(want)))
                worst = max(worst, error)
                distances = np.array2string(want, precision=4)
                print(f"{net:5} {label:13} {size:5d} {error:15.2e}  {distances}")
    print(f"largest relative error {worst:.2e} (target <= {MAX_RELATIVE_ERROR:.0e})")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", metavar="DIR", help="(internal) run the diffjax side on DIR")
    parser.add_argument(
        "--diffjax-python",
        default=os.path.join(REPO, ".venv", "bin", "python"),
        help="the diffjax venv's interpreter for the comparison",
    )
    args = parser.parse_args()
    if args.compare:
        sys.path.insert(0, REPO)
        if compare(args.compare) > MAX_RELATIVE_ERROR:
            sys.exit(1)
        return
    with tempfile.TemporaryDirectory(prefix="lpips-fixture-") as workdir:
        make_fixture(workdir)
        print(f"wrote {FIXTURE} ({os.path.getsize(FIXTURE) / 1024:.0f} KiB)")
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        result = subprocess.run(
            [args.diffjax_python, os.path.abspath(__file__), "--compare", workdir], env=env
        )
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
