"""``embedpipe serve`` against a real ``prefect server`` on loopback: a run triggered through the API
completes in the served process and leaves the documents' rows in the table."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import lancedb
import pytest

from tests.helpers import ROOT, SAMPLE_CORPUS, write

pytestmark = pytest.mark.slow

PREFECT_YAML = ROOT / "deploy" / "prefect.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDPIPE_", "PREFECT_"))}
    env.update(HF_HUB_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


def _wait(what: str, check, timeout: float, procs: list[subprocess.Popen]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for p in procs:
            assert p.poll() is None, f"{p.args[:4]} exited with {p.returncode} while waiting for {what}"
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# Prefect's own client retries these: the server answers 503 while its sqlite database is busy
# (a serve process and the API writing at once on a loaded 2-core runner), 429/502 under load.
_RETRY_CODES = {429, 502, 503}


def _api(url: str, path: str, body: dict | None = None, attempts: int = 6) -> object:
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(attempts):
        req = urllib.request.Request(
            url + path,
            data=data,
            headers={"content-type": "application/json"},
            method="POST" if data else "GET",
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code not in _RETRY_CODES or attempt == attempts - 1:
                raise
            time.sleep(min(2**attempt, 8))
    raise AssertionError("unreachable")


def _healthy(url: str) -> bool:
    try:
        return _api(url, "/health") is True
    except OSError:
        return False


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[str]:
    """A real ``prefect server start`` on a free loopback port with its own sqlite database."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=_env(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_UI_ENABLED="false"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait("the Prefect server's /api/health", lambda: _healthy(url), 120, [proc])
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_serve_runs_a_deployment_triggered_through_the_api(tmp_path: Path, prefect_server: str) -> None:
    api = prefect_server
    src = tmp_path / "corpus"
    write(src / "embeddings.md", (SAMPLE_CORPUS / "basics" / "what-are-embeddings.md").read_text())
    write(src / "ann.md", (SAMPLE_CORPUS / "search" / "ann-indexes.md").read_text())
    write(src / "intro.txt", (SAMPLE_CORPUS / "zh" / "embeddings-intro.txt").read_text())
    db = tmp_path / "db"
    out = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "embedpipe.cli",
            "serve",
            "--file",
            str(PREFECT_YAML),
            "--only",
            "nightly-sync",
        ],
        cwd=tmp_path,
        env=_env(PREFECT_API_URL=api, EMBEDPIPE_STORE__URI=str(db)),
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:

        def deployment() -> dict | None:
            found = _api(api, "/deployments/filter", {"deployments": {"name": {"any_": ["nightly-sync"]}}})
            assert isinstance(found, list)
            return found[0] if found else None

        _wait("the served deployment", lambda: deployment() is not None, 90, [serve])
        dep = deployment()
        assert dep is not None
        # what prefect.yaml says, as the server stored it
        assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 2 * * *"]
        assert dep["schedules"][0]["schedule"]["timezone"] == "UTC" and dep["schedules"][0]["active"]
        assert dep["parameters"] == {"sources": ["/srv/corpus"], "delete_missing": True}
        assert dep["global_concurrency_limit"]["limit"] == 1

        # the work-pool examples are base job templates the server accepts
        for template in sorted((ROOT / "deploy" / "work-pools").glob("*.json")):
            kind = template.stem.removeprefix("embedpipe-")
            body = {
                "name": template.stem,
                "type": kind,
                "base_job_template": json.loads(template.read_text()),
            }
            assert _api(api, "/work_pools/", body)["name"] == template.stem  # type: ignore[index]

        run = _api(api, f"/deployments/{dep['id']}/create_flow_run", {"parameters": {"sources": [str(src)]}})
        assert isinstance(run, dict)

        def state() -> str:
            r = _api(api, f"/flow_runs/{run['id']}")
            assert isinstance(r, dict)
            return str(r["state_type"])

        _wait("the flow run to finish", lambda: state() in {"COMPLETED", "FAILED", "CRASHED"}, 150, [serve])
        assert state() == "COMPLETED", (tmp_path / "serve.log").read_text()[-3000:]

        rows = lancedb.connect(str(db)).open_table("chunks").to_arrow()
        assert set(rows.column("doc_id").to_pylist()) == {"embeddings.md", "ann.md", "intro.txt"}
        assert rows.num_rows >= 3
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
        out.close()
    console = (tmp_path / "serve.log").read_text()
    assert serve.returncode == 0, console[-3000:]
    assert "Traceback" not in console and "| ERROR" not in console, console[-3000:]
    assert "serving 1 deployment(s) (sync/nightly-sync)" in console
    # a stopped serve pauses its schedules: no run is produced that nobody would execute
    assert deployment()["paused"] is True  # type: ignore[index]
