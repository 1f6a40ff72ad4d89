"""The docs site builds offline with MkDocs in strict mode, so a broken link or anchor fails the suite,
and every relative link of the README lands on a file (and heading) that exists.

MkDocs is in the ``dev`` extras: these tests run, never skip.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
import yaml
from mkdocs.commands.build import build
from mkdocs.config import load_config
from mkdocs.exceptions import Abort

from tests.helpers import ROOT

_LINK = re.compile(r"(?<!!)\[[^\]\n]+\]\(([^)\s]+)\)")


def build_site(config_file: Path, site_dir: Path) -> None:
    """``mkdocs build --strict`` in this process; raises ``Abort`` on any warning."""
    build(load_config(config_file=str(config_file), strict=True, site_dir=str(site_dir)))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build_site(ROOT / "mkdocs.yml", out)
    return out


def test_docs_build_strict_and_offline(site: Path) -> None:
    pages = {p.parent.name for p in site.rglob("index.html")}
    assert {"cli", "configuration", "checks", "backends", "operations", "benchmarks"} <= pages
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?://", html), page  # no CDN
        assert "\\|" not in html, page  # GitHub's escaped pipes in table code spans read as pipes
    ops = (site / "operations" / "index.html").read_text(encoding="utf-8")
    assert "deploy/prefect.yaml" in ops and "../deploy/prefect.yaml" not in ops  # repository links as text


def test_readme_links_land_on_files_and_headings(site: Path) -> None:
    links = _LINK.findall((ROOT / "README.md").read_text(encoding="utf-8"))
    local = [u for u in links if not re.match(r"[a-z][a-z0-9+.-]*:", u)]
    assert any(u.startswith("docs/") for u in local)
    for url in local:
        path, _, anchor = url.partition("#")
        assert (ROOT / path).exists(), f"README links to {url}, which does not exist"
        if anchor:
            assert path.startswith("docs/") and path.endswith(".md"), url
            html = (site / path.removeprefix("docs/").removesuffix(".md") / "index.html").read_text()
            assert f'id="{anchor}"' in html, f"README links to {url}: no such heading"


@pytest.mark.parametrize(
    ("link", "complaint"),
    [
        ("[a](other.md#no-such-heading)", "no-such-heading"),
        ("[a](missing.md)", "missing.md"),
        ("[a](../no/such/file.yaml)", "not a file of the repository"),
    ],
)
def test_a_broken_link_fails_the_build(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, link: str, complaint: str
) -> None:
    """The strict settings bite: a two-page copy of the site with one broken link does not build."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config |= {"nav": ["index.md", "other.md"], "hooks": [str(ROOT / "docs" / "mkdocs_hooks.py")]}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "other.md").write_text("# Other\n\n## A heading\n")
    (docs / "index.md").write_text("# Index\n\n[fine](other.md#a-heading)\n")
    build_site(tmp_path / "mkdocs.yml", tmp_path / "ok")  # the same site without the broken link builds

    (docs / "index.md").write_text(f"# Index\n\n[fine](other.md#a-heading) {link}\n")
    shutil.rmtree(tmp_path / "ok")
    with caplog.at_level(logging.WARNING, logger="mkdocs"), pytest.raises(Abort, match="strict mode"):
        build_site(tmp_path / "mkdocs.yml", tmp_path / "broken")
    assert complaint in caplog.text
