"""Runs the Colab notebooks in their small setting and writes copies with their outputs to
docs/notebooks/, the pages the documentation site shows.

colab/ holds the notebooks without outputs (readable diffs; what Colab opens). A reader of the
site should see the plots and grids without running anything, so this script executes each one
top to bottom in a Jupyter kernel (nbclient), on the CPU, with ``DIFFJAX_NOTEBOOK_SMALL=1``, the
offline 512/128-image Fashion-MNIST slice the tests use and the tiny random-weight Stable
Diffusion folder of tests/fixtures, on eight CPU devices as the tests do, and saves the executed
notebook under the same name. The
numbers and pictures are the small setting's (a few training steps), which each copy says in a
first markdown cell. tests/test_notebooks.py checks that every copy holds its notebook's code
exactly, so a changed notebook needs a rerun:

    python tools/render_notebooks.py                     # every notebook
    python tools/render_notebooks.py custom_model.ipynb  # one

Each copy must stay under 1 MB.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import pathlib
import sys
import tempfile
import time

import nbformat
from nbclient import NotebookClient
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
COLAB = REPO / "colab"
RENDERED = REPO / "docs" / "notebooks"
MAX_BYTES = 1_000_000
MAX_IMAGE_WIDTH = 720
NOTICE = (
    "*Rendered by `tools/render_notebooks.py`: the outputs below are this notebook's small "
    "setting (`DIFFJAX_NOTEBOOK_SMALL=1`: a few training steps on a 512-image slice of "
    "Fashion-MNIST, on a CPU). The notebook itself is `colab/{name}`; how to run it on Colab: "
    "[the notebooks page](../notebooks.md).*"
)

sys.path.insert(0, str(REPO / "tests"))
from notebook_support import DEBIAN_IDX_DIR, NUM_TEST_IMAGES, NUM_TRAIN_IMAGES, write_idx  # noqa: E402

from diffjax.data.datasets.fashion_mnist import IDX_FILES, read_idx  # noqa: E402


def fashion_mnist_slice(folder: pathlib.Path) -> pathlib.Path:
    """The tests' offline Fashion-MNIST slice (the first 512 train and 128 test images)."""
    sizes = {"train": NUM_TRAIN_IMAGES, "test": NUM_TEST_IMAGES}
    for role, name in IDX_FILES.items():
        split = role.split("_")[0]
        write_idx(folder / name, read_idx(DEBIAN_IDX_DIR / name)[: sizes[split]])
    return folder


def compact_png(data: str) -> str:
    """The base64 PNG at most ``MAX_IMAGE_WIDTH`` wide, in 64 colours (plots and sample grids
    read the same; the copies stay small), or as it was where that is not smaller."""
    image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    if image.width > MAX_IMAGE_WIDTH:
        height = round(image.height * MAX_IMAGE_WIDTH / image.width)
        image = image.resize((MAX_IMAGE_WIDTH, height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.quantize(64).save(buffer, format="PNG", optimize=True)
    compact = base64.b64encode(buffer.getvalue()).decode("ascii")
    return compact if len(compact) < len(data) else data


def render(path: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
    """Executes ``path`` in ``workdir`` and writes the copy with its outputs; returns it."""
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=3600, kernel_name="python3", resources={"metadata": {"path": workdir}}
    ).execute()
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                output["data"]["image/png"] = compact_png(output["data"]["image/png"])
    notice = nbformat.v4.new_markdown_cell(NOTICE.format(name=path.name))
    notebook.cells.insert(0, notice)
    target = RENDERED / path.name
    nbformat.write(notebook, target)
    size = target.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{target} is {size:,} bytes, over the {MAX_BYTES:,} allowed.")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks in colab/ (default: all)")
    names = parser.parse_args().names or sorted(p.name for p in COLAB.glob("*.ipynb"))
    unknown = [name for name in names if not (COLAB / name).is_file()]
    if unknown:
        raise SystemExit(f"not in colab/: {unknown}")
    RENDERED.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        (scratch / "idx").mkdir()
        os.environ.update(
            DIFFJAX_NOTEBOOK_SMALL="1",
            DIFFJAX_FASHION_MNIST_DIR=str(fashion_mnist_slice(scratch / "idx")),
            TFDS_DATA_DIR=str(scratch / "tfds"),
            # The eight CPU devices the tests run the notebooks on (tests/conftest.py).
            XLA_FLAGS="--xla_force_host_platform_device_count=8",
            DIFFJAX_SD_DIR=str(REPO / "tests" / "fixtures" / "tiny_sd"),
            JAX_PLATFORMS="cpu",
        )
        for name in names:
            workdir = scratch / pathlib.Path(name).stem
            workdir.mkdir()
            start = time.perf_counter()
            target = render(COLAB / name, workdir)
            seconds = time.perf_counter() - start
            print(f"{target.relative_to(REPO)}: {target.stat().st_size:,} bytes, {seconds:.0f} s")


if __name__ == "__main__":
    main()
