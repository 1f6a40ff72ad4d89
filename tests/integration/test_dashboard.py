"""The dashboard page in a real headless Chromium, the query examples of docs/operations.md, the artifacts.

Chromium and ChromeDriver come from Debian (``make browser`` installs them; ``.ci/run`` calls it).
"""

from __future__ import annotations

import os
import shutil
import threading
import urllib.request
from pathlib import Path

import pytest

from embedpipe import dashboard
from embedpipe.flows.sync import sync
from embedpipe.store import Store
from tests.helpers import ROOT, make_settings, write

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

ARTIFACTS = ROOT / "test-artifacts"
HOSTILE = (
    "<script>window.__pwned = 1; document.title = 'PWNED'</script><img src=x onerror=\"window.__pwned=2\">"
)


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver must be installed in CI (make browser)")
        pytest.skip("chromium/chromedriver not installed; run `make browser`")
    return browser, driver


@pytest.fixture(scope="module")
def small_db(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("dash")
    src = tmp / "src"
    for i in range(12):
        folder = ["cats", "engines", "rivers"][i % 3]
        write(src / folder / f"doc{i}.txt", f"Doc {i} about {folder}. " * 30)
    write(src / "evil" / "inject.txt", f"A hostile document. {HOSTILE} It tries to run script.")
    write(src / "evil" / "bad.bin.txt", b"\x00\x01binary")
    settings = make_settings(tmp, chunk={"tokens": 40, "overlap": 4})
    s1 = sync([str(src)], settings)
    write(src / "cats" / "doc0.txt", "Changed. " * 40)
    s2 = sync([str(src)], settings)
    store = Store(settings.store)
    assert s1.checks and s2.checks  # the checks table is written by the runs themselves
    return settings, store


def test_dashboard_renders_in_headless_chromium(small_db, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = chromium_paths()
    _, store = small_db
    page = tmp_path / "dashboard.html"
    page.write_text(dashboard.build(store), encoding="utf-8")
    html_text = page.read_text(encoding="utf-8")
    assert "<script src" not in html_text and "<link" not in html_text  # plotly.js is inlined: no CDN
    assert "<script>window.__pwned" not in html_text  # the document's script is not in the markup

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1500,1900",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        drv.get(page.as_uri())
        count_marks = (
            "return [...document.querySelectorAll('.chart')].map(c => [c.id,"
            " c.querySelectorAll('svg.main-svg .trace path, svg.main-svg .trace .point,"
            " svg.main-svg .hm image').length])"
        )
        WebDriverWait(drv, 60).until(
            lambda d: (lambda cs: len(cs) == 4 and all(n > 0 for _, n in cs))(d.execute_script(count_marks))
        )
        charts = drv.execute_script(count_marks)
        assert {c[0] for c in charts} == {"chart-runs", "chart-checks", "chart-lengths", "chart-map"}
        assert all(n > 0 for _, n in charts), charts  # every chart drew marks, not just axes
        assert drv.execute_script("return window.__pwned === undefined")
        assert drv.title != "PWNED"
        # the hostile text is in the page as data (hover text), shown as text only
        assert "window.__pwned" in drv.execute_script(
            "return document.getElementById('embedpipe-figures').textContent"
        )
        table_text = drv.execute_script("return document.body.innerText")
        assert "binary" in table_text and "serving" in table_text  # rejects and versions tables
        severe = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        ARTIFACTS.mkdir(exist_ok=True)
        drv.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    finally:
        drv.quit()


def test_dashboard_server_binds_loopback_and_rebuilds(small_db) -> None:
    _, store = small_db
    server = dashboard.serve(store, port=0)
    assert server.server_address[0] == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        with urllib.request.urlopen(url, timeout=60) as resp:
            body = resp.read().decode()
        assert resp.status == 200 and 'http-equiv="refresh"' in body and "chart-map" in body
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url + "nope", timeout=10)
    finally:
        server.shutdown()
        server.server_close()


def test_documented_queries_with_duckdb_and_polars(small_db) -> None:
    """The queries shown in docs/operations.md return the expected counts."""
    import duckdb
    import lancedb
    import polars as pl

    settings, _ = small_db
    db = lancedb.connect(settings.store.uri)
    runs = db.open_table("runs").to_arrow()  # noqa: F841 - DuckDB reads the Arrow table by name
    per_status = duckdb.sql(
        "SELECT status, count(*) AS runs, sum(chunks_embedded) AS embedded FROM runs GROUP BY status"
    ).fetchall()
    assert per_status[0][0] == "completed" and per_status[0][1] == 2
    chunks = pl.from_arrow(db.open_table("chunks").to_arrow().drop_columns(["vector"]))
    by_folder = (
        chunks.with_columns(pl.col("path").str.split("/").list.first().alias("folder"))
        .group_by("folder")
        .agg(pl.len().alias("chunks"))
        .sort("folder")
    )
    assert by_folder["folder"].to_list() == ["cats", "engines", "evil", "rivers"]
    rejects = pl.from_arrow(db.open_table("rejects").to_arrow())
    per_reason = rejects.group_by("path", "reason").agg(pl.len().alias("times")).sort("path")
    assert per_reason["path"].to_list() == ["evil/bad.bin.txt"] and per_reason["times"].to_list() == [2]


def test_cli_dashboard_file_and_serve(small_db, tmp_path: Path) -> None:
    """`embedpipe dashboard --out` writes the page; `--serve` answers on loopback until stopped."""
    import subprocess
    import sys
    import time

    settings, _ = small_db
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDPIPE_")}
    out = tmp_path / "sub" / "dash.html"
    made = subprocess.run(
        [sys.executable, "-m", "embedpipe.cli", "dashboard", "--db", settings.store.uri, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert made.returncode == 0, made.stderr
    assert "works offline" in made.stderr and out.stat().st_size > 1_000_000  # plotly.js inlined
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "embedpipe.cli",
            "dashboard",
            "--db",
            settings.store.uri,
            "--serve",
            "--port",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stderr.readline()
        assert "dashboard at http://127.0.0.1:" in line, line
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        assert port > 0
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as resp:
                    assert resp.status == 200 and b"chart-runs" in resp.read()
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
