"""The run lock against a real Prefect server: the global concurrency limit that serializes writers
of an object-store table, and a sync that refuses to commit when the table moved during the run.

Prefect's test harness (a temporary server for the session), real LanceDB, the fake embedder.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from embedpipe.config import StoreSettings
from embedpipe.embedding.embedder import register_embedder
from embedpipe.errors import TableBusyError
from embedpipe.flows._lock import table_lock
from embedpipe.flows.sync import sync
from embedpipe.schemas import C
from embedpipe.store import Store
from embedpipe.store.lock import limit_name
from tests.fakes import FakeEmbedder
from tests.helpers import make_settings, write

RUN_A = "aaaaaaaa-0000-0000-0000-000000000001"
RUN_B = "bbbbbbbb-0000-0000-0000-000000000002"


def store_settings(tmp_path: Path, **kw: object) -> StoreSettings:
    return StoreSettings(uri=str(tmp_path / "db"), **kw)  # type: ignore[arg-type]


def test_prefect_concurrency_limit_serializes_holders(tmp_path: Path, prefect_harness: str) -> None:
    from prefect.client.orchestration import get_client

    settings = store_settings(tmp_path, lock="prefect", lock_timeout_s=60)
    held, released_at = threading.Event(), []

    def first() -> None:
        with table_lock(settings, RUN_A, "sync"):
            held.set()
            time.sleep(1.5)
            released_at.append(time.monotonic())

    t = threading.Thread(target=first)
    t.start()
    assert held.wait(60)
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(limit_name(settings))
    assert (limit.limit, limit.active_slots) == (1, 1)
    with table_lock(settings, RUN_B, "sync") as me:
        got_at = time.monotonic()
        assert me is not None and me.run_id == RUN_B
    t.join()
    assert got_at >= released_at[0]

    busy = settings.model_copy(update={"lock_timeout_s": 0.0})
    with table_lock(settings, RUN_A, "sync"):
        with (
            pytest.raises(TableBusyError, match=rf"locked by run={RUN_A} .*Prefect global concurrency"),
            table_lock(busy, RUN_B, "sync"),
        ):
            pass
        slow = settings.model_copy(update={"lock_timeout_s": 1.0})
        t0 = time.monotonic()
        with pytest.raises(TableBusyError, match=r"waited [12]s"), table_lock(slow, RUN_B, "sync"):
            pass
        assert time.monotonic() - t0 < 10
    with table_lock(busy, RUN_B, "sync"):  # released: free at once
        pass


class Interloper(FakeEmbedder):
    """The fake model, which also deletes rows behind the run's back while the run embeds."""

    armed: Path | None = None

    def encode(self, texts, batch_size, lengths=None):  # type: ignore[no-untyped-def]
        db, Interloper.armed = Interloper.armed, None
        if db is not None:
            Store(StoreSettings(uri=str(db))).open_table().delete(f"{C.DOC_ID} = 'a.txt'")
        return super().encode(texts, batch_size, lengths)


register_embedder("interloper:", Interloper)


@pytest.mark.usefixtures("prefect_harness")
def test_sync_refuses_to_commit_when_the_table_moved_during_the_run(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", "cats purr in the sun")
    write(src / "b.txt", "engines roar on the road")
    settings = make_settings(tmp_path, model={"name": "interloper:32"}, store={"lock": "none"})
    settings = settings.model_copy(
        update={"checks": settings.checks.model_copy(update={"triplets": [], "pairs": []})}
    )
    first = sync([str(src)], settings, return_state=True).result()
    store = Store(settings.store)
    assert first.table_version == 1
    write(src / "c.txt", "rivers flow to the sea")
    Interloper.armed = tmp_path / "db"  # a write lands between this run's read and its commit
    state = sync([str(src)], settings, return_state=True)
    summary = state.result(raise_on_failure=False)
    assert state.is_failed() and summary.exit_code == 8 and summary.table_version is None
    assert "moved from version 1 to version 2" in summary.message and "nothing was written" in summary.message
    table = store.open_table()
    assert table.version == 2  # the interloper's version; the stale delta was not written
    assert sorted(set(table.to_arrow().column(C.DOC_ID).to_pylist())) == ["b.txt"]
    again = sync([str(src)], settings, return_state=True).result()  # the next run catches up
    assert again.table_version == 3 and (again.docs_new, again.docs_unchanged) == (2, 1)
