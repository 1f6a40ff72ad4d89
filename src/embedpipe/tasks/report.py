"""Report task: build the run summary and append it (and the rejects) to the database."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import get_run_logger, task

from embedpipe.config import Settings
from embedpipe.resources.store import Store
from embedpipe.schemas import ModelIdentity, Reject, RunSummary
from embedpipe.tasks._common import RETRYING


def build_summary(
    *,
    run_id: str,
    settings: Settings,
    sources: list[str],
    started_at: datetime,
    status: str,
    message: str | None,
    identity: ModelIdentity | None,
    device: str,
    version: int | None,
    docs_seen: int,
    rejects: list[Reject],
    chunks_written: int,
    chunks_embedded: int,
    chunks_truncated: int,
    embed_seconds: float,
) -> RunSummary:
    """Assemble the typed summary of a run."""
    finished = datetime.now(UTC)
    duration = (finished - started_at).total_seconds()
    return RunSummary(
        run_id=run_id,
        status=status,
        message=message,
        table=settings.store.table,
        table_version=version,
        sources=sources,
        started_at=started_at,
        finished_at=finished,
        duration_s=round(duration, 3),
        docs_seen=docs_seen,
        docs_rejected=len(rejects),
        chunks_written=chunks_written,
        chunks_embedded=chunks_embedded,
        chunks_truncated=chunks_truncated,
        embed_seconds=round(embed_seconds, 3),
        chunks_per_s=round(chunks_embedded / duration, 2) if duration > 0 else 0.0,
        model=identity.name if identity else settings.model.name,
        model_id=identity.model_id if identity else "",
        dim=identity.dim if identity else 0,
        device=device,
        rejects=rejects,
    )


@task(name="summarize", **RETRYING)
def summarize_task(summary: RunSummary, settings: Settings) -> RunSummary:
    """Append the run to the ``runs`` table and its rejects to ``rejects``."""
    store = Store(settings.store)
    store.append_rejects(summary.run_id, summary.rejects, summary.finished_at)
    store.append_run(summary)
    get_run_logger().info(
        "stage=summarize status=%s docs_seen=%d docs_rejected=%d chunks_written=%d duration_s=%.1f",
        summary.status,
        summary.docs_seen,
        summary.docs_rejected,
        summary.chunks_written,
        summary.duration_s,
    )
    return summary
