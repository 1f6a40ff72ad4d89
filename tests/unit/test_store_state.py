"""The table's state read columnarly, its scalar indexes, vector reuse through them, hostile keys.

Real LanceDB in a temporary folder; the fake embedder stands in for the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from embedpipe.errors import StaleReadError
from embedpipe.schemas import C, doc_state_schema
from embedpipe.store import Scope, Store
from embedpipe.store.scalar_index import SCALAR_INDEXES
from embedpipe.store.state import drop_repeats, first_per_document, where_in
from embedpipe.tasks.embedding import embed_chunks
from tests.helpers import chunked

RUN_A = "11111111-1111-1111-1111-111111111111"
RUN_B = "22222222-2222-2222-2222-222222222222"
RUN_C = "33333333-3333-3333-3333-333333333333"
HOSTILE_SOURCE = "s'r\\c%_ü ✓"
HOSTILE_FILES = ["it's.txt", "back\\slash.txt", "100%_.txt", "ünï✓ 文.txt", "x" * 200 + ".txt"]
INJECTIONS = ["' OR '1'='1", "x') OR (1=1", "%", "\\", "'; --", "ü" * 10_000]


def chunk_rows(tmp_path: Path, files: dict[str, str], run_id: str, src_name: str = "src"):
    settings, embedder, chunks, schema, src = chunked(tmp_path, files, src_name=src_name)
    table, *_ = embed_chunks(chunks, embedder, 8, run_id, schema)
    return settings, schema, table, src


def commit(store: Store, run_id: str, table: pa.Table, schema: pa.Schema, **kw):
    return store.commit(run_id, [store.stage(run_id, 0, table)], schema, **kw)


def test_doc_state_is_one_row_per_document_and_follows_scopes(tmp_path: Path) -> None:
    files = {"a.txt": "alpha beta gamma. " * 30, "b.txt": "short one", "sub/c.md": "# c\n\nsee. " * 20}
    settings, schema, table, src = chunk_rows(tmp_path, files, RUN_A)
    store = Store(settings.store)
    commit(store, RUN_A, table, schema)
    assert table.num_rows > len(files)  # several chunks per document ...
    state = store.doc_state(store.snapshot(), [Scope(src)])
    assert state.schema.equals(doc_state_schema()) and state.num_rows == len(files)  # ... one row each
    assert sorted(state.column(C.PATH).to_pylist()) == sorted(files)
    by_doc = {r[C.DOC_ID]: r for r in state.to_pylist()}
    first = table.filter(pc.equal(table.column(C.DOC_ID), "a.txt")).slice(0, 1).to_pylist()[0]
    assert by_doc["a.txt"][C.DOC_HASH] == first[C.DOC_HASH] and by_doc["a.txt"][C.SIZE] == first[C.SIZE]
    one = store.doc_state(store.snapshot(), [Scope(src, ("b.txt",))])
    assert one.column(C.DOC_ID).to_pylist() == ["b.txt"]
    assert store.doc_state(store.snapshot(), [Scope(src, ())]).num_rows == 0
    assert store.doc_state(store.snapshot(), [Scope(src + "-other")]).num_rows == 0
    assert store.doc_state(None, [Scope(src)]).num_rows == 0


def test_a_commit_first_creates_the_missing_scalar_indexes_in_one_version_of_the_rows_read(
    tmp_path: Path,
) -> None:
    settings, schema, table, _src = chunk_rows(tmp_path, {"a.txt": "alpha beta. " * 60}, RUN_A)
    store = Store(settings.store)
    res = commit(store, RUN_A, table, schema, scalar_indexes=1)
    assert res.version == 1 and store.scalar_indexed_columns(store.open_table()) == set()  # a new table
    more = table.slice(0, 2)
    res2 = store.commit(
        RUN_B, [store.stage(RUN_B, 0, more)], schema, read_version=1, verify=True, scalar_indexes=1
    )
    head = store.open_table()
    assert res2.version == int(head.version) == 3  # version 2: the indexes, on the rows run B read
    assert int(head.tags.list()[RUN_B]["version"]) == res2.version  # what the audit checks and serves
    kinds = {cfg.columns[0]: cfg.index_type for cfg in head.list_indices()}
    assert kinds == {C.SOURCE: "Bitmap", C.PATH: "BTree", C.DOC_ID: "BTree", C.CHUNK_HASH: "BTree"}
    assert set(SCALAR_INDEXES) == set(kinds)
    before = store.require_table()
    before.checkout(2)  # "the version before" the run's commit holds the previous content
    assert before.count_rows() == table.num_rows and store.scalar_indexed_columns(before) == set(kinds)
    # The indexes exist: the next run commits one version, as before.
    res3 = store.commit(
        RUN_A, [store.stage(RUN_A, 1, more)], schema, read_version=3, verify=True, scalar_indexes=1
    )
    assert res3.version == 4


def test_index_only_versions_never_make_a_delta_stale_but_data_commits_do(tmp_path: Path) -> None:
    settings, schema, table, _src = chunk_rows(tmp_path, {"a.txt": "alpha beta. " * 60}, RUN_A)
    store = Store(settings.store)
    commit(store, RUN_A, table, schema)
    assert store.ensure_scalar_indexes(store.open_table()) == list(SCALAR_INDEXES)  # e.g. a retried write
    res = store.commit(RUN_B, [store.stage(RUN_B, 0, table.slice(0, 1))], schema, read_version=1, verify=True)
    assert res.version == 3
    with pytest.raises(StaleReadError, match="moved from version 1 to version 3"):
        store.commit(RUN_C, [store.stage(RUN_C, 0, table.slice(1, 1))], schema, read_version=1, verify=True)


def test_no_scalar_index_below_the_threshold_or_when_turned_off(tmp_path: Path) -> None:
    settings, schema, table, _src = chunk_rows(tmp_path, {"a.txt": "alpha beta. " * 60}, RUN_A)
    store = Store(settings.store)
    commit(store, RUN_A, table, schema)
    res = commit(store, RUN_B, table.slice(0, 1), schema, scalar_indexes=table.num_rows + 1)
    assert res.version == 2 and store.scalar_indexed_columns(store.open_table()) == set()
    res = commit(store, RUN_C, table.slice(0, 1), schema)  # None: never
    assert res.version == 3 and store.scalar_indexed_columns(store.open_table()) == set()


def test_vector_reuse_is_answered_by_the_chunk_hash_index(tmp_path: Path) -> None:
    settings, schema, table, _src = chunk_rows(tmp_path, {"a.txt": "alpha beta gamma. " * 80}, RUN_A)
    store = Store(settings.store)
    hashes = sorted(set(table.column(C.CHUNK_HASH).to_pylist()))
    commit(store, RUN_A, table, schema)
    plain = where_in(store.snapshot(), C.CHUNK_HASH, hashes[:3], [C.CHUNK_HASH]).explain_plan(True)
    assert "ScalarIndexQuery" not in plain  # no index yet: the same filter scans
    store.ensure_scalar_indexes(store.open_table())
    plan = where_in(store.snapshot(), C.CHUNK_HASH, hashes[:3], [C.CHUNK_HASH]).explain_plan(True)
    assert "ScalarIndexQuery" in plan and "chunk_hash_idx" in plan
    # Rows written after the index was built (not yet folded in) are still found.
    _, _, later, _ = chunk_rows(tmp_path, {"z.txt": "zeta eta theta. " * 30}, RUN_B, "src2")
    commit(store, RUN_B, later, schema)
    snap = store.snapshot()
    wanted = hashes + later.column(C.CHUNK_HASH).to_pylist()
    got = store.vectors_for_hashes(snap, wanted)
    assert set(got) == set(wanted)
    stored = snap.to_arrow()
    for h, v in zip(
        stored.column(C.CHUNK_HASH).to_pylist(), stored.column(C.VECTOR).to_pylist(), strict=True
    ):
        np.testing.assert_array_equal(got[h], np.asarray(v, dtype=np.float32))


def test_hostile_keys_only_ever_match_themselves(tmp_path: Path) -> None:
    files = {name: f"text of {i}. " * 12 for i, name in enumerate(HOSTILE_FILES)}
    settings, schema, table, src = chunk_rows(tmp_path, files, RUN_A, HOSTILE_SOURCE)
    store = Store(settings.store)
    commit(store, RUN_A, table, schema)
    store.ensure_scalar_indexes(store.open_table())
    snap = store.snapshot()
    state = store.doc_state(snap, [Scope(src)])
    assert sorted(state.column(C.PATH).to_pylist()) == sorted(HOSTILE_FILES)
    for name in HOSTILE_FILES:
        only = store.doc_state(snap, [Scope(src, (name,))])
        assert only.column(C.PATH).to_pylist() == [name]
    for bad in INJECTIONS:
        assert store.doc_state(snap, [Scope(bad)]).num_rows == 0
        assert store.doc_state(snap, [Scope(src, (bad,))]).num_rows == 0
        assert store.rows_for_docs(snap, [(src, bad), (bad, "it's.txt")], schema).num_rows == 0
    assert store.vectors_for_hashes(snap, INJECTIONS) == {}
    ids = dict(zip(state.column(C.PATH).to_pylist(), state.column(C.DOC_ID).to_pylist(), strict=True))
    quoted = ids["it's.txt"]
    rows = store.rows_for_docs(snap, [(src, quoted)], schema)
    assert set(rows.column(C.DOC_ID).to_pylist()) == {quoted} and rows.num_rows >= 1
    # A commit that replaces (here: deletes) one hostile document removes its rows and no other.
    res = store.commit(RUN_B, [], schema, replace_docs=[(src, quoted), (src, INJECTIONS[0])])
    assert res.deleted == rows.num_rows
    left = store.doc_state(store.snapshot(), [Scope(src)])
    assert sorted(left.column(C.PATH).to_pylist()) == sorted(n for n in HOSTILE_FILES if n != "it's.txt")


def test_state_reduction_keeps_the_first_row_of_each_document_even_when_rows_are_apart() -> None:
    rows = pa.table(
        {
            C.SOURCE: ["s", "s", "s", "s", "s", "t"],
            C.PATH: ["a", "a", "b", "a", "b", "a"],
            C.DOC_ID: ["a", "a", "b", "a", "b", "a"],
            C.DOC_HASH: ["h1", "h1-later", "h2", "h1-last", "h2-later", "h3"],
        }
    )
    kept = drop_repeats(rows)
    assert kept.column(C.DOC_HASH).to_pylist() == ["h1", "h2", "h1-last", "h2-later", "h3"]
    one = first_per_document(kept)
    assert one.column(C.DOC_HASH).to_pylist() == ["h1", "h2", "h3"]  # per (source, path, doc_id)
    assert first_per_document(rows).column(C.DOC_HASH).to_pylist() == ["h1", "h2", "h3"]
    # distinct doc_ids: already one row per document, returned as it is (no grouping)
    distinct = rows.filter(pc.equal(rows.column(C.SOURCE), "s")).slice(1, 2)
    assert first_per_document(distinct) is distinct


def test_doc_state_is_one_row_per_document_across_batch_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A document's chunks split over two batches of the state scan still give one row."""
    import embedpipe.store.state as state_module

    files = {"a.txt": "alpha beta gamma. " * 30, "b.txt": "short one", "c.txt": "delta epsilon. " * 25}
    settings, schema, table, src = chunk_rows(tmp_path, files, RUN_A)
    store = Store(settings.store)
    commit(store, RUN_A, table, schema)
    whole = store.doc_state(store.snapshot(), [Scope(src)])
    for batch in (1, 2, 3):
        monkeypatch.setattr(state_module, "_STATE_BATCH", batch)
        state = store.doc_state(store.snapshot(), [Scope(src)])
        assert state.num_rows == len(files), batch
        assert sorted(state.to_pylist(), key=lambda r: r[C.DOC_ID]) == sorted(
            whole.to_pylist(), key=lambda r: r[C.DOC_ID]
        )
