"""Chunking task: documents to token-bounded chunks, counted with the model's tokenizer."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from prefect import get_run_logger, task

from embedpipe.chunking import chunk_budget, chunk_documents
from embedpipe.config import Settings
from embedpipe.progress import chunks_progress
from embedpipe.resources.embedder import get_embedder
from embedpipe.schemas import Reject
from embedpipe.tasks._common import TASK_DEFAULTS
from embedpipe.tasks.ingest import Documents


@dataclass
class Chunks:
    """One shard's chunks (no vectors yet)."""

    shard: int
    table: pa.Table
    rejects: list[Reject]


def chunk_shard(docs: Documents, settings: Settings) -> Chunks:
    """Chunk one shard with the configured model's tokenizer."""
    embedder = get_embedder(settings.model)
    budget = chunk_budget(settings.chunk.tokens, embedder.identity.max_seq_length, embedder.special_tokens)
    table, rejects = chunk_documents(
        docs.table, embedder.tokenizer, budget, min(settings.chunk.overlap, budget // 2)
    )
    chunks_progress.add_total(table.num_rows)
    return Chunks(shard=docs.shard, table=table, rejects=rejects)


@task(name="chunk", **TASK_DEFAULTS)
def chunk_task(docs: Documents, settings: Settings) -> Chunks:
    """Chunk one shard of documents."""
    out = chunk_shard(docs, settings)
    get_run_logger().debug("stage=chunk shard=%d chunks=%d", out.shard, out.table.num_rows)
    return out
