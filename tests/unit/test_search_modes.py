"""Search modes vector, text (BM25) and hybrid (reciprocal rank fusion) on a real LanceDB table.

The full-text index is made here by LanceDB directly (``fts_index``), as the runs' index step does;
the fake embedder stands in for the model. The Lance read path (``Searcher``, the CLI and the API)
must give exactly LanceDB's rankings and scores (``Store.text_search``, ``Store.hybrid_search``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import embedpipe
from embedpipe.cli import main
from embedpipe.config import ModelSettings, Settings
from embedpipe.errors import ConfigError, IndexMissingError
from embedpipe.schemas import C
from embedpipe.search import Searcher
from embedpipe.store import Store
from embedpipe.store.fulltext import MAX_QUERY_CHARS, RRF_K, rrf_fuse
from embedpipe.store.reader import TableReader
from embedpipe.tasks.embedding import embed_chunks
from tests.fakes import FakeEmbedder
from tests.helpers import chunked

RUN = "11111111-1111-1111-1111-111111111111"
DOCS = {
    "cats.txt": "Cats purr and sleep all day. A cat naps in the sun.",
    "cars.txt": "Engines and wheels turn. A car needs fuel (or a battery).",
    "index.md": "A vector index trades recall for speed: IVF partitions and PQ codes.",
    "zh.txt": "向量索引在召回率和速度之间取舍。中文文本没有空格，需要按字切分。",
    "syntax.txt": 'Syntax: "quoted" AND (grouped) OR NOT field:value * wildcard ~ fuzzy ^ boost \\ slash.',
    "search.txt": "Semantic search finds chunks by meaning; keyword search by BM25 over words.",
}
HOSTILE = [
    '"unbalanced quote',
    "(unbalanced parenthesis",
    "closing)",
    "AND",
    "OR NOT",
    "cats AND dogs OR NOT cars",
    "*",
    "vec*",
    "field:value",
    "text:cats",
    ":",
    "cats~2",
    "~",
    "speed^3",
    "^",
    "\\",
    "back\\slash \\\\",
    '"a phrase query"',
    "+cats -cars",
    "'single",
    "[range TO x]",
    "{braces}",
    "x" * 100_000,
    "cats " * 20_000,
    "向量索引",
    "中文",
    "召回率?",
    "embedding\x00with NUL",
    "\x00cats",
    "emoji 🐱 and ☃",
]


def _table(tmp_path: Path, *, fts: str | None = "ngram", **groups: dict[str, Any]) -> Settings:
    """A one-version table of DOCS embedded by the fake model, with a full-text index by ``fts``."""
    settings, embedder, chunks, schema, _src = chunked(tmp_path, DOCS, budget=24, **groups)
    table, *_ = embed_chunks(chunks, embedder, 8, RUN, schema)
    store = Store(settings.store)
    store.commit(RUN, [store.stage(RUN, 0, table)], schema)
    if fts:
        fts_index(store, fts)
    return settings


def fts_index(store: Store, tokenizer: str) -> None:
    """The full-text index on the text, made by LanceDB as the runs' index step makes it."""
    table = store.require_table()
    table.create_fts_index(C.TEXT, base_tokenizer=tokenizer, replace=True)


def _vector(settings: Settings, query: str) -> Any:
    return FakeEmbedder(ModelSettings(name="fake:16")).encode([query], 1)[0]


@pytest.fixture
def indexed(tmp_path: Path) -> Settings:
    return _table(tmp_path)


def test_text_mode_is_bm25_and_equals_lancedb(indexed: Settings) -> None:
    hits = Searcher(indexed).search("cats purr", 3, mode="text")
    assert hits and hits[0][C.DOC_ID] == "cats.txt"
    assert set(hits[0]) == {C.DOC_ID, C.CHUNK_ID, C.TEXT, "score"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert hits[0]["score"] > 1.0  # a BM25 score, not a cosine similarity
    assert Store(indexed.store).text_search("cats purr", 3) == hits


def test_text_mode_finds_chinese_with_the_ngram_tokenizer(indexed: Settings) -> None:
    hits = Searcher(indexed).search("向量索引的召回率", 2, mode="text")
    assert hits[0][C.DOC_ID] == "zh.txt"


@pytest.mark.parametrize("query", ["cats purr", "vector index speed", "向量索引", "BM25 keyword search"])
def test_hybrid_on_lance_equals_lancedbs_hybrid_query(indexed: Settings, query: str) -> None:
    searcher = Searcher(indexed)
    for k in (1, 3, 10):
        ours = searcher.search(query, k, mode="hybrid")
        theirs = Store(indexed.store).hybrid_search(_vector(indexed, query), query, k)
        assert [h[C.CHUNK_ID] for h in ours] == [h[C.CHUNK_ID] for h in theirs], (query, k)
        assert [h["score"] for h in ours] == pytest.approx([h["score"] for h in theirs], abs=1e-6)
        assert 0 < len(ours) <= k


def test_hybrid_score_is_reciprocal_rank_fusion(indexed: Settings) -> None:
    query = "cats purr and sleep"
    searcher = Searcher(indexed)
    n = 20
    vec = [h[C.CHUNK_ID] for h in searcher.search(query, n, mode="vector")]
    txt = [h[C.CHUNK_ID] for h in searcher.search(query, n, mode="text")]
    hybrid = searcher.search(query, n, mode="hybrid")
    for h in hybrid:
        want = sum(1 / (RRF_K + ids.index(h[C.CHUNK_ID]) + 1) for ids in (vec, txt) if h[C.CHUNK_ID] in ids)
        assert h["score"] == pytest.approx(want, rel=1e-6)
    assert hybrid[0][C.DOC_ID] == "cats.txt"


def test_vector_mode_is_unchanged_cosine(indexed: Settings) -> None:
    hits = Searcher(indexed).search("engines wheels", 2, mode="vector")
    assert hits == Store(indexed.store).search(_vector(indexed, "engines wheels"), 2)
    assert all(-1.0 <= h["score"] <= 1.0 for h in hits)


def test_rrf_fuse_order_and_ties() -> None:
    # b: ranks 2 and 1; a: rank 1 only; c: rank 2 only (ties with nothing); vector hits first on ties
    fused = rrf_fuse(["a", "b"], ["b", "c", "d"], 10)
    assert [r for r, _ in fused] == ["b", "a", "c", "d"]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)
    tie = rrf_fuse(["v"], ["t"], 2)  # equal scores: the vector hit first, as LanceDB's merge keeps it
    assert [r for r, _ in tie] == ["v", "t"] and tie[0][1] == tie[1][1]
    assert rrf_fuse(["a", "b", "c"], [], 2) == [("a", pytest.approx(1 / 61)), ("b", pytest.approx(1 / 62))]


@pytest.mark.parametrize("mode", ["vector", "text", "hybrid"])
@pytest.mark.parametrize("query", HOSTILE, ids=lambda q: repr(q[:24]))
def test_hostile_queries_never_crash(indexed: Settings, mode: str, query: str) -> None:
    hits = Searcher(indexed).search(query, 3, mode=mode)
    assert len(hits) <= 3
    assert all(set(h) == {C.DOC_ID, C.CHUNK_ID, C.TEXT, "score"} for h in hits)
    if mode != "vector":  # the LanceDB path the checks use takes the same queries
        store = Store(indexed.store)
        got = (
            store.text_search(query, 3)
            if mode == "text"
            else store.hybrid_search(_vector(indexed, query), query, 3)
        )
        assert [h[C.CHUNK_ID] for h in got] == [h[C.CHUNK_ID] for h in hits]


def test_syntax_characters_are_plain_words(indexed: Settings) -> None:
    searcher = Searcher(indexed)
    # the words around the syntax still match; the syntax itself selects nothing
    assert searcher.search('"grouped) field:value', 1, mode="text")[0][C.DOC_ID] == "syntax.txt"
    assert searcher.search("wildcard AND", 1, mode="text")[0][C.DOC_ID] == "syntax.txt"
    # a quoted phrase is not a phrase query (the index keeps no positions, which would fail)
    assert searcher.search('"cats purr"', 1, mode="text")[0][C.DOC_ID] == "cats.txt"
    assert searcher.search("*", 3, mode="text") == []


def test_long_queries_are_cut(indexed: Settings) -> None:
    long = "cats " + "zzzz " * (MAX_QUERY_CHARS // 5)
    assert Searcher(indexed).search(long, 1, mode="text")[0][C.DOC_ID] == "cats.txt"
    assert Searcher(indexed).search("zzzz " * (MAX_QUERY_CHARS // 5) + "cats", 1, mode="text") == []


@pytest.mark.parametrize("query", ["", "   ", "\n\t", "\x00", " \x00 "])
@pytest.mark.parametrize("mode", ["vector", "text", "hybrid"])
def test_empty_queries_are_a_clear_error(indexed: Settings, query: str, mode: str) -> None:
    handle = embedpipe.open(indexed.store.uri, model={"name": "fake:16"})
    with pytest.raises(ConfigError, match="empty query"):
        handle.search(query, mode=mode)
    assert main(["search", query, "--db", indexed.store.uri, "--mode", mode]) == 2


@pytest.mark.parametrize("mode", ["text", "hybrid"])
def test_table_without_text_index_is_a_clear_error(tmp_path: Path, mode: str) -> None:
    settings = _table(tmp_path, fts=None)
    with pytest.raises(IndexMissingError, match=r"embedpipe index") as e:
        Searcher(settings).search("cats", 3, mode=mode)
    assert f"mode={mode}" in str(e.value) and "--mode vector" in str(e.value)
    store = Store(settings.store)
    with pytest.raises(IndexMissingError, match="full-text index"):
        store.text_search("cats", 3) if mode == "text" else store.hybrid_search(
            _vector(settings, "c"), "c", 3
        )
    assert main(["search", "cats", "--db", settings.store.uri, "--mode", mode]) == 4
    assert Searcher(settings).search("cats", 1, mode="vector")  # vector search still works


def test_default_mode_falls_back_to_vector_without_text_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _table(tmp_path, fts=None, index={"search_mode": "hybrid"})
    searcher = Searcher(settings)
    assert searcher.search("cats", 3) == searcher.search("cats", 3, mode="vector")
    searcher.search("cats", 3)
    assert searcher.mode == "vector" and searcher.fallback and "embedpipe index" in searcher.fallback
    env = {"EMBEDPIPE_INDEX__SEARCH_MODE": "text"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        assert main(["search", "cats", "--db", settings.store.uri, "--json"]) == 0
    captured = capsys.readouterr()
    assert "falls back to vector search" in captured.err and captured.out.lstrip().startswith("[")


def test_mode_defaults_to_the_setting_and_unknown_modes_are_refused(tmp_path: Path) -> None:
    settings = _table(tmp_path, index={"search_mode": "text"})
    hits = Searcher(settings).search("cats purr", 2)
    assert hits == Searcher(settings).search("cats purr", 2, mode="text")
    assert hits != Searcher(settings).search("cats purr", 2, mode="vector")
    with pytest.raises(ConfigError, match=r"mode='fuzzy'.*vector, text, hybrid"):
        Searcher(settings).search("cats", 2, mode="fuzzy")
    handle = embedpipe.open(settings.store.uri, model={"name": "fake:16"}, index={"search_mode": "hybrid"})
    assert handle.search("cats purr", 2) == Searcher(settings).search("cats purr", 2, mode="hybrid")


def test_cli_mode_flag_keeps_the_json_shape(indexed: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    for mode in ("vector", "text", "hybrid"):
        assert (
            main(["search", "cats purr", "--db", indexed.store.uri, "--mode", mode, "-k", "2", "--json"]) == 0
        )
        rows = json.loads(capsys.readouterr().out)
        assert rows and all(set(r) == {C.DOC_ID, C.CHUNK_ID, C.TEXT, "score"} for r in rows)
        assert rows[0][C.DOC_ID] == "cats.txt", mode
    with pytest.raises(SystemExit) as e:
        main(["search", "cats", "--db", indexed.store.uri, "--mode", "fuzzy"])
    assert e.value.code == 2


def test_simple_tokenizer_indexes_words(tmp_path: Path) -> None:
    settings = _table(tmp_path, fts="simple")
    reader = TableReader(settings.store)
    assert reader.text_search(reader.require(), "cat", 1)[0][C.DOC_ID] == "cats.txt"  # stemmed


GOLDEN = [
    {"query": "cats purr", "relevant": {"cats.txt": 1}},
    {"query": "engines wheels fuel", "relevant": {"cars.txt": 1}},
    {"query": "向量索引的召回率", "relevant": {"zh.txt": 1}},
    {"query": "keyword search BM25", "relevant": {"search.txt": 1}},
]


def _golden(tmp_path: Path, settings: Settings, mode: str) -> dict[str, Any]:
    import json

    from embedpipe.checks.suite.context import load_context
    from embedpipe.checks.suite.run import run_family

    path = tmp_path / "golden.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in GOLDEN) + "\n", encoding="utf-8")
    checks = settings.checks.model_copy(update={"golden": [str(path)]})
    store = Store(settings.store)
    version = int(store.require_table().version)
    ctx = load_context(store, checks, settings.model, RUN, version, search_mode=mode)
    return {r.check: r for r in run_family("golden", ctx, checks, store)}


@pytest.mark.parametrize("mode", ["vector", "text", "hybrid"])
def test_golden_checks_report_each_mode_and_gate_the_served_one(
    tmp_path: Path, indexed: Settings, mode: str
) -> None:
    from embedpipe.checks import quality

    res = _golden(tmp_path, indexed, mode)
    recall = res["golden_recall"]
    assert recall.status == "pass", recall.detail
    assert f"{mode} search" in recall.detail
    for m in ("vector", "text", "hybrid"):
        assert f"{m} " in recall.detail.split("per mode:")[1]
    # the gated statistic is the served mode's own figure
    golden = quality.load_golden([str(tmp_path / "golden.jsonl")])
    searcher = Searcher(indexed)
    ranked = [
        list(dict.fromkeys(h[C.DOC_ID] for h in searcher.search(q.query, 50, mode=mode)))[:10] for q in golden
    ]
    want = quality.retrieval_metrics(ranked, golden, indexed.checks.k)
    assert recall.statistic == pytest.approx(want["recall"])
    assert res["golden_mrr"].statistic == pytest.approx(want["mrr"])


def test_golden_checks_without_text_index(tmp_path: Path) -> None:
    settings = _table(tmp_path, fts=None)
    vector = _golden(tmp_path, settings, "vector")["golden_recall"]
    assert vector.status == "pass" and "text and hybrid not measured: no full-text index" in vector.detail
    hybrid = _golden(tmp_path, settings, "hybrid")["golden_recall"]
    assert hybrid.status == "pass" and "vector search" in hybrid.detail, hybrid.detail
    assert "search_mode=hybrid falls back to vector" in hybrid.detail
    assert hybrid.statistic == vector.statistic


def test_one_reader_shares_its_index_cache_across_searches(indexed: Settings) -> None:
    """Searches through one reader (embedpipe.open, the dashboard) read the index once, not per query."""
    reader = TableReader(indexed.store)
    first = reader.open_version("latest")
    before = first.session().index_cache_size_bytes()
    reader.text_search(first, "cats purr", 3)  # loads the full-text index into the cache
    cached = first.session().index_cache_size_bytes()
    assert cached > before
    again = reader.open_version("latest")
    assert again is not first and again.session().is_same_as(first.session())
    assert again.session().index_cache_size_bytes() == cached
    # a reader of its own starts with an empty cache
    other = TableReader(indexed.store).open_version("latest")
    assert not other.session().is_same_as(first.session())
    assert other.session().index_cache_size_bytes() == before
