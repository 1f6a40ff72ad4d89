"""Prefect flows: short, readable sequences of tasks that decide and build the run summary."""

from embedpipe.flows.reindex import reindex
from embedpipe.flows.sync import sync

__all__ = ["reindex", "sync"]
