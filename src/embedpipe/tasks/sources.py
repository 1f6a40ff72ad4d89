"""Ingestion tasks: discover files under the sources, then read a shard of them into documents."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
from prefect import get_run_logger, task

from embedpipe.config import Settings
from embedpipe.incremental import Delta, Known, classify
from embedpipe.schemas import C, Reject
from embedpipe.sources.discover import discover, plan_shards
from embedpipe.sources.docids import file_of, make_doc_id
from embedpipe.sources.files import FileRef, source_scope
from embedpipe.sources.parse import read_documents
from embedpipe.store import Scope
from embedpipe.tasks._common import RETRYING, TASK_DEFAULTS


@dataclass
class Plan:
    """What discovery found: shards of file refs, and files rejected before reading."""

    shards: list[list[FileRef]]
    rejects: list[Reject] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    scopes: list[Scope] = field(default_factory=list)
    """The sources scanned: whole roots, or single files given as sources."""
    scanned_files: set[tuple[str, str]] = field(default_factory=set)
    """(source, path) of every file listed (read or rejected)."""


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


def make_plan(sources: Sequence[str], settings: Settings) -> Plan:
    """Discover files and group them into shards of about ``runtime.shard_mb``."""
    shard_bytes = int(settings.runtime.shard_mb * 1024 * 1024)
    refs, rejects = discover(sources, settings.source, split_bytes=shard_bytes)
    scopes = []
    for raw in sources:
        root, names = source_scope(raw, settings.source)
        scopes.append(Scope(root, tuple(names) if names is not None else None))
    files = {(r.source, r.path) for r in refs} | {(r.source, r.path) for r in rejects}
    return Plan(
        shards=plan_shards(refs, shard_bytes, settings.runtime.shard_files, settings.runtime.ramp_shards),
        rejects=rejects,
        files=len({(r.source, r.path) for r in refs}),
        bytes=sum(r.size for r in refs if r.part is None or r.part[0] == 0),
        scopes=list(dict.fromkeys(scopes)),
        scanned_files=files,
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


# Kinds whose one document depends on the file's bytes alone (no reader settings such as
# text_field or id_field): unchanged size and mtime mean unchanged content.
_STAT_KINDS = frozenset({"text", "html"})


def _unchanged_by_stat(ref: FileRef, known: Known) -> list[str] | None:
    """The stored doc ids of a single-document file whose size and mtime match the table's record."""
    if ref.part is not None or ref.kind not in _STAT_KINDS:
        return None
    docs = known.get((ref.source, ref.path))
    if not docs or len(docs) != 1:
        return None
    # the same conversion the reader stores (microsecond timestamps)
    mtime = pa.scalar(
        datetime.fromtimestamp(ref.mtime_ns / 1e9, tz=UTC), pa.timestamp("us", tz="UTC")
    ).as_py()
    (doc_id, state), *_ = docs.items()
    if doc_id != make_doc_id(ref.path):  # stored under an id of an earlier form: read, and re-id
        return None
    return [doc_id] if state.size == ref.size and state.mtime == mtime else None


def ingest_shard(shard_no: int, refs: list[FileRef], settings: Settings, known: Known) -> Documents:
    """Read one shard of files and compare its documents with the table's state.

    With ``source.skip_unchanged_files`` a plain-text, Markdown or HTML file whose size and mtime
    equal the table's record is not read at all (the quick check of make and rsync).
    """
    skipped: list[tuple[str, str]] = []
    to_read = []
    for ref in refs:
        ids = _unchanged_by_stat(ref, known) if settings.source.skip_unchanged_files else None
        if ids is None:
            to_read.append(ref)
        else:
            skipped += [(ref.source, d) for d in ids]
    table, rejects, seen = read_documents(to_read, settings.source)
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
    delta.unchanged += len(skipped)
    delta.seen += skipped
    return Documents(shard_no, delta, rejects, seen + len(skipped), protected, split_ids)


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


__all__ = ["TASK_DEFAULTS", "Documents", "Plan", "discover_task", "ingest_task", "make_plan"]
