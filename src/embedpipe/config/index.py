"""Settings of the table's indexes: the vector (ANN) index, the full-text index, scalar indexes,
and the search mode served by default."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from embedpipe.config._base import _Group


class IndexSettings(_Group):
    """How the runs keep the table's indexes fresh, and how searches use them.

    Every writing run refreshes the indexes before its checks, so the gates judge the index that
    will be served. The vector index is created once the table has ``min_rows`` rows (below that an
    exact scan is fast and exact), refreshed incrementally after each run, and retrained when the
    share of rows added or replaced since its training passes ``retrain_ratio``, after every
    reindex, and on ``embedpipe index --rebuild``.
    """

    enabled: bool = Field(True, description="Create and refresh indexes in every writing run.")
    min_rows: int = Field(
        20_000,
        ge=1,
        le=10_000_000_000,
        description="Rows the table needs before a vector index is built; below it searches scan "
        "exactly (see docs/indexes.md for the measurements behind the default).",
    )
    min_recall: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="The index_recall gate: recall@10 of the served index against exact search.",
    )
    retrain_ratio: float = Field(
        0.2,
        gt=0.0,
        le=1.0,
        description="Retrain the vector index when rows added or replaced since its training pass "
        "this share of the table.",
    )
    vector_type: Literal["auto", "IVF_PQ", "IVF_HNSW_SQ", "IVF_FLAT"] = Field(
        "auto",
        description="The vector index type as LanceDB names it; auto is IVF_FLAT for vectors of up to "
        "128 dimensions (a scan of the probed partitions, exact distances) and IVF_HNSW_SQ above (it "
        "trains several times faster than IVF_PQ on few cores for the same recall); see docs/indexes.md.",
    )
    nprobes: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Partitions probed per search; None (with refine_factor None): tuned when the index "
        "is trained, to reach min_recall. Setting either serves both exactly as set.",
    )
    refine_factor: int | None = Field(
        None,
        ge=1,
        le=1_000,
        description="Re-rank factor over exact vectors; None (with nprobes None): tuned when the index is "
        "trained. With nprobes set, None means no re-ranking.",
    )
    fts: bool = Field(True, description="Keep a full-text (BM25) index on the chunk text.")
    fts_tokenizer: Literal["icu", "ngram", "simple", "whitespace"] = Field(
        "icu",
        description="Base tokenizer of the full-text index (icu: Unicode word boundaries, with ICU's "
        "built-in dictionary for Chinese, Japanese and Thai, and English stemming; ngram: 2- and "
        "3-character n-grams, many times slower to search; simple splits on punctuation and "
        "whitespace, with English stemming, and matches a run of Chinese characters only whole).",
    )
    scalar: bool = Field(
        True,
        description="Keep scalar indexes on the columns runs filter by (source, path, doc_id, chunk_hash).",
    )
    scalar_min_rows: int = Field(
        10_000,
        ge=1,
        le=10_000_000_000,
        description="Rows the table needs before the scalar indexes are created (all in one extra "
        "version); below it a filter scans a few columns in milliseconds.",
    )
    search_mode: Literal["vector", "text", "hybrid"] = Field(
        "vector",
        description="The search mode served by default and judged by the golden-set gate; a version "
        "without a full-text index is searched by vector (see docs/search.md for the golden-set "
        "figures behind the default).",
    )
