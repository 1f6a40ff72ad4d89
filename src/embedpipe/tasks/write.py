"""Write tasks: stage each embedded shard, then commit the run as one table version."""

from __future__ import annotations

import pyarrow as pa
from prefect import get_run_logger, task

from embedpipe.config import Settings
from embedpipe.resources.store import StagedShard, Store
from embedpipe.tasks._common import RETRYING
from embedpipe.tasks.embed import Embedded


@task(name="stage", **RETRYING)
def stage_task(embedded: Embedded, settings: Settings, run_id: str) -> StagedShard:
    """Write one embedded shard to the run's staging area (invisible to readers)."""
    return Store(settings.store).stage(run_id, embedded.shard, embedded.table)


@task(name="write", **RETRYING)
def write_task(
    staged: list[StagedShard],
    settings: Settings,
    run_id: str,
    schema: pa.Schema,
    scope: dict[str, list[str]],
    exclude: dict[str, list[str]],
) -> tuple[int | None, int]:
    """Commit the staged shards as exactly one new table version tagged with the run id."""
    store = Store(settings.store)
    version, rows = store.commit(run_id, staged, schema, scope, exclude)
    store.drop_staging(run_id)
    get_run_logger().info("stage=write table=%s version=%s rows=%d", settings.store.table, version, rows)
    return version, rows
