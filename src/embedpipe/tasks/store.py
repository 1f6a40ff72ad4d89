"""Store tasks (around :mod:`embedpipe.store`): read the table's state for the scanned sources, read
stored chunks back (reindex), stage each shard's rows, commit a run as one table version, apply
retention."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task

from embedpipe.config import Settings
from embedpipe.schemas import C, doc_state_schema, segments_schema
from embedpipe.store import CommitResult, Scope, StagedShard, Store
from embedpipe.tasks._common import RETRYING
from embedpipe.tasks.embedding import Embedded


def _scalar(settings: Settings) -> int | None:
    """From how many rows writing runs keep the chunks table's scalar indexes (``None``: never)."""
    return settings.index.scalar_min_rows if settings.index.enabled and settings.index.scalar else None


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

    Missing scalar indexes (``index.scalar``, once the table has ``index.scalar_min_rows`` rows) are
    created just before, as a version with the rows the run read; the run's commit, the version it
    tags, checks and serves, then carries them.

    The commit is refused (:class:`~embedpipe.errors.StaleReadError`, not retried) when the table
    moved on since ``read_version``, the version the run's changes were computed against.
    """
    store = Store(settings.store)
    result = store.commit(
        run_id,
        staged,
        schema,
        replace_docs,
        exclude,
        read_version,
        verify=True,
        scalar_indexes=_scalar(settings),
    )
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


# --------------------------------------------------------------------------- table state


def load_state(settings: Settings, scopes: list[Scope], read_version: int | None) -> pa.Table:
    """The documents stored at ``read_version`` under the scanned sources, one row per document
    (:func:`~embedpipe.schemas.doc_state_schema`)."""
    if read_version is None:
        return doc_state_schema().empty_table()
    store = Store(settings.store)
    table = store.require_table()
    table.checkout(read_version)
    state = store.doc_state(table, scopes)
    # The scan's freed buffers stay with Arrow's allocator; handing them back before listing the
    # sources keeps them out of the run's peak (about 110 MB for a million documents).
    pa.default_memory_pool().release_unused()
    return state


@task(name="load-state", **RETRYING)
def load_state_task(settings: Settings, scopes: list[Scope], read_version: int | None) -> pa.Table:
    """Read the table's document state for the scanned sources."""
    known = load_state(settings, scopes, read_version)
    files = known.group_by([C.SOURCE, C.PATH], use_threads=False).aggregate([]).num_rows
    get_run_logger().info("stage=load-state version=%s files=%d docs=%d", read_version, files, known.num_rows)
    return known


# --------------------------------------------------------------------------- stored rows (reindex)


def read_stored(settings: Settings, version: int, offset: int, limit: int) -> pa.Table:
    """Rows ``offset .. offset+limit`` of the table at ``version``, without their vectors."""
    store = Store(settings.store)
    table = store.require_table()
    table.checkout(version)
    schema = segments_schema()
    data = table.search().select(schema.names).offset(offset).limit(limit).to_arrow()
    return data.select(schema.names).cast(schema)


@task(name="read-stored", **RETRYING)
def read_stored_task(settings: Settings, version: int, offset: int, limit: int) -> pa.Table:
    """Read one shard of stored chunk rows."""
    return read_stored(settings, version, offset, limit)


def stored_sources(settings: Settings, version: int) -> list[str]:
    """The source roots the table's documents came from."""
    store = Store(settings.store)
    table = store.require_table()
    table.checkout(version)
    out: set[str] = set()
    for batch in store.iter_rows(table, ["source"], 65536):
        out.update(batch.column(0).to_pylist())
    return sorted(out)
