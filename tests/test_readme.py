"""The README must stay true: its code runs, its two commands are CI's, its size stays a README's,
and the layout in docs/architecture.md exists.

Conventions of README.md that this file relies on:

- The first two fenced blocks are ```bash blocks: the install-and-train command and the test
  command. ``.ci/run`` runs the test command verbatim, on the line after its comment
  ``# The README's test command, verbatim:``.
- Every ```python block runs, in order, in one shared namespace, on CPU in well under ten seconds
  (tiny shapes, no downloads, no training). A block whose info string is ``python norun`` (or
  ``python-norun``) needs something a test machine lacks, such as a trained run, a dataset or
  weight files. It is only compiled, never run.
- The block under ``## Layout`` of docs/architecture.md lists one entry per line: indentation
  (two spaces a level) nests an entry in the folder above it, and the entry is the text before
  the first run of two spaces, either one path or several names separated by ", ". Every entry
  must exist in the repository.
"""

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
ARCHITECTURE = REPO / "docs" / "architecture.md"
README_WORDS = 1500

INSTALL_AND_TRAIN = (
    "apt-get update && apt-get install -y dataset-fashion-mnist; python3 -m venv .venv && "
    ".venv/bin/pip install -e . && .venv/bin/python -m diffjax.train --config "
    "configs/fashion_mnist.py --workdir runs/fmnist"
)
CI_MARKER = "# The README's test command, verbatim:"

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)


def fenced_blocks(text: str) -> list[tuple[str, str, int]]:
    """``(info string, body, line number)`` of every fenced code block, in order."""
    return [
        (match.group(1).strip(), match.group(2), text.count("\n", 0, match.start()) + 1)
        for match in _FENCE.finditer(text)
    ]


def is_norun(info: str) -> bool:
    words = info.split()
    return info == "python-norun" or (words[:1] == ["python"] and "norun" in words[1:])


def python_blocks(text: str) -> list[tuple[str, int, bool]]:
    """``(source, line number, runs)`` of every Python block."""
    return [
        (body, line, not is_norun(info))
        for info, body, line in fenced_blocks(text)
        if info.split()[:1] == ["python"] or info == "python-norun"
    ]


def layout_paths(text: str) -> list[str]:
    """The repository paths that the ``## Layout`` block lists (see the module docstring)."""
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    blocks = fenced_blocks(section)
    assert blocks, "the Layout section has no code block"
    paths, parents = [], []  # parents: (indent, folder) of the enclosing folders
    for line in blocks[0][1].splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        entry = re.split(r" {2,}", line.strip(), maxsplit=1)[0]
        while parents and parents[-1][0] >= indent:
            parents.pop()
        prefix = parents[-1][1] if parents else ""
        names = [name.strip() for name in entry.split(", ")]
        paths += [prefix + name for name in names]
        if len(names) == 1 and names[0].endswith("/"):
            parents.append((indent, prefix + names[0]))
    return paths


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


def test_the_two_commands_come_first_and_ci_runs_the_test_command_verbatim(readme):
    (info_1, body_1, _), (info_2, body_2, _) = fenced_blocks(readme)[:2]
    assert (info_1, info_2) == ("bash", "bash")
    assert body_1.strip() == INSTALL_AND_TRAIN
    ci_lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    test_command = ci_lines[ci_lines.index(CI_MARKER) + 1]
    assert body_2.strip() == test_command
    # CI's set-up matches the first command's: the same apt package and venv.
    ci = "\n".join(ci_lines)
    assert "apt-get install -y -qq dataset-fashion-mnist" in ci
    assert "python3 -m venv .venv" in ci


def test_the_readme_stays_short_and_links_pages_that_exist(readme):
    assert len(readme.split()) <= README_WORDS
    for target in re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)", readme):
        assert (REPO / target).exists(), target


def test_every_path_of_the_layout_exists():
    paths = layout_paths(ARCHITECTURE.read_text(encoding="utf-8"))
    assert len(paths) > 30 and "diffjax/samplers/runner.py" in paths
    missing = [path for path in paths if not (REPO / path).exists()]
    assert not missing, f"docs/architecture.md's Layout lists paths that do not exist: {missing}"
    for path in paths:
        assert (REPO / path).is_dir() == path.endswith("/"), f"{path}: folder or file?"


def test_norun_blocks_are_valid_python(readme):
    for index, (source, line, runs) in enumerate(python_blocks(readme)):
        if not runs:
            compile(source, f"README.md:{line} (python block {index})", "exec")


def run_python_blocks(text: str, name: str) -> int:
    """Runs the Python blocks of a Markdown text in order in one namespace; returns how many ran.
    A failing block fails the test naming its file, line and first line."""
    namespace = {"__name__": name}
    ran = 0
    for index, (source, line, runs) in enumerate(python_blocks(text)):
        if not runs:
            continue
        first = source.strip().splitlines()[0]
        code = compile(source, f"{name}:{line}", "exec")
        try:
            exec(code, namespace)
        except Exception as error:
            pytest.fail(
                f"{name} python block {index} (line {line}, starting {first!r}) failed: "
                f"{type(error).__name__}: {error}"
            )
        ran += 1
    return ran


def test_python_blocks_run_in_order_in_one_namespace(readme, unoptimized):
    assert run_python_blocks(readme, "README.md") >= 1
