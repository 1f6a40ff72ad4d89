"""Full-text (BM25) and hybrid search on the chunk text: the query, the index check and the fusion.

Shared by the two read paths: :mod:`embedpipe.store.reader` (Lance alone, for ``embedpipe search``
and the public API) and :mod:`embedpipe.store.state` (LanceDB, for the checks). Both send the query
as a *match query* on the text column, never as a query string: the text is tokenized by the
index's own tokenizer and nothing in it is syntax (quotes, parentheses, ``AND``, ``*``, ``:``, ``~``,
``^`` and backslashes are plain characters, dropped by the tokenizer like other punctuation), so no
query text can fail to parse. Hybrid search fuses the vector and text rankings by reciprocal rank
fusion with the constant and tie order of LanceDB's ``RRFReranker``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from embedpipe.errors import IndexMissingError
from embedpipe.schemas import C

RRF_K = 60
"""The reciprocal-rank-fusion constant: ``score = sum(1 / (RRF_K + rank))``, ranks from 1 (LanceDB's
``RRFReranker`` default)."""

MAX_QUERY_CHARS = 10_000
"""Text queries are cut to this many characters: a longer one is a document, not a query, and every
extra term costs a posting-list read."""

ROW_ID = "_rowid"


def query_text(query: str) -> str:
    """The text a match query searches for: NULs become spaces, cut to :data:`MAX_QUERY_CHARS`."""
    return query.replace("\x00", " ")[:MAX_QUERY_CHARS]


def has_text_index(ds: Any) -> bool:
    """Whether a Lance dataset (at its checked-out version) has a full-text index on the text."""
    return any(
        str(d.index_type).lower() == "inverted" and list(d.field_names) == [C.TEXT]
        for d in ds.describe_indices()
    )


def require_text_index(ds: Any, mode: str, table: str) -> None:
    """Refuse a text or hybrid search on a version without a full-text index.

    Lance would otherwise scan every row's text unindexed (slow, and scored without the index's
    tokenizer), so a table built before full-text indexes says so instead.

    Raises:
        IndexMissingError: The version has no full-text index on the text column.
    """
    if not has_text_index(ds):
        raise IndexMissingError(
            f"mode={mode} needs a full-text index on column={C.TEXT} and table={table} version "
            f"{ds.version} has none (a table written before full-text indexes); build it with "
            "`embedpipe index`, or search with --mode vector"
        )


def rrf_fuse(vector_ids: Sequence[Any], text_ids: Sequence[Any], k: int) -> list[tuple[Any, float]]:
    """The ``k`` best row ids by reciprocal rank fusion of two rankings, with their RRF scores.

    The same fused ranking as LanceDB's hybrid query with ``RRFReranker(K=RRF_K)``: rows in the
    order vector hits then text-only hits, each once, stably sorted by the float32 score, best first.
    """
    import numpy as np

    scores: dict[Any, float] = {}
    for ranking in (vector_ids, text_ids):
        for rank, row in enumerate(ranking, 1):
            scores[row] = scores.get(row, 0.0) + 1.0 / (rank + RRF_K)
    fused = [(row, float(np.float32(s))) for row, s in scores.items()]
    fused.sort(key=lambda item: -item[1])
    return fused[:k]
