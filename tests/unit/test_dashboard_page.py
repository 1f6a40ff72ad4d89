"""The dashboard page from its template, without a browser: escaping, the data block, packaging.

``tests/integration/test_dashboard.py`` renders a real table's page in headless Chromium.
"""

from __future__ import annotations

import fnmatch
import html
import json
import re
import tomllib
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from embedpipe import dashboard
from embedpipe.checks import registry

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "<script>alert(1)</script></script><!-- \"double\" 'single' & <img src=x onerror=alert(2)>"
DATA_BLOCK = re.compile(r'<script id="embedpipe-figures" type="application/json">(.*?)</script>', re.S)


def hostile_data() -> dashboard.DashboardData:
    d = dashboard.DashboardData(table=f"docs{HOSTILE}", generated_at="2024-05-01T00:00:00+00:00")
    d.runs = [
        {
            "started_at": datetime(2024, 5, 1, tzinfo=UTC),
            "status": "completed",
            "chunks_embedded": 3,
            "docs_seen": 2,
            "chunks_per_s": 1.5,
            "duration_s": 2.0,
        }
    ]
    check = {"status": "pass", "severity": "fail", "statistic": 0.0, "threshold": 0.0, "at": 1}
    d.checks = [
        {**check, "check": "index_recall", "table_version": 1, "detail": HOSTILE},
        {**check, "check": "integrity", "table_version": 1, "detail": ""},
        {**check, "check": "retired_check", "table_version": 1, "detail": ""},
        {**check, "check": "mmd", "table_version": 2, "detail": ""},
    ]
    d.seq_lengths, d.max_seq_length = [10, 12, 300], 256
    d.map_points = {"x": [0.0, 1.0], "y": [1.0, 0.0], "group": ["evil", "ok"], "doc_id": ["evil/a", "ok/b"]}
    d.map_points["text"] = [f"text {HOSTILE} \u2028 é", "plain"]
    tags = ["serving", HOSTILE]
    d.versions = [{"version": 2, "timestamp": datetime(2024, 5, 1), "tags": tags, "run_id": None}]
    d.served_version, d.model = 2, "m"
    d.indexes = [
        {
            "name": "vector_idx",
            "column": "vector",
            "type": "IVF_HNSW_SQ",
            "params": {"num_partitions": 4, "nprobes": 2, "refine_factor": None},
            "indexed_rows": 900,
            "unindexed_rows": 12,
            "trained_at_version": 2,
            "recall": 0.98,
        },
        {
            "name": HOSTILE,
            "column": "text",
            "type": "FTS",
            "params": {"base_tokenizer": HOSTILE},
            "indexed_rows": 912,
            "unindexed_rows": 0,
            "trained_at_version": None,
            "recall": None,
        },
    ]
    d.rejects = [{"at": datetime(2024, 5, 1), "path": f"evil/{HOSTILE}.txt", "reason": HOSTILE}]
    return d


def figures(page: str) -> dict:
    blocks = DATA_BLOCK.findall(page)
    assert len(blocks) == 1
    return json.loads(blocks[0])


def test_hostile_document_text_is_escaped_everywhere() -> None:
    page = dashboard.render(hostile_data(), refresh_s=30)
    assert page.startswith("<!doctype html>") and page.endswith("</html>\n")
    assert "alert(1)" in page and "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # in the title, header and tables
    assert "&#34;double&#34; &#39;single&#39; &amp;" in page  # quotes too: safe inside attributes
    assert '<meta http-equiv="refresh" content="30">' in page
    # the indexes table: the rows of `embedpipe index`, escaped like everything else
    assert "<td>IVF_HNSW_SQ</td><td>nprobes=2, num_partitions=4</td><td>900</td><td>12</td><td>2</td>" in page
    assert "<td>0.980</td>" in page and "<td>FTS</td><td>base_tokenizer=&lt;script&gt;" in page
    block = DATA_BLOCK.search(page)
    assert block is not None
    # The data block holds no markup at all: < > & ' are \u escapes, so nothing can end it early.
    assert not set("<>&'") & set(block.group(1))
    assert "\u2028" not in block.group(1)
    figs = figures(page)
    assert list(figs) == ["runs", "checks", "lengths", "map"]  # built order, not sorted
    hover = [t for trace in figs["map"]["data"] for t in trace["hovertext"]]
    assert html.escape(f"evil/a: text {HOSTILE} \u2028 é") in hover  # escaped once more for plotly
    cells = [c for row in figs["checks"]["data"][0]["hovertext"] for c in row]
    assert any(html.escape(HOSTILE)[:60] in c for c in cells)


def test_page_without_data_shows_the_empty_states() -> None:
    page = dashboard.render(dashboard.DashboardData(table="t", generated_at="now"))
    assert figures(page) == {}
    assert "http-equiv" not in page and 'class="chart"' not in page
    for empty in (
        "No runs recorded yet.",
        "No chunks yet.",
        "No table yet.",
        "No rejects.",
        "No indexes: searches scan the table exactly.",
    ):
        assert f'<p class="empty">{empty}</p>' in page
    assert "table t · serving version None · model  · 0 runs · generated now" in page


def test_checks_heatmap_rows_follow_the_check_registry() -> None:
    figs = figures(dashboard.render(hostile_data()))
    rows = figs["checks"]["data"][0]["y"]
    # plotly draws the first row at the bottom: top to bottom is the registry's order, then names
    # the registry no longer knows
    assert rows[::-1] == ["integrity", "mmd", "index_recall", "retired_check"]
    assert list(registry.CHECKS).index("mmd") < list(registry.CHECKS).index("index_recall")


def test_template_ships_as_package_data() -> None:
    template = resources.files("embedpipe").joinpath("templates", "dashboard.html")
    assert template.is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["embedpipe"]
    assert any(fnmatch.fnmatch("templates/dashboard.html", g) for g in globs), globs
    assert any(r.startswith("jinja2") for r in config["project"]["dependencies"])
