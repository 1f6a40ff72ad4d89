"""Prefect flows: short, readable sequences of tasks that decide and build the run summary.

The flows live in their modules (``embedpipe.flows.sync.sync``, ``embedpipe.flows.reindex.reindex``,
``embedpipe.flows.checks``...). This package imports none of them itself, so that importing
``embedpipe.flows._server`` costs nothing: the CLI starts Prefect's temporary server from it first,
and the flows' own imports (Prefect, LanceDB) then overlap the server's boot.
"""

from __future__ import annotations

from typing import Any

__all__ = ["flow_runtime"]


def __getattr__(name: str) -> Any:
    if name == "flow_runtime":
        from embedpipe.flows._dask import flow_runtime

        return flow_runtime
    raise AttributeError(f"module 'embedpipe.flows' has no attribute {name!r}")
