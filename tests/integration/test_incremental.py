"""Incremental sync, deletions, model/chunking changes, reindex with an atomic switch, retention.

Real Prefect (test harness) and real LanceDB; the deterministic fake model counts its calls.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from embedpipe.flows.reindex import reindex
from embedpipe.flows.sync import sync
from embedpipe.schemas import C
from embedpipe.store import RUNS_TABLE, Store
from tests.helpers import make_settings, write

pytestmark = pytest.mark.usefixtures("prefect_harness")

PARAS = [f"Paragraph {i} explains topic {i} with enough words to stand alone as a chunk." for i in range(6)]


def make_doc(path: Path, paras: list[str]) -> None:
    write(path, "\n\n".join(paras))


def corpus(root: Path, n: int = 8) -> Path:
    for i in range(n):
        make_doc(root / f"doc{i}.md", [f"Document {i}.", *PARAS])
    write(
        root / "records.jsonl",
        '{"id": "a", "text": "alpha record", "tag": "x"}\n{"id": "b", "text": "beta"}\n',
    )
    return root


def run(sources, settings, **kw):
    state = sync([str(s) for s in sources], settings, return_state=True, **kw)
    return state, state.result(raise_on_failure=False)


def settings_for(tmp_path: Path, **groups):
    groups.setdefault("chunk", {"tokens": 24, "overlap": 0})
    return make_settings(tmp_path, **groups)


def rows(settings) -> list[dict]:
    return Store(settings.store).open_table().to_arrow().to_pylist()


def test_unchanged_corpus_embeds_nothing_and_creates_no_version(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src")
    settings = settings_for(tmp_path)
    _, s1 = run([src], settings)
    assert s1.docs_new == 10 and s1.table_version == 1
    state, s2 = run([src], settings)
    assert state.is_completed()
    assert s2.table_version is None and s2.chunks_embedded == 0 and s2.chunks_written == 0
    assert (s2.docs_unchanged, s2.docs_changed, s2.docs_new, s2.docs_deleted) == (10, 0, 0, 0)
    store = Store(settings.store)
    assert [v["version"] for v in store.versions()] == [1]
    runs = store.open_table(RUNS_TABLE).to_arrow().to_pylist()
    assert [r["run_id"] for r in runs][-1] == s2.run_id and runs[-1]["table_version"] is None


def test_edit_embeds_only_changed_chunk_texts_and_drops_stale_ones(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src")
    settings = settings_for(tmp_path)
    _, _s1 = run([src], settings)
    before = {r[C.CHUNK_ID] for r in rows(settings) if r[C.DOC_ID] == "doc3.md"}
    edited = ["Document 3.", *PARAS]
    edited[2] = "A completely rewritten paragraph about something else entirely, still one chunk."
    make_doc(src / "doc3.md", edited)
    _, s2 = run([src], settings)
    assert s2.docs_changed == 1 and s2.docs_unchanged == 9
    assert s2.chunks_embedded == 1  # one chunk text changed; the others reuse their stored vectors
    assert s2.chunks_reused == len(before) - 1
    after = [r for r in rows(settings) if r[C.DOC_ID] == "doc3.md"]
    assert sorted(r[C.CHUNK_INDEX] for r in after) == list(range(len(after)))
    assert any("rewritten" in r[C.TEXT] for r in after) and not any(PARAS[1] in r[C.TEXT] for r in after)
    assert len({r[C.CHUNK_ID] for r in rows(settings)}) == len(rows(settings))


def test_shrunk_document_loses_its_stale_chunks(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src")
    settings = settings_for(tmp_path)
    run([src], settings)
    make_doc(src / "doc0.md", ["Document 0.", PARAS[0]])
    _, s = run([src], settings)
    doc0 = [r[C.TEXT] for r in rows(settings) if r[C.DOC_ID] == "doc0.md"]
    # "Document 0." and the first paragraph pack into one chunk, whose text was stored already
    assert doc0 == [f"Document 0.\n\n{PARAS[0]}"] and s.chunks_embedded == 0
    assert s.chunks_deleted == len(PARAS) - 1


def test_position_shift_reuses_vectors_of_moved_text(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src")
    settings = settings_for(tmp_path)
    run([src], settings)
    new_first = (
        "A new first paragraph pushes everything else down by exactly one chunk, "
        "with several more extra words here."
    )
    make_doc(src / "doc1.md", [new_first, "Document 1.", *PARAS])
    _, s = run([src], settings)
    assert s.chunks_embedded == 1  # every other chunk moved one position down: same text, same vector
    doc1 = sorted((r for r in rows(settings) if r[C.DOC_ID] == "doc1.md"), key=lambda r: r[C.CHUNK_INDEX])
    assert [r[C.TEXT] for r in doc1][:2] == [new_first, f"Document 1.\n\n{PARAS[0]}"]
    assert len(doc1) == len(PARAS) + 1


def test_deleted_documents_removed_scoped_and_no_delete(tmp_path: Path) -> None:
    a = corpus(tmp_path / "a", n=3)
    b = corpus(tmp_path / "b", n=3)
    settings = settings_for(tmp_path)
    run([a], settings)
    run([b], settings)
    (b / "doc0.md").unlink()
    write(b / "records.jsonl", '{"id": "a", "text": "alpha record", "tag": "x"}\n')  # record b removed
    _, keep = run([b], settings, delete_missing=False)
    assert keep.docs_deleted == 0 and keep.chunks_deleted == 0
    assert {"doc0.md", "records.jsonl#b"} <= {r[C.DOC_ID] for r in rows(settings) if "/b" in r[C.SOURCE]}
    _, s = run([b], settings)  # only folder b was scanned: folder a keeps everything
    assert s.docs_deleted == 2 and s.chunks_deleted == len(PARAS) + 1  # doc0.md's chunks and record b
    by_source = {}
    for r in rows(settings):
        by_source.setdefault(Path(r[C.SOURCE]).name, set()).add(r[C.DOC_ID])
    assert by_source["a"] == {"doc0.md", "doc1.md", "doc2.md", "records.jsonl#a", "records.jsonl#b"}
    assert by_source["b"] == {"doc1.md", "doc2.md", "records.jsonl#a"}
    (b / "doc2.md").unlink()  # a deletion alone is a change too: one version, no embedding
    _, only_delete = run([b], settings)
    assert only_delete.table_version == s.table_version + 1
    assert (only_delete.docs_deleted, only_delete.chunks_embedded, only_delete.chunks_written) == (1, 0, 0)
    assert "doc2.md" not in {r[C.DOC_ID] for r in rows(settings) if r[C.SOURCE] == str(b.resolve())}


def test_file_with_rejects_or_excluded_keeps_its_rows(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src", n=2)
    settings = settings_for(tmp_path)
    run([src], settings)
    write(src / "records.jsonl", '{"id": "a", "text": "alpha record", "tag": "x"}\nnot json at all\n')
    _, s = run([src], settings)  # record b's line is broken now: reported, not deleted
    assert s.docs_rejected == 1 and s.docs_deleted == 0
    assert "records.jsonl#b" in {r[C.DOC_ID] for r in rows(settings)}
    narrow = settings_for(tmp_path, source={"include": ["doc0.md"]})
    _, s = run([src], narrow)  # doc1.md is not scanned by this run, so it is not "missing"
    assert s.docs_deleted == 0 and "doc1.md" in {r[C.DOC_ID] for r in rows(settings)}


def test_single_file_source_scopes_deletion_to_that_file(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src", n=3)
    settings = settings_for(tmp_path)
    run([src], settings)
    _, s = run([src / "doc1.md"], settings)
    assert s.docs_unchanged == 1 and s.docs_deleted == 0 and s.table_version is None


def test_metadata_only_changes_update_rows_without_embedding(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src", n=2)
    settings = settings_for(tmp_path)
    run([src], settings)
    old = {r[C.CHUNK_ID]: r for r in rows(settings)}
    later = time.time() + 3600
    os.utime(src / "doc0.md", (later, later))
    write(
        src / "records.jsonl",
        '{"id": "a", "text": "alpha record", "tag": "y"}\n{"id": "b", "text": "beta"}\n',
    )
    _, s = run([src], settings)
    assert s.chunks_embedded == 0 and s.docs_changed == 3 and s.table_version == 2  # records.jsonl mtime too
    new = {r[C.CHUNK_ID]: r for r in rows(settings)}
    assert new.keys() == old.keys()
    doc0 = [r for r in new.values() if r[C.DOC_ID] == "doc0.md"]
    assert all(abs(r[C.MTIME].timestamp() - later) < 1 for r in doc0)
    rec_a = next(r for r in new.values() if r[C.DOC_ID] == "records.jsonl#a")
    assert json.loads(rec_a[C.METADATA])["tag"] == "y"
    for cid, r in new.items():
        assert r[C.VECTOR] == old[cid][C.VECTOR] and r[C.RUN_ID] == old[cid][C.RUN_ID]


def test_model_or_chunking_change_is_refused_with_reindex_hint(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src", n=2)
    run([src], settings_for(tmp_path, model={"name": "fake:32"}))
    state, _ = run([src], settings_for(tmp_path, model={"name": "fake:32:other-weights"}))
    assert state.is_failed() and "embedpipe reindex --model fake:32:other-weights" in state.message
    state, _ = run([src], settings_for(tmp_path, chunk={"tokens": 48, "overlap": 4}))
    assert state.is_failed()
    assert "embedpipe reindex --chunk-tokens 48 --chunk-overlap 4" in state.message
    assert [v["version"] for v in Store(settings_for(tmp_path).store).versions()] == [1]


def test_reindex_switches_model_atomically_and_rollback_returns(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src", n=4)
    old = settings_for(tmp_path, model={"name": "fake:16"})
    _, s1 = run([src], old)
    store = Store(old.store)
    old_rows = store.open_table().to_arrow()
    reader = store.snapshot()  # a reader that opened the table before the switch
    new = settings_for(tmp_path, model={"name": "fake:24"}, runtime={"shard_rows": 7})  # several shards
    state = reindex(new, return_state=True)
    r = state.result()
    assert state.is_completed(), state.message
    assert r.flow == "reindex" and r.reused_chunk_texts is True  # same chunking: texts reused, no source read
    assert r.table_version == s1.table_version + 1 and r.chunks_embedded == old_rows.num_rows
    assert r.model == "fake:24" and r.dim == 24
    table = store.open_table()
    assert table.schema.field(C.VECTOR).type.list_size == 24
    assert sorted(table.to_arrow().column(C.CHUNK_ID).to_pylist()) == sorted(
        old_rows.column(C.CHUNK_ID).to_pylist()
    )
    assert reader.count_rows() == old_rows.num_rows and reader.schema.field(C.VECTOR).type.list_size == 16
    # the next sync with the new model is incremental again
    _, s2 = run([src], new)
    assert s2.table_version is None and s2.chunks_embedded == 0
    # and the old index is one rollback away
    store.rollback(s1.run_id)
    assert store.table_identity().name == "fake:16"
    assert store.open_table().count_rows() == old_rows.num_rows


def test_reindex_with_new_chunking_rereads_sources(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src", n=3)
    settings = settings_for(tmp_path)
    _, s1 = run([src], settings)
    # 12-token chunks of a bag-of-words fake model: a different vector distribution, which the
    # geometry gates may flag depending on which rows the (path-dependent) sample draws; the
    # publish gate is not what this test is about.
    finer = settings_for(tmp_path, chunk={"tokens": 12, "overlap": 0}, checks={"enabled": False})
    r = reindex(finer)
    assert r.status == "completed" and r.reused_chunk_texts is False
    assert r.chunks_written > s1.chunks_written
    assert max(x[C.N_TOKENS] for x in rows(finer)) <= 10
    _, s2 = run([src], finer)
    assert s2.table_version is None


def test_reindex_of_missing_table_fails_cleanly(tmp_path: Path) -> None:
    state = reindex(settings_for(tmp_path), return_state=True)
    assert state.is_failed() and "table=chunks not found" in state.message


def test_retention_keeps_tagged_latest_and_last_n(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src", n=2)
    settings = settings_for(tmp_path, retention={"auto": False})
    for i in range(6):
        make_doc(src / "doc0.md", [f"Edit number {i}.", *PARAS])
        run([src], settings)
    store = Store(settings.store)
    table = store.open_table()
    table.tags.create("baseline", 2)
    assert len(table.list_versions()) == 6
    report = store.apply_retention(keep_versions=2, max_age_hours=1e-9, compact=True)
    versions = [v["version"] for v in store.versions()]
    # compaction added a version; kept: the last two and the user-tagged baseline (2)
    assert report["chunks"]["versions_before"] >= 6
    assert versions[0] == 2 and len(versions) == 3 and versions[-1] == store.open_table().version
    assert report["chunks"]["run_tags_dropped"] >= 3
    assert "baseline" in store.open_table().tags.list()
    latest = store.open_table().to_arrow()
    assert pc.sum(pc.equal(latest.column(C.DOC_ID), "doc0.md")).as_py() == len(PARAS)
    # young versions are never removed, whatever the count
    before = len(store.versions())
    store.apply_retention(keep_versions=1, max_age_hours=1000)
    assert len(store.versions()) == before


def test_hostile_file_names_survive_filters(tmp_path: Path) -> None:
    """Quotes, SQL-looking text and unicode in paths are data, never filter syntax."""
    src = tmp_path / "src"
    names = ["it's.md", "x' OR '1'='1.md", "目录/文件 1.md", 'dq"uote.md']
    for i, name in enumerate(names):
        make_doc(src / name, [f"Document {i}.", *PARAS[:2]])
    settings = settings_for(tmp_path)
    _, s1 = run([src], settings)
    assert s1.docs_new == 4
    make_doc(src / "it's.md", ["Document 0 rewritten.", *PARAS[:2]])
    (src / "x' OR '1'='1.md").unlink()
    _, s2 = run([src], settings)
    assert (s2.docs_changed, s2.docs_deleted, s2.docs_unchanged) == (1, 1, 2), s2
    ids = {r[C.DOC_ID] for r in rows(settings)}
    assert ids == {"it's.md", "目录/文件 1.md", 'dq"uote.md'}


def test_unchanged_files_are_not_read_again_unless_told(tmp_path: Path) -> None:
    """The quick check: same size and mtime means unchanged, for single-document text files only."""
    src = corpus(tmp_path / "src", n=3)
    settings = settings_for(tmp_path)
    _, s1 = run([src], settings)
    doc = src / "doc1.md"
    st = doc.stat()
    # same length, other text, mtime put back: only a content read can tell
    doc.write_text(doc.read_text().replace("Document 1.", "Document X."))
    os.utime(doc, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert doc.stat().st_size == st.st_size
    _, s2 = run([src], settings)
    assert (s2.docs_unchanged, s2.docs_changed, s2.table_version) == (s1.docs_new, 0, None)
    careful = settings_for(tmp_path, source={"skip_unchanged_files": False})
    _, s3 = run([src], careful)
    assert s3.docs_changed == 1 and s3.chunks_embedded >= 1
    assert any("Document X." in r[C.TEXT] for r in rows(settings))
    # a touched file is read again, and found unchanged in content
    os.utime(src / "doc2.md")
    _, s4 = run([src], settings)
    assert s4.docs_changed == 1 and s4.chunks_embedded == 0  # metadata-only: the new mtime


def test_unchanged_record_files_are_skipped_while_the_reader_settings_hold(tmp_path: Path) -> None:
    """A JSONL file with the same size and mtime is not re-read, unless text_field/id_field changed."""
    src = tmp_path / "src"
    rec = src / "r.jsonl"
    write(
        rec,
        '{"id": "a", "text": "alpha one", "body": "first body"}\n'
        '{"id": "b", "text": "beta two", "body": "second body"}\n',
    )
    settings = settings_for(tmp_path)
    _, s1 = run([src], settings)
    assert (s1.docs_new, s1.status) == (2, "completed")
    table = Store(settings.store).open_table()
    recorded = json.loads(table.to_lance().schema.metadata[b"embedpipe.reader"])
    assert recorded == {str(src): {"version": 1, "text_field": "text", "id_field": "id"}}

    # same length, other text, mtime put back: an unchanged file, not read
    st = rec.stat()
    rec.write_text(rec.read_text().replace("alpha one", "alpha 111"))
    os.utime(rec, ns=(st.st_atime_ns, st.st_mtime_ns))
    _, s2 = run([src], settings)
    assert (s2.docs_unchanged, s2.docs_changed, s2.docs_deleted, s2.table_version) == (2, 0, 0, None), s2
    assert {r[C.TEXT] for r in rows(settings)} == {"alpha one", "beta two"}

    # other reader settings: every record file is read again, and the table records them
    body = settings_for(tmp_path, source={"text_field": "body"})
    _, s3 = run([src], body)
    assert (s3.docs_changed, s3.status) == (2, "completed"), s3
    assert {r[C.TEXT] for r in rows(body)} == {"first body", "second body"}
    table = Store(body.store).open_table()
    assert json.loads(table.to_lance().schema.metadata[b"embedpipe.reader"])[str(src)]["text_field"] == "body"
    assert s3.table_version == int(table.version)
    # ... and from then on the file is skipped again
    _, s4 = run([src], body)
    assert (s4.docs_unchanged, s4.table_version) == (2, None), s4
    # back to the first settings: read again, and the edit made above is found
    _, s5 = run([src], settings)
    assert s5.docs_changed == 2 and {r[C.TEXT] for r in rows(settings)} == {"alpha 111", "beta two"}


def _task_names(flow_run_id: object, wanted: set[str], timeout: float = 30.0) -> set[str]:
    """The task names a flow run started, once all of ``wanted`` are recorded (task runs reach the
    API asynchronously, through events)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    names: set[str] = set()
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200
            )
        names = {r.name.rsplit("-", 1)[0] for r in runs}
        if wanted <= names:
            return names
        time.sleep(0.5)
    raise AssertionError(f"tasks {sorted(wanted)} not recorded within {timeout}s; found {sorted(names)}")


def test_a_run_that_changes_nothing_starts_no_shard_task(tmp_path: Path) -> None:
    """Unchanged files (text and records) are left out before sharding: no ingest, chunk or embed task."""
    src = corpus(tmp_path / "src", n=3)
    settings = settings_for(tmp_path)
    first, s1 = run([src], settings)
    _task_names(first.state_details.flow_run_id, {"ingest", "chunk", "embed", "stage", "summarize"})
    again, s2 = run([src], settings)
    assert (s2.docs_unchanged, s2.docs_new, s2.table_version) == (s1.docs_new, 0, None), s2
    names = _task_names(again.state_details.flow_run_id, {"load-state", "discover", "write", "summarize"})
    assert not names & {"ingest", "chunk", "embed", "stage"}, sorted(names)
