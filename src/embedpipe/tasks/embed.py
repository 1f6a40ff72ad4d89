"""Embedding task: chunk texts through the model in length-sorted batches."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from prefect import get_run_logger, task

from embedpipe.config import Settings
from embedpipe.incremental import chunk_hashes, refresh_rows
from embedpipe.progress import NullProgress, Progress, chunks_progress
from embedpipe.resources.embedder import Embedder, get_embedder
from embedpipe.resources.store import Store
from embedpipe.schemas import C, chunks_schema
from embedpipe.tasks._common import TASK_DEFAULTS
from embedpipe.tasks.chunk import Chunks, chunking_identity
from embedpipe.tasks.ingest import Documents

# Batches per encode call: large enough that the model stays busy, small enough for fine progress.
_BATCHES_PER_CALL = 8


@dataclass
class Embedded:
    """One shard's rows to write (with vectors), and what producing them cost."""

    shard: int
    table: pa.Table
    embedded: int
    reused: int
    refreshed: int
    truncated: int
    seconds: float


def table_schema(embedder: Embedder, settings: Settings) -> pa.Schema:
    """The chunks schema for this model, carrying its identity and the chunking identity."""
    md = embedder.identity.table_metadata()
    md.update(chunking_identity(embedder, settings).table_metadata())
    return chunks_schema(embedder.identity.dim, md)


def embed_chunks(
    chunks: pa.Table,
    embedder: Embedder,
    batch_size: int,
    run_id: str,
    schema: pa.Schema,
    progress: Progress | None = None,
    reuse: Mapping[str, np.ndarray] | None = None,
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
        vectors[idx] = embedder.encode([texts[i] for i in idx], batch_size)
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


def embed_shard(
    chunks: Chunks, docs: Documents, settings: Settings, run_id: str, read_version: int | None
) -> Embedded:
    """Rows to write for one shard.

    New and changed chunks get vectors (reused from the table where the same text is stored
    already, embedded otherwise); metadata-only documents get their stored rows back with the new
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
    reuse = store.vectors_for_hashes(table, chunk_hashes(chunks.table)) if table is not None else {}
    fresh, truncated, seconds, embedded = embed_chunks(
        chunks.table, embedder, settings.model.batch_size, run_id, schema, chunks_progress, reuse
    )
    parts = [fresh]
    refreshed = 0
    if table is not None and meta.num_rows:
        keys = list(zip(meta.column(C.SOURCE).to_pylist(), meta.column(C.DOC_ID).to_pylist(), strict=True))
        stored = store.rows_for_docs(table, keys, schema)
        parts.append(refresh_rows(stored, meta))
        refreshed = stored.num_rows
    out = pa.concat_tables(parts) if refreshed else fresh
    return Embedded(chunks.shard, out, embedded, fresh.num_rows - embedded, refreshed, truncated, seconds)


@task(name="embed", **TASK_DEFAULTS)
def embed_task(
    chunks: Chunks, docs: Documents, settings: Settings, run_id: str, read_version: int | None
) -> Embedded:
    """Embed one shard's new and changed chunks with the process's model."""
    out = embed_shard(chunks, docs, settings, run_id, read_version)
    if out.truncated:
        get_run_logger().warning(
            "stage=embed shard=%d truncated=%d chunks exceed the model's max_seq_length",
            chunks.shard,
            out.truncated,
        )
    return out


def reembed_rows(
    stored: pa.Table, settings: Settings, run_id: str, shard: int, reuse_version: int | None
) -> Embedded:
    """New vectors for stored chunk rows (a reindex that keeps the chunk texts)."""
    embedder = get_embedder(settings.model)
    schema = table_schema(embedder, settings)
    reuse: Mapping[str, np.ndarray] = {}
    if reuse_version is not None:  # same model: vectors of the same text are still valid
        store = Store(settings.store)
        table = store.require_table()
        table.checkout(reuse_version)
        reuse = store.vectors_for_hashes(table, chunk_hashes(stored))
    out, truncated, seconds, embedded = embed_chunks(
        stored, embedder, settings.model.batch_size, run_id, schema, chunks_progress, reuse
    )
    return Embedded(shard, out, embedded, out.num_rows - embedded, 0, truncated, seconds)


@task(name="re-embed", **TASK_DEFAULTS)
def reembed_task(
    stored: pa.Table, settings: Settings, run_id: str, shard: int, reuse_version: int | None
) -> Embedded:
    """Embed stored chunk texts with the new model."""
    return reembed_rows(stored, settings, run_id, shard, reuse_version)
