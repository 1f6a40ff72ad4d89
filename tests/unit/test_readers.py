"""Sources (discover, parse, text): discovery (globs, hidden files, splitting), parsing of every
format, and bad input as rejects.

Every test works on real files under ``tmp_path`` and checks that nothing is lost silently: each
document or record met ends up either in the documents table or in the rejects.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedpipe.config import SourceSettings
from embedpipe.errors import RejectedInput, SourceError
from embedpipe.schemas import C, Reject, docs_schema
from embedpipe.sources.discover import discover, plan_shards
from embedpipe.sources.files import FileRef, normalize_source
from embedpipe.sources.parse import read_documents
from embedpipe.sources.text import decode_text, html_to_text

BIG = 1 << 40  # a split_bytes no test file reaches


# --------------------------------------------------------------------------- helpers


def put(path: Path, content: str | bytes) -> Path:
    """Write a file (bytes as given, str as UTF-8 without newline translation), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def jsonl(*objs: Any) -> str:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Ingest:
    """What discovery and reading made of some sources."""

    refs: list[FileRef]
    found_rejects: list[Reject]
    table: pa.Table
    rejects: list[Reject]
    seen: int

    @property
    def all_rejects(self) -> list[Reject]:
        return self.found_rejects + self.rejects

    @property
    def ids(self) -> list[str]:
        return self.table.column(C.DOC_ID).to_pylist()

    @property
    def texts(self) -> dict[str, str]:
        return dict(zip(self.ids, self.table.column(C.TEXT).to_pylist(), strict=True))

    @property
    def reasons(self) -> dict[str, str]:
        return {r.path: r.reason for r in self.all_rejects}

    def row(self, doc_id: str) -> dict[str, Any]:
        rows = [r for r in self.table.to_pylist() if r[C.DOC_ID] == doc_id]
        assert len(rows) == 1, f"{doc_id}: {len(rows)} rows"
        return rows[0]

    def meta(self, doc_id: str) -> Any:
        raw = self.row(doc_id)[C.METADATA]
        return None if raw is None else json.loads(raw)


def ingest(*sources: Path | str, settings: SourceSettings | None = None, split_bytes: int = BIG) -> Ingest:
    """Discover and read ``sources``, checking the accounting invariants of every read."""
    settings = settings or SourceSettings()
    refs, found_rejects = discover([str(s) for s in sources], settings, split_bytes=split_bytes)
    table, rejects, seen = read_documents(refs, settings)
    assert table.schema.equals(docs_schema(), check_metadata=True)
    assert seen == table.num_rows + len(rejects), "a document was lost silently"
    ids = table.column(C.DOC_ID).to_pylist()
    assert len(ids) == len(set(ids)), f"duplicate doc_ids: {ids}"
    for r in found_rejects + rejects:
        assert r.reason.strip() and r.source, r
    return Ingest(refs, found_rejects, table, rejects, seen)


def one_reject(result: Ingest, path: str) -> str:
    """The reason of the only reject, which must be for ``path``; nothing was read."""
    assert result.table.num_rows == 0, result.ids
    assert [r.path for r in result.all_rejects] == [path]
    return result.all_rejects[0].reason


def root_of(tmp_path: Path) -> str:
    return str(tmp_path.resolve())


# --------------------------------------------------------------------------- happy path per format


def test_txt_and_md_documents_with_all_columns(tmp_path: Path) -> None:
    src = tmp_path / "corpus"
    txt = put(src / "notes" / "a.txt", "Hello\nworld")
    md = put(src / "b.md", "# Title\n\nSome *markdown* body.\n")
    mtime_ns = 1_700_000_000_123_456_000
    os.utime(txt, ns=(mtime_ns, mtime_ns))

    result = ingest(src)

    assert result.ids == ["b.md", "notes/a.txt"]
    assert result.all_rejects == []
    row = result.row("notes/a.txt")
    assert row[C.SOURCE] == str(src.resolve())
    assert os.path.isabs(row[C.SOURCE])
    assert row[C.PATH] == "notes/a.txt"
    assert row[C.TEXT] == "Hello\nworld"
    assert row[C.SIZE] == txt.stat().st_size == 11
    assert abs(row[C.MTIME] - datetime.fromtimestamp(mtime_ns / 1e9, tz=UTC)) <= timedelta(microseconds=1)
    assert row[C.DOC_HASH] == sha("Hello\nworld")
    assert row[C.METADATA] is None
    md_row = result.row("b.md")
    assert md_row[C.TEXT] == "# Title\n\nSome *markdown* body.\n"
    assert md_row[C.SIZE] == md.stat().st_size
    assert md_row[C.DOC_HASH] == sha(md_row[C.TEXT])


HTML_PAGE = """<!DOCTYPE html>
<html><head><title>Page &amp; Title</title>
<style>body { color: red } .STYLE_TEXT {}</style>
<script>var secret = "SCRIPT_TEXT";</script>
</head><body>
<noscript>NOSCRIPT_TEXT</noscript>
<template><p>TEMPLATE_TEXT</p></template>
<h1>Heading</h1>
<p>First   paragraph
with <b>bold</b> &eacute;l&egrave;ve &#x263A; &lt;tag&gt;</p>
<div>Second<br>line</div>
</body></html>"""


@pytest.mark.parametrize("name", ["page.html", "page.htm", "PAGE.HTML"])
def test_html_keeps_visible_text_only(tmp_path: Path, name: str) -> None:
    put(tmp_path / name, HTML_PAGE)

    result = ingest(tmp_path)

    text = result.texts[name]
    for hidden in ("SCRIPT_TEXT", "STYLE_TEXT", "NOSCRIPT_TEXT", "TEMPLATE_TEXT", "color: red", "secret"):
        assert hidden not in text
    assert text == ("Page & Title\n\nHeading\n\nFirst paragraph\nwith bold élève ☺ <tag>\n\nSecond\nline")
    assert result.row(name)[C.DOC_HASH] == sha(text)


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("<p>a</p><p>b</p>", "a\n\nb"),
        ("<ul><li>one</li><li>two</li></ul>", "one\n\ntwo"),
        ("x<br/>y<br>z", "x\ny\nz"),
        ("<SCRIPT>bad()</SCRIPT><P>ok</P>", "ok"),
        ("<svg><style>s</style><text>t</text></svg>after", "after"),
        ("<p>&quot;q&quot; &amp;amp; &nbsp;x&#65;</p>", '"q" &amp; xA'),
        ("<p>unclosed <i>tags", "unclosed tags"),
        ("", ""),
    ],
)
def test_html_to_text_cases(html: str, expected: str) -> None:
    assert html_to_text(html) == expected


def test_json_single_object_is_one_document(tmp_path: Path) -> None:
    put(tmp_path / "sub" / "doc.json", json.dumps({"id": "ignored", "text": "body", "lang": "en", "n": 3}))

    result = ingest(tmp_path)

    assert result.ids == ["sub/doc.json"]
    assert result.texts["sub/doc.json"] == "body"
    assert result.meta("sub/doc.json") == {"id": "ignored", "lang": "en", "n": 3}
    assert result.row("sub/doc.json")[C.DOC_HASH] == sha("body")


def test_json_array_uses_id_or_one_based_row(tmp_path: Path) -> None:
    items = [
        {"id": "a", "text": "A"},
        {"text": "B", "tags": ["x", "y"]},
        {"id": 7, "text": "C"},
        {"id": "", "text": "D"},
        {"id": True, "text": "E"},
    ]
    put(tmp_path / "arr.json", json.dumps(items))

    result = ingest(tmp_path)

    assert result.texts == {
        "arr.json#a": "A",
        "arr.json#2": "B",
        "arr.json#7": "C",
        "arr.json#4": "D",
        "arr.json#5": "E",
    }
    assert result.meta("arr.json#2") == {"tags": ["x", "y"]}
    assert result.meta("arr.json#7") == {"id": 7}
    assert result.seen == 5


def test_jsonl_uses_id_or_line_number(tmp_path: Path) -> None:
    content = (
        '{"id": "x1", "text": "first", "tag": "a"}\n'
        '{"text": "second"}\n'
        "\n"
        '{"id": 42, "text": "fourth"}\r\n'
        '{"text": "fifth", "nested": {"k": [1, null]}}'  # no final newline
    )
    put(tmp_path / "f.jsonl", content)
    nd = put(tmp_path / "sub" / "g.ndjson", '{"text": "nd"}\n')

    result = ingest(tmp_path, settings=SourceSettings(include=["*.jsonl"]))
    assert ingest(nd).texts == {"g.ndjson#1": "nd"}
    assert "sub/g.ndjson#1" in ingest(tmp_path).texts  # .ndjson is read by default

    assert result.texts == {
        "f.jsonl#x1": "first",
        "f.jsonl#2": "second",
        "f.jsonl#42": "fourth",
        "f.jsonl#5": "fifth",
    }
    assert result.meta("f.jsonl#x1") == {"id": "x1", "tag": "a"}
    assert result.meta("f.jsonl#5") == {"nested": {"k": [1, None]}}
    assert result.meta("f.jsonl#2") == {}
    assert result.row("f.jsonl#42")[C.SIZE] == len(content.encode())


def test_csv_with_quoted_commas_newlines_and_quotes(tmp_path: Path) -> None:
    content = (
        "id,text,lang\r\n"
        'a,"Hello, world",en\r\n'
        'b,"Line one\r\nLine two",fr\r\n'
        ',"She said ""hi""",de\r\n'
        "\r\n"
        "c,plain,\r\n"
    )
    put(tmp_path / "f.csv", content)

    result = ingest(tmp_path)

    assert result.texts == {
        "f.csv#a": "Hello, world",
        "f.csv#b": "Line one\nLine two",
        "f.csv#3": 'She said "hi"',
        "f.csv#c": "plain",
    }
    assert result.meta("f.csv#a") == {"id": "a", "lang": "en"}
    assert result.meta("f.csv#3") == {"id": "", "lang": "de"}


def test_parquet_records(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": ["p1", None, "p3"],
            "text": ["alpha", "beta", "gamma"],
            "score": [1.5, 2.0, None],
        }
    )
    pq.write_table(table, tmp_path / "data.parquet")

    result = ingest(tmp_path)

    assert result.texts == {"data.parquet#p1": "alpha", "data.parquet#2": "beta", "data.parquet#p3": "gamma"}
    assert result.meta("data.parquet#2") == {"id": None, "score": 2.0}
    assert result.meta("data.parquet#p3") == {"id": "p3", "score": None}
    row = result.row("data.parquet#p1")
    assert row[C.SIZE] == (tmp_path / "data.parquet").stat().st_size
    assert row[C.DOC_HASH] == sha("alpha")
    assert row[C.SOURCE] == root_of(tmp_path)


def test_custom_text_and_id_fields(tmp_path: Path) -> None:
    put(tmp_path / "r.jsonl", jsonl({"key": "k1", "body": "one", "text": "not me"}, {"body": "two"}))
    settings = SourceSettings(text_field="body", id_field="key")

    result = ingest(tmp_path, settings=settings)

    assert result.texts == {"r.jsonl#k1": "one", "r.jsonl#2": "two"}
    assert result.meta("r.jsonl#k1") == {"key": "k1", "text": "not me"}


# --------------------------------------------------------------------------- discovery


def test_discovery_recurses_in_stable_order_with_default_globs(tmp_path: Path) -> None:
    for rel in ["z.txt", "a/b/c.md", "a/b.html", "a/a.json", "y/data.CSV", "y/notes.bin", "README"]:
        put(tmp_path / rel, '{"text": "t"}' if rel.endswith(".json") else "id,text\n1,t\n")

    refs, rejects = discover([str(tmp_path)], SourceSettings(), split_bytes=BIG)

    # os.walk order with sorted names: a folder's files, then its subfolders
    assert [r.path for r in refs] == ["z.txt", "a/a.json", "a/b.html", "a/b/c.md", "y/data.CSV"]
    assert {r.kind for r in refs} == {"json", "html", "text", "csv"}
    assert all(r.source == root_of(tmp_path) and r.part is None for r in refs)
    assert rejects == []  # files the globs do not include are skipped, not rejected
    assert refs[1].abspath == str(tmp_path.resolve() / "a" / "a.json")
    again, _ = discover([str(tmp_path)], SourceSettings(), split_bytes=BIG)
    assert again == refs


def test_include_and_exclude_globs(tmp_path: Path) -> None:
    for rel in ["top.md", "docs/a.md", "docs/deep/b.md", "drafts/c.md", "docs/drafts/d.md", "docs/e.txt"]:
        put(tmp_path / rel, "x")
    settings = SourceSettings(include=["**/*.md"], exclude=["**/drafts/**"])

    result = ingest(tmp_path, settings=settings)

    assert result.ids == ["top.md", "docs/a.md", "docs/deep/b.md"]
    assert result.all_rejects == []


def test_hidden_files_and_folders_are_excluded_by_default(tmp_path: Path) -> None:
    for rel in [".hidden.txt", ".git/config.txt", "sub/.secret.md", "sub/.cache/x.md", "sub/seen.md"]:
        put(tmp_path / rel, "x")

    result = ingest(tmp_path)

    assert result.ids == ["sub/seen.md"]
    assert result.all_rejects == []


def test_single_file_as_source(tmp_path: Path) -> None:
    f = put(tmp_path / "one" / "only.txt", "just me")
    put(tmp_path / "one" / "other.txt", "not me")

    result = ingest(f)

    assert result.ids == ["only.txt"]
    assert result.row("only.txt")[C.SOURCE] == str((tmp_path / "one").resolve())
    assert result.texts["only.txt"] == "just me"


def test_same_source_given_twice_is_read_once(tmp_path: Path) -> None:
    put(tmp_path / "docs" / "a.txt", "a")
    put(tmp_path / "docs" / "b.txt", "b")

    folder_refs, _ = discover(
        [str(tmp_path / "docs"), str(tmp_path / "docs") + "/", "docs"], SourceSettings(), split_bytes=BIG
    )
    file_refs, _ = discover([str(tmp_path / "docs" / "a.txt")] * 2, SourceSettings(), split_bytes=BIG)

    assert [r.path for r in folder_refs] == ["a.txt", "b.txt"]
    assert [r.path for r in file_refs] == ["a.txt"]


def test_missing_source_raises_source_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "here"
    with pytest.raises(SourceError, match="source not found") as info:
        discover([str(missing)], SourceSettings(), split_bytes=BIG)
    assert str(missing) in str(info.value)


def test_url_source_is_refused() -> None:
    with pytest.raises(SourceError, match="unsupported source=gs://bucket/x"):
        normalize_source("gs://bucket/x")
    # object storage is one normalized identity however the prefix is spelled
    assert normalize_source("s3://bucket//x/y/") == normalize_source("S3://bucket/x/y") == "s3://bucket/x/y"
    with pytest.raises(SourceError, match="no bucket"):
        normalize_source("s3://")


def _ref(name: str, size: int) -> FileRef:
    return FileRef(source="/src", path=name, size=size, mtime_ns=0, kind="text")


def test_plan_shards_respects_bytes_and_files() -> None:
    refs = [_ref(f"f{i}.txt", s) for i, s in enumerate([40, 40, 40, 100, 10, 10, 10, 10, 10])]

    by_bytes = plan_shards(refs, shard_bytes=100, shard_files=1000)
    assert [[r.path for r in shard] for shard in by_bytes] == [
        ["f0.txt", "f1.txt"],
        ["f2.txt"],
        ["f3.txt"],
        ["f4.txt", "f5.txt", "f6.txt", "f7.txt", "f8.txt"],
    ]
    by_files = plan_shards(refs, shard_bytes=10_000, shard_files=4)
    assert [len(s) for s in by_files] == [4, 4, 1]
    for shards in (by_bytes, by_files):
        assert [r for s in shards for r in s] == refs  # order kept, nothing lost or doubled
    oversized = plan_shards([_ref("huge.txt", 10_000), _ref("small.txt", 1)], 100, 10)
    assert [[r.path for r in s] for s in oversized] == [["huge.txt"], ["small.txt"]]
    assert plan_shards([], 100, 10) == []


def test_plan_shards_ramp_starts_small_and_doubles() -> None:
    refs = [_ref(f"f{i:02d}.txt", 10) for i in range(40)]
    shards = plan_shards(refs, shard_bytes=80, shard_files=1000, ramp=3)
    # budgets 10, 20, 40, then 80 bytes
    assert [len(s) for s in shards] == [1, 2, 4, 8, 8, 8, 8, 1]
    assert [r for s in shards for r in s] == refs
    assert plan_shards(refs, 80, 1000, ramp=0) == plan_shards(refs, 80, 1000)


# --------------------------------------------------------------------------- bad input: whole files


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("bin.txt", b"abc\x00\x01\x02def", "binary"),
        ("latin.md", "café crème".encode("latin-1"), "invalid UTF-8"),
        ("empty.txt", b"", "empty"),
        ("blank.md", b"  \n\t \r\n", "empty"),
        ("empty.html", b"", "empty"),
        ("empty.json", b"", "empty"),
        ("empty.csv", b"\n", "empty"),
        ("empty.jsonl", b"\n \n", "empty"),
        ("bad.json", b'{"text": "x",', "invalid JSON"),
        ("trailing.json", b'{"text": "x"} junk', "invalid JSON"),
        ("num.json", b"42", "JSON top level is int"),
        ("str.json", b'"text"', "JSON top level is str"),
        ("empty-array.json", b"[]", "empty JSON array"),
        ("no-text.json", b'{"body": "x"}', "no field 'text'"),
        ("int-text.json", b'{"text": 12}', "field 'text' is int, expected a string"),
        ("blank-text.json", b'{"text": " \\n "}', "field 'text' is empty"),
        ("deep.json", b"[" * 100_000, "nested too deeply"),
        ("deep-closed.json", b"[" * 5_000 + b"]" * 5_000, "nested too deeply"),
        ("nocol.csv", b"id,body\n1,x\n", "no column 'text'"),
        ("header.csv", b"id,text\n", "header but no rows"),
        ("header-blank-rows.csv", b"id,text\n\n\n", "header but no rows"),
        ("scripts.html", b"<script>only()</script>", "no text content"),
        ("controls.txt", b"\x07\x1b\x07", "no text content"),
        ("bad16.txt", b"\xff\xfeA\x00B", "invalid UTF-16"),
    ],
)
def test_bad_file_is_rejected_with_reason(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    put(tmp_path / name, content)

    result = ingest(tmp_path)

    assert reason in one_reject(result, name)
    assert result.seen == 1
    assert result.rejects[0].source == root_of(tmp_path)


def test_corrupt_parquet_is_rejected(tmp_path: Path) -> None:
    put(tmp_path / "corrupt.parquet", random.Random(7).randbytes(4096))
    put(tmp_path / "fake.parquet", b"PAR1" + b"\x00" * 100 + b"PAR1")

    # also with a tiny split size: discovery must not choke on the file either
    for split in (BIG, 16):
        result = ingest(tmp_path, split_bytes=split)
        assert result.table.num_rows == 0
        assert sorted(result.reasons) == ["corrupt.parquet", "fake.parquet"]
        for reason in result.reasons.values():
            assert "not a readable Parquet file" in reason
        assert result.seen == 2


def test_parquet_without_text_column_or_with_bad_values(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2], "body": ["a", "b"]}), tmp_path / "nocol.parquet")
    pq.write_table(pa.table({"id": [1, 2], "text": [5, 6]}), tmp_path / "ints.parquet")
    pq.write_table(pa.table({"text": ["ok", None, "  "]}), tmp_path / "nulls.parquet")

    result = ingest(tmp_path)

    assert result.texts == {"nulls.parquet#1": "ok"}
    reasons = result.reasons
    assert "no column 'text'" in reasons["nocol.parquet"]
    assert "columns: id, body" in reasons["nocol.parquet"]
    assert "field 'text' is int, expected a string" in reasons["ints.parquet#1"]
    assert "field 'text' is int" in reasons["ints.parquet#2"]
    assert "no field 'text'" in reasons["nulls.parquet#2"]
    assert "field 'text' is empty" in reasons["nulls.parquet#3"]
    assert result.seen == 1 + 2 + 3


# --------------------------------------------------------------------------- bad input: records


def test_jsonl_bad_lines_are_rejected_and_good_ones_kept(tmp_path: Path) -> None:
    lines = [
        b'{"id": "g1", "text": "good one"}',  # 1
        b'{"text": "broken"',  # 2
        b"[1, 2]",  # 3
        b'{"id": "n", "body": "x"}',  # 4
        b'{"text": 5}',  # 5
        b'{"text": "   "}',  # 6
        b'{"id": "g1", "text": "dup"}',  # 7
        b'{"text": "good two"}',  # 8
        b'"just a string"',  # 9
        '{"text": "café"}'.encode("latin-1"),  # 10
        b'{"text": "a\x00b"}',  # 11
        b"[" * 100_000,  # 12
        b"",  # 13: blank, skipped
        b'{"text": null}',  # 14
        b'{"id": 3.5, "text": "float id falls back to the line"}',  # 15
    ]
    put(tmp_path / "mixed.jsonl", b"\n".join(lines) + b"\n")

    result = ingest(tmp_path)

    assert result.texts == {
        "mixed.jsonl#g1": "good one",
        "mixed.jsonl#8": "good two",
        "mixed.jsonl#15": "float id falls back to the line",
    }
    reasons = result.reasons
    expected = {
        "mixed.jsonl#2": "line 2: invalid JSON",
        "mixed.jsonl#3": "line 3: expected an object with field 'text', got list",
        "mixed.jsonl#4": "line 4: no field 'text'",
        "mixed.jsonl#5": "line 5: field 'text' is int, expected a string",
        "mixed.jsonl#6": "line 6: field 'text' is empty",
        "mixed.jsonl#9": "line 9: expected an object with field 'text', got str",
        "mixed.jsonl#10": "line 10: invalid UTF-8",
        "mixed.jsonl#11": "line 11: binary data",
        "mixed.jsonl#12": "line 12: invalid JSON: nested too deeply",
        "mixed.jsonl#14": "line 14: no field 'text'",
    }
    for path, reason in expected.items():
        assert reason in reasons[path], (path, reasons[path])
    dup = [r for r in result.rejects if "duplicate id" in r.reason]
    assert len(dup) == 1 and "duplicate id 'g1'" in dup[0].reason
    assert dup[0].path == "mixed.jsonl#g1"
    assert len(result.rejects) == len(expected) + 1
    assert result.seen == 14  # every non-blank line


def test_json_array_bad_items_are_rejected_per_item(tmp_path: Path) -> None:
    items = [{"text": "ok"}, 5, {"body": "x"}, {"id": "d", "text": "x"}, {"id": "d", "text": "y"}]
    put(tmp_path / "arr.json", json.dumps(items))

    result = ingest(tmp_path)

    assert result.texts == {"arr.json#1": "ok", "arr.json#d": "x"}
    assert "item 2: expected an object with field 'text', got int" in result.reasons["arr.json#2"]
    assert "item 3: no field 'text'" in result.reasons["arr.json#3"]
    assert [r.reason for r in result.rejects if r.path == "arr.json#d"] == ["duplicate id 'd' in this file"]
    assert result.seen == 5


def test_csv_bad_rows_are_rejected_per_row(tmp_path: Path) -> None:
    content = (
        "id,text,lang\n1,good,en\n2,short\n3,also good,de\n4,,en\n5,x,en,extra\n6,dup-check,en\n6,again,en\n"
    )
    put(tmp_path / "f.csv", content)

    result = ingest(tmp_path)

    assert result.texts == {"f.csv#1": "good", "f.csv#3": "also good", "f.csv#6": "dup-check"}
    reasons = result.reasons
    assert "row 2 (line 3): expected 3 fields, got 2" in reasons["f.csv#2"]
    assert "row 4: field 'text' is empty" in reasons["f.csv#4"]
    assert "expected 3 fields, got 4" in reasons["f.csv#5"]
    assert [r.reason for r in result.rejects if r.path == "f.csv#6"] == ["duplicate id '6' in this file"]
    assert result.seen == 7


def test_jsonl_duplicate_ids_within_a_file(tmp_path: Path) -> None:
    put(tmp_path / "a.jsonl", jsonl({"id": 1, "text": "x"}, {"id": "1", "text": "y"}, {"id": 2, "text": "z"}))
    put(tmp_path / "b.jsonl", jsonl({"id": 1, "text": "same id, other file"}))

    result = ingest(tmp_path)

    assert result.texts == {"a.jsonl#1": "x", "a.jsonl#2": "z", "b.jsonl#1": "same id, other file"}
    assert [(r.path, r.reason) for r in result.rejects] == [("a.jsonl#1", "duplicate id '1' in this file")]
    assert result.seen == 4


def test_dangling_symlink_is_rejected(tmp_path: Path) -> None:
    put(tmp_path / "ok.txt", "fine")
    (tmp_path / "gone.txt").symlink_to(tmp_path / "does-not-exist.txt")

    result = ingest(tmp_path)

    assert result.ids == ["ok.txt"]
    assert [r.path for r in result.found_rejects] == ["gone.txt"]
    assert "unreadable file: broken symlink" in result.reasons["gone.txt"]
    assert result.found_rejects[0].source == root_of(tmp_path)


def test_file_removed_after_discovery_is_rejected_not_raised(tmp_path: Path) -> None:
    put(tmp_path / "a.txt", "a")
    put(tmp_path / "b.jsonl", jsonl({"text": "b"}))
    refs, _ = discover([str(tmp_path)], SourceSettings(), split_bytes=BIG)
    (tmp_path / "a.txt").unlink()
    (tmp_path / "b.jsonl").unlink()

    table, rejects, seen = read_documents(refs, SourceSettings())

    assert table.num_rows == 0
    assert {r.path: r.reason for r in rejects} == {
        "a.txt": "unreadable file: No such file or directory",
        "b.jsonl": "unreadable file: No such file or directory",
    }
    assert seen == 2


def test_fifo_is_rejected_as_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.txt")
    put(tmp_path / "ok.txt", "fine")

    result = ingest(tmp_path)

    assert result.ids == ["ok.txt"]
    assert "not a regular file" in result.reasons["pipe.txt"]


def test_file_over_max_file_mb_is_rejected(tmp_path: Path) -> None:
    put(tmp_path / "big.txt", "x" * 2000)
    put(tmp_path / "small.txt", "x" * 500)
    settings = SourceSettings(max_file_mb=0.001)  # 1048 bytes

    result = ingest(tmp_path, settings=settings)

    assert result.ids == ["small.txt"]
    reason = result.reasons["big.txt"]
    assert "file too large" in reason and "source.max_file_mb" in reason
    assert len(result.found_rejects) == 1


def test_unsupported_extension_matched_by_include_is_rejected(tmp_path: Path) -> None:
    put(tmp_path / "paper.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    put(tmp_path / "noext", "x")
    put(tmp_path / "ok.md", "fine")
    settings = SourceSettings(include=["**/*.pdf", "**/*.md", "noext"])

    result = ingest(tmp_path, settings=settings)

    assert result.ids == ["ok.md"]
    assert "unsupported file type '.pdf'" in result.reasons["paper.pdf"]
    assert ".parquet" in result.reasons["paper.pdf"]  # names what is supported
    assert "unsupported file type '(none)'" in result.reasons["noext"]


def test_lone_surrogate_in_json_is_rejected_not_raised(tmp_path: Path) -> None:
    put(tmp_path / "s.jsonl", '{"text": "a\\ud800b"}\n{"text": "fine", "x": "\\udc00"}\n{"text": "ok"}\n')

    result = ingest(tmp_path)

    assert result.texts["s.jsonl#3"] == "ok"
    reason = result.reasons["s.jsonl#1"].lower()
    assert "surrogate" in reason or "unicode" in reason
    assert result.seen == 3


def test_malformed_html_marked_section_does_not_raise(tmp_path: Path) -> None:
    put(tmp_path / "bad.html", "<p>before</p><![foo bar]><p>after</p>")
    put(tmp_path / "good.html", "<p>good</p>")

    result = ingest(tmp_path)

    assert result.texts["good.html"] == "good"
    if "bad.html" in result.reasons:
        assert "HTML" in result.reasons["bad.html"]
    else:
        assert "before" in result.texts["bad.html"]
    assert result.seen == 2


# --------------------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("héllo wörld ☺".encode("utf-16"), "héllo wörld ☺"),  # BOM + native (LE) order
        (b"\xfe\xff" + "héllo ☺".encode("utf-16-be"), "héllo ☺"),
        (b"\xff\xfe" + "x\r\ny".encode("utf-16-le"), "x\ny"),
        ("📄 utf-32".encode("utf-32"), "📄 utf-32"),
        (b"\xef\xbb\xbfBOM text", "BOM text"),
        (b"a\r\nb\rc\n", "a\nb\nc\n"),
        (b"bell\x07 esc\x1b[31m del\x7f tab\tend", "bell esc[31m del tab\tend"),
        (b"\x0b\x0cff", "ff"),
        ("ünïcödé 中文".encode(), "ünïcödé 中文"),
    ],
)
def test_decode_text(data: bytes, expected: str) -> None:
    assert decode_text(data) == expected


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"text\x00more", "binary file (NUL bytes"),
        (b"ok \xe9 no", "invalid UTF-8 at byte 3"),
        (b"\xff\xfeA", "invalid UTF-16"),
        (b"\xef\xbb\xbf\xff", "invalid UTF-8"),
    ],
)
def test_decode_text_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(RejectedInput) as info:
        decode_text(data)
    assert reason in str(info.value)


def test_bom_and_crlf_files_are_decoded(tmp_path: Path) -> None:
    put(tmp_path / "u16.txt", "Grüße\r\naus Köln\r\n".encode("utf-16"))
    put(tmp_path / "u8bom.md", b"\xef\xbb\xbf# Caf\xc3\xa9\r\nline")
    put(tmp_path / "bom.csv", b"\xef\xbb\xbfid,text\r\n1,first\r\n")
    put(tmp_path / "bom.jsonl", b'\xef\xbb\xbf{"text": "bom line"}\r\n{"text": "two"}\r\n')
    put(tmp_path / "bom.json", b'\xef\xbb\xbf{"text": "json bom"}')
    put(tmp_path / "ctl.txt", b"a\x07b\x1b[0mc\x00"[:-1] + b"\r\n")
    put(tmp_path / "ctl.jsonl", jsonl({"text": "x\u0007y\r\nz"}))

    result = ingest(tmp_path)

    assert result.all_rejects == []
    assert result.texts == {
        "u16.txt": "Grüße\naus Köln\n",
        "u8bom.md": "# Café\nline",
        "bom.csv#1": "first",
        "bom.jsonl#1": "bom line",
        "bom.jsonl#2": "two",
        "bom.json": "json bom",
        "ctl.txt": "ab[0mc\n",
        "ctl.jsonl#1": "xy\nz",
    }
    for doc_id, text in result.texts.items():
        assert result.row(doc_id)[C.DOC_HASH] == sha(text)


# --------------------------------------------------------------------------- hostile and huge input


def test_five_megabyte_single_line_is_read(tmp_path: Path) -> None:
    text = "x" * (5 * 1024 * 1024)
    put(tmp_path / "long.txt", text)

    result = ingest(tmp_path)

    assert result.all_rejects == []
    assert len(result.texts["long.txt"]) == len(text)
    assert result.row("long.txt")[C.DOC_HASH] == sha(text)


def test_escaped_script_in_pre_stays_literal_text(tmp_path: Path) -> None:
    put(
        tmp_path / "x.html",
        "<html><body><script>steal()</script>"
        "<pre>&lt;script&gt;alert(1)&lt;/script&gt;</pre><p>after</p></body></html>",
    )

    result = ingest(tmp_path)

    text = result.texts["x.html"]
    assert "<script>alert(1)</script>" in text
    assert "steal()" not in text
    assert text.endswith("after")


def test_paths_with_spaces_and_unicode(tmp_path: Path) -> None:
    put(tmp_path / "目录" / "文件 1.txt", "中文内容")
    put(tmp_path / "my docs" / "a b.jsonl", jsonl({"text": "r1"}, {"id": "ü 1", "text": "r2"}))
    put(tmp_path / "my docs" / "é.csv", "text\nrow\n")

    result = ingest(tmp_path)

    assert result.texts == {
        "my docs/a b.jsonl#1": "r1",
        "my docs/a b.jsonl#ü 1": "r2",
        "my docs/é.csv#1": "row",
        "目录/文件 1.txt": "中文内容",
    }
    assert result.row("目录/文件 1.txt")[C.PATH] == "目录/文件 1.txt"
    single = ingest(tmp_path / "目录" / "文件 1.txt")
    assert single.ids == ["文件 1.txt"]


# --------------------------------------------------------------------------- splitting


def _records_of(result: Ingest) -> list[tuple[str, str]]:
    return sorted(result.texts.items())


def _read_parts(refs: list[FileRef], settings: SourceSettings) -> tuple[dict[str, str], list[str], int]:
    """Read each part on its own (as separate shards would) and merge the results."""
    texts: dict[str, str] = {}
    reject_paths: list[str] = []
    seen = 0
    for ref in refs:
        table, rejects, n = read_documents([ref], settings)
        assert n == table.num_rows + len(rejects)
        ids = table.column(C.DOC_ID).to_pylist()
        assert not set(ids) & set(texts), "a record was read by two parts"
        texts.update(zip(ids, table.column(C.TEXT).to_pylist(), strict=True))
        reject_paths += [r.path for r in rejects]
        seen += n
    return texts, reject_paths, seen


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("final_newline", [True, False])
def test_split_jsonl_reads_the_same_as_unsplit(tmp_path: Path, newline: str, final_newline: bool) -> None:
    lines = []
    for n in range(1, 301):
        if n % 17 == 0:
            lines.append("")  # blank lines still count
        elif n % 23 == 0:
            lines.append("{broken")
        elif n % 3 == 0:
            lines.append(json.dumps({"id": f"r{n}", "text": f"record {n} " + "é" * (n % 11)}))
        else:
            lines.append(json.dumps({"text": f"record {n}", "pad": "p" * (n % 50)}))
    content = newline.join(lines) + (newline if final_newline else "")
    f = put(tmp_path / "big.jsonl", content)
    settings = SourceSettings()

    whole = ingest(tmp_path)
    assert len(whole.refs) == 1 and whole.refs[0].part is None
    refs, _ = discover([str(tmp_path)], settings, split_bytes=700)

    assert len(refs) > 5
    assert all(r.part is not None and r.kind == "jsonl" and r.path == "big.jsonl" for r in refs)
    assert refs[0].part is not None and refs[0].part[0] == 0 and refs[0].part[2] == 1
    for prev, cur in itertools.pairwise(refs):
        assert prev.part is not None and cur.part is not None
        assert cur.part[0] == prev.part[1]  # contiguous, at line boundaries
        assert f.read_bytes()[cur.part[0] - 1 : cur.part[0]] == b"\n"
        assert cur.part[2] == prev.part[2] + f.read_bytes()[prev.part[0] : prev.part[1]].count(b"\n")
        assert prev.weight == prev.part[1] - prev.part[0]
    assert refs[-1].part is not None and refs[-1].part[1] == f.stat().st_size

    texts, reject_paths, seen = _read_parts(refs, settings)
    assert texts == whole.texts
    assert sorted(reject_paths) == sorted(r.path for r in whole.rejects)
    assert seen == whole.seen
    assert texts["big.jsonl#1"] == "record 1"
    assert texts["big.jsonl#298"] == "record 298"
    assert texts["big.jsonl#r300"] == "record 300 " + "é" * (300 % 11)
    assert "big.jsonl#23" in reject_paths and "big.jsonl#17" not in reject_paths
    together = ingest(tmp_path, split_bytes=700)  # all parts in one shard
    assert _records_of(together) == _records_of(whole)


def test_split_parquet_by_row_groups_reads_the_same_as_unsplit(tmp_path: Path) -> None:
    n = 95
    ids = [None if i % 4 == 0 else f"id{i}" for i in range(1, n + 1)]
    texts = [None if i == 50 else f"row {i} " + "w" * i for i in range(1, n + 1)]
    pq.write_table(pa.table({"id": ids, "text": texts}), tmp_path / "p.parquet", row_group_size=10)
    settings = SourceSettings()

    whole = ingest(tmp_path)
    refs, _ = discover([str(tmp_path)], settings, split_bytes=300)

    assert pq.ParquetFile(tmp_path / "p.parquet").metadata.num_row_groups == 10
    assert len(refs) > 1
    assert refs[0].part is not None and refs[0].part[:1] == (0,) and refs[0].part[2] == 1
    for prev, cur in itertools.pairwise(refs):
        assert prev.part is not None and cur.part is not None
        assert cur.part[0] == prev.part[1]
        assert cur.part[2] == 1 + 10 * cur.part[0]  # 1-based row of the part's first record
    assert refs[-1].part is not None and refs[-1].part[1] == 10

    got, reject_paths, seen = _read_parts(refs, settings)
    assert got == whole.texts
    assert reject_paths == ["p.parquet#50"] == [r.path for r in whole.rejects]
    assert seen == whole.seen == n
    assert got["p.parquet#4"] == "row 4 " + "w" * 4
    assert got["p.parquet#92"] == "row 92 " + "w" * 92
    assert got["p.parquet#id93"] == "row 93 " + "w" * 93
    shards = plan_shards(refs, shard_bytes=1, shard_files=100)
    assert [r for s in shards for r in s] == refs


def test_small_files_are_not_split(tmp_path: Path) -> None:
    put(tmp_path / "a.jsonl", jsonl({"text": "a"}))
    pq.write_table(pa.table({"text": ["p"]}), tmp_path / "b.parquet")
    put(tmp_path / "c.txt", "x" * 5000)  # only JSONL and Parquet are splittable

    refs, _ = discover([str(tmp_path)], SourceSettings(), split_bytes=10_000)
    tiny_refs, _ = discover([str(tmp_path / "c.txt")], SourceSettings(), split_bytes=10)

    assert [(r.path, r.part) for r in refs] == [("a.jsonl", None), ("b.parquet", None), ("c.txt", None)]
    assert [(r.path, r.part) for r in tiny_refs] == [("c.txt", None)]


def test_duplicate_ids_across_split_parts_are_rejected(tmp_path: Path) -> None:
    records = [{"id": "same", "text": "first"}]
    records += [{"text": f"filler {i} " + "f" * 80} for i in range(20)]
    records += [{"id": "same", "text": "second"}]
    put(tmp_path / "d.jsonl", jsonl(*records))

    whole = ingest(tmp_path)
    assert whole.texts["d.jsonl#same"] == "first"
    assert "duplicate id 'same'" in whole.reasons["d.jsonl#same"]

    split = ingest(tmp_path, split_bytes=200)  # all parts in one read, as in one shard
    assert len(split.refs) > 1
    assert split.texts == whole.texts
    assert [r.path for r in split.rejects] == ["d.jsonl#same"]
