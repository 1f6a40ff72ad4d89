"""Chunking is bounded by the chunk size, not by the document, line or token size (issue 13).

Fast tests use the fake regex tokenizer (it too makes one token of a run of word characters, like
WordPiece's ``[UNK]``); one slow test uses the bundled model's real tokenizer on a few MB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from embedpipe.chunking import SEGMENT_CHARS, _segments, chunk_documents
from embedpipe.config import SourceSettings
from embedpipe.errors import ConfigError
from embedpipe.schemas import C
from embedpipe.sources.discover import discover
from embedpipe.sources.parse import read_documents
from tests.fakes import RegexTokens
from tests.helpers import make_settings
from tests.unit.test_chunking import docs

BUDGET, OVERLAP = 254, 32
CAP = BUDGET * 100  # characters a chunk may hold: budget x the tokenizer's max chars per token
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "vector",
    "search",
    "index",
    "table",
    "model",
    "token",
    "chunk",
    "memory",
]


class CountingTokens(RegexTokens):
    """The fake tokenizer, recording how many characters each call was given."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def token_spans(self, texts: Sequence[str]) -> list[np.ndarray]:
        self.calls.append(sum(len(t) for t in texts))
        return super().token_spans(texts)


def one_line_of_words(n_chars: int) -> str:
    reps = n_chars // len(" ".join(WORDS)) + 1
    return " ".join(WORDS * reps)[:n_chars]


def check_spans(text: str, table: pa.Table) -> None:
    """Chunks point into the text, in order, none longer than the cap, and none is empty."""
    starts = table.column(C.CHAR_START).to_pylist()
    ends = table.column(C.CHAR_END).to_pylist()
    assert starts == sorted(starts)
    for a, b, body in zip(starts, ends, table.column(C.TEXT).to_pylist(), strict=True):
        assert 0 < b - a <= CAP and text[a:b] == body and body.strip()


def test_ten_megabyte_csv_field_of_one_token_is_cut_into_bounded_chunks(tmp_path: Path) -> None:
    """Issue 13 repro: a CSV field of 10,485,760 ``x`` was one 10 MB chunk with ``n_tokens=1``."""
    field = "x" * 10_485_760
    (tmp_path / "f.csv").write_text(f"id,text\n1,{field}\n2,hello world\n", encoding="utf-8")
    refs, _ = discover([str(tmp_path)], SourceSettings(), split_bytes=1 << 40)
    table, rejects, _ = read_documents(refs, SourceSettings())
    assert rejects == [] and table.num_rows == 2
    tok = CountingTokens()

    chunks, chunk_rejects = chunk_documents(table, tok, BUDGET, OVERLAP)

    assert chunk_rejects == []
    big = chunks.filter(pc.equal(chunks.column(C.DOC_ID), "f.csv#1"))
    check_spans(field, big)
    assert big.num_rows >= len(field) // CAP  # every character is in some chunk
    assert big.column(C.CHAR_END)[-1].as_py() == len(field)
    assert max(tok.calls) <= SEGMENT_CHARS  # never the whole field in one tokenizer call


def test_fifty_megabyte_line_is_rejected_early_without_tokenizing_it_all() -> None:
    """Issue 13 repro at a tenth of the scale: a one-line file needing more than the chunk limit
    (default 10,000; here 1,000 on 8 MB) is rejected after tokenizing only what proves it."""
    text = one_line_of_words(8 * 1024 * 1024)
    tok = CountingTokens()

    chunks, rejects = chunk_documents(docs(text), tok, BUDGET, OVERLAP, max_chunks=1_000)

    assert chunks.num_rows == 0
    assert [r.path for r in rejects] == ["d0.txt"]
    assert "chunk.max_chunks_per_doc=1,000" in rejects[0].reason and "too many chunks" in rejects[0].reason
    assert sum(tok.calls) < len(text) // 2 and max(tok.calls) <= SEGMENT_CHARS


def test_length_alone_proves_too_many_chunks_without_tokenizing() -> None:
    text = "x" * (CAP * 3 + 1 + SEGMENT_CHARS)
    tok = CountingTokens()

    chunks, rejects = chunk_documents(docs(text), tok, BUDGET, OVERLAP, max_chunks=2)

    assert chunks.num_rows == 0 and "too many chunks" in rejects[0].reason
    assert tok.calls == []


def test_short_document_over_the_limit_is_rejected_too() -> None:
    text = one_line_of_words(20_000)

    chunks, rejects = chunk_documents(docs(text, "short"), RegexTokens(), 20, 2, max_chunks=5)

    assert chunks.column(C.DOC_ID).to_pylist() == ["d1.txt"]
    assert [r.path for r in rejects] == ["d0.txt"] and "max_chunks_per_doc=5" in rejects[0].reason


def test_long_document_under_the_limit_chunks_in_segments_in_order() -> None:
    text = (one_line_of_words(700_000) + "\n\n") * 4  # 2.8 MB: three segments at paragraph ends
    tok = CountingTokens()

    chunks, rejects = chunk_documents(docs(text, "after"), tok, BUDGET, OVERLAP)

    assert rejects == []
    body = chunks.filter(pc.equal(chunks.column(C.DOC_ID), "d0.txt"))
    check_spans(text, body)
    assert body.column(C.N_TOKENS).to_numpy().max() <= BUDGET
    assert max(tok.calls) <= SEGMENT_CHARS
    assert chunks.column(C.DOC_ID).to_pylist()[-1] == "d1.txt"  # documents stay in order
    covered = " ".join(body.column(C.TEXT).to_pylist())
    assert set(covered.split()) == set(text.split())  # no word lost at a segment boundary


def test_whitespace_run_between_two_words_is_not_one_giant_chunk() -> None:
    text = "start" + " " * 3_000_000 + "end"

    chunks, rejects = chunk_documents(docs(text), RegexTokens(), BUDGET, OVERLAP)

    assert rejects == []
    assert chunks.column(C.TEXT).to_pylist() == ["start", "end"]


def test_segments_end_at_paragraphs_lines_or_spaces() -> None:
    text = "a" * 60 + "\n\n" + "b" * 30 + "\n" + "c" * 20 + " " + "d" * 200
    segs = _segments(text, 100)
    assert segs[0] == (0, 60)  # the paragraph break in the second half of the first 100
    assert [text[a:b] for a, b in segs] and "".join(text[a:b] for a, b in segs) == text
    assert all(b - a <= 100 for a, b in segs)


def test_max_chunks_per_doc_setting_has_bounds_and_names_itself(tmp_path: Path) -> None:
    assert make_settings(tmp_path).chunk.max_chunks_per_doc == 10_000
    with pytest.raises(ConfigError, match="max_chunks_per_doc"):
        make_settings(tmp_path, chunk={"max_chunks_per_doc": 0})


@pytest.mark.slow
def test_real_tokenizer_bounds_a_few_megabytes_of_one_line_and_one_token() -> None:
    from tokenizers import Tokenizer

    from embedpipe.embedding.card import resolve_model_path
    from embedpipe.embedding.embedder import HFTokenCounter

    folder = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2", offline=True)
    tok = HFTokenCounter(Tokenizer.from_file(str(folder / "tokenizer.json")))
    assert tok.max_token_chars == 100
    words, xs = one_line_of_words(3 * 1024 * 1024), "x" * (2 * 1024 * 1024)
    mixed = "a few real words first. " + xs

    chunks, rejects = chunk_documents(docs(words, mixed, xs), tok, BUDGET, OVERLAP)

    # nothing but one over-long token: every chunk would be a lone [UNK], so the document is rejected
    assert [r.path for r in rejects] == ["d2.txt"]
    assert "no text the model can read" in rejects[0].reason
    for i, text in enumerate((words, mixed)):
        part = chunks.filter(pc.equal(chunks.column(C.DOC_ID), f"d{i}.txt"))
        check_spans(text, part)
        assert tok.count(part.column(C.TEXT).to_pylist()).max() <= BUDGET
    small, rejected = chunk_documents(docs(words), tok, BUDGET, OVERLAP, max_chunks=100)
    assert small.num_rows == 0 and "too many chunks" in rejected[0].reason
