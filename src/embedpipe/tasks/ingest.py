"""Ingestion tasks: discover files under the sources, then read a shard of them into documents."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
from prefect import get_run_logger, task

from embedpipe.config import Settings
from embedpipe.readers import FileRef, discover, plan_shards, read_documents
from embedpipe.schemas import Reject
from embedpipe.tasks._common import RETRYING, TASK_DEFAULTS


@dataclass
class Plan:
    """What discovery found: shards of file refs, and files rejected before reading."""

    shards: list[list[FileRef]]
    rejects: list[Reject] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    scanned: dict[str, list[str]] = field(default_factory=dict)
    """Per source root, the files that were scanned (their stale chunks are replaced)."""


@dataclass
class Documents:
    """One shard's documents and what was rejected while reading it."""

    shard: int
    table: pa.Table
    rejects: list[Reject]
    seen: int
    split_ids: list[str] = field(default_factory=list)
    """doc_ids of records read from parts of split files, checked for duplicates across shards."""


def make_plan(sources: Sequence[str], settings: Settings) -> Plan:
    """Discover files and group them into shards of about ``runtime.shard_mb``."""
    shard_bytes = int(settings.runtime.shard_mb * 1024 * 1024)
    refs, rejects = discover(sources, settings.source, split_bytes=shard_bytes)
    scanned: dict[str, set[str]] = {}
    for r in refs:
        scanned.setdefault(r.source, set()).add(r.path)
    files = len({(r.source, r.path) for r in refs})
    return Plan(
        shards=plan_shards(refs, shard_bytes, settings.runtime.shard_files),
        rejects=rejects,
        files=files,
        bytes=sum(r.size for r in refs if r.part is None or r.part[0] == 0),
        scanned={k: sorted(v) for k, v in scanned.items()},
    )


@task(name="discover", **RETRYING)
def discover_task(sources: list[str], settings: Settings) -> Plan:
    """Walk the sources and plan the shards."""
    plan = make_plan(sources, settings)
    get_run_logger().info(
        "stage=discover files=%d bytes=%d shards=%d rejected=%d",
        plan.files,
        plan.bytes,
        len(plan.shards),
        len(plan.rejects),
    )
    return plan


@task(name="ingest", **RETRYING)
def ingest_task(shard_no: int, refs: list[FileRef], settings: Settings) -> Documents:
    """Read one shard of files into a documents table."""
    table, rejects, seen = read_documents(refs, settings.source)
    get_run_logger().debug(
        "stage=ingest shard=%d docs=%d rejected=%d", shard_no, table.num_rows, len(rejects)
    )
    return Documents(shard=shard_no, table=table, rejects=rejects, seen=seen)


__all__ = ["TASK_DEFAULTS", "Documents", "Plan", "discover_task", "ingest_task", "make_plan"]
