"""Two runs against one table at once, as users start them: subprocesses, the real bundled model.

Before the run lock, two syncs started together on an empty table both read "no table", both
embedded everything and both committed (two versions of the same rows, a publish race); the
primary key only kept the rows from being duplicated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lancedb
import pytest

from embedpipe.config import StoreSettings
from embedpipe.store.lock import FileTableLock, hold
from tests.helpers import SAMPLE_CORPUS, write
from tests.integration.test_cli import cli_env, embedpipe

pytestmark = pytest.mark.slow


def small_corpus(root: Path) -> Path:
    write(root / "en" / "embeddings.md", (SAMPLE_CORPUS / "basics" / "what-are-embeddings.md").read_text())
    write(root / "en" / "ann.md", (SAMPLE_CORPUS / "search" / "ann-indexes.md").read_text())
    write(root / "zh" / "intro.txt", (SAMPLE_CORPUS / "zh" / "embeddings-intro.txt").read_text())
    return root


def chunk_ids(db: Path) -> list[str]:
    return lancedb.connect(str(db)).open_table("chunks").to_arrow().column("chunk_id").to_pylist()


def test_two_syncs_at_once_leave_one_consistent_version(tmp_path: Path, prefect_harness: str) -> None:
    env = cli_env(prefect_harness)
    src = small_corpus(tmp_path / "src")
    cmd = [sys.executable, "-m", "embedpipe.cli", "run", str(src), "--db", "db", "--json"]
    procs = [
        subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    runs = sorted((json.loads(out) for out, _ in outs), key=lambda s: s["table_version"] is None)
    winner, second = runs
    # version 1: the winner's commit; version 2: its full-text index
    assert winner["table_version"] == 2 and winner["chunks_embedded"] == winner["chunks_written"] > 3
    # The second run waited, read version 2, and found nothing to do.
    assert second["previous_version"] == 2 and second["table_version"] is None
    assert second["chunks_embedded"] == 0 and second["docs_unchanged"] == 3
    ids = chunk_ids(tmp_path / "db")
    assert len(ids) == len(set(ids)) == winner["chunks_written"]
    versions = embedpipe("versions", "--db", "db", "--json", cwd=tmp_path, env=env)
    rows = json.loads(versions.stdout)
    assert [r["version"] for r in rows] == [1, 2] and rows[1]["run_id"] == winner["run_id"]
    assert "serving" in rows[1]["tags"]

    # A run that finds the table locked, with lock_timeout_s=0, fails at once and writes nothing.
    write(src / "en" / "new.md", "A brand new document about vector search.")
    settings = StoreSettings(uri=str(tmp_path / "db"))
    holder_run = "cccccccc-0000-0000-0000-000000000003"
    with hold(FileTableLock(settings), settings, holder_run, "reindex"):
        busy = embedpipe(
            "run",
            str(src),
            "--db",
            "db",
            "--json",
            cwd=tmp_path,
            env=cli_env(prefect_harness, EMBEDPIPE_STORE__LOCK_TIMEOUT_S="0"),
        )
    assert busy.returncode == 8, busy.stderr
    failed = json.loads(busy.stdout)
    assert failed["status"] == "failed" and failed["exit_code"] == 8 and failed["table_version"] is None
    error = [line for line in busy.stderr.splitlines() if line.startswith("embedpipe: error:")]
    assert len(error) == 1 and "Traceback" not in busy.stderr
    assert f"table=chunks at uri={tmp_path / 'db'} is locked by run={holder_run} flow=reindex" in error[0]
    assert f"pid={os.getpid()}" in error[0] and "wrote nothing" in error[0]
    assert sorted(chunk_ids(tmp_path / "db")) == sorted(ids)
    table = lancedb.connect(str(tmp_path / "db")).open_table("chunks")
    assert [int(v["version"]) for v in table.list_versions()] == [1, 2]
