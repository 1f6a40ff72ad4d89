"""The reindex flow: rebuild the table with another model or chunking, then switch in one commit.

When the chunking is unchanged (same budget, overlap and tokenizer), the stored chunk texts are
re-embedded and the sources are not read at all; otherwise the sources recorded in the table are
read and chunked again. Either way the new rows are staged and then replace the table's contents
in a single commit: readers see the old index until that commit and the new one after it, never a
half-built one. The new version is checked like any other and served only when its gates pass
(a model change is judged by the quality checks; the vector-space drift checks do not apply
across models). The previous version stays available to ``rollback`` until retention removes it.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import State

from embedpipe.config import Settings, get_settings
from embedpipe.embedding.auto import with_backend
from embedpipe.embedding.embedder import get_embedder
from embedpipe.flows._audit import Audit, audit_and_publish
from embedpipe.flows._lock import table_lock
from embedpipe.flows._pipeline import (
    Tally,
    check_reject_ratio,
    final_state,
    guarded_run,
    opaque,
    run_id,
    run_shards,
)
from embedpipe.incremental import empty_state
from embedpipe.schemas import C, RunSummary
from embedpipe.store import CommitResult, Store
from embedpipe.tasks.embedding import query_path_task, reembed_task, table_schema
from embedpipe.tasks.prepare import Prepared, choose_backend_task, prepare_task
from embedpipe.tasks.report import build_summary, summarize_task
from embedpipe.tasks.sources import discover_task
from embedpipe.tasks.store import read_stored_task, retention_task, stage_task, stored_sources, switch_task


def _reembed_stored(
    settings: Settings, rid: str, version: int, total: int, same_model: bool, tally: Tally
) -> None:
    inflight: deque[Any] = deque()
    prev: Any = None
    doc_ids: set[str] = set()

    def collect(fut: Any) -> None:
        emb_f, stage_f = fut
        emb = emb_f.result()
        tally.staged.append(stage_f.result())
        doc_ids.update(emb.table.column(C.DOC_ID).to_pylist())
        tally.embedded += emb.embedded
        tally.reused += emb.reused
        tally.truncated += emb.truncated
        tally.seconds += emb.seconds

    step = settings.runtime.shard_rows
    for shard, offset in enumerate(range(0, total, step)):
        rows_f: Any = read_stored_task.submit(settings, version, offset, step)
        emb_f: Any = reembed_task.submit(  # type: ignore[call-overload]
            rows_f, settings, rid, shard, version if same_model else None, wait_for=[prev] if prev else None
        )
        stage_f = stage_task.submit(emb_f, settings, rid)  # type: ignore[call-overload]
        prev = emb_f
        inflight.append((emb_f, stage_f))
        while len(inflight) >= settings.runtime.max_inflight_shards:
            collect(inflight.popleft())
    while inflight:
        collect(inflight.popleft())
    tally.seen = tally.new = len(doc_ids)


@flow(name="reindex", persist_result=False, log_prints=False, validate_parameters=True)
def reindex(
    settings: Settings | None = None, sources: list[str] | None = None
) -> State[RunSummary] | RunSummary:
    """Rebuild the chunks table with the configured model and chunking, then switch atomically.

    Args:
        settings: The new configuration (model, chunking); loaded from the environment when omitted.
        sources: Read these sources instead of the table's own (forces re-reading).

    Returns:
        The run summary (``flow="reindex"``); on failure a ``Failed`` state carrying it, and the
        table still serves the previous index.
    """
    settings = settings or get_settings()
    logger = get_run_logger()
    rid = run_id()
    started = datetime.now(UTC)
    tally = Tally()
    prepared: Prepared | None = None
    result = CommitResult(None, 0, 0)
    reused_texts: bool | None = None
    store = Store(settings.store)
    audit = Audit()
    choice = None
    # One writing run per table: the lock is held from reading the table's state to the publish.
    with (
        guarded_run("reindex", settings, rid, logger) as outcome,
        table_lock(settings.store, rid, "reindex", logger),
    ):
        choice = choose_backend_task(settings)
        settings = with_backend(settings, choice)
        prepared = prepare_task(settings, check=False)
        table = store.require_table()
        assert prepared.read_version is not None  # the table exists: it was read at a version
        table.checkout(prepared.read_version)
        old_identity = store.table_identity(table=table)
        old_chunking = store.table_chunking(table)
        assert old_identity is not None and prepared.read_version is not None
        same_model = (
            old_identity.weights_hash,
            old_identity.dim,
            old_identity.normalize,
            old_identity.backend,
            old_identity.precision,
        ) == (
            prepared.identity.weights_hash,
            prepared.identity.dim,
            prepared.identity.normalize,
            prepared.identity.backend,
            prepared.identity.precision,
        )
        reused_texts = (
            sources is None and old_chunking is not None and old_chunking.same_chunks(prepared.chunking)
        )
        if reused_texts:
            _reembed_stored(settings, rid, prepared.read_version, int(table.count_rows()), same_model, tally)
        else:
            roots = sources or stored_sources(settings, prepared.read_version)
            plan = discover_task(roots, settings)
            tally.seen += len(plan.rejects)
            tally.rejects += plan.rejects
            run_shards(
                plan, settings, rid, empty_state(), prepared.read_version if same_model else None, tally
            )
            check_reject_ratio(tally, settings, "the table was not switched")
        extra = choice.table_metadata() if choice is not None else None
        schema = table_schema(get_embedder(settings.model), settings, extra)
        result = switch_task(opaque(tally.staged), settings, rid, schema, prepared.read_version)
        assert result.version is not None
        audit_and_publish(settings, rid, result.version, audit)
        query_path_task(settings)
        if settings.retention.auto:
            retention_task(settings)
    summary = build_summary(
        run_id=rid,
        flow="reindex",
        settings=settings,
        sources=list(sources or []),
        started_at=started,
        status=outcome.status,
        exit_code=outcome.exit_code,
        message=outcome.message,
        prepared=prepared,
        result=CommitResult(result.version, result.written, 0),
        tally=tally,
        docs_deleted=0,
        reused_chunk_texts=reused_texts,
        audit=audit,
        backend_choice=choice,
    )
    return final_state(outcome, summarize_task(opaque(summary), settings), logger)
