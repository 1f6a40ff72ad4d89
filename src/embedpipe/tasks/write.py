"""Write tasks: stage each shard's rows, commit a run as one table version, apply retention."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task

from embedpipe.config import Settings
from embedpipe.store import CommitResult, StagedShard, Store
from embedpipe.tasks._common import RETRYING
from embedpipe.tasks.embed import Embedded


def stage_embedded(embedded: Embedded, settings: Settings, run_id: str) -> StagedShard:
    """Write one shard's rows to the run's staging area; an empty shard stages nothing."""
    if embedded.table.num_rows == 0:
        return StagedShard(uri="", rows=0)
    return Store(settings.store).stage(run_id, embedded.shard, embedded.table)


@task(name="stage", **RETRYING)
def stage_task(embedded: Embedded, settings: Settings, run_id: str) -> StagedShard:
    """Write one shard's rows to the run's staging area (invisible to readers)."""
    return stage_embedded(embedded, settings, run_id)


@task(name="write", **RETRYING)
def write_task(
    staged: list[StagedShard],
    settings: Settings,
    run_id: str,
    schema: pa.Schema,
    replace_docs: list[tuple[str, str]],
    exclude: dict[str, list[str]],
    read_version: int | None = None,
) -> CommitResult:
    """Commit the staged rows and removals as exactly one new table version tagged with the run id.

    The commit is refused (:class:`~embedpipe.errors.StaleReadError`, not retried) when the table
    moved on since ``read_version``, the version the run's changes were computed against.
    """
    store = Store(settings.store)
    result = store.commit(run_id, staged, schema, replace_docs, exclude, read_version, verify=True)
    store.drop_staging(run_id)
    get_run_logger().info(
        "stage=write table=%s version=%s written=%d deleted=%d",
        settings.store.table,
        result.version,
        result.written,
        result.deleted,
    )
    return result


@task(name="switch", **RETRYING)
def switch_task(
    staged: list[StagedShard],
    settings: Settings,
    run_id: str,
    schema: pa.Schema,
    read_version: int | None = None,
) -> CommitResult:
    """Replace the table's contents with the staged rows in one commit (the reindex switch).

    Refused like :func:`write_task` when the table moved on since ``read_version``.
    """
    store = Store(settings.store)
    result = store.overwrite(run_id, staged, schema, read_version, verify=True)
    store.drop_staging(run_id)
    get_run_logger().info(
        "stage=switch table=%s version=%s written=%d", settings.store.table, result.version, result.written
    )
    return result


@task(name="retention", **RETRYING)
def retention_task(settings: Settings, compact: bool = False) -> dict[str, Any]:
    """Remove old versions by the retention policy (and compact small files when asked)."""
    r = settings.retention
    report = Store(settings.store).apply_retention(r.keep_versions, r.max_age_hours, compact=compact)
    get_run_logger().info(
        "stage=retention tables=%s", {k: v.get("versions_after") for k, v in report.items()}
    )
    return report
