"""Every failing exit of the CLI says its one-line reason and nothing else alarming.

These runs use Prefect's temporary server, as a first run on a fresh machine does (no
``PREFECT_API_URL``): that server is a child process sharing the CLI's stderr, and stopping it while
it still recorded task runs printed ``ERROR | prefect.server.services.task_run_recorder - Error
flushing 1 events`` and about 150 lines of ``asyncio.CancelledError`` tracebacks after a failed
gate's one-line error (issue 13, repro 7).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from embedpipe.config import StoreSettings
from embedpipe.store.lock import FileTableLock, hold
from tests.helpers import SAMPLE_CORPUS, write
from tests.integration.test_cli import cli_env, embedpipe

pytestmark = pytest.mark.slow


def assert_one_reason(proc: subprocess.CompletedProcess, code: int, reason: str) -> None:
    """Exit ``code``, exactly one ``embedpipe: error:`` line naming ``reason``, no traceback, no ERROR."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    errors = [line for line in lines if line.startswith("embedpipe: error:")]
    assert len(errors) == 1 and reason in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "CancelledError" not in proc.stderr, proc.stderr
    assert not [line for line in lines if "| ERROR" in line or " ERROR " in line], proc.stderr


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return cli_env(None, PREFECT_HOME=str(tmp_path / "prefect-home"), **extra)


def test_failed_gate_and_lock_timeout_print_one_reason(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "embeddings.md", (SAMPLE_CORPUS / "basics" / "what-are-embeddings.md").read_text())
    write(src / "ann.md", (SAMPLE_CORPUS / "search" / "ann-indexes.md").read_text())
    golden = write(
        tmp_path / "golden.jsonl", '{"query": "what is an embedding", "relevant": {"missing.md": 2}}\n'
    )
    gate = embedpipe("run", str(src), "--db", "db", "--golden", str(golden), cwd=tmp_path, env=_env(tmp_path))
    assert_one_reason(gate, 7, "checks failed on table=chunks version 2")  # 1: commit, 2: FTS index

    settings = StoreSettings(uri=str(tmp_path / "db"))
    with hold(FileTableLock(settings), settings, "cccccccc-0000-0000-0000-000000000008", "reindex"):
        busy = embedpipe(
            "run",
            str(src),
            "--db",
            "db",
            cwd=tmp_path,
            env=_env(tmp_path, EMBEDPIPE_STORE__LOCK_TIMEOUT_S="0"),
        )
    assert_one_reason(busy, 8, "is locked by run=cccccccc-0000-0000-0000-000000000008")


def test_bad_flag_and_setting_print_one_reason(tmp_path: Path) -> None:
    flag = embedpipe("run", str(tmp_path), "--chunk-tokens", "4", cwd=tmp_path, env=_env(tmp_path))
    assert_one_reason(flag, 2, "chunk.tokens (flag --chunk-tokens): got 4")
    # issue 13, repro 9: this named neither the setting nor the variable
    env = embedpipe(
        "run", str(tmp_path), cwd=tmp_path, env=_env(tmp_path, EMBEDPIPE_SOURCE__INCLUDE="notalist")
    )
    assert_one_reason(env, 2, "source.include (env EMBEDPIPE_SOURCE__INCLUDE): got 'notalist'")
    toml = write(tmp_path / "bad.toml", "[model]\nbatch_size = 0\n")
    file = embedpipe("versions", "--config", str(toml), cwd=tmp_path, env=_env(tmp_path))
    assert_one_reason(file, 2, f"model.batch_size ({toml}: [model] batch_size): got 0")


_MANY_TASKS = """
import sys
from prefect import flow, task
from prefect.states import Failed
from embedpipe.flows._server import stop_temporary_server

@task
def one(i):
    return i

@flow
def many():
    [f.result() for f in [one.submit(i) for i in range(100)]]
    return Failed(message="gate failed")

state = many(return_state=True)
print("embedpipe: error: gate failed", file=sys.stderr)
stop_temporary_server([str(state.state_details.flow_run_id)])
sys.exit(7)
"""


def test_temporary_server_stops_after_recording_a_burst_of_task_runs(tmp_path: Path) -> None:
    """The mechanism on its own: 100 task runs end just before the process exits (the server is
    still recording hundreds of events); without the wait this printed about 150 lines of errors."""
    env = _env(tmp_path, PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING")
    proc = subprocess.run(
        [sys.executable, "-c", _MANY_TASKS],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_reason(proc, 7, "gate failed")


def test_dashboard_serve_refuses_bad_ports_and_remote_hosts(tmp_path: Path) -> None:
    """Issue 13, repro 8: `--host 0.0.0.0` was accepted silently; a bad or busy port was a traceback."""
    import socket

    (tmp_path / "db").mkdir()
    env = _env(tmp_path)
    serve = ("dashboard", "--db", "db", "--serve")
    for port in ("99999", "abc", "-1"):
        bad = embedpipe(*serve, "--port", port, cwd=tmp_path, env=env, timeout=60)
        assert_one_reason(bad, 2, f"--port={port}: expected a TCP port 1-65535")
    assert bad.stderr.count("\n") == 1  # no usage text either
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        remote = embedpipe(*serve, "--host", host, "--port", "0", cwd=tmp_path, env=env, timeout=60)
        assert_one_reason(remote, 2, f"--host={host} is not a loopback address")
        assert "--allow-remote" in remote.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = embedpipe(*serve, "--port", str(port), cwd=tmp_path, env=env, timeout=60)
    assert_one_reason(busy, 2, f"cannot listen on host=127.0.0.1 port={port}: the port is already in use")
    serve_port = embedpipe("serve", "--port", "70000", cwd=tmp_path, env=env, timeout=60)
    assert_one_reason(serve_port, 2, "--port=70000: expected a TCP port")


def test_dashboard_serve_on_all_interfaces_with_allow_remote_warns(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    cmd = [sys.executable, "-m", "embedpipe.cli", "dashboard", "--db", "db", "--serve"]
    proc = subprocess.Popen(
        [*cmd, "--host", "0.0.0.0", "--port", "0", "--allow-remote"],
        cwd=tmp_path,
        env=_env(tmp_path),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        warning, serving = proc.stderr.readline(), proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert warning.startswith("embedpipe: warning: serving on 0.0.0.0:"), warning
    assert "the text of every chunk will be visible to anyone who can reach this address" in warning
    assert serving.startswith("embedpipe: dashboard at http://0.0.0.0:"), serving


def test_read_only_commands_on_a_missing_database_create_nothing(tmp_path: Path) -> None:
    """Issue 13, repro 10: `versions --db /missing/path` created the folder before failing."""
    env = _env(tmp_path)
    for args in (
        ("versions",),
        ("search", "vector index"),
        ("check",),
        ("dashboard", "--out", "page.html"),
        ("dashboard", "--serve", "--port", "0"),
        ("rollback", "1"),
        ("compact",),
    ):
        proc = embedpipe(*args, "--db", "missing/db", cwd=tmp_path, env=env, timeout=120)
        assert_one_reason(proc, 4, "table=chunks not found")
        assert sorted(p.name for p in tmp_path.iterdir()) == [], (args, list(tmp_path.iterdir()))


def test_the_cli_called_in_process_never_stops_the_callers_server(
    tmp_path: Path, prefect_harness: str
) -> None:
    """The record-then-stop at exit is for a server the command started; a notebook's or a test
    harness's server that was running before ``main()`` keeps running (it once stopped it)."""
    import httpx

    from embedpipe.cli import main
    from embedpipe.flows._server import _temporary_server

    server = _temporary_server()
    assert server is not None and server.api_url.startswith(prefect_harness.rsplit("/api", 1)[0])
    src = write(tmp_path / "src" / "a.txt", "a short document about vectors")
    db = str(tmp_path / "db")
    assert main(["run", str(src.parent), "--db", db, "--model", "fake:32", "--no-checks"]) == 0
    assert _temporary_server() is server and server.running
    assert httpx.get(f"{prefect_harness}/health", timeout=10).status_code == 200


def test_a_temporary_server_that_cannot_start_is_one_reason_exit_9(tmp_path: Path) -> None:
    """With no PREFECT_API_URL the command starts Prefect's temporary server; when that fails (here:
    no time allowed to boot) the run says so in one line, exit 9, and nothing is written."""
    write(tmp_path / "src" / "a.txt", "a short document")
    env = _env(tmp_path, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0")
    proc = embedpipe("run", "src", "--db", "db", cwd=tmp_path, env=env)
    assert_one_reason(proc, 9, "cannot start Prefect's temporary API server")
    assert not (tmp_path / "db" / "chunks.lance").exists()
