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
from embedpipe.resources.lock import FileTableLock, hold
from tests.conftest import SAMPLE_CORPUS, write
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
    assert_one_reason(gate, 7, "checks failed on table=chunks version 1")

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
    assert_one_reason(flag, 2, "chunk.tokens")
    env = embedpipe(
        "run", str(tmp_path), cwd=tmp_path, env=_env(tmp_path, EMBEDPIPE_MODEL__BATCH_SIZE="many")
    )
    assert_one_reason(env, 2, "EMBEDPIPE_MODEL__BATCH_SIZE")


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
