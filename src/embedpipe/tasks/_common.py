"""Decorator defaults shared by embedpipe's tasks."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE

from embedpipe.errors import is_transient


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only errors marked transient."""
    try:
        state.result()
    except Exception as e:
        return is_transient(e)
    return False


# Bulk data moves between tasks in memory: no result persistence, no input hashing.
TASK_DEFAULTS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}
RETRYING: dict[str, Any] = {
    **TASK_DEFAULTS,
    "retries": 2,
    "retry_delay_seconds": [1, 5],
    "retry_condition_fn": retry_transient,
}
