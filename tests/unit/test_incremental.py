"""Change detection as pure functions: classify, missing documents, row refresh."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa

from embedpipe.hashing import sha256_text
from embedpipe.incremental import (
    classify,
    empty_state,
    missing_documents,
    refresh_rows,
    split_state,
    unchanged_files,
)
from embedpipe.schemas import C, doc_state_schema, docs_schema
from embedpipe.sources.files import FileRef
from embedpipe.sources.globs import PathFilter

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 2, tzinfo=UTC)


def doc(doc_id: str, text: str, mtime: datetime = T0, meta: dict | None = None, source: str = "/s") -> dict:
    return {
        C.DOC_ID: doc_id,
        C.SOURCE: source,
        C.PATH: doc_id.split("#")[0],
        C.TEXT: text,
        C.SIZE: len(text),
        C.MTIME: mtime,
        C.DOC_HASH: sha256_text(text),
        C.METADATA: json.dumps(meta) if meta else None,
    }


def state(*docs: dict) -> pa.Table:
    """The table's document state holding these documents."""
    return pa.Table.from_pylist(
        [{k: d[k] for k in doc_state_schema().names} for d in docs], doc_state_schema()
    )


def test_classify_sorts_new_changed_metadata_only_and_unchanged() -> None:
    old = [
        doc("a.txt", "same"),
        doc("b.txt", "old text"),
        doc("c.txt", "touched"),
        doc("r.jsonl#1", "x", meta={"k": 1}),
    ]
    known = state(*old)
    now = [
        doc("a.txt", "same"),
        doc("b.txt", "new text"),
        doc("c.txt", "touched", mtime=T1),
        doc("r.jsonl#1", "x", meta={"k": 2}),
        doc("d.txt", "brand new"),
    ]
    delta = classify(pa.Table.from_pylist(now, schema=docs_schema()), known)
    assert (delta.new, delta.unchanged) == (1, 1)
    assert delta.changed_text == [("/s", "b.txt")]
    assert delta.meta_only.column(C.DOC_ID).to_pylist() == ["c.txt", "r.jsonl#1"]
    assert C.TEXT not in delta.meta_only.column_names
    assert delta.to_chunk.column(C.DOC_ID).to_pylist() == ["b.txt", "d.txt"]
    assert delta.changed == 3
    assert len(delta.seen) == 5


def test_same_doc_id_under_another_source_is_new() -> None:
    d = doc("a.txt", "same")
    known = state(d)
    delta = classify(
        pa.Table.from_pylist([doc("a.txt", "same", source="/other")], schema=docs_schema()), known
    )
    assert delta.new == 1 and delta.unchanged == 0


def test_missing_documents_respects_scope_rejects_and_filters() -> None:
    known = state(
        doc("gone.txt", "x"),
        doc("kept.txt", "x"),
        doc("r.jsonl#1", "x"),
        doc("r.jsonl#2", "y"),
        doc("broken.jsonl#1", "x"),
        doc("excluded.md", "x"),
    )
    seen = [("/s", "kept.txt"), ("/s", "r.jsonl#1")]
    scanned = {("/s", "kept.txt"), ("/s", "r.jsonl"), ("/s", "broken.jsonl")}
    protected = {("/s", "broken.jsonl")}
    keep = PathFilter(["**/*.txt", "**/*.jsonl"], [])
    assert missing_documents(known, seen, scanned, protected, keep) == [
        ("/s", "gone.txt"),
        ("/s", "r.jsonl#2"),
    ]


def test_refresh_rows_replaces_document_columns_only() -> None:
    stored = pa.table(
        {
            C.SOURCE: ["/s", "/s"],
            C.DOC_ID: ["a.txt", "a.txt"],
            C.TEXT: ["one", "two"],
            C.SIZE: pa.array([3, 3], pa.int64()),
            C.MTIME: pa.array([T0, T0], pa.timestamp("us", tz="UTC")),
            C.METADATA: pa.array([None, None], pa.string()),
            C.DOC_HASH: ["h", "h"],
        }
    )
    fresh = pa.Table.from_pylist([doc("a.txt", "whatever", mtime=T1, meta={"k": 1})], schema=docs_schema())
    out = refresh_rows(stored, fresh.drop_columns([C.TEXT]))
    assert out.column(C.TEXT).to_pylist() == ["one", "two"]
    assert out.column(C.MTIME).to_pylist() == [T1, T1]
    assert out.column(C.METADATA).to_pylist() == [json.dumps({"k": 1})] * 2


def ref(path: str, size: int = 1, mtime_ns: int = 0, kind: str = "text", part=None) -> FileRef:
    return FileRef(source="/s", path=path, size=size, mtime_ns=mtime_ns, kind=kind, part=part)


def test_classify_compares_null_metadata_and_mtime_column_wise() -> None:
    old = [doc("a.txt", "x"), doc("b.txt", "y", meta={"k": 1}), doc("c.txt", "z")]
    now = [doc("a.txt", "x"), doc("b.txt", "y"), doc("c.txt", "z", mtime=T1)]
    delta = classify(pa.Table.from_pylist(now, schema=docs_schema()), state(*old))
    assert delta.unchanged == 1 and delta.new == 0 and delta.changed_text == []
    assert delta.meta_only.column(C.DOC_ID).to_pylist() == ["b.txt", "c.txt"]
    assert delta.seen == [("/s", "a.txt"), ("/s", "b.txt"), ("/s", "c.txt")]
    empty = classify(pa.Table.from_pylist(now, schema=docs_schema()), empty_state())
    assert empty.new == 3 and empty.to_chunk.num_rows == 3 and empty.unchanged == 0


def test_classify_keeps_the_documents_order_and_matches_on_path_too() -> None:
    old = [doc(f"d{i}.txt", f"t{i}") for i in range(50)]
    now = [doc(f"d{i}.txt", f"t{i}" if i % 7 else "edited") for i in reversed(range(50))]
    delta = classify(pa.Table.from_pylist(now, schema=docs_schema()), state(*old))
    edited = [f"d{i}.txt" for i in reversed(range(50)) if i % 7 == 0]
    assert delta.to_chunk.column(C.DOC_ID).to_pylist() == edited
    assert delta.changed_text == [("/s", d) for d in edited]
    moved = dict(doc("d1.txt", "t1"), **{C.PATH: "elsewhere.txt"})  # same id, another file
    assert classify(pa.Table.from_pylist([moved], schema=docs_schema()), state(*old)).new == 1


def test_split_state_gives_each_shard_its_files_state_in_one_pass() -> None:
    known = state(doc("a.txt", "x"), doc("big.jsonl#1", "1"), doc("big.jsonl#2", "2"), doc("gone.txt", "g"))
    shards = [
        [ref("a.txt"), ref("big.jsonl", kind="jsonl", part=(0, 10, 1))],
        [ref("new.txt")],
        [ref("big.jsonl", kind="jsonl", part=(10, 20, 5))],
    ]
    parts = split_state(known, shards)
    assert [sorted(p.column(C.DOC_ID).to_pylist()) for p in parts] == [
        ["a.txt", "big.jsonl#1", "big.jsonl#2"],
        [],
        ["big.jsonl#1", "big.jsonl#2"],
    ]
    assert all(p.schema.equals(known.schema) for p in parts)
    assert [p.num_rows for p in split_state(empty_state(), shards)] == [0, 0, 0]


def test_unchanged_whole_files_need_one_current_id_same_size_and_mtime() -> None:
    t0_ns = int(T0.timestamp() * 1e9)
    known = state(
        doc("same.txt", "abc"),
        doc("touched.txt", "abc"),
        doc("grown.txt", "abc"),
        doc("a#b.txt", "abc"),  # stored under the id of an earlier form (unescaped '#')
        doc("r.jsonl#1", "abc"),
    )
    refs = [
        ref("same.txt", 3, t0_ns),
        ref("touched.txt", 3, t0_ns + 1_000_000),
        ref("grown.txt", 4, t0_ns),
        ref("a#b.txt", 3, t0_ns),
        ref("r.jsonl", 3, t0_ns, kind="jsonl"),  # a record file: only with records=True
        ref("new.txt", 3, t0_ns),
    ]
    same = unchanged_files(refs, known)
    assert same.refs == [0] and same.docs == 1
    assert same.files.to_pylist() == [{C.SOURCE: "/s", C.PATH: "same.txt"}]
    assert unchanged_files(refs, empty_state(), records={"/s"}).refs == []


def record(doc_id: str, size: int, mtime: datetime = T0) -> dict:
    d = doc(doc_id, "text of " + doc_id, mtime=mtime)
    d[C.SIZE] = size  # every record carries its file's size and mtime
    return d


def test_unchanged_record_files_need_the_reader_settings_and_every_record_current() -> None:
    t0_ns = int(T0.timestamp() * 1e9)
    known = state(
        record("r.jsonl#1", 90),
        record("r.jsonl#2", 90),
        record("mixed.jsonl#1", 90),
        record("mixed.jsonl#2", 80),  # stored from an older size: the file changed since
        record("rows.csv#a", 50),
        record("a%b.jsonl#1", 90),  # a path whose record ids changed form once: read
    )
    refs = [
        ref("r.jsonl", 90, t0_ns, kind="jsonl"),
        ref("mixed.jsonl", 90, t0_ns, kind="jsonl"),
        ref("rows.csv", 50, t0_ns + 1_000, kind="csv"),  # mtime moved by a microsecond
        ref("a%b.jsonl", 90, t0_ns, kind="jsonl"),
        ref("big.jsonl", 90, t0_ns, kind="jsonl", part=(0, 10, 0)),  # a part: never skipped
    ]
    same = unchanged_files(refs, known, records={"/s"})
    assert same.refs == [0] and same.docs == 2
    assert unchanged_files(refs, known).refs == []


def test_missing_documents_keeps_the_documents_of_unchanged_files() -> None:
    known = state(doc("a.txt", "x"), record("r.jsonl#1", 9), record("r.jsonl#2", 9), doc("gone.txt", "x"))
    scanned = {("/s", "a.txt"), ("/s", "r.jsonl")}
    unchanged = pa.table({C.SOURCE: ["/s", "/s"], C.PATH: ["a.txt", "r.jsonl"]})
    keep = PathFilter(["**/*"], [])
    assert missing_documents(known, [], scanned, set(), keep, unchanged) == [("/s", "gone.txt")]
    assert missing_documents(known, [], scanned, set(), keep) == [
        ("/s", "a.txt"),
        ("/s", "gone.txt"),
        ("/s", "r.jsonl#1"),
        ("/s", "r.jsonl#2"),
    ]


def test_the_reader_record_follows_whole_roots_and_drops_a_root_read_in_part() -> None:
    from embedpipe.sources.parse import reader_map, updated_reader_map

    text = {"version": 1, "text_field": "text", "id_field": "id"}
    body = {"version": 1, "text_field": "body", "id_field": "id"}
    stored = {"/a": text, "/b": text}
    # a whole root read with other settings records them; other roots keep theirs
    assert updated_reader_map(stored, [("/a", True)], body) == {"/a": body, "/b": text}
    # single files of a root read with other settings: its other files were not, so no record
    assert updated_reader_map(stored, [("/a", False)], body) == {"/b": text}
    # single files read with the recorded settings change nothing
    assert updated_reader_map(stored, [("/a", False)], text) == stored
    assert reader_map(None) == {} and reader_map("not json") == {} and reader_map('["x"]') == {}
    assert reader_map('{"/a": {"text_field": "t"}, "/b": "old form"}') == {"/a": {"text_field": "t"}}
