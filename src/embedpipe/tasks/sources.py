"""Ingestion tasks: discover files under the sources, then read a shard of them into documents."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
from prefect import get_run_logger, task

from embedpipe.config import Settings
from embedpipe.incremental import Delta, Known, classify, unchanged_files
from embedpipe.schemas import C, Reject
from embedpipe.sources.discover import discover, plan_shards, split_large
from embedpipe.sources.docids import file_of
from embedpipe.sources.files import FileRef, source_scope
from embedpipe.sources.parse import read_documents
from embedpipe.store import Scope
from embedpipe.tasks._common import RETRYING, TASK_DEFAULTS


@dataclass
class Plan:
    """What discovery found: shards of file refs to read, and files rejected before reading."""

    shards: list[list[FileRef]]
    rejects: list[Reject] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    scopes: list[Scope] = field(default_factory=list)
    """The sources scanned: whole roots, or single files given as sources."""
    scanned_files: set[tuple[str, str]] = field(default_factory=set)
    """(source, path) of every file listed (read, skipped or rejected)."""
    unchanged: pa.Table | None = None
    """(source, path) of the listed files not read because the table holds them as they are."""
    unchanged_docs: int = 0
    """The stored documents of those files."""


@dataclass
class Documents:
    """One shard's documents compared with the table, and what was rejected while reading it."""

    shard: int
    delta: Delta
    rejects: list[Reject]
    seen: int
    protected_files: set[tuple[str, str]] = field(default_factory=set)
    """Files with any reject: records missing from them are not deleted."""
    split_ids: list[str] = field(default_factory=list)
    """doc_ids of records read from parts of split files, checked for duplicates across shards."""


def source_scopes(sources: Sequence[str], settings: Settings) -> list[Scope]:
    """The scopes ``sources`` scan (whole roots, or single files), each once."""
    scopes = []
    for raw in sources:
        root, names = source_scope(raw, settings.source)
        scopes.append(Scope(root, tuple(names) if names is not None else None))
    return list(dict.fromkeys(scopes))


def make_plan(
    sources: Sequence[str], settings: Settings, known: Known | None = None, records: Collection[str] = ()
) -> Plan:
    """Discover files, leave out those the table holds unchanged, and group the rest into shards.

    Args:
        sources: Folders or files to read.
        settings: Source and runtime settings (``runtime.shard_mb``, ``source.skip_unchanged_files``).
        known: The table's state for the scanned sources: with ``source.skip_unchanged_files``,
            files whose size and mtime match it are not read (:func:`~embedpipe.incremental.unchanged_files`).
        records: Source roots whose unchanged record files may be skipped too (the table records
            them as read in full with the run's reader settings).
    """
    shard_bytes = int(settings.runtime.shard_mb * 1024 * 1024)
    refs, rejects = discover(sources, settings.source, split_bytes=None)
    scanned = {(r.source, r.path) for r in refs}
    files = len(scanned)
    scanned.update((r.source, r.path) for r in rejects)  # one set: a million files' pairs are 58 MB
    total_bytes = sum(r.size for r in refs)
    unchanged = None
    unchanged_docs = 0
    if known is not None and settings.source.skip_unchanged_files:
        same = unchanged_files(refs, known, records)
        if same.refs:
            skip = set(same.refs)
            refs = [r for i, r in enumerate(refs) if i not in skip]
        unchanged, unchanged_docs = same.files, same.docs
    refs = split_large(refs, shard_bytes, settings.source)
    return Plan(
        shards=plan_shards(refs, shard_bytes, settings.runtime.shard_files, settings.runtime.ramp_shards),
        rejects=rejects,
        files=files,
        bytes=total_bytes,
        scopes=source_scopes(sources, settings),
        scanned_files=scanned,
        unchanged=unchanged,
        unchanged_docs=unchanged_docs,
    )


@task(name="discover", **RETRYING)
def discover_task(
    sources: list[str], settings: Settings, known: Known | None = None, records: Collection[str] = ()
) -> Plan:
    """Walk the sources, leave out unchanged files and plan the shards (see :func:`make_plan`)."""
    plan = make_plan(sources, settings, known, records)
    get_run_logger().info(
        "stage=discover files=%d bytes=%d unchanged_files=%d shards=%d rejected=%d",
        plan.files,
        plan.bytes,
        plan.unchanged.num_rows if plan.unchanged is not None else 0,
        len(plan.shards),
        len(plan.rejects),
    )
    return plan


def ingest_shard(shard_no: int, refs: list[FileRef], settings: Settings, known: Known) -> Documents:
    """Read one shard of files and compare its documents with the table's state.

    (Files the table holds unchanged were left out of the plan already, see :func:`make_plan`.)
    """
    table, rejects, seen = read_documents(refs, settings.source)
    files = {(r.source, r.path) for r in refs}
    protected = set()
    for rj in rejects:
        file_path = rj.path if (rj.source, rj.path) in files else file_of(rj.path)
        protected.add((rj.source, file_path))
    split = {r.path for r in refs if r.part is not None}
    split_ids = [
        d
        for d, p in zip(table.column(C.DOC_ID).to_pylist(), table.column(C.PATH).to_pylist(), strict=True)
        if p in split
    ]
    delta = classify(table, known)
    return Documents(shard_no, delta, rejects, seen, protected, split_ids)


@task(name="ingest", **RETRYING)
def ingest_task(shard_no: int, refs: list[FileRef], settings: Settings, known: Known) -> Documents:
    """Read one shard of files into documents and compare them with the table."""
    docs = ingest_shard(shard_no, refs, settings, known)
    d = docs.delta
    get_run_logger().debug(
        "stage=ingest shard=%d new=%d changed=%d unchanged=%d rejected=%d",
        shard_no,
        d.new,
        d.changed,
        d.unchanged,
        len(docs.rejects),
    )
    return docs


__all__ = ["TASK_DEFAULTS", "Documents", "Plan", "discover_task", "ingest_task", "make_plan", "source_scopes"]
