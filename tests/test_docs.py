"""The pages of docs/ stay true: every Python block runs (in order, one namespace per page) or,
marked ``norun``, at least compiles; the relative links point at files that exist."""

import pathlib
import re

import pytest
from test_readme import python_blocks, run_python_blocks

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.rglob("*.md"))


def test_the_pages_are_there():
    names = {page.relative_to(DOCS).as_posix() for page in PAGES}
    assert {"api.md", "extending.md", "training.md", "cli.md", "architecture.md"} <= names
    assert {"index.md", "concepts/processes.md", "reference/diffjax.md"} <= names


@pytest.mark.parametrize("page", [page.relative_to(DOCS).as_posix() for page in PAGES])
def test_python_blocks_run(page, unoptimized):
    text = (DOCS / page).read_text(encoding="utf-8")
    for index, (source, line, runs) in enumerate(python_blocks(text)):
        if not runs:
            compile(source, f"docs/{page}:{line} (python block {index})", "exec")
    run_python_blocks(text, f"docs/{page}")


@pytest.mark.parametrize("page", [page.relative_to(DOCS).as_posix() for page in PAGES])
def test_relative_links_exist(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        path = (DOCS / page).parent / target
        assert path.exists(), f"docs/{page} links to {target}, which does not exist"
