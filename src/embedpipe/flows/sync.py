"""The sync flow: ingest → chunk → embed → stage, shard by shard, then one commit and a summary.

Shards are pipelined: while the model embeds shard *i*, shards *i+1..i+k* are read and chunked and
shard *i-1* is staged, with at most ``runtime.max_inflight_shards`` shards in memory. Embedding is
chained shard after shard so that one model instance is never asked for two forward passes at once.
Nothing becomes visible until the single ``write`` task commits the run as one table version.
"""

from __future__ import annotations

import gc
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from embedpipe.config import Settings, get_settings
from embedpipe.errors import EmbedpipeError, RejectRatioExceeded
from embedpipe.progress import chunks_progress
from embedpipe.resources.embedder import get_embedder
from embedpipe.resources.store import StagedShard, Store
from embedpipe.schemas import ModelIdentity, Reject, RunSummary
from embedpipe.tasks.chunk import chunk_task
from embedpipe.tasks.embed import embed_task, table_schema
from embedpipe.tasks.ingest import Plan, discover_task, ingest_task
from embedpipe.tasks.prepare import prepare_task
from embedpipe.tasks.report import build_summary, summarize_task
from embedpipe.tasks.write import stage_task, write_task


@dataclass
class _Tally:
    seen: int = 0
    rejects: list[Reject] = field(default_factory=list)
    failed_files: set[tuple[str, str]] = field(default_factory=set)
    staged: list[StagedShard] = field(default_factory=list)
    split_ids: set[str] = field(default_factory=set)
    exclude: dict[str, list[str]] = field(default_factory=dict)
    embedded: int = 0
    truncated: int = 0
    seconds: float = 0.0


class _ArtifactProgress:
    """Mirrors chunk progress into a Prefect progress artifact, at most once per model call."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.id: Any = None
        try:
            self.id = create_progress_artifact(
                progress=0.0, key="embedpipe-sync-progress", description="Chunks embedded"
            )
        except Exception:  # the UI artifact is a nicety; a run never fails for it
            self.id = None

    def add_total(self, n: int) -> None:
        self.total += n

    def advance(self, n: int) -> None:
        self.done += n
        if self.id is not None and self.total:
            try:
                update_progress_artifact(self.id, progress=min(100.0, 100.0 * self.done / self.total))
            except Exception:
                self.id = None

    def close(self) -> None:
        pass


def _collect(tally: _Tally, futures: tuple[Any, Any, Any, Any]) -> None:
    docs_f, chunks_f, emb_f, stage_f = futures
    del futures
    docs = docs_f.result()
    chunks = chunks_f.result()
    emb = emb_f.result()
    staged = stage_f.result()
    tally.staged.append(staged)
    tally.seen += docs.seen
    # Parts of one big record file are read in different shards: an id seen in an earlier part wins.
    for doc_id in docs.split_ids:
        if doc_id in tally.split_ids:
            tally.exclude.setdefault(staged.uri, []).append(doc_id)
            tally.rejects.append(
                Reject(path=doc_id, reason="duplicate id in this file (an earlier part has it)")
            )
        tally.split_ids.add(doc_id)
    tally.rejects += docs.rejects + chunks.rejects
    tally.failed_files |= {(r.source, r.path) for r in docs.rejects}
    tally.embedded += emb.embedded
    tally.truncated += emb.truncated
    tally.seconds += emb.seconds
    del docs, chunks, emb, docs_f, chunks_f, emb_f, stage_f
    # Prefect's states and contexts form reference cycles that keep a finished shard's Arrow
    # buffers alive until the cyclic collector runs; collecting here keeps memory bounded by the
    # in-flight window instead of by how often Python happens to collect (once per shard: cheap).
    gc.collect()


def _pipeline(plan: Plan, settings: Settings, run_id: str, tally: _Tally) -> None:
    inflight: deque[tuple[Any, Any, Any, Any]] = deque()
    prev_embed: Any = None
    for shard_no, refs in enumerate(plan.shards):
        # Futures are passed where tasks take values: Prefect resolves them (hence the ignores).
        docs_f: Any = ingest_task.submit(shard_no, refs, settings)
        chunks_f: Any = chunk_task.submit(docs_f, settings)  # type: ignore[call-overload]
        emb_f: Any = embed_task.submit(  # type: ignore[call-overload]
            chunks_f, settings, run_id, wait_for=[prev_embed] if prev_embed else None
        )
        stage_f = stage_task.submit(emb_f, settings, run_id)  # type: ignore[call-overload]
        prev_embed = emb_f
        inflight.append((docs_f, chunks_f, emb_f, stage_f))
        # Collecting a finished shard drops our references to its tables, so memory stays bounded.
        while len(inflight) >= settings.runtime.max_inflight_shards:
            _collect(tally, inflight.popleft())
    while inflight:
        _collect(tally, inflight.popleft())


def _run_id() -> str:
    rid = flow_run.get_id()
    return str(rid) if rid else str(uuid.uuid4())


@flow(name="sync", persist_result=False, log_prints=False, validate_parameters=True)
def sync(sources: list[str], settings: Settings | None = None) -> State[RunSummary] | RunSummary:
    """Sync documents under ``sources`` into the chunks table as one new version.

    Args:
        sources: Folders or files to read.
        settings: Settings; loaded from the environment and ``embedpipe.toml`` when omitted.

    Returns:
        The run summary; on failure a ``Failed`` state carrying it, and the table is unchanged.
    """
    settings = settings or get_settings()
    logger = get_run_logger()
    run_id = _run_id()
    started = datetime.now(UTC)
    tally = _Tally()
    identity: ModelIdentity | None = None
    device = ""
    version: int | None = None
    written = 0
    status, message = "completed", None
    store = Store(settings.store)
    progress = _ArtifactProgress()
    chunks_progress.add(progress)
    try:
        identity, device = prepare_task(settings)
        plan = discover_task(sources, settings)
        tally.seen += len(plan.rejects)
        tally.rejects += plan.rejects
        _pipeline(plan, settings, run_id, tally)
        ratio = len(tally.rejects) / tally.seen if tally.seen else 0.0
        if ratio > settings.source.max_reject_ratio:
            raise RejectRatioExceeded(
                f"{len(tally.rejects)} of {tally.seen} documents rejected (ratio {ratio:.2f} > "
                f"source.max_reject_ratio={settings.source.max_reject_ratio}); nothing was committed. "
                "See the rejects for reasons"
            )
        scope = {
            src: [p for p in paths if (src, p) not in tally.failed_files]
            for src, paths in plan.scanned.items()
        }
        schema = table_schema(get_embedder(settings.model), settings)
        version, written = write_task(tally.staged, settings, run_id, schema, scope, tally.exclude)
    except EmbedpipeError as e:
        status, message = "failed", str(e)
        store.drop_staging(run_id)
    except Exception as e:  # a bug or a library failure: recorded as a failed run, table untouched
        logger.error("run failed unexpectedly: %s: %s", type(e).__name__, e, exc_info=True)
        status, message = "failed", f"{type(e).__name__}: {e}"
        store.drop_staging(run_id)
    finally:
        chunks_progress.remove(progress)
    summary = build_summary(
        run_id=run_id,
        settings=settings,
        sources=[str(s) for s in sources],
        started_at=started,
        status=status,
        message=message,
        identity=identity,
        device=device,
        version=version,
        docs_seen=tally.seen,
        rejects=tally.rejects,
        chunks_written=written,
        chunks_embedded=tally.embedded,
        chunks_truncated=tally.truncated,
        embed_seconds=tally.seconds,
    )
    summary = summarize_task(summary, settings)
    if status == "failed":
        logger.warning("run failed: %s", message)
        return Failed(message=message, data=summary)
    return Completed(message=f"table={summary.table} version={version}", data=summary)
