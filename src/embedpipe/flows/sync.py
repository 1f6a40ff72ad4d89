"""The sync flow: compare the sources with the table, then write only what changed, as one version.

prepare → discover → load-state → per shard (ingest → chunk → embed → stage) → write → checks →
publish → summarize.
Unchanged documents are skipped, only new chunk texts go through the model, stale and deleted
chunks are removed, and nothing becomes visible until the single ``write`` commit. A run that
changes nothing creates no version. A new version is then checked (one task per check family)
and served only when its gates pass (write, audit, publish; see :mod:`embedpipe.flows._audit`).
"""

from __future__ import annotations

from datetime import UTC, datetime

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
from embedpipe.incremental import missing_documents, renamed_documents
from embedpipe.schemas import RunSummary
from embedpipe.sources.globs import PathFilter
from embedpipe.store import CommitResult, Store
from embedpipe.tasks.embedding import query_path_task, table_schema
from embedpipe.tasks.index import index_task
from embedpipe.tasks.prepare import Prepared, choose_backend_task, prepare_task
from embedpipe.tasks.report import build_summary, summarize_task
from embedpipe.tasks.sources import discover_task
from embedpipe.tasks.store import load_state_task, retention_task, write_task


@flow(name="sync", persist_result=False, log_prints=False, validate_parameters=True)
def sync(
    sources: list[str], settings: Settings | None = None, delete_missing: bool = True
) -> State[RunSummary] | RunSummary:
    """Sync documents under ``sources`` into the chunks table as at most one new version.

    Args:
        sources: Folders or files to read.
        settings: Settings; loaded from the environment and ``embedpipe.toml`` when omitted.
        delete_missing: Remove the chunks of documents that disappeared from a scanned source.

    Returns:
        The run summary; on failure a ``Failed`` state carrying it, and the table is unchanged.
    """
    settings = settings or get_settings()
    logger = get_run_logger()
    rid = run_id()
    started = datetime.now(UTC)
    tally = Tally()
    prepared: Prepared | None = None
    result = CommitResult(None, 0, 0)
    deleted_docs: list[tuple[str, str]] = []
    audit = Audit()
    choice = None
    # One writing run per table: the lock is held from reading the table's state to the publish.
    with (
        guarded_run("sync", settings, rid, logger) as outcome,
        table_lock(settings.store, rid, "sync", logger),
    ):
        choice = choose_backend_task(settings)
        settings = with_backend(settings, choice)
        prepared = prepare_task(settings)
        plan = discover_task(sources, settings)
        tally.seen += len(plan.rejects)
        tally.rejects += plan.rejects
        tally.protected_files |= {(r.source, r.path) for r in plan.rejects}
        known = load_state_task(settings, plan.scopes, prepared.read_version)
        run_shards(plan, settings, rid, known, prepared.read_version, tally)
        check_reject_ratio(tally, settings, "nothing was committed")
        if delete_missing:
            keep = PathFilter(settings.source.include, settings.source.exclude)
            deleted_docs = missing_documents(
                known, tally.seen_ids, plan.scanned_files, tally.protected_files, keep
            )
            renamed = renamed_documents(known, deleted_docs)
            if renamed:
                logger.warning(
                    "stage=ingest docs_renamed=%d: %d document(s) changed id because file names with "
                    "'#' or '%%' are now escaped (%%23, %%25); this version replaces them under the "
                    "new id (a one-time migration, see README 'Document ids')",
                    renamed,
                    renamed,
                )
        extra = choice.table_metadata() if choice is not None else None
        schema = table_schema(get_embedder(settings.model), settings, extra)
        replace = sorted(set(tally.changed_text) | set(deleted_docs))
        result = write_task(
            opaque(tally.staged),
            settings,
            rid,
            schema,
            opaque(replace),
            opaque(tally.exclude),
            prepared.read_version,
        )
        if result.version is not None:
            result = index_task(settings, rid, result)
            audit_and_publish(settings, rid, result.version, audit)
            query_path_task(settings)
            if settings.retention.auto:
                retention_task(settings)
    if audit.served_version is None and outcome.status == "completed":
        audit.served_version = Store(settings.store).serving_version()
    summary = build_summary(
        run_id=rid,
        flow="sync",
        settings=settings,
        sources=[str(s) for s in sources],
        started_at=started,
        status=outcome.status,
        exit_code=outcome.exit_code,
        message=outcome.message,
        prepared=prepared,
        result=result,
        tally=tally,
        docs_deleted=len(deleted_docs) if result.version is not None else 0,
        audit=audit,
        backend_choice=choice,
    )
    return final_state(outcome, summarize_task(opaque(summary), settings), logger)
