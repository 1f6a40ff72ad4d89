"""State task: what the table holds for the scanned sources, at the version the run read."""

from __future__ import annotations

from prefect import get_run_logger, task

from embedpipe.config import Settings
from embedpipe.store import DocState, Scope, Store
from embedpipe.tasks._common import RETRYING


def load_state(
    settings: Settings, scopes: list[Scope], read_version: int | None
) -> dict[tuple[str, str], dict[str, DocState]]:
    """Per (source, path), the documents and content hashes stored at ``read_version``."""
    if read_version is None:
        return {}
    store = Store(settings.store)
    table = store.require_table()
    table.checkout(read_version)
    return store.doc_state(table, scopes)


@task(name="load-state", **RETRYING)
def load_state_task(
    settings: Settings, scopes: list[Scope], read_version: int | None
) -> dict[tuple[str, str], dict[str, DocState]]:
    """Read the table's document state for the scanned sources."""
    known = load_state(settings, scopes, read_version)
    get_run_logger().info(
        "stage=load-state version=%s files=%d docs=%d",
        read_version,
        len(known),
        sum(len(d) for d in known.values()),
    )
    return known
