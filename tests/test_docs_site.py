"""The documentation site builds in strict mode (mkdocs.yml): a broken link or anchor, a
missing cross-reference or a docstring that does not parse fails it. Nothing is fetched."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    site_dir = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # mkdocs-material's notice on stderr
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return site_dir


def test_the_site_has_its_pages(site: pathlib.Path):
    for page in ("index.html", "concepts/processes/index.html", "training/index.html"):
        assert (site / page).is_file(), page
    losses = (site / "reference/losses/index.html").read_text(encoding="utf-8")
    assert 'id="diffjax.losses.denoising_loss"' in losses
    results = (site / "benchmarks/RESULTS/index.html").read_text(encoding="utf-8")
    assert "../../fashion_mnist_fd_vs_steps.png" in results  # its link into docs/, rewritten
    for notebook in pathlib.Path(__file__).parents[1].glob("colab/*.ipynb"):
        page = (site / f"notebooks/{notebook.stem}/index.html").read_text(encoding="utf-8")
        assert "jp-Notebook" in page and "data:image/png" in page, notebook.name


def test_the_reference_documents_every_top_level_name(site: pathlib.Path):
    import diffjax

    page = (site / "reference/diffjax/index.html").read_text(encoding="utf-8")
    missing = [
        name
        for name in diffjax.__all__
        if f'id="diffjax.{name}"' not in page and f"dj.{name}</code>" not in page
    ]
    assert not missing, missing
