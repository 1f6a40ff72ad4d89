"""Golden sets naming documents the table does not hold: scored as not retrieved, an error only above
``checks.golden_max_missing`` (a wrong id scheme).

Real LanceDB in a temporary folder, the fake embedder, the check suite called without Prefect.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedpipe.checks import quality
from embedpipe.checks.suite.context import load_context
from embedpipe.checks.suite.run import run_family
from embedpipe.chunking import chunk_documents
from embedpipe.embedding.embedder import get_embedder
from embedpipe.sources.discover import discover
from embedpipe.sources.parse import read_documents
from embedpipe.store import Store
from embedpipe.tasks.embedding import embed_chunks, table_schema
from tests.helpers import make_settings, write

RUN = "33333333-3333-3333-3333-333333333333"
DOCS = 20


def build_table(tmp_path: Path):
    """A table of 20 one-chunk documents, each with a word no other has."""
    settings = make_settings(tmp_path, model={"name": "fake:64"})
    src = tmp_path / "src"
    for i in range(DOCS):
        write(src / f"d{i:02d}.txt", f"uniqueword{i} appears in document number {i} only.")
    refs, _ = discover([str(src)], settings.source, split_bytes=1 << 30)
    docs, rejects, _ = read_documents(refs, settings.source)
    assert not rejects
    embedder = get_embedder(settings.model)
    chunks, _ = chunk_documents(docs, embedder.tokenizer, 100, 0)
    schema = table_schema(embedder, settings)
    rows, *_ = embed_chunks(chunks, embedder, 8, RUN, schema)
    store = Store(settings.store)
    store.commit(RUN, [store.stage(RUN, 0, rows)], schema)
    return settings, store


def golden_checks(tmp_path: Path, settings, missing: list[str], **extra):
    rows = [{"query": f"uniqueword{i}", "relevant": {f"d{i:02d}.txt": 1}} for i in range(DOCS)]
    for j, doc_id in enumerate(missing):
        rows[j]["relevant"][doc_id] = 1  # the first queries also name a document the table lacks
    path = tmp_path / "golden.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return settings.checks.model_copy(update={"golden": [str(path)], **extra})


def measure(tmp_path: Path, missing: list[str], **extra):
    settings, store = build_table(tmp_path)
    checks = golden_checks(tmp_path, settings, missing, **extra)
    ctx = load_context(store, checks, settings.model, RUN, 1)
    return {r.check: r for r in run_family("golden", ctx, checks, store)}


def test_a_few_missing_ids_count_as_not_retrieved_and_are_listed(tmp_path: Path) -> None:
    # 1 of 21 relevant ids (4.8%) is not in the table: at most the default 5%
    got = measure(tmp_path, ["rejected/empty.txt"])
    assert {r.status for r in got.values()} == {"pass"}
    recall = got["golden_recall"]
    # 19 queries find their one document; the first finds one of its two
    assert recall.statistic == pytest.approx((19 + 0.5) / 20)
    assert got["golden_mrr"].statistic == pytest.approx(1.0)
    assert got["golden_ndcg"].statistic < 1.0
    for r in got.values():
        assert "1 of 21 relevant doc_ids not in the table" in r.detail
        assert "rejected/empty.txt" in r.detail


def test_more_missing_than_the_share_is_an_error_naming_them(tmp_path: Path) -> None:
    # 2 of 22 relevant ids (9.1%) missing: over 5%, which looks like a wrong id scheme
    missing = ["other/scheme-a.txt", "other/scheme-b.txt"]
    got = measure(tmp_path, missing)
    assert {r.status for r in got.values()} == {"error"}
    detail = got["golden_recall"].detail
    assert "2 of 22 relevant doc_ids (9.1%)" in detail
    assert "checks.golden_max_missing=0.05" in detail and "another id scheme" in detail
    assert all(m in detail for m in missing)


def test_the_share_is_a_setting(tmp_path: Path) -> None:
    got = measure(tmp_path, ["other/scheme-a.txt", "other/scheme-b.txt"], golden_max_missing=0.1)
    assert {r.status for r in got.values()} == {"pass"}
    assert "2 of 22 relevant doc_ids not in the table" in got["golden_recall"].detail


def test_missing_relevant_documents_lower_recall_and_ndcg() -> None:
    golden = [quality.GoldenQuery("q", {"held": 1.0, "missing": 1.0})]
    m = quality.retrieval_metrics([["held", "x"]], golden, k=10)
    assert m["recall"] == 0.5 and m["mrr"] == 1.0
    assert m["ndcg"] == pytest.approx(1.0 / (1.0 + 1.0 / 1.584962500721156))
