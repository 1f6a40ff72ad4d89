"""Report task: build the run summary and append it (and the rejects) to the database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task

from embedpipe.config import Settings
from embedpipe.resources.store import CommitResult, Store
from embedpipe.schemas import RunSummary
from embedpipe.tasks._common import RETRYING


def build_summary(
    *,
    run_id: str,
    flow: str,
    settings: Settings,
    sources: list[str],
    started_at: datetime,
    status: str,
    message: str | None,
    prepared: Any,
    result: CommitResult,
    tally: Any,
    docs_deleted: int,
    reused_chunk_texts: bool | None = None,
) -> RunSummary:
    """Assemble the typed summary of a run from what its stages reported."""
    finished = datetime.now(UTC)
    duration = (finished - started_at).total_seconds()
    identity = prepared.identity if prepared is not None else None
    return RunSummary(
        run_id=run_id,
        flow=flow,
        status=status,
        message=message,
        table=settings.store.table,
        table_version=result.version,
        previous_version=prepared.read_version if prepared is not None else None,
        sources=sources,
        started_at=started_at,
        finished_at=finished,
        duration_s=round(duration, 3),
        docs_seen=tally.seen,
        docs_rejected=len(tally.rejects),
        docs_new=tally.new,
        docs_changed=tally.changed,
        docs_unchanged=tally.unchanged,
        docs_deleted=docs_deleted,
        chunks_written=result.written,
        chunks_deleted=result.deleted,
        chunks_reused=tally.reused,
        chunks_embedded=tally.embedded,
        chunks_truncated=tally.truncated,
        embed_seconds=round(tally.seconds, 3),
        chunks_per_s=round(tally.embedded / duration, 2) if duration > 0 else 0.0,
        model=identity.name if identity else settings.model.name,
        model_id=identity.model_id if identity else "",
        dim=identity.dim if identity else 0,
        device=prepared.device if prepared is not None else "",
        rejects=tally.rejects,
        reused_chunk_texts=reused_chunk_texts,
    )


@task(name="summarize", **RETRYING)
def summarize_task(summary: RunSummary, settings: Settings) -> RunSummary:
    """Append the run to the ``runs`` table and its rejects to ``rejects``."""
    store = Store(settings.store)
    store.append_rejects(summary.run_id, summary.rejects, summary.finished_at)
    store.append_run(summary)
    get_run_logger().info(
        "stage=summarize status=%s docs_seen=%d new=%d changed=%d unchanged=%d deleted=%d "
        "chunks_embedded=%d version=%s duration_s=%.1f",
        summary.status,
        summary.docs_seen,
        summary.docs_new,
        summary.docs_changed,
        summary.docs_unchanged,
        summary.docs_deleted,
        summary.chunks_embedded,
        summary.table_version,
        summary.duration_s,
    )
    return summary
