"""Chunking: token limits with the model's own tokenizer, paragraph/sentence/token splits, CJK, ids."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from embedpipe.chunking import chunk_budget, chunk_documents, chunk_id, split_spans
from embedpipe.embedding.card import resolve_model_path
from embedpipe.embedding.embedder import HFTokenCounter
from embedpipe.errors import ConfigError
from embedpipe.schemas import C, docs_schema, segments_schema


@pytest.fixture(scope="module")
def tok() -> HFTokenCounter:
    """The bundled model's real tokenizer (tokenizer.json only: no weights are loaded)."""
    from tokenizers import Tokenizer

    folder = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2", offline=True)
    return HFTokenCounter(Tokenizer.from_file(str(folder / "tokenizer.json")))


def docs(*texts: str) -> pa.Table:
    rows = [
        {
            C.DOC_ID: f"d{i}.txt",
            C.SOURCE: "/src",
            C.PATH: f"d{i}.txt",
            C.TEXT: t,
            C.SIZE: len(t),
            C.MTIME: datetime(2026, 1, 1, tzinfo=UTC),
            C.DOC_HASH: "h",
            C.METADATA: None,
        }
        for i, t in enumerate(texts)
    ]
    return pa.Table.from_pylist(rows, schema=docs_schema())


EN = (
    "Embeddings map text to vectors. Similar meanings land close together! Is that useful? Yes.\n\n"
    "A second paragraph talks about cosine similarity and nearest neighbours.\n\n"
)
ZH = "嵌入把文本映射为向量。相似的含义彼此靠近！这有用吗？当然有用；检索依赖它。「引号里的句子。」最后一句"


def test_tokenizer_has_no_truncation_and_counts_specials(tok: HFTokenCounter) -> None:
    long = "word " * 1000
    assert tok.count([long])[0] == 1000  # the bundled tokenizer.json truncates at 128 unless disabled
    assert tok.special_tokens == 2


def test_budget_respects_model_limit_and_specials() -> None:
    assert chunk_budget(256, 256, 2) == 254
    assert chunk_budget(128, 256, 2) == 126
    assert chunk_budget(1024, 512, 2) == 510
    with pytest.raises(ConfigError, match=r"chunk\.tokens=8"):
        chunk_budget(8, 256, 6)


@pytest.mark.parametrize("budget", [8, 16, 40, 254])
def test_no_chunk_exceeds_budget_real_tokenizer(tok: HFTokenCounter, budget: int) -> None:
    text = (EN * 20) + ZH * 10 + "\n\n" + "supercalifragilisticexpialidocious" * 50
    table, rejects = chunk_documents(docs(text), tok, budget, overlap=min(4, budget // 4))
    assert not rejects
    assert table.num_rows > 1
    counts = tok.count(table.column(C.TEXT).to_pylist())
    assert int(counts.max()) <= budget
    assert table.column(C.N_TOKENS).to_pylist() == counts.tolist()
    assert table.schema.equals(segments_schema(), check_metadata=True)


def test_paragraphs_kept_whole_when_they_fit(tok: HFTokenCounter) -> None:
    table, _ = chunk_documents(docs(EN), tok, budget=254, overlap=0)
    assert table.num_rows == 1
    assert table.column(C.TEXT)[0].as_py() == EN.strip()


def test_splits_on_paragraphs_before_sentences(tok: HFTokenCounter) -> None:
    p1 = "Alpha beta gamma delta. " * 3
    p2 = "Epsilon zeta eta theta. " * 3
    text = p1.strip() + "\n\n" + p2.strip()
    n1 = int(tok.count([p1.strip()])[0])
    table, _ = chunk_documents(docs(text), tok, budget=n1 + 2, overlap=0)
    assert table.column(C.TEXT).to_pylist() == [p1.strip(), p2.strip()]


def test_chinese_sentences_split_on_fullwidth_marks(tok: HFTokenCounter) -> None:
    table, _ = chunk_documents(docs(ZH), tok, budget=12, overlap=0)
    texts = table.column(C.TEXT).to_pylist()
    assert len(texts) >= 4
    # every chunk but the last ends at a sentence mark (or a closing quote after one)
    for t in texts[:-1]:
        assert t[-1] in "。！？；」", t
    assert "".join(texts) == ZH.replace(" ", "")


def test_overlap_repeats_trailing_sentences(tok: HFTokenCounter) -> None:
    sentences = [f"Sentence number {i} is here." for i in range(30)]
    text = " ".join(sentences)
    table, _ = chunk_documents(docs(text), tok, budget=30, overlap=8)
    texts = table.column(C.TEXT).to_pylist()
    assert len(texts) > 3
    for a, b in itertools.pairwise(texts):
        last_of_a = a.split(". ")[-1].rstrip(".")
        assert last_of_a in b, (a, b)  # the next chunk starts with the previous one's tail


def test_long_unbroken_text_is_cut_into_token_windows(tok: HFTokenCounter) -> None:
    text = "words " + "x" * 5000 + " " + "词" * 700  # not all [UNK]: that document is rejected
    table, _ = chunk_documents(docs(text), tok, budget=50, overlap=5)
    counts = tok.count(table.column(C.TEXT).to_pylist())
    assert counts.max() <= 50
    starts = table.column(C.CHAR_START).to_pylist()
    assert starts == sorted(starts) and starts[0] == 0
    assert table.column(C.CHAR_END)[-1].as_py() == len(text)


def test_offsets_point_into_the_document(tok: HFTokenCounter) -> None:
    text = EN * 5 + ZH
    table, _ = chunk_documents(docs(text), tok, budget=20, overlap=4)
    for row in table.select([C.TEXT, C.CHAR_START, C.CHAR_END]).to_pylist():
        assert text[row[C.CHAR_START] : row[C.CHAR_END]] == row[C.TEXT]


def test_chunk_ids_are_deterministic_and_distinct(tok: HFTokenCounter) -> None:
    text = EN * 10
    a, _ = chunk_documents(docs(text), tok, budget=30, overlap=5)
    b, _ = chunk_documents(docs(text), tok, budget=30, overlap=5)
    ids = a.column(C.CHUNK_ID).to_pylist()
    assert ids == b.column(C.CHUNK_ID).to_pylist()
    assert len(set(ids)) == len(ids)
    assert chunk_id("/s", "d", 0, "t") != chunk_id("/s", "d", 1, "t") != chunk_id("/s", "e", 1, "t")
    assert chunk_id("/s", "d", 0, "t") != chunk_id("/s", "d", 0, "u")
    assert chunk_id("/s", "d", 0, "t") != chunk_id("/other", "d", 0, "t")  # same relative path, other root


def test_document_without_tokens_is_rejected_with_reason(tok: HFTokenCounter) -> None:
    table, rejects = chunk_documents(docs("hello world", "\u200b\u200b\u200b"), tok, budget=50, overlap=0)
    assert table.num_rows == 1
    assert [(r.path, r.reason) for r in rejects] == [("d1.txt", "no tokens after tokenization")]


def test_metadata_and_document_columns_are_carried(tok: HFTokenCounter) -> None:
    d = docs(EN).to_pylist()
    d[0][C.METADATA] = json.dumps({"title": "t"})
    table, _ = chunk_documents(pa.Table.from_pylist(d, schema=docs_schema()), tok, budget=10, overlap=0)
    assert set(table.column(C.METADATA).to_pylist()) == {json.dumps({"title": "t"})}
    assert set(table.column(C.DOC_ID).to_pylist()) == {"d0.txt"}
    assert table.column(C.CHUNK_INDEX).to_pylist() == list(range(table.num_rows))


def test_split_spans_with_no_tokens_returns_nothing() -> None:
    assert split_spans("   ", np.zeros((0, 2), dtype=np.int64), 10, 0) == []


def test_a_document_the_tokenizer_knows_nothing_of_is_rejected(tok: HFTokenCounter) -> None:
    """Issue 13: a 10 MB field of one character became chunks that are all [UNK] (one vector)."""
    table, rejects = chunk_documents(docs("x" * 50_000, "real words. " + "x" * 5000), tok, 50, 5)
    assert [r.path for r in rejects] == ["d0.txt"]
    assert "knows none of the tokens" in rejects[0].reason and "50,000 characters" in rejects[0].reason
    assert set(table.column(C.DOC_ID).to_pylist()) == {"d1.txt"}
