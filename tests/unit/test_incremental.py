"""Change detection as pure functions: classify, missing documents, row refresh."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa

from embedpipe.hashing import sha256_text
from embedpipe.incremental import classify, missing_documents, refresh_rows
from embedpipe.schemas import C, docs_schema
from embedpipe.sources.globs import PathFilter
from embedpipe.store import DocState

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


def state(d: dict) -> DocState:
    return DocState(doc_hash=d[C.DOC_HASH], size=d[C.SIZE], mtime=d[C.MTIME], metadata=d[C.METADATA])


def test_classify_sorts_new_changed_metadata_only_and_unchanged() -> None:
    old = [
        doc("a.txt", "same"),
        doc("b.txt", "old text"),
        doc("c.txt", "touched"),
        doc("r.jsonl#1", "x", meta={"k": 1}),
    ]
    known = {("/s", d[C.PATH]): {d[C.DOC_ID]: state(d)} for d in old}
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
    known = {("/s", "a.txt"): {"a.txt": state(d)}}
    delta = classify(
        pa.Table.from_pylist([doc("a.txt", "same", source="/other")], schema=docs_schema()), known
    )
    assert delta.new == 1 and delta.unchanged == 0


def test_missing_documents_respects_scope_rejects_and_filters() -> None:
    known = {
        ("/s", "gone.txt"): {"gone.txt": state(doc("gone.txt", "x"))},
        ("/s", "kept.txt"): {"kept.txt": state(doc("kept.txt", "x"))},
        ("/s", "r.jsonl"): {
            "r.jsonl#1": state(doc("r.jsonl#1", "x")),
            "r.jsonl#2": state(doc("r.jsonl#2", "y")),
        },
        ("/s", "broken.jsonl"): {"broken.jsonl#1": state(doc("broken.jsonl#1", "x"))},
        ("/s", "excluded.md"): {"excluded.md": state(doc("excluded.md", "x"))},
    }
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
