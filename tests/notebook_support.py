"""What the notebook tests share: reading a notebook's code cells, the offline Fashion-MNIST
slice, the small-setting environment and the runner (tests/test_notebooks.py's module
docstring). A notebook's run test lives in tests/test_notebooks.py or in a
``tests/test_notebook_<stem>.py`` of its own; the fixtures ``fashion_mnist_slice`` and
``notebook_env`` are tests/conftest.py's."""

from __future__ import annotations

import ast
import json
import pathlib
import struct
import sys

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
COLAB_DIR = REPO_ROOT / "colab"
DEBIAN_IDX_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
NUM_TRAIN_IMAGES, NUM_TEST_IMAGES = 512, 128
NOTEBOOKS = sorted(COLAB_DIR.glob("*.ipynb"))
# What the public API (diffjax, diffjax.models, diffjax.metrics, ...) wraps: not for notebooks.
INTERNAL_MODULES = ("diffjax.training", "diffjax.cli", "diffjax.images")
# The Colab form field of the install cell, and how it runs pip.
REPO_URL_FIELD = 'DIFFJAX_REPO_URL = ""  #@param {type:"string"}'
PIP_INSTALL = [sys.executable, "-m", "pip", "install", "-q"]


def code_cells(path: pathlib.Path) -> list[str]:
    """The source of each code cell, without its shell (``!``) and magic (``%``) lines."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    cells = []
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).splitlines()
        cells.append("\n".join(line for line in lines if not line.lstrip().startswith(("!", "%"))))
    return cells


def imported_modules(source: str) -> set[str]:
    """The modules the import statements of ``source`` name (``from a import b``: a and a.b)."""
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def write_idx(path: pathlib.Path, array: np.ndarray) -> None:
    """Writes an uncompressed uint8 IDX file (the reader recognises gzip by content)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, np.uint8).tobytes())


def run_notebook(path: pathlib.Path, after_cell=None) -> dict:
    """Executes the code cells in order in one namespace; ``after_cell(index, namespace)``."""
    namespace: dict = {"__name__": "__main__"}
    for index, source in enumerate(code_cells(path)):
        exec(compile(source, f"{path.name}, code cell {index}", "exec"), namespace)
        if after_cell is not None:
            after_cell(index, namespace)
    return namespace
