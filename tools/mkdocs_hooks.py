"""mkdocs hooks: pages that live outside docs/ join the site at their repository paths.

``benchmarks/RESULTS.md`` stays where it is (GitHub shows it there); this hook adds it to the
site as ``benchmarks/RESULTS.md``. A page's relative links are written for
GitHub, that is relative to the page's place in the repository (``docs/training.md`` links
``../benchmarks/RESULTS.md``); before rendering, each link that leaves docs/ is rewritten to the
same file's place in the site. A link to a repository file the site does not hold is left as
written, so ``mkdocs build --strict`` fails on it.
"""

import pathlib
import posixpath
import re

import mkdocs.plugins
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

REPO = pathlib.Path(__file__).resolve().parents[1]

OUTSIDE_PAGES = ("benchmarks/RESULTS.md",)
"""Repository files outside docs/ that the site shows, at the same path (nav names them)."""

_LINK = re.compile(r"(\]\(|<img src=\")([^)\"#\s:]+)")
"""A Markdown link's or an <img> tag's relative target (no scheme, no anchor)."""


def repo_path(src_uri: str, docs_dir: str) -> str:
    """The repository path of a site file (``training.md`` -> ``docs/training.md``)."""
    if src_uri in OUTSIDE_PAGES:
        return src_uri
    return posixpath.join(pathlib.Path(docs_dir).resolve().relative_to(REPO).as_posix(), src_uri)


def site_path(path: str, docs_dir: str) -> str | None:
    """The site path of a repository file, or None when the site does not hold it."""
    if path in OUTSIDE_PAGES:
        return path
    docs = pathlib.Path(docs_dir).resolve().relative_to(REPO).as_posix() + "/"
    return path.removeprefix(docs) if path.startswith(docs) else None


# Before mkdocs-jupyter's on_files, which turns the .ipynb files it is given into pages.
@mkdocs.plugins.event_priority(100)
def on_files(files: Files, config: MkDocsConfig) -> Files:
    for path in OUTSIDE_PAGES:
        files.append(
            File(
                path,
                src_dir=str(REPO),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    here = repo_path(page.file.src_uri, config.docs_dir)

    def relink(match: re.Match[str]) -> str:
        prefix, target = match.groups()
        in_repo = posixpath.normpath(posixpath.join(posixpath.dirname(here), target))
        in_site = site_path(in_repo, config.docs_dir)
        if in_site is None:
            return match.group(0)
        return prefix + posixpath.relpath(in_site, posixpath.dirname(page.file.src_uri) or ".")

    return _LINK.sub(relink, markdown)
