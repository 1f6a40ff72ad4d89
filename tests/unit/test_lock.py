"""The per-table run lock: backend selection, holder record, waiting, timeout, stale-head refusal.

The Prefect-backed lock and a whole sync refusing a stale head are in ``tests/integration/test_run_lock.py``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

from embedpipe.config import StoreSettings
from embedpipe.errors import StaleReadError, TableBusyError
from embedpipe.flows._lock import table_lock
from embedpipe.schemas import C
from embedpipe.store import Store
from embedpipe.store.lock import FileTableLock, HolderRecord, hold, limit_name, lock_kind
from tests.helpers import make_settings, write

RUN_A = "aaaaaaaa-0000-0000-0000-000000000001"
RUN_B = "bbbbbbbb-0000-0000-0000-000000000002"


def store_settings(tmp_path: Path, **kw: object) -> StoreSettings:
    return StoreSettings(uri=str(tmp_path / "db"), **kw)  # type: ignore[arg-type]


def test_auto_is_a_lock_file_for_folders_and_prefect_for_object_stores(tmp_path: Path) -> None:
    assert lock_kind(store_settings(tmp_path)) == "file"
    assert lock_kind(StoreSettings(uri="file:///data/db")) == "file"
    for uri in ("s3://bucket/db", "gs://bucket/db", "az://container/db"):
        assert lock_kind(StoreSettings(uri=uri)) == "prefect"
    assert lock_kind(StoreSettings(uri="s3://bucket/db", lock="file")) == "file"
    assert lock_kind(store_settings(tmp_path, lock="none")) == "none"
    name = limit_name(StoreSettings(uri="s3://bucket/db", table="docs"))
    assert name.startswith("embedpipe-table-docs-")
    assert name != limit_name(StoreSettings(uri="s3://other/db", table="docs"))
    assert name == limit_name(StoreSettings(uri="s3://bucket/db/", table="docs"))


def test_bad_lock_setting_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embedpipe.config import get_settings
    from embedpipe.errors import ConfigError

    with pytest.raises(ConfigError, match=r"store\.lock \(get_settings override\): got 'redis'"):
        make_settings(tmp_path, store={"lock": "redis"})
    monkeypatch.setenv("EMBEDPIPE_STORE__LOCK", "redis")
    with pytest.raises(ConfigError, match=r"store\.lock \(env EMBEDPIPE_STORE__LOCK\): got 'redis'"):
        get_settings()
    monkeypatch.delenv("EMBEDPIPE_STORE__LOCK")
    with pytest.raises(ConfigError, match=r"store\.lock_timeout_s"):
        make_settings(tmp_path, store={"lock_timeout_s": -1})


def test_holder_is_recorded_while_held_and_a_second_run_fails_at_once(tmp_path: Path) -> None:
    settings = store_settings(tmp_path, lock_timeout_s=0)
    with hold(FileTableLock(settings), settings, RUN_A, "sync") as me:
        recorded = HolderRecord(settings).read()
        assert recorded == me and recorded.pid == os.getpid() and recorded.run_id == RUN_A
        t0 = time.monotonic()
        with (
            pytest.raises(TableBusyError) as exc,
            hold(FileTableLock(settings), settings, RUN_B, "sync"),
        ):
            pytest.fail("a second holder got the lock")
        assert time.monotonic() - t0 < 1.0
    msg = str(exc.value)
    assert exc.value.exit_code == 8 and "\n" not in msg
    assert "table=chunks" in msg and f"run={RUN_A} flow=sync" in msg and f"pid={os.getpid()}" in msg
    assert f"run={RUN_B}" in msg and "wrote nothing" in msg and "EMBEDPIPE_STORE__LOCK_TIMEOUT_S" in msg
    assert HolderRecord(settings).read() is None  # cleared on release
    with hold(FileTableLock(settings), settings, RUN_B, "sync"):  # free again
        pass


def test_the_loser_waits_logs_once_and_gets_the_lock_after_release(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = store_settings(tmp_path, lock_timeout_s=30)
    held, released_at = threading.Event(), []

    def first() -> None:
        with hold(FileTableLock(settings), settings, RUN_A, "reindex"):
            held.set()
            time.sleep(1.0)
            released_at.append(time.monotonic())

    t = threading.Thread(target=first)
    t.start()
    held.wait(10)
    logger = logging.getLogger("test-lock")
    with (
        caplog.at_level(logging.INFO, logger="test-lock"),
        hold(FileTableLock(settings), settings, RUN_B, "sync", logger),
    ):
        got_at = time.monotonic()
    t.join()
    assert got_at >= released_at[0]
    waiting = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    assert len(waiting) == 1 and f"run={RUN_A} flow=reindex" in waiting[0]


def test_timeout_after_waiting_says_how_long(tmp_path: Path) -> None:
    settings = store_settings(tmp_path, lock_timeout_s=0.6)
    with hold(FileTableLock(settings), settings, RUN_A, "sync"):
        t0 = time.monotonic()
        with (
            pytest.raises(TableBusyError, match=r"waited 1s \(store.lock_timeout_s=0.6"),
            hold(FileTableLock(settings), settings, RUN_B, "sync"),
        ):
            pass
        assert 0.5 < time.monotonic() - t0 < 5


# ---------------------------------------------------------------------- stale head


def test_commit_refuses_a_delta_computed_against_an_old_version(tmp_path: Path) -> None:
    import pyarrow as pa

    settings = make_settings(tmp_path)
    store = Store(settings.store)
    store.db.create_table("chunks", data=pa.table({C.CHUNK_ID: ["a"], C.DOC_ID: ["d"]}))
    read = int(store.open_table().version)
    assert store.verify_head(store.open_table(), RUN_A, read) is None
    store.open_table().add(pa.table({C.CHUNK_ID: ["b"], C.DOC_ID: ["e"]}))  # another writer
    with pytest.raises(StaleReadError, match=rf"moved from version {read} to version {read + 1}"):
        store.verify_head(store.open_table(), RUN_A, read)
    with pytest.raises(StaleReadError, match="moved from version None"):
        store.verify_head(store.open_table(), RUN_A, None)  # created by someone else meanwhile
    store.open_table().tags.create(RUN_A, read + 1)  # ...unless that commit was this run's own
    assert store.verify_head(store.open_table(), RUN_A, read) == read + 1


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_holder_that_died_holding_the_lock_leaves_nothing_behind(tmp_path: Path) -> None:
    """Issue 13, repro 10: a SIGKILLed run left its holder record and its staged shards behind;
    the next holder removes them when the dead run's process is provably gone."""
    import json
    import socket

    settings = store_settings(tmp_path)
    store = Store(settings)
    dead = {"run_id": RUN_A, "flow": "sync", "host": socket.gethostname(), "pid": _dead_pid(), "since": "x"}
    record = HolderRecord(settings)
    Path(record.uri).parent.mkdir(parents=True)
    Path(record.uri).write_text(json.dumps(dead))
    for rid in (RUN_A, "cccccccc-0000-0000-0000-000000000003"):
        write(Path(store.staging_uri(rid)) / "shard-000000.arrow", b"staged")
    live_other = Path(store.staging_uri("cccccccc-0000-0000-0000-000000000003"))

    with table_lock(settings, RUN_B, "sync") as me:
        assert me is not None and record.read() == me  # the stale record is replaced
        assert not Path(store.staging_uri(RUN_A)).exists()  # the dead run's staging is gone
        assert live_other.is_dir()  # a run not proven dead keeps its staging (TTL sweep)
    assert record.read() is None and not Path(record.uri).exists()


def test_a_holder_alive_or_on_another_host_is_not_cleaned_up(tmp_path: Path) -> None:
    import json
    import socket

    settings = store_settings(tmp_path)
    store = Store(settings)
    record = HolderRecord(settings)
    Path(record.uri).parent.mkdir(parents=True)
    for host, pid in ((socket.gethostname(), os.getppid()), ("another-host", _dead_pid())):
        left = {"run_id": RUN_A, "flow": "sync", "host": host, "pid": pid, "since": "x"}
        Path(record.uri).write_text(json.dumps(left))
        write(Path(store.staging_uri(RUN_A)) / "shard-000000.arrow", b"staged")
        with table_lock(settings, RUN_B, "sync"):
            pass
        assert Path(store.staging_uri(RUN_A)).is_dir(), host


def test_a_stale_record_is_not_named_as_the_holder_of_a_busy_lock(tmp_path: Path) -> None:
    import json
    import socket

    settings = store_settings(tmp_path, lock_timeout_s=0)
    holding = FileTableLock(settings)
    assert holding.try_acquire()
    try:
        record = HolderRecord(settings)
        dead = {
            "run_id": RUN_A,
            "flow": "sync",
            "host": socket.gethostname(),
            "pid": _dead_pid(),
            "since": "x",
        }
        Path(record.uri).write_text(json.dumps(dead))
        with pytest.raises(TableBusyError) as exc, hold(FileTableLock(settings), settings, RUN_B, "sync"):
            pass
        assert RUN_A not in str(exc.value) and "holder not recorded" in str(exc.value)
    finally:
        holding.release()
