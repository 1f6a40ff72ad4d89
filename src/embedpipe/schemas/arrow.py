"""Arrow schemas, declared once with nullability and a description per field.

Column names are the constants of :class:`C`; never repeat them as string literals. A golden test
(``tests/unit/test_schemas.py``) pins every schema so that a change is a deliberate diff.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from embedpipe.schemas.tables import (
    CANARY_TABLE,
    CHECKS_TABLE,
    REJECTS_TABLE,
    RUNS_TABLE,
    VECTOR_CACHE_TABLE,
)

SCHEMA_VERSION = "1"


class C:
    """Column names."""

    DOC_ID = "doc_id"
    SOURCE = "source"
    PATH = "path"
    TEXT = "text"
    SIZE = "size_bytes"
    MTIME = "mtime"
    DOC_HASH = "doc_hash"
    METADATA = "metadata"
    CHUNK_ID = "chunk_id"
    CHUNK_INDEX = "chunk_index"
    CHAR_START = "char_start"
    CHAR_END = "char_end"
    N_TOKENS = "n_tokens"
    CHUNK_HASH = "chunk_hash"
    VECTOR = "vector"
    MODEL_ID = "model_id"
    RUN_ID = "run_id"
    TABLE = "table"
    EMBEDDED_AT = "embedded_at"
    REASON = "reason"
    AT = "at"


def _f(name: str, typ: pa.DataType, nullable: bool, description: str) -> pa.Field:
    return pa.field(name, typ, nullable=nullable, metadata={"description": description})


TS = pa.timestamp("us", tz="UTC")
PRIMARY_KEY_MD = b"lance-schema:unenforced-primary-key:position"


def _doc_fields() -> list[pa.Field]:
    return [
        _f(C.DOC_ID, pa.string(), False, "Path relative to the source root; path#<id or row> for records."),
        _f(C.SOURCE, pa.string(), False, "The source root the document was found under (absolute)."),
        _f(C.PATH, pa.string(), False, "File path relative to the source root, '/'-separated."),
        _f(C.SIZE, pa.int64(), False, "Size of the source file in bytes."),
        _f(C.MTIME, TS, False, "Modification time of the source file."),
        _f(C.DOC_HASH, pa.string(), False, "sha256 of the document's extracted text."),
        _f(C.METADATA, pa.string(), True, "Other fields of a record, as a JSON object."),
    ]


def docs_schema() -> pa.Schema:
    """Schema of ingested documents, one row per document or record."""
    fields = _doc_fields()
    fields.insert(3, _f(C.TEXT, pa.string(), False, "Extracted text of the document."))
    return pa.schema(
        fields, metadata={"embedpipe.schema": "docs", "embedpipe.schema_version": SCHEMA_VERSION}
    )


def doc_state_schema() -> pa.Schema:
    """Schema of what the table knows of each document: one row per (source, path, doc_id)."""
    return pa.schema(
        _doc_fields(), metadata={"embedpipe.schema": "doc_state", "embedpipe.schema_version": SCHEMA_VERSION}
    )


def segments_schema() -> pa.Schema:
    """Schema of chunks before embedding (no vector yet)."""
    return pa.schema(
        [
            _f(C.CHUNK_ID, pa.string(), False, "blake2b-128 of source, doc_id, chunk_index and text."),
            *_doc_fields(),
            _f(C.CHUNK_INDEX, pa.int32(), False, "Position of the chunk within its document, from 0."),
            _f(C.TEXT, pa.string(), False, "Chunk text."),
            _f(
                C.CHAR_START, pa.int64(), False, "Offset of the chunk's first character in the document text."
            ),
            _f(C.CHAR_END, pa.int64(), False, "Offset one past the chunk's last character."),
            _f(C.N_TOKENS, pa.int32(), False, "Tokens of the model's tokenizer, special tokens excluded."),
            _f(C.CHUNK_HASH, pa.string(), False, "sha256 of the chunk text."),
        ],
        metadata={"embedpipe.schema": "segments", "embedpipe.schema_version": SCHEMA_VERSION},
    )


def chunks_schema(dim: int, metadata: dict[str, str] | None = None) -> pa.Schema:
    """Schema of the served chunks table.

    Args:
        dim: Embedding dimension of the model.
        metadata: Extra schema metadata (model identity, chunking settings).

    Returns:
        The segments schema plus the vector, model and run columns.
    """
    if dim <= 0:
        raise ValueError(f"dim must be positive, got {dim}")
    base = segments_schema()
    key = base.field(C.CHUNK_ID)
    # Lance's unenforced primary key: concurrent merge_inserts on the same keys then conflict and
    # retry instead of both inserting, so two runs committing at once never duplicate a chunk.
    key = key.with_metadata({**(key.metadata or {}), PRIMARY_KEY_MD: b"1"})
    fields = [
        key,
        *(f for f in base if f.name != C.CHUNK_ID),
        _f(C.VECTOR, pa.list_(pa.float32(), dim), False, f"Embedding, float32[{dim}]."),
        _f(C.MODEL_ID, pa.string(), False, "Model identity: name@weights-hash."),
        _f(C.RUN_ID, pa.string(), False, "The run that embedded this chunk."),
        _f(C.EMBEDDED_AT, TS, False, "When the chunk was embedded."),
    ]
    md = {"embedpipe.schema": "chunks", "embedpipe.schema_version": SCHEMA_VERSION, "embedpipe.dim": str(dim)}
    md.update(metadata or {})
    return pa.schema(fields, metadata=md)


def rejects_schema() -> pa.Schema:
    """Schema of the ``rejects`` table: what was quarantined, and why."""
    return pa.schema(
        [
            _f(C.RUN_ID, pa.string(), False, "The run that rejected the input."),
            _f(C.SOURCE, pa.string(), False, "The source root."),
            _f(C.PATH, pa.string(), False, "File (and record) that was rejected."),
            _f(C.REASON, pa.string(), False, "Why it was rejected."),
            _f(C.AT, TS, False, "When."),
        ],
        metadata={"embedpipe.schema": REJECTS_TABLE, "embedpipe.schema_version": SCHEMA_VERSION},
    )


def checks_schema() -> pa.Schema:
    """Schema of the ``checks`` table: one row per check result on a table version (dashboards read it)."""
    return pa.schema(
        [
            _f(C.RUN_ID, pa.string(), False, "The run whose version was checked."),
            _f(C.TABLE, pa.string(), False, "The chunks table that was checked."),
            _f("table_version", pa.int64(), True, "Checked table version."),
            _f("check", pa.string(), False, "Check name, e.g. centroid_shift or golden_recall."),
            _f("statistic", pa.float64(), True, "Measured value."),
            _f("threshold", pa.float64(), True, "Gate threshold."),
            _f("severity", pa.string(), False, "fail, warn or off."),
            _f("status", pa.string(), False, "pass, warn, fail, skipped or error."),
            _f(C.AT, TS, False, "When."),
            _f("reference_version", pa.int64(), True, "Version compared against (served or baseline)."),
            _f("p_value", pa.float64(), True, "p-value of 'no change' for statistical tests."),
            _f("effect", pa.float64(), True, "Effect size, on the scale named in detail."),
            _f("detail", pa.string(), True, "One line for people: what was measured and on how much."),
        ],
        metadata={"embedpipe.schema": CHECKS_TABLE, "embedpipe.schema_version": SCHEMA_VERSION},
    )


def canary_schema() -> pa.Schema:
    """Schema of the ``canary`` table: the probe vectors embedded by each run, per table version."""
    return pa.schema(
        [
            _f(C.RUN_ID, pa.string(), False, "The run that embedded the probes."),
            _f(C.TABLE, pa.string(), False, "The chunks table the probes were embedded for."),
            _f("table_version", pa.int64(), True, "The version the run wrote."),
            _f(C.MODEL_ID, pa.string(), False, "Model identity: name@weights-hash."),
            _f("probe", pa.int32(), False, "Position of the probe text in the probe set."),
            _f("probe_hash", pa.string(), False, "sha256 of the probe text."),
            _f(C.VECTOR, pa.list_(pa.float32()), False, "The probe's vector (any dimension)."),
            _f(C.AT, TS, False, "When."),
        ],
        metadata={"embedpipe.schema": CANARY_TABLE, "embedpipe.schema_version": SCHEMA_VERSION},
    )


def vector_cache_schema() -> pa.Schema:
    """Schema of the ``vector_cache`` table: vectors of discarded versions, by model and text hash."""
    return pa.schema(
        [
            _f("key", pa.string(), False, "model_key:chunk_hash, the row's identity (upserted on it)."),
            _f("model_key", pa.string(), False, "Hash of everything that changes a vector (ModelIdentity)."),
            _f(C.MODEL_ID, pa.string(), False, "Model identity for people: name@weights-hash."),
            _f(C.CHUNK_HASH, pa.string(), False, "sha256 of the chunk text."),
            _f(C.VECTOR, pa.list_(pa.float32()), False, "The chunk's vector (any dimension)."),
            _f(C.TABLE, pa.string(), False, "The chunks table the vector was discarded from."),
            _f(C.REASON, pa.string(), False, "failed-gate, rollback, reindex, publish or failed-run."),
            _f("cached_at", TS, False, "When it was stored (trimming removes the oldest first)."),
        ],
        metadata={"embedpipe.schema": VECTOR_CACHE_TABLE, "embedpipe.schema_version": SCHEMA_VERSION},
    )


def runs_schema() -> pa.Schema:
    """Schema of the ``runs`` table: one row per pipeline run, for dashboards."""
    i64 = pa.int64()
    return pa.schema(
        [
            _f(C.RUN_ID, pa.string(), False, "Prefect flow run id."),
            _f("flow", pa.string(), False, "Flow name."),
            _f("status", pa.string(), False, "completed or failed."),
            _f("message", pa.string(), True, "Failure reason, if any."),
            _f("table", pa.string(), False, "Chunks table written."),
            _f("table_version", i64, True, "Version the run created; null when none."),
            _f("previous_version", i64, True, "Latest table version when the run started."),
            _f("started_at", TS, False, "Start time."),
            _f("finished_at", TS, False, "End time."),
            _f("duration_s", pa.float64(), False, "Wall time in seconds."),
            _f("sources", pa.list_(pa.string()), False, "Source roots scanned."),
            _f("docs_seen", i64, False, "Documents and records encountered, rejected ones included."),
            _f("docs_rejected", i64, False, "Documents and records quarantined."),
            _f("docs_new", i64, False, "Documents not in the table before."),
            _f("docs_changed", i64, False, "Documents whose text or metadata changed."),
            _f("docs_unchanged", i64, False, "Documents left as they were."),
            _f("docs_deleted", i64, False, "Documents removed because their source no longer has them."),
            _f("chunks_written", i64, False, "Chunk rows inserted or updated."),
            _f("chunks_deleted", i64, False, "Chunk rows removed."),
            _f("chunks_reused", i64, False, "Chunks whose vector was reused (same text, same model)."),
            _f("chunks_embedded", i64, False, "Chunks sent through the model."),
            _f("chunks_truncated", i64, False, "Chunks longer than the model's max_seq_length."),
            _f("embed_seconds", pa.float64(), False, "Seconds spent inside the model."),
            _f("chunks_per_s", pa.float64(), False, "chunks_embedded / duration_s."),
            _f("model", pa.string(), False, "Model name."),
            _f("model_id", pa.string(), False, "Model identity: name@weights-hash."),
            _f("dim", pa.int32(), False, "Embedding dimension."),
            _f("device", pa.string(), False, "Device the model ran on."),
        ],
        metadata={"embedpipe.schema": RUNS_TABLE, "embedpipe.schema_version": SCHEMA_VERSION},
    )


def vector_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A vector column (fixed-size or variable lists of floats) as an ``(n, dim)`` float32 matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(n, flat.size // n if n else 0).astype(np.float32, copy=False)


def search_hits(rows: Any, score: str = "_distance") -> list[dict[str, Any]]:
    """Search results as ``embedpipe search --json`` prints them.

    Args:
        rows: Result rows (mappings) with the doc id, chunk id, text and the ``score`` column.
        score: The column scoring each row: ``_distance`` (a cosine distance, given as the cosine
            similarity), ``_score`` (BM25) or ``_relevance_score`` (reciprocal rank fusion).
    """
    # RRF scores are small (at most 2 / 61): they keep more digits to keep their order readable.
    digits = 9 if score == "_relevance_score" else 6
    return [
        {
            C.DOC_ID: r[C.DOC_ID],
            C.CHUNK_ID: r[C.CHUNK_ID],
            C.TEXT: r[C.TEXT],
            "score": round(1.0 - float(r[score]) if score == "_distance" else float(r[score]), digits),
        }
        for r in rows
    ]
