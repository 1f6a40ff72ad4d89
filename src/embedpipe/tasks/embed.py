"""Embedding task: chunk texts through the model in length-sorted batches."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from prefect import get_run_logger, task

from embedpipe.config import Settings
from embedpipe.progress import NullProgress, Progress, chunks_progress
from embedpipe.resources.embedder import Embedder, get_embedder
from embedpipe.schemas import C, chunks_schema
from embedpipe.tasks._common import TASK_DEFAULTS
from embedpipe.tasks.chunk import Chunks

# Batches per encode call: large enough that the model stays busy, small enough for fine progress.
_BATCHES_PER_CALL = 8


@dataclass
class Embedded:
    """One shard's chunks with vectors, and what embedding it cost."""

    shard: int
    table: pa.Table
    embedded: int
    truncated: int
    seconds: float


def table_schema(embedder: Embedder, settings: Settings) -> pa.Schema:
    """The chunks schema for this model, carrying its identity and the chunking settings."""
    md = embedder.identity.table_metadata()
    md["embedpipe.chunk.tokens"] = str(settings.chunk.tokens)
    md["embedpipe.chunk.overlap"] = str(settings.chunk.overlap)
    return chunks_schema(embedder.identity.dim, md)


def embed_chunks(
    chunks: pa.Table,
    embedder: Embedder,
    batch_size: int,
    run_id: str,
    schema: pa.Schema,
    progress: Progress | None = None,
) -> tuple[pa.Table, int, float]:
    """Embed a chunks table.

    Chunks are sorted by token count so each batch pads little, then put back in their order.

    Args:
        chunks: Chunks (:func:`~embedpipe.schemas.segments_schema`).
        embedder: The model.
        batch_size: Chunks per forward pass.
        run_id: Recorded on every row.
        schema: Target schema (:func:`table_schema`).
        progress: Told of each call's chunks.

    Returns:
        ``(table, truncated, seconds)``: the table follows ``schema``; ``truncated`` counts chunks
        longer than the model's ``max_seq_length`` (the model would silently cut them).
    """
    progress = progress or NullProgress()
    n = chunks.num_rows
    dim = embedder.identity.dim
    ntok = chunks.column(C.N_TOKENS).to_numpy(zero_copy_only=False).astype(np.int64)
    truncated = int(np.count_nonzero(ntok + embedder.special_tokens > embedder.identity.max_seq_length))
    texts = chunks.column(C.TEXT).to_pylist()
    order = np.argsort(ntok, kind="stable")
    vectors = np.empty((n, dim), dtype=np.float32)
    step = batch_size * _BATCHES_PER_CALL
    t0 = time.perf_counter()
    for off in range(0, n, step):
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
    return pa.Table.from_arrays(arrays, schema=schema), truncated, seconds


@task(name="embed", **TASK_DEFAULTS)
def embed_task(chunks: Chunks, settings: Settings, run_id: str) -> Embedded:
    """Embed one shard of chunks with the process's model."""
    embedder = get_embedder(settings.model)
    table, truncated, seconds = embed_chunks(
        chunks.table,
        embedder,
        settings.model.batch_size,
        run_id,
        table_schema(embedder, settings),
        chunks_progress,
    )
    if truncated:
        get_run_logger().warning(
            "stage=embed shard=%d truncated=%d chunks exceed max_seq_length=%d",
            chunks.shard,
            truncated,
            embedder.identity.max_seq_length,
        )
    return Embedded(chunks.shard, table, table.num_rows, truncated, seconds)
