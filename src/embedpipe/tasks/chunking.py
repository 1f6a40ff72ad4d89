"""Chunking task: documents to token-bounded chunks, counted with the model's tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task

from embedpipe.chunking import chunk_budget, chunk_documents
from embedpipe.config import Settings
from embedpipe.embedding.embedder import Embedder, get_embedder
from embedpipe.schemas import ChunkingIdentity, Reject
from embedpipe.tasks._common import TASK_DEFAULTS
from embedpipe.tasks.sources import Documents


@dataclass
class Chunks:
    """One shard's chunks (no vectors yet)."""

    shard: int
    table: pa.Table
    rejects: list[Reject]
    token_ids: list[Any] | None = None
    """Each row's token ids from the model's tokenizer, when it gives them (saves re-tokenizing)."""


def chunking_identity(embedder: Embedder, settings: Settings) -> ChunkingIdentity:
    """The chunking a run uses: settings, the budget they give with this model, and its tokenizer."""
    budget = chunk_budget(settings.chunk.tokens, embedder.identity.max_seq_length, embedder.special_tokens)
    return ChunkingIdentity(
        tokens=settings.chunk.tokens,
        overlap=min(settings.chunk.overlap, budget // 2),
        budget=budget,
        tokenizer_hash=embedder.tokenizer.tokenizer_hash,
    )


def chunk_table(docs: pa.Table, shard: int, settings: Settings) -> Chunks:
    """Chunk documents with the configured model's tokenizer."""
    embedder = get_embedder(settings.model)
    ident = chunking_identity(embedder, settings)
    ids: list[Any] = []
    table, rejects = chunk_documents(
        docs, embedder.tokenizer, ident.budget, ident.overlap, ids, settings.chunk.max_chunks_per_doc
    )
    token_ids = ids if len(ids) == table.num_rows and table.num_rows else None
    return Chunks(shard=shard, table=table, rejects=rejects, token_ids=token_ids)


@task(name="chunk", **TASK_DEFAULTS)
def chunk_task(docs: Documents, settings: Settings) -> Chunks:
    """Chunk one shard's new and changed documents."""
    out = chunk_table(docs.delta.to_chunk, docs.shard, settings)
    get_run_logger().debug("stage=chunk shard=%d chunks=%d", out.shard, out.table.num_rows)
    return out
