"""Prefect flows: short, readable sequences of tasks that decide and build the run summary."""

from embedpipe.flows._dask import flow_runtime
from embedpipe.flows.reindex import reindex
from embedpipe.flows.sync import sync

__all__ = ["flow_runtime", "reindex", "sync"]
