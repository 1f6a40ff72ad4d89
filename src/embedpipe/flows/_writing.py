"""One writing run: the steps every flow that commits a table version shares (sync, reindex).

:func:`writing_run` holds the table's run lock, resolves the backend, prepares the model and the
table, calls the flow's own ``write`` step (which stages rows and commits at most one version),
then checks and publishes the new version, and always leaves a run summary. A flow supplies only
what differs: what to read and how to commit it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from prefect import get_run_logger
from prefect.states import State

from embedpipe.config import Settings
from embedpipe.embedding.auto import BackendChoice, with_backend
from embedpipe.embedding.embedder import get_embedder
from embedpipe.flows._audit import audit_and_publish
from embedpipe.flows._lock import table_lock
from embedpipe.flows._pipeline import Tally, final_state, guarded_run, opaque, run_id
from embedpipe.schemas import Audit, RunSummary
from embedpipe.store import CommitResult, Store
from embedpipe.tasks.embedding import query_path_task, table_schema
from embedpipe.tasks.index import index_task
from embedpipe.tasks.prepare import Prepared, choose_backend_task, prepare_task
from embedpipe.tasks.report import build_summary, summarize_task
from embedpipe.tasks.store import retention_task


@dataclass
class WritingRun:
    """A writing run as its ``write`` step sees it; the step reports back in the last fields."""

    flow: str
    settings: Settings
    """The run's settings, with ``model.backend = "auto"`` resolved."""
    run_id: str
    logger: Any
    prepared: Prepared
    choice: BackendChoice | None
    tally: Tally
    docs_deleted: int = 0
    """Documents the commit removes (counted in the summary only when it made a version)."""
    reused_chunk_texts: bool | None = None
    """Reindex only: whether the stored chunk texts were re-embedded instead of re-reading sources."""

    def schema(self) -> pa.Schema:
        """The schema to commit: the model and chunking identity, and the backend choice."""
        extra = self.choice.table_metadata() if self.choice is not None else None
        return table_schema(get_embedder(self.settings.model), self.settings, extra)


WriteStep = Callable[[WritingRun], CommitResult]
"""A flow's own part of a writing run: stage its rows into ``run.tally`` and commit them (or not)."""


def writing_run(
    flow_name: str, settings: Settings, sources: list[str], write: WriteStep, check_table: bool = True
) -> State[RunSummary]:
    """Run ``write`` as one writing run of ``flow_name``, then check, publish and summarize.

    Any failure is recorded in the summary (see :func:`~embedpipe.flows._pipeline.guarded_run`);
    the table is then unchanged and keeps serving its version.

    Args:
        flow_name: ``sync`` or ``reindex``: the lock holder's name and the summary's ``flow``.
        settings: The run's settings.
        sources: The sources to report in the summary.
        write: The flow's step; returns the commit's result (``version=None``: nothing committed).
        check_table: Refuse a table built with another model or chunking (``False`` for reindex).

    Returns:
        The flow's final state, carrying the run summary.
    """
    logger = get_run_logger()
    rid = run_id()
    started = datetime.now(UTC)
    tally = Tally()
    prepared: Prepared | None = None
    choice: BackendChoice | None = None
    run: WritingRun | None = None
    result = CommitResult(None, 0, 0)
    audit = Audit()
    # One writing run per table: the lock is held from reading the table's state to the publish.
    with (
        guarded_run(flow_name, settings, rid, logger) as outcome,
        table_lock(settings.store, rid, flow_name, logger),
    ):
        choice = choose_backend_task(settings)
        settings = with_backend(settings, choice)
        prepared = prepare_task(settings, check=check_table)
        run = WritingRun(flow_name, settings, rid, logger, prepared, choice, tally)
        result = write(run)
        if result.version is not None:
            # The new version is committed: its indexes are refreshed (new versions with the same rows)
            # before its checks, so the gates judge the index that will be served.
            result = index_task(settings, rid, result, retrain=flow_name == "reindex")
            audit_and_publish(settings, rid, result.version, audit)
            query_path_task(settings)
            if settings.retention.auto:
                retention_task(settings)
    if audit.served_version is None and outcome.status == "completed":
        audit.served_version = Store(settings.store).serving_version()
    summary = build_summary(
        run_id=rid,
        flow=flow_name,
        settings=settings,
        sources=sources,
        started_at=started,
        status=outcome.status,
        exit_code=outcome.exit_code,
        message=outcome.message,
        prepared=prepared,
        result=result,
        counts=tally.counts,
        docs_deleted=run.docs_deleted if run is not None and result.version is not None else 0,
        reused_chunk_texts=run.reused_chunk_texts if run is not None else None,
        audit=audit,
        backend_choice=choice,
    )
    return final_state(outcome, summarize_task(opaque(summary), settings), logger)
