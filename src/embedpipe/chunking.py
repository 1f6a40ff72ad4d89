"""Token-aware chunking (plain Python, no Prefect).

Tokens are counted with the embedding model's own tokenizer, so no chunk exceeds the model's
``max_seq_length``. A document is split on paragraphs (blank lines) first; a paragraph too long for
one chunk is split into sentences (Latin ``. ! ?`` and CJK ``。！？；`` with full-width closing
quotes); a sentence still too long is cut into token windows. Consecutive pieces are then packed
greedily up to the budget, with ``overlap`` tokens of trailing context repeated at the start of
the next chunk.

Memory and time are bounded by the chunk size, not by the document or line size:

- A token longer than the tokenizer's ``max_token_chars`` (BERT's WordPiece turns any word over
  ``max_input_chars_per_word`` characters into one ``[UNK]`` whose offsets span the whole word)
  counts as one token per ``max_token_chars`` characters, so an unbreakable run of text is cut into
  windows like any other; no chunk holds more than ``budget * max_token_chars`` characters
  (whitespace runs included).
- A document longer than :data:`SEGMENT_CHARS` is tokenized one segment at a time (segments end at
  a paragraph, line or space where there is one), never in one call; a chunk does not cross a
  segment boundary.
- A document that needs more than ``max_chunks`` chunks is rejected as soon as that is known: at
  once when its length alone proves it, else when the segments read so far have produced more.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from embedpipe.embedding.embedder import TokenCounter
from embedpipe.errors import ConfigError
from embedpipe.hashing import sha256_text
from embedpipe.schemas import C, Reject, segments_schema

_PARAGRAPH = re.compile(r"\n[ \t\u3000]*\n\s*")
_SENTENCE_END = re.compile(
    r"[。！？；]+[」』”’）)\]]*"  # CJK: no space needed after the mark
    r"|[.!?;…]+[\"'”’)\]]*(?=\s)"  # Latin: mark followed by whitespace, so 3.14 stays whole
    r"|\n"
)
_DOCS_PER_TOKENIZER_CALL = 256
SEGMENT_CHARS = 1 << 20
"""Documents longer than this (characters) are tokenized segment by segment."""
_CHARS_PER_TOKENIZER_CALL = 4 * SEGMENT_CHARS
DEFAULT_MAX_TOKEN_CHARS = 100
"""Characters one token may stand for when the tokenizer does not say (BERT's WordPiece value)."""


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


def _cap_tokens(tok: np.ndarray, max_token_chars: int) -> np.ndarray:
    """Token offsets with every token longer than ``max_token_chars`` cut into pieces of that size."""
    if not len(tok):
        return tok
    lengths = tok[:, 1] - tok[:, 0]
    if int(lengths.max()) <= max_token_chars:
        return tok
    pieces = np.maximum(1, -(-lengths // max_token_chars))  # ceil, at least one per token
    owner = np.repeat(np.arange(len(tok)), pieces)
    first = np.cumsum(pieces) - pieces
    k = np.arange(len(owner)) - first[owner]
    starts = tok[owner, 0] + k * max_token_chars
    ends = np.minimum(starts + max_token_chars, tok[owner, 1])
    return np.stack([starts, ends], axis=1)


def _cap_chars(text: str, spans: list[tuple[int, int]], max_chars: int) -> list[tuple[int, int]]:
    """Spans with any span longer than ``max_chars`` (a long whitespace run between two tokens) cut
    at spaces where possible; whitespace-only pieces are dropped."""
    if all(b - a <= max_chars for a, b in spans):
        return spans
    out: list[tuple[int, int]] = []
    for a, b in spans:
        while b - a > max_chars:
            cut = a + max_chars
            space = text.rfind(" ", a + max_chars // 2, cut)
            cut = space if space > a else cut
            s, e = _trim(text, a, cut)
            if e > s:
                out.append((s, e))
            a, _ = _trim(text, cut, b)
        s, e = _trim(text, a, b)
        if e > s:
            out.append((s, e))
    return out


def split_spans(
    text: str,
    tok: np.ndarray,
    budget: int,
    overlap: int,
    max_token_chars: int = DEFAULT_MAX_TOKEN_CHARS,
    lo: int = 0,
    hi: int | None = None,
) -> list[tuple[int, int]]:
    """Character spans of the chunks of one document (or of its segment ``text[lo:hi]``).

    Args:
        text: The document text.
        tok: ``(n, 2)`` token (start, end) offsets of ``text[lo:hi]`` (relative to ``text``) from
            the model's tokenizer.
        budget: Most content tokens per chunk.
        overlap: Tokens of context repeated from the end of one chunk at the start of the next.
        max_token_chars: A longer token counts as one token per this many characters.
        lo: Start of the segment to split.
        hi: End of the segment (default: the end of ``text``).

    Returns:
        ``(start, end)`` character spans, in document order, none longer than
        ``budget * max_token_chars`` characters.
    """
    hi = len(text) if hi is None else hi
    tok = _cap_tokens(tok, max_token_chars)
    starts = tok[:, 0] if len(tok) else np.zeros(0, dtype=np.int64)

    def ntok(a: int, b: int) -> int:
        return int(np.searchsorted(starts, b, "left") - np.searchsorted(starts, a, "left"))

    pieces: list[_Piece] = []
    for pa_, pb in _spans(text, lo, hi, _PARAGRAPH):
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
    return _cap_chars(text, chunks, budget * max_token_chars)


def _segments(text: str, size: int) -> list[tuple[int, int]]:
    """Cut ``text`` into segments of at most ``size`` characters, at a paragraph, line or space in
    the second half of each where there is one."""
    out, a, n = [], 0, len(text)
    while n - a > size:
        lo, hi = a + size // 2, a + size
        cut = -1
        for sep in ("\n\n", "\n", " "):
            cut = text.rfind(sep, lo, hi)
            if cut > a:
                break
        cut = cut if cut > a else hi
        out.append((a, cut))
        a = cut
    out.append((a, n))
    return out


def max_token_chars(tokenizer: TokenCounter) -> int:
    """Characters one token may stand for: the tokenizer's own limit where it has one."""
    return int(getattr(tokenizer, "max_token_chars", DEFAULT_MAX_TOKEN_CHARS) or DEFAULT_MAX_TOKEN_CHARS)


def _too_many(limit: int, n: int, length: int, done: int | None = None) -> str:
    where = "" if done is None else f" in its first {done:,} characters"
    return (
        f"too many chunks: {n:,} or more{where} of {length:,} characters, over "
        f"chunk.max_chunks_per_doc={limit:,}; split the file, or raise the setting "
        "(env EMBEDPIPE_CHUNK__MAX_CHUNKS_PER_DOC)"
    )


def _all_unknown(length: int, max_chars: int) -> str:
    return (
        f"no text the model can read: the model's tokenizer knows none of the tokens of its "
        f"{length:,} characters (each is [UNK]: words longer than {max_chars} characters, or a script "
        "the model's vocabulary lacks); every chunk would get the same meaningless vector"
    )


def long_document_spans(
    text: str, tokenizer: TokenCounter, budget: int, overlap: int, max_chunks: int
) -> list[tuple[int, int]] | str:
    """Chunk spans of a long document, tokenized one :data:`SEGMENT_CHARS` segment at a time.

    Returns:
        The spans, or the reason to reject the document when it needs more than ``max_chunks``.
    """
    k = max_token_chars(tokenizer)
    floor = -(-len(text) // (budget * k))  # no chunk holds more characters than budget * k
    if floor > max_chunks:
        return _too_many(max_chunks, floor, len(text))
    spans: list[tuple[int, int]] = []
    for a, b in _segments(text, SEGMENT_CHARS):
        tok = tokenizer.token_spans([text[a:b]])[0]
        if len(tok):
            spans += split_spans(text, tok + a, budget, overlap, k, a, b)
        if len(spans) > max_chunks:
            return _too_many(max_chunks, len(spans), len(text), b)
    return spans


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


def _groups(spans: list[tuple[int, int]], max_chars: int) -> list[list[tuple[int, int]]]:
    """Consecutive runs of ``spans`` covering at most ``max_chars`` characters each (one when
    they all fit, the common case)."""
    if not spans or spans[-1][1] - spans[0][0] <= max_chars:
        return [spans]
    out: list[list[tuple[int, int]]] = [[]]
    size = 0
    for a, b in spans:
        if out[-1] and size + (b - a) > max_chars:
            out.append([])
            size = 0
        out[-1].append((a, b))
        size += b - a
    return out


def chunk_documents(
    docs: pa.Table,
    tokenizer: TokenCounter,
    budget: int,
    overlap: int,
    ids_out: list[Any] | None = None,
    max_chunks: int = 10_000,
) -> tuple[pa.Table, list[Reject]]:
    """Cut a documents table into chunks.

    Args:
        docs: Documents (:func:`~embedpipe.schemas.docs_schema`).
        tokenizer: The model's tokenizer.
        budget: Most content tokens per chunk (see :func:`chunk_budget`).
        overlap: Tokens repeated between consecutive chunks.
        ids_out: When given and the tokenizer has ``token_ids``, filled with each chunk's token
            ids (no special tokens), row for row.
        max_chunks: A document that needs more chunks is rejected (``chunk.max_chunks_per_doc``).

    Returns:
        Chunks (:func:`~embedpipe.schemas.segments_schema`) and rejects for documents that yield
        no tokens at all or too many chunks.
    """
    schema = segments_schema()
    cols: dict[str, list[Any]] = {f.name: [] for f in schema}
    rejects: list[Reject] = []
    carried = [C.DOC_ID, C.SOURCE, C.PATH, C.SIZE, C.MTIME, C.DOC_HASH, C.METADATA]
    k = max_token_chars(tokenizer)
    unk = getattr(tokenizer, "unk_id", None)

    def emit(text: str, row: dict[str, Any], spans: list[tuple[int, int]] | str) -> None:
        if isinstance(spans, str) or not spans:
            reason = spans or "no tokens after tokenization"
            rejects.append(Reject(path=row[C.DOC_ID], reason=reason, source=row[C.SOURCE]))
            return
        if len(spans) > max_chunks:
            rejects.append(
                Reject(
                    path=row[C.DOC_ID],
                    reason=_too_many(max_chunks, len(spans), len(text)),
                    source=row[C.SOURCE],
                )
            )
            return
        counts: list[int] = []
        kept: list[tuple[int, int]] = []
        doc_ids: list[Any] | None = []
        for group in _groups(spans, _CHARS_PER_TOKENIZER_CALL):  # bounded tokenizer calls
            g_spans, g_counts, ids = _enforce(text, group, tokenizer, budget)
            kept += g_spans
            counts += g_counts
            doc_ids = None if ids is None or doc_ids is None else doc_ids + ids
        if doc_ids is not None and unk is not None and all(np.all(t == unk) for t in doc_ids):
            rejects.append(
                Reject(path=row[C.DOC_ID], reason=_all_unknown(len(text), k), source=row[C.SOURCE])
            )
            return
        if ids_out is not None and doc_ids is not None:
            ids_out.extend(doc_ids)
        spans = kept
        for index, ((a, b), n) in enumerate(zip(spans, counts, strict=True)):
            body = text[a:b]
            cols[C.CHUNK_ID].append(chunk_id(row[C.SOURCE], row[C.DOC_ID], index, body))
            for c in carried:
                cols[c].append(row[c])
            cols[C.CHUNK_INDEX].append(index)
            cols[C.TEXT].append(body)
            cols[C.CHAR_START].append(a)
            cols[C.CHAR_END].append(b)
            cols[C.N_TOKENS].append(n)
            cols[C.CHUNK_HASH].append(sha256_text(body))

    def flush(batch: list[tuple[str, dict[str, Any]]]) -> None:
        if not batch:
            return
        texts = [t for t, _ in batch]
        for (text, row), tok in zip(batch, tokenizer.token_spans(texts), strict=True):
            emit(text, row, split_spans(text, tok, budget, overlap, k) if len(tok) else [])
        batch.clear()

    batch: list[tuple[str, dict[str, Any]]] = []
    chars = 0
    for off in range(0, docs.num_rows, _DOCS_PER_TOKENIZER_CALL):
        part = docs.slice(off, _DOCS_PER_TOKENIZER_CALL)
        texts: Sequence[str] = part.column(C.TEXT).to_pylist()
        rows = part.select(carried).to_pylist()
        for text, row in zip(texts, rows, strict=True):
            if len(text) > SEGMENT_CHARS:  # alone, one segment at a time, in document order
                flush(batch)
                chars = 0
                emit(text, row, long_document_spans(text, tokenizer, budget, overlap, max_chunks))
                continue
            if batch and chars + len(text) > _CHARS_PER_TOKENIZER_CALL:
                flush(batch)
                chars = 0
            batch.append((text, row))
            chars += len(text)
        flush(batch)
        chars = 0
        del texts, rows
    return pa.table(cols, schema=schema), rejects
