"""Incremental runs on a table with scalar indexes: created by a writing run just before its commit,
then the run's index step folds the commit's rows into them, so the version it checks and serves
carries them up to date.

Real Prefect (test harness) and real LanceDB; the deterministic fake model counts its calls.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from embedpipe.flows.sync import sync
from embedpipe.schemas import C
from embedpipe.store import Scope, Store
from embedpipe.store.scalar_index import SCALAR_INDEXES
from tests.helpers import make_settings, write

pytestmark = pytest.mark.usefixtures("prefect_harness")

PARAS = [f"Paragraph {i} explains topic {i} with enough words to stand alone as a chunk." for i in range(4)]


def run(sources, settings):
    state = sync([str(s) for s in sources], settings, return_state=True)
    summary = state.result(raise_on_failure=False)
    assert state.is_completed(), summary.message
    return summary


def test_a_run_indexes_the_table_before_its_audit_and_serves_that_version(tmp_path: Path) -> None:
    src = tmp_path / "it's 100% src"
    for i in range(6):
        write(src / f"doc {i}'s.md", "\n\n".join([f"Document {i}.", *PARAS]))
    settings = make_settings(tmp_path, chunk={"tokens": 24, "overlap": 0}, index={"scalar_min_rows": 1})
    store = Store(settings.store)

    s1 = run([src], settings)
    assert s1.table_version == 1  # a new table: one version, indexed by the next writing run
    assert store.scalar_indexed_columns(store.open_table()) == set()
    assert run([src], settings).table_version is None  # nothing changed: no version at all

    write(src / "doc 0's.md", "\n\n".join(["Document 0, edited.", *PARAS]))
    (src / "doc 5's.md").unlink()
    s3 = run([src], settings)
    head = store.open_table()
    # version 2: the indexes on the rows it read; 3: the commit; 4: its rows folded into the indexes
    assert s3.table_version == int(head.version) == 4
    assert int(head.tags.list()[s3.run_id]["version"]) == s3.table_version
    assert store.serving_version() == s3.table_version  # audited and published, with the indexes
    assert store.scalar_indexed_columns(head) == set(SCALAR_INDEXES)
    assert (s3.docs_changed, s3.docs_deleted, s3.docs_unchanged) == (1, 1, 4)
    assert s3.chunks_embedded == 1  # the rest of doc 0 was reused, looked up through the index
    state = store.doc_state(store.snapshot(), [Scope(str(src.resolve()))])
    assert sorted(state.column(C.PATH).to_pylist()) == [f"doc {i}'s.md" for i in range(5)]

    write(src / "doc 1's.md", "\n\n".join(["Document 1, edited.", *PARAS]))
    # the indexes exist: the commit (5) and the index step's refresh (6), audited and served
    s4 = run([src], settings)
    assert s4.table_version == 6 and store.serving_version() == 6
    assert store.scalar_indexed_columns(store.open_table()) == set(SCALAR_INDEXES)


def test_scalar_indexes_can_be_turned_off(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.md", "\n\n".join(PARAS))
    settings = make_settings(tmp_path, index={"scalar": False, "scalar_min_rows": 1})
    run([src], settings)
    write(src / "a.md", "\n\n".join(PARAS[:2]))
    s2 = run([src], settings)
    store = Store(settings.store)
    assert s2.table_version == 2 and store.scalar_indexed_columns(store.open_table()) == set()
