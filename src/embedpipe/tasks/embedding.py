"""Embedding task: chunk texts through the model in length-sorted batches."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
from prefect import get_run_logger, task

from embedpipe.config import Settings
from embedpipe.embedding.embedder import Embedder, get_embedder
from embedpipe.errors import ModelError
from embedpipe.incremental import chunk_hashes, refresh_rows
from embedpipe.progress import NullProgress, Progress, chunks_progress
from embedpipe.schemas import C, Reject, RunCounts, chunks_schema, vector_matrix
from embedpipe.store import Store
from embedpipe.tasks._common import TASK_DEFAULTS
from embedpipe.tasks.chunking import Chunks, chunking_identity
from embedpipe.tasks.sources import Documents

# Batches per encode call: large enough that the model stays busy, small enough for fine progress.
_BATCHES_PER_CALL = 8


@dataclass
class Embedded:
    """One shard's rows to write (with vectors), and what producing them cost."""

    shard: int
    table: pa.Table
    counts: RunCounts
    """Chunks embedded, reused, refreshed and truncated, the model's seconds, and the rejects of
    documents left out (see ``dropped``)."""
    dropped: list[tuple[str, str]] = field(default_factory=list)
    """(source, doc_id) of documents left out because the model gave one of their chunks a
    non-finite vector; their stored rows stay as they were."""
    dropped_files: set[tuple[str, str]] = field(default_factory=set)
    """(source, path) of the files of dropped documents: never treated as deleted."""


def quarantine_nonfinite(
    table: pa.Table,
) -> tuple[pa.Table, list[Reject], list[tuple[str, str]], set[tuple[str, str]]]:
    """Leave out every document with a NaN or infinite vector in any of its chunks.

    A document is written whole or not at all, so a partly embedded document never looks current.

    Returns:
        The rows of the other documents, a reject per dropped document, their (source, doc_id)
        and the (source, path) of their files.
    """
    if table.num_rows == 0:
        return table, [], [], set()
    bad_rows = np.flatnonzero(~np.isfinite(vector_matrix(table.column(C.VECTOR))).all(axis=1))
    if len(bad_rows) == 0:
        return table, [], [], set()
    sources = table.column(C.SOURCE).to_pylist()
    doc_ids = table.column(C.DOC_ID).to_pylist()
    index = table.column(C.CHUNK_INDEX).to_pylist()
    paths = table.column(C.PATH).to_pylist()
    bad: dict[tuple[str, str], int] = {}
    files = set()
    for i in bad_rows:
        bad.setdefault((sources[i], doc_ids[i]), index[i])
        files.add((sources[i], paths[i]))
    keep = np.asarray([(s, d) not in bad for s, d in zip(sources, doc_ids, strict=True)])
    rejects = [
        Reject(
            source=src,
            path=doc_id,
            reason=f"the model produced a non-finite (NaN or infinite) vector for chunk {chunk}; "
            "the document was not written (its stored rows, if any, are unchanged)",
        )
        for (src, doc_id), chunk in sorted(bad.items())
    ]
    return table.filter(pa.array(keep)), rejects, sorted(bad), files


def table_schema(embedder: Embedder, settings: Settings, extra: dict[str, str] | None = None) -> pa.Schema:
    """The chunks schema for this model, carrying its identity and the chunking identity.

    ``extra``: more schema metadata for a new table (the ``model.backend = "auto"`` decision).
    """
    md = embedder.identity.table_metadata()
    md.update(chunking_identity(embedder, settings).table_metadata())
    md.update(extra or {})
    return chunks_schema(embedder.identity.dim, md)


def embed_chunks(
    chunks: pa.Table,
    embedder: Embedder,
    batch_size: int,
    run_id: str,
    schema: pa.Schema,
    progress: Progress | None = None,
    reuse: Mapping[str, np.ndarray] | None = None,
    token_ids: Sequence[Any] | None = None,
) -> tuple[pa.Table, int, float, int]:
    """Embed a chunks table.

    Chunks whose text hash is in ``reuse`` take that vector (same text, same model: same vector);
    the others are sorted by token count so each batch pads little, embedded, and put back in order.

    Args:
        chunks: Chunks (:func:`~embedpipe.schemas.segments_schema`).
        embedder: The model.
        batch_size: Chunks per forward pass.
        run_id: Recorded on every row.
        schema: Target schema (:func:`table_schema`).
        progress: Told of each call's chunks.
        reuse: Stored vectors by chunk text hash.
        token_ids: Each row's token ids from the chunker, passed on to embedders that take them.

    Returns:
        ``(table, truncated, seconds, embedded)``: the table follows ``schema``; ``truncated``
        counts embedded chunks longer than the model's ``max_seq_length`` (the model would silently
        cut them); ``embedded`` counts chunks sent through the model.
    """
    progress = progress or NullProgress()
    reuse = reuse or {}
    n = chunks.num_rows
    dim = embedder.identity.dim
    ntok = chunks.column(C.N_TOKENS).to_numpy(zero_copy_only=False).astype(np.int64)
    texts = chunks.column(C.TEXT).to_pylist()
    hashes = chunks.column(C.CHUNK_HASH).to_pylist()
    vectors = np.empty((n, dim), dtype=np.float32)
    todo = []
    for i, h in enumerate(hashes):
        vec = reuse.get(h)
        if vec is not None and len(vec) == dim:
            vectors[i] = vec
        else:
            todo.append(i)
    todo_idx = np.asarray(todo, dtype=np.int64)
    truncated = int(
        np.count_nonzero(ntok[todo_idx] + embedder.special_tokens > embedder.identity.max_seq_length)
    )
    order = todo_idx[np.argsort(ntok[todo_idx], kind="stable")]
    progress.add_total(len(order))
    step = batch_size * _BATCHES_PER_CALL
    t0 = time.perf_counter()
    for off in range(0, len(order), step):
        idx = order[off : off + step]
        kw: dict[str, Any] = {} if token_ids is None else {"ids": [token_ids[i] for i in idx]}
        vectors[idx] = embedder.encode([texts[i] for i in idx], batch_size, lengths=ntok[idx], **kw)
        progress.advance(len(idx))
    seconds = time.perf_counter() - t0
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    now = datetime.now(UTC)
    extra = {
        C.VECTOR: pa.FixedSizeListArray.from_arrays(flat, dim),
        C.MODEL_ID: pa.array([embedder.identity.model_id] * n, pa.string()),
        C.RUN_ID: pa.array([run_id] * n, pa.string()),
        C.EMBEDDED_AT: pa.array([now] * n, pa.timestamp("us", tz="UTC")),
    }
    arrays = [chunks.column(f.name) if f.name in chunks.column_names else extra[f.name] for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema), truncated, seconds, len(order)


def stored_vectors(
    store: Store, table: Any | None, embedder: Embedder, hashes: Sequence[str]
) -> dict[str, np.ndarray]:
    """Vectors this model already computed for these text hashes: in the table read (when given),
    then in the vector cache (vectors of discarded versions) for the hashes the table lacks."""
    reuse = store.vectors_for_hashes(table, hashes) if table is not None else {}
    missing = [h for h in hashes if h not in reuse]
    if missing:
        reuse.update(store.cache.lookup(embedder.identity, missing))
    return reuse


def embed_shard(
    chunks: Chunks, docs: Documents, settings: Settings, run_id: str, read_version: int | None
) -> Embedded:
    """Rows to write for one shard.

    New and changed chunks get vectors (reused where the table or the vector cache holds the same
    text already, embedded otherwise); metadata-only documents get their stored rows back with the new
    size, mtime and metadata, without embedding.
    """
    embedder = get_embedder(settings.model)
    schema = table_schema(embedder, settings)
    store = Store(settings.store)
    meta = docs.delta.meta_only
    table = None
    if read_version is not None and (chunks.table.num_rows or meta.num_rows):
        table = store.require_table()
        table.checkout(read_version)
    reuse = stored_vectors(store, table, embedder, chunk_hashes(chunks.table))
    fresh, truncated, seconds, embedded = embed_chunks(
        chunks.table,
        embedder,
        settings.model.batch_size,
        run_id,
        schema,
        chunks_progress,
        reuse,
        chunks.token_ids if getattr(embedder, "takes_ids", False) else None,
    )
    fresh, rejects, dropped, dropped_files = quarantine_nonfinite(fresh)
    counts = RunCounts(embedded=embedded, truncated=truncated, seconds=seconds, rejects=rejects)
    counts.reused = max(0, fresh.num_rows - embedded)
    parts = [fresh]
    if table is not None and meta.num_rows:
        keys = list(zip(meta.column(C.SOURCE).to_pylist(), meta.column(C.DOC_ID).to_pylist(), strict=True))
        stored = store.rows_for_docs(table, keys, schema)
        parts.append(refresh_rows(stored, meta))
        counts.refreshed = stored.num_rows
    out = pa.concat_tables(parts) if counts.refreshed else fresh
    return Embedded(chunks.shard, out, counts, dropped, dropped_files)


@task(name="embed", **TASK_DEFAULTS)
def embed_task(
    chunks: Chunks, docs: Documents, settings: Settings, run_id: str, read_version: int | None
) -> Embedded:
    """Embed one shard's new and changed chunks with the process's model."""
    out = embed_shard(chunks, docs, settings, run_id, read_version)
    if out.counts.truncated:
        get_run_logger().warning(
            "stage=embed shard=%d truncated=%d chunks exceed the model's max_seq_length",
            chunks.shard,
            out.counts.truncated,
        )
    return out


def reembed_rows(
    stored: pa.Table, settings: Settings, run_id: str, shard: int, reuse_version: int | None
) -> Embedded:
    """New vectors for stored chunk rows (a reindex that keeps the chunk texts)."""
    embedder = get_embedder(settings.model)
    schema = table_schema(embedder, settings)
    store = Store(settings.store)
    table = None
    if reuse_version is not None:  # same model: vectors of the same text are still valid
        table = store.require_table()
        table.checkout(reuse_version)
    reuse = stored_vectors(store, table, embedder, chunk_hashes(stored))
    out, truncated, seconds, embedded = embed_chunks(
        stored, embedder, settings.model.batch_size, run_id, schema, chunks_progress, reuse
    )
    _, rejects, _, _ = quarantine_nonfinite(out)
    if rejects:
        # A reindex replaces the whole table: leaving documents out would lose them from the index.
        raise ModelError(
            f"the model produced non-finite vectors for {len(rejects)} stored documents, e.g. "
            f"{rejects[0].path}; the reindex stopped and the table keeps serving the previous index"
        )
    reused = out.num_rows - embedded
    return Embedded(
        shard, out, RunCounts(embedded=embedded, reused=reused, truncated=truncated, seconds=seconds)
    )


@task(name="re-embed", **TASK_DEFAULTS)
def reembed_task(
    stored: pa.Table, settings: Settings, run_id: str, shard: int, reuse_version: int | None
) -> Embedded:
    """Embed stored chunk texts with the new model."""
    return reembed_rows(stored, settings, run_id, shard, reuse_version)


@task(name="query-path", **TASK_DEFAULTS)
def query_path_task(settings: Settings) -> None:
    """Make and check the table's fast query path while the run has the model loaded.

    A no-op unless this run loaded the model, its export exists, and no check is recorded yet
    (see :func:`embedpipe.embedding.query.record_after_run`); never fails the run.
    """
    from embedpipe.embedding.query import record_after_run

    record = record_after_run(get_embedder(settings.model), settings.model)
    if record is not None:
        get_run_logger().info(
            "stage=serve query path checked passed=%s max_abs_diff=%.1e min_cosine=%.6f",
            record["passed"],
            record["max_abs_diff"],
            record["min_cosine"],
        )
