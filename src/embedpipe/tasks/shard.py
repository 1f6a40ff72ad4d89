"""A whole shard in one task: ingest, chunk, embed and stage where the task runs (a Dask worker).

With the Dask runner the bulk data of a shard never travels back to the flow: the worker reads the
files, chunks and embeds them with its own model (loaded once per worker process), writes the rows
to the run's staging area, and returns a small :class:`ShardOutcome` (counts, rejects, ids and the
staged file's reference). The flow then commits every staged part at once, as with the local runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefect import get_run_logger, task

from embedpipe.config import Settings
from embedpipe.incremental import Known
from embedpipe.schemas import RunCounts
from embedpipe.sources.docids import file_of
from embedpipe.sources.files import FileRef
from embedpipe.store import StagedShard
from embedpipe.tasks._common import RETRYING
from embedpipe.tasks.chunking import Chunks, chunk_table
from embedpipe.tasks.embedding import Embedded, embed_shard
from embedpipe.tasks.sources import Documents, ingest_shard
from embedpipe.tasks.store import stage_embedded


@dataclass
class ShardOutcome:
    """What one shard added to a run, without its rows (they are staged at ``staged.uri``)."""

    shard: int
    staged: StagedShard
    counts: RunCounts = field(default_factory=RunCounts)
    """Documents and chunks counted, and the rejects of reading, chunking and embedding, in order."""
    protected_files: set[tuple[str, str]] = field(default_factory=set)
    seen_ids: list[tuple[str, str]] = field(default_factory=list)
    changed_text: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    dropped_files: set[tuple[str, str]] = field(default_factory=set)
    split_ids: list[str] = field(default_factory=list)
    chunks: int = 0


def outcome_of(docs: Documents, chunks: Chunks, emb: Embedded, staged: StagedShard) -> ShardOutcome:
    """The small summary of a processed shard that the flow adds to its tally."""
    d = docs.delta
    counts = RunCounts(
        seen=docs.seen,
        new=d.new,
        changed=d.changed,
        unchanged=d.unchanged,
        rejects=docs.rejects + chunks.rejects,
    )
    counts += emb.counts
    # A document rejected while chunking (too many chunks, nothing the model can read) keeps the
    # rows an earlier version stored for it: a reject never deletes, like a reject while embedding.
    chunk_dropped = [(r.source, r.path) for r in chunks.rejects]
    return ShardOutcome(
        shard=docs.shard,
        staged=staged,
        counts=counts,
        protected_files=set(docs.protected_files),
        seen_ids=list(d.seen),
        changed_text=list(d.changed_text),
        dropped=list(emb.dropped) + chunk_dropped,
        dropped_files=set(emb.dropped_files) | {(src, file_of(doc)) for src, doc in chunk_dropped},
        split_ids=list(docs.split_ids),
        chunks=chunks.table.num_rows,
    )


def process_shard(
    shard: int, refs: list[FileRef], settings: Settings, known: Known, run_id: str, read_version: int | None
) -> ShardOutcome:
    """Ingest, chunk, embed and stage one shard with the same functions the local runner's tasks call.

    Returns:
        The shard's outcome; its rows are in the run's staging area.
    """
    docs = ingest_shard(shard, refs, settings, known)
    chunks = chunk_table(docs.delta.to_chunk, shard, settings)
    emb = embed_shard(chunks, docs, settings, run_id, read_version)
    staged = stage_embedded(emb, settings, run_id)
    return outcome_of(docs, chunks, emb, staged)


@task(name="shard", **RETRYING)
def shard_task(
    shard: int, refs: list[FileRef], settings: Settings, known: Known, run_id: str, read_version: int | None
) -> ShardOutcome:
    """Process one shard where the task runs and stage its rows; return only its outcome."""
    out = process_shard(shard, refs, settings, known, run_id, read_version)
    log = get_run_logger()
    log.debug(
        "stage=shard shard=%d chunks=%d embedded=%d staged=%d",
        shard,
        out.chunks,
        out.counts.embedded,
        out.staged.rows,
    )
    if out.counts.truncated:
        log.warning(
            "stage=embed shard=%d truncated=%d chunks exceed the model's max_seq_length",
            shard,
            out.counts.truncated,
        )
    return out
