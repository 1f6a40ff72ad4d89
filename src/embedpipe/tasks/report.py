"""Report task: build the run summary and append it (and the rejects) to the database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from embedpipe.config import Settings
from embedpipe.embedding.auto import BackendChoice
from embedpipe.schemas import Audit, RunCounts, RunSummary
from embedpipe.store import CommitResult, Store
from embedpipe.tasks._common import RETRYING
from embedpipe.tasks.prepare import Prepared


def build_summary(
    *,
    run_id: str,
    flow: str,
    settings: Settings,
    sources: list[str],
    started_at: datetime,
    status: str,
    message: str | None,
    prepared: Prepared | None,
    result: CommitResult,
    counts: RunCounts,
    docs_deleted: int,
    reused_chunk_texts: bool | None = None,
    audit: Audit | None = None,
    exit_code: int = 0,
    backend_choice: BackendChoice | None = None,
) -> RunSummary:
    """Assemble the typed summary of a run from what its stages reported.

    Args:
        prepared: What the run started from (``None``: it failed before the model was loaded).
        result: The commit (``version=None``: nothing committed).
        counts: The documents and chunks counted, and the rejects.
        audit: The checks of the new version (``None``: none ran).
        backend_choice: What ``model.backend = "auto"`` chose (``None``: an explicit backend).
    """
    finished = datetime.now(UTC)
    duration = (finished - started_at).total_seconds()
    identity = prepared.identity if prepared is not None else None
    return RunSummary(
        run_id=run_id,
        flow=flow,
        status=status,
        exit_code=exit_code,
        message=message,
        table=settings.store.table,
        table_version=result.version,
        previous_version=prepared.read_version if prepared is not None else None,
        sources=sources,
        started_at=started_at,
        finished_at=finished,
        duration_s=round(duration, 3),
        docs_seen=counts.seen,
        docs_rejected=len(counts.rejects),
        docs_new=counts.new,
        docs_changed=counts.changed,
        docs_unchanged=counts.unchanged,
        docs_deleted=docs_deleted,
        chunks_written=result.written,
        chunks_deleted=result.deleted,
        chunks_reused=counts.reused,
        chunks_embedded=counts.embedded,
        chunks_truncated=counts.truncated,
        embed_seconds=round(counts.seconds, 3),
        chunks_per_s=round(counts.embedded / duration, 2) if duration > 0 else 0.0,
        model=identity.name if identity else settings.model.name,
        model_id=identity.model_id if identity else "",
        dim=identity.dim if identity else 0,
        device=prepared.device if prepared is not None else "",
        backend=identity.backend if identity else settings.model.backend,
        precision=identity.precision if identity else "",
        rejects=counts.rejects,
        reused_chunk_texts=reused_chunk_texts,
        checks=list(audit.results) if audit is not None else [],
        gate=audit.gate if audit is not None else None,
        served_version=audit.served_version if audit is not None else None,
        backend_choice=backend_choice.as_dict() if backend_choice is not None else None,
    )


def stage_table(s: RunSummary) -> list[dict[str, Any]]:
    """Per-stage statistics of a run, one row per stage (the Prefect table artifact)."""
    return [
        {
            "stage": "discover+ingest",
            "items": s.docs_seen,
            "detail": f"{s.docs_new} new, {s.docs_changed} "
            f"changed, {s.docs_unchanged} unchanged, {s.docs_deleted} deleted, {s.docs_rejected} rejected",
        },
        {
            "stage": "chunk+embed",
            "items": s.chunks_embedded + s.chunks_reused,
            "detail": f"{s.chunks_embedded} "
            f"embedded in {s.embed_seconds:.1f}s, {s.chunks_reused} reused, {s.chunks_truncated} truncated",
        },
        {
            "stage": "write",
            "items": s.chunks_written,
            "detail": f"{s.chunks_written} written, {s.chunks_deleted} "
            f"deleted, table {s.table} version {s.table_version}",
        },
        {
            "stage": "run",
            "items": 1,
            "detail": f"{s.status} in {s.duration_s:.1f}s, {s.chunks_per_s:.1f} chunks/s",
        },
    ]


def markdown_summary(s: RunSummary) -> str:
    """A short markdown verdict of a run (the Prefect markdown artifact); paths are code spans."""
    verdict = "completed" if s.status == "completed" else f"**failed**: {s.message}"
    version = (
        f"version **{s.table_version}**" if s.table_version is not None else "no new version (no change)"
    )
    lines = [
        f"### embedpipe {s.flow}: {verdict}",
        f"Table `{s.table}` {version}; model `{s.model_id}` ({s.backend}, {s.precision}) on {s.device}.",
        "",
        f"- documents: {s.docs_seen} seen, {s.docs_new} new, {s.docs_changed} changed, "
        f"{s.docs_unchanged} unchanged, {s.docs_deleted} deleted, {s.docs_rejected} rejected",
        f"- chunks: {s.chunks_embedded} embedded, {s.chunks_reused} reused, {s.chunks_written} written, "
        f"{s.chunks_deleted} deleted, {s.chunks_truncated} truncated",
        f"- {s.duration_s:.1f}s, {s.chunks_per_s:.1f} chunks/s",
        f"- checks: {s.gate or 'not run'}; serving version {s.served_version}"
        + (
            " ("
            + ", ".join(f"{c.check} {c.status}" for c in s.checks if c.status in {"warn", "fail", "error"})
            + ")"
            if any(c.status in {"warn", "fail", "error"} for c in s.checks)
            else ""
        ),
    ]
    for r in s.rejects[:10]:
        path, reason = r.path.replace("`", "'"), r.reason.replace("`", "'")
        lines.append(f"- rejected `{path}`: {reason}")
    if len(s.rejects) > 10:
        lines.append(f"- ... and {len(s.rejects) - 10} more rejects (see the `rejects` table)")
    return "\n".join(lines)


@task(name="summarize", **RETRYING)
def summarize_task(summary: RunSummary, settings: Settings) -> RunSummary:
    """Append the run to the ``runs`` table and its rejects to ``rejects``; publish UI artifacts."""
    store = Store(settings.store)
    store.append_rejects(summary.run_id, summary.rejects, summary.finished_at)
    store.append_run(summary)
    try:
        create_table_artifact(
            stage_table(summary),
            key=f"embedpipe-{summary.flow}-stages",
            description="Stage statistics of this run",
        )
        create_markdown_artifact(
            markdown_summary(summary), key=f"embedpipe-{summary.flow}-summary", description="Run summary"
        )
    except Exception as e:  # the UI is a view of the run; the run's record is already written
        get_run_logger().warning("could not publish run artifacts: %s: %s", type(e).__name__, e)
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
