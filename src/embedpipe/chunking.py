"""Token-aware chunking (plain Python, no Prefect).

Tokens are counted with the embedding model's own tokenizer, so no chunk exceeds the model's
``max_seq_length``. A document is split on paragraphs (blank lines) first; a paragraph too long for
one chunk is split into sentences (Latin ``. ! ?`` and CJK ``。！？；`` with full-width closing
quotes); a sentence still too long is cut into token windows. Consecutive pieces are then packed
greedily up to the budget, with ``overlap`` tokens of trailing context repeated at the start of
the next chunk.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from embedpipe.errors import ConfigError
from embedpipe.readers import sha256_text
from embedpipe.resources.embedder import TokenCounter
from embedpipe.schemas import C, Reject, segments_schema

_PARAGRAPH = re.compile(r"\n[ \t\u3000]*\n\s*")
_SENTENCE_END = re.compile(
    r"[。！？；]+[」』”’）)\]]*"  # CJK: no space needed after the mark
    r"|[.!?;…]+[\"'”’)\]]*(?=\s)"  # Latin: mark followed by whitespace, so 3.14 stays whole
    r"|\n"
)
_DOCS_PER_TOKENIZER_CALL = 256


@dataclass(frozen=True)
class _Piece:
    start: int
    end: int
    ntok: int
    window: bool = False  # a token window of an over-long sentence: never packed with others


def chunk_budget(chunk_tokens: int, max_seq_length: int, special_tokens: int) -> int:
    """Content tokens a chunk may hold: the smaller of the setting and the model limit, minus specials.

    Raises:
        ConfigError: The model leaves no room for content.
    """
    budget = min(chunk_tokens, max_seq_length) - special_tokens
    if budget < 4:
        raise ConfigError(
            f"chunk.tokens={chunk_tokens} leaves {budget} content tokens with the model's "
            f"{special_tokens} special tokens; use a larger chunk.tokens"
        )
    return budget


def chunk_id(source: str, doc_id: str, index: int, text: str) -> str:
    """Deterministic id of a chunk from its source root, document, position and text.

    The source is part of the key because doc_ids are relative to their source root: two folders
    with the same relative paths must not overwrite each other's chunks.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(source.encode("utf-8", "surrogatepass"))
    h.update(b"\x1f")
    h.update(doc_id.encode("utf-8", "surrogatepass"))
    h.update(b"\x1f%d\x1f" % index)
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _trim(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def _spans(text: str, a: int, b: int, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    out, cur = [], a
    for m in pattern.finditer(text, a, b):
        end = m.end()
        s, e = _trim(text, cur, end)
        if e > s:
            out.append((s, e))
        cur = end
    s, e = _trim(text, cur, b)
    if e > s:
        out.append((s, e))
    return out


def split_spans(text: str, tok: np.ndarray, budget: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans of the chunks of one document.

    Args:
        text: The document text.
        tok: ``(n, 2)`` token (start, end) offsets of ``text`` from the model's tokenizer.
        budget: Most content tokens per chunk.
        overlap: Tokens of context repeated from the end of one chunk at the start of the next.

    Returns:
        ``(start, end)`` character spans, in document order.
    """
    starts = tok[:, 0] if len(tok) else np.zeros(0, dtype=np.int64)

    def ntok(a: int, b: int) -> int:
        return int(np.searchsorted(starts, b, "left") - np.searchsorted(starts, a, "left"))

    pieces: list[_Piece] = []
    for pa_, pb in _spans(text, 0, len(text), _PARAGRAPH):
        n = ntok(pa_, pb)
        if n <= budget:
            pieces.append(_Piece(pa_, pb, n))
            continue
        for sa, sb in _spans(text, pa_, pb, _SENTENCE_END):
            n = ntok(sa, sb)
            if n <= budget:
                pieces.append(_Piece(sa, sb, n))
                continue
            i0 = int(np.searchsorted(starts, sa, "left"))
            i1 = int(np.searchsorted(starts, sb, "left"))
            step = max(1, budget - overlap)
            for k in range(i0, i1, step):
                last = min(k + budget, i1) - 1
                pieces.append(_Piece(int(tok[k, 0]), int(tok[last, 1]), last - k + 1, window=True))
                if last == i1 - 1:
                    break

    chunks: list[tuple[int, int]] = []
    cur: list[_Piece] = []
    cur_tok = 0

    def flush() -> None:
        if cur:
            chunks.append((cur[0].start, cur[-1].end))

    for piece in pieces:
        if piece.window:
            flush()
            cur, cur_tok = [], 0
            chunks.append((piece.start, piece.end))
            continue
        if cur and cur_tok + piece.ntok > budget:
            flush()
            tail: list[_Piece] = []
            t = 0
            for prev in reversed(cur[1:]):  # never carry the whole previous chunk over
                if t + prev.ntok > overlap:
                    break
                tail.insert(0, prev)
                t += prev.ntok
            cur, cur_tok = tail, t
            while cur and cur_tok + piece.ntok > budget:
                cur_tok -= cur.pop(0).ntok
        cur.append(piece)
        cur_tok += piece.ntok
    flush()
    return chunks


def _enforce(
    text: str, spans: list[tuple[int, int]], tokenizer: TokenCounter, budget: int
) -> tuple[list[tuple[int, int]], list[int], list[Any] | None]:
    """Re-count each chunk's own text and halve any that re-tokenises above the budget.

    Returns the spans, their token counts, and their token ids where the tokenizer gives them
    (``token_ids``; the embedder then does not tokenize the chunks again).
    """
    with_ids = hasattr(tokenizer, "token_ids")
    out: list[tuple[int, int]] = []
    counts: list[int] = []
    ids: list[Any] = []
    todo = list(spans)
    while todo:
        texts = [text[a:b] for a, b in todo]
        if with_ids:
            tids = tokenizer.token_ids(texts)  # type: ignore[attr-defined]
            ns = [len(t) for t in tids]
        else:
            tids, ns = [None] * len(texts), list(tokenizer.count(texts))
        nxt: list[tuple[int, int]] = []
        for (a, b), n, t in zip(todo, ns, tids, strict=True):
            if n <= budget or b - a < 2:
                out.append((a, b))
                counts.append(int(n))
                ids.append(t)
            else:
                mid = a + (b - a) // 2
                nxt.extend([(a, mid), (mid, b)])
        todo = nxt
    order = sorted(range(len(out)), key=lambda i: out[i])
    return [out[i] for i in order], [counts[i] for i in order], [ids[i] for i in order] if with_ids else None


def chunk_documents(
    docs: pa.Table,
    tokenizer: TokenCounter,
    budget: int,
    overlap: int,
    ids_out: list[Any] | None = None,
) -> tuple[pa.Table, list[Reject]]:
    """Cut a documents table into chunks.

    Args:
        docs: Documents (:func:`~embedpipe.schemas.docs_schema`).
        tokenizer: The model's tokenizer.
        budget: Most content tokens per chunk (see :func:`chunk_budget`).
        overlap: Tokens repeated between consecutive chunks.
        ids_out: When given and the tokenizer has ``token_ids``, filled with each chunk's token
            ids (no special tokens), row for row.

    Returns:
        Chunks (:func:`~embedpipe.schemas.segments_schema`) and rejects for documents that yield
        no tokens at all.
    """
    schema = segments_schema()
    cols: dict[str, list[Any]] = {f.name: [] for f in schema}
    rejects: list[Reject] = []
    carried = [C.DOC_ID, C.SOURCE, C.PATH, C.SIZE, C.MTIME, C.DOC_HASH, C.METADATA]
    for off in range(0, docs.num_rows, _DOCS_PER_TOKENIZER_CALL):
        part = docs.slice(off, _DOCS_PER_TOKENIZER_CALL)
        texts: Sequence[str] = part.column(C.TEXT).to_pylist()
        rows = part.select(carried).to_pylist()
        for text, row, tok in zip(texts, rows, tokenizer.token_spans(texts), strict=True):
            spans = split_spans(text, tok, budget, overlap) if len(tok) else []
            if not spans:
                rejects.append(
                    Reject(path=row[C.DOC_ID], reason="no tokens after tokenization", source=row[C.SOURCE])
                )
                continue
            spans, counts, ids = _enforce(text, spans, tokenizer, budget)
            if ids_out is not None and ids is not None:
                ids_out.extend(ids)
            for index, ((a, b), n) in enumerate(zip(spans, counts, strict=True)):
                body = text[a:b]
                cols[C.CHUNK_ID].append(chunk_id(row[C.SOURCE], row[C.DOC_ID], index, body))
                for k in carried:
                    cols[k].append(row[k])
                cols[C.CHUNK_INDEX].append(index)
                cols[C.TEXT].append(body)
                cols[C.CHAR_START].append(a)
                cols[C.CHAR_END].append(b)
                cols[C.N_TOKENS].append(n)
                cols[C.CHUNK_HASH].append(sha256_text(body))
    return pa.table(cols, schema=schema), rejects
