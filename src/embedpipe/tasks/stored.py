"""Reading stored chunks back from the table (reindex reuses their texts)."""

from __future__ import annotations

import pyarrow as pa
from prefect import task

from embedpipe.config import Settings
from embedpipe.schemas import segments_schema
from embedpipe.store import Store
from embedpipe.tasks._common import RETRYING


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
