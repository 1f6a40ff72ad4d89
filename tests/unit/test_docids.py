"""Document ids are unique by construction, read back in one place, and a duplicate is a reject."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from embedpipe.config import SourceSettings
from embedpipe.flows._pipeline import Tally, add_outcome
from embedpipe.incremental import empty_state, renamed_documents
from embedpipe.schemas import C, RunCounts, doc_state_schema
from embedpipe.sources.discover import discover
from embedpipe.sources.docids import escape_path, file_of, is_legacy_id, make_doc_id, split_doc_id
from embedpipe.sources.parse import read_documents
from embedpipe.store import StagedShard
from embedpipe.tasks.shard import ShardOutcome
from embedpipe.tasks.sources import ingest_shard
from tests.helpers import make_settings

BIG = 1 << 40
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def put(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("a.txt", None),
        ("dir/ids.jsonl", "x.txt"),
        ("ids.jsonl#x.txt", None),
        ("100%.txt", None),
        ("a%23b#c.jsonl", "k#1"),
        ("%25%.md", "%23"),
        ("ids.jsonl", "../../etc/passwd"),
    ],
)
def test_doc_id_round_trips(path: str, key: str | None) -> None:
    assert split_doc_id(make_doc_id(path, key)) == (path, key)
    assert file_of(make_doc_id(path, key)) == path


def test_ids_of_paths_without_hash_or_percent_do_not_change() -> None:
    assert make_doc_id("notes/a b é.md") == "notes/a b é.md"
    assert make_doc_id("d/r.jsonl", "7") == "d/r.jsonl#7"
    assert escape_path("ids.jsonl#x.txt") == "ids.jsonl%23x.txt"
    assert escape_path("100%.txt") == "100%25.txt"


def test_record_and_file_named_like_it_get_different_ids(tmp_path: Path) -> None:
    """Issue 13 repro: record ``x.txt`` of ``ids.jsonl`` and a file named ``ids.jsonl#x.txt``."""
    put(tmp_path / "ids.jsonl", json.dumps({"id": "x.txt", "text": "the record"}) + "\n")
    put(tmp_path / "ids.jsonl#x.txt", "the file")
    put(tmp_path / "r.jsonl", json.dumps({"id": "../../etc/x", "text": "dotted id"}) + "\n")

    refs, found = discover([str(tmp_path)], SourceSettings(), split_bytes=BIG)
    table, rejects, _ = read_documents(refs, SourceSettings())

    assert found == [] and rejects == []
    texts = dict(zip(table.column(C.DOC_ID).to_pylist(), table.column(C.TEXT).to_pylist(), strict=True))
    assert texts == {
        "ids.jsonl#x.txt": "the record",
        "ids.jsonl%23x.txt": "the file",
        "r.jsonl#../../etc/x": "dotted id",  # a record key is opaque: its file is r.jsonl
    }
    assert file_of("r.jsonl#../../etc/x") == "r.jsonl"


def test_rejected_record_protects_its_file_even_with_hash_in_the_name(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src / "a#b.jsonl", json.dumps({"id": "1", "text": "ok"}) + "\n" + "{not json\n")
    settings = make_settings(tmp_path)
    refs, _ = discover([str(src)], settings.source, split_bytes=BIG)

    docs = ingest_shard(0, refs, settings, empty_state())

    assert [r.path for r in docs.rejects] == ["a%23b.jsonl#2"]
    assert docs.protected_files == {(str(src.resolve()), "a#b.jsonl")}


def _outcome(shard: int, ids: list[tuple[str, str]], changed: list[tuple[str, str]]) -> ShardOutcome:
    staged = StagedShard(uri=f"mem://staged/{shard}", rows=len(ids))
    return ShardOutcome(
        shard=shard, staged=staged, counts=RunCounts(seen=len(ids)), seen_ids=ids, changed_text=changed
    )


def test_a_duplicate_id_across_shards_is_rejected_and_cannot_replace_the_first() -> None:
    tally = Tally()
    add_outcome(tally, _outcome(0, [("s", "a.txt"), ("s", "b.txt")], []))
    add_outcome(tally, _outcome(1, [("s", "a.txt"), ("t", "a.txt")], [("s", "a.txt"), ("t", "a.txt")]))

    assert [(r.source, r.path) for r in tally.counts.rejects] == [("s", "a.txt")]
    assert "duplicate doc_id" in tally.counts.rejects[0].reason
    assert tally.exclude == {"mem://staged/1": ["a.txt"]}
    # the duplicate does not ask the commit to replace (delete) the first one's stored rows
    assert tally.changed_text == [("t", "a.txt")]


def test_renamed_documents_counts_only_ids_that_changed_form() -> None:
    rows = [
        ("a#b.txt", "a#b.txt"),  # legacy id of a file with '#'
        ("r%.jsonl", "r%.jsonl#1"),
        ("r%.jsonl", "r%.jsonl#2"),
        ("gone.txt", "gone.txt"),  # really deleted
    ]
    known = pa.Table.from_pylist(
        [
            {C.SOURCE: "s", C.PATH: p, C.DOC_ID: d, C.DOC_HASH: "h", C.SIZE: 1, C.MTIME: T0, C.METADATA: None}
            for p, d in rows
        ],
        doc_state_schema(),
    )
    deleted = [("s", "a#b.txt"), ("s", "r%.jsonl#1"), ("s", "gone.txt")]

    assert renamed_documents(known, deleted) == 2
    assert is_legacy_id("a#b.txt", "a#b.txt") and not is_legacy_id("a%23b.txt", "a#b.txt")
    assert not is_legacy_id("plain.txt", "plain.txt")


def test_a_record_id_repeated_in_a_later_part_of_a_split_file_keeps_its_own_reason() -> None:
    tally = Tally()
    first = _outcome(0, [("s", "big.jsonl#7")], [])
    first.split_ids = ["big.jsonl#7"]
    later = _outcome(1, [("s", "big.jsonl#7")], [])
    later.split_ids = ["big.jsonl#7"]

    add_outcome(tally, first)
    add_outcome(tally, later)

    assert [(r.path, r.reason) for r in tally.counts.rejects] == [
        ("big.jsonl#7", "duplicate id in this file (an earlier part has it)")
    ]
    assert tally.exclude == {"mem://staged/1": ["big.jsonl#7"]}
