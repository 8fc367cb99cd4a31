"""The documentation: the MkDocs site builds with --strict, loads nothing from outside, lists every config key;
the README stays a short landing page whose relative links all resolve."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import unavailable

from pspnet.config import all_keys

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXTERNAL_LOADS = ("fonts.googleapis", "fonts.gstatic", "googletagmanager")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once for this module with `mkdocs build --strict` (every warning is an error)."""
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module) is None:
            unavailable(f"the docs build needs {module}: pip install -e '.[docs]'")
    site_dir = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-4000:]}{result.stderr[-8000:]}"
    return site_dir


def test_site_builds_strict(site):
    for page in ("index.html", "configuration.html", "api/checkpoint.html", "api/models.html"):
        assert (site / page).is_file(), page
    api = (site / "api" / "checkpoint.html").read_text(encoding="utf-8")
    assert 'id="pspnet.checkpoint.load_model"' in api  # mkdocstrings rendered the module's members


def test_site_makes_no_external_requests(site):
    for path in site.rglob("*"):
        if path.suffix in (".html", ".js", ".css") and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            for needle in EXTERNAL_LOADS:
                assert needle not in text, f"{path.relative_to(site)} refers to {needle}"


def test_configuration_page_lists_every_key(site):
    page = html.unescape((site / "configuration.html").read_text(encoding="utf-8"))
    missing = [key for key in all_keys() if f"<code>{key}</code>" not in page]
    assert not missing, f"keys missing from the configuration page: {missing}"


def test_readme_is_a_landing_page():
    size = README.stat().st_size
    assert size < 12 * 1024, f"README.md is {size} bytes: move reference material into docs/"


def test_readme_relative_links_resolve():
    text = README.read_text(encoding="utf-8")
    links = [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]
    assert links, "the README links to no page of docs/"
    broken = []
    for target in links:
        path = target.split("#", 1)[0]
        if path and not (README.parent / path).exists():
            broken.append(target)
    assert not broken, f"README.md links to missing files: {broken}"
