"""Ingestion tasks: discover files under the sources, then read a shard of them into documents."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
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
_MTIME = pa.timestamp("us", tz="UTC")


def unchanged_by_stat(refs: Sequence[FileRef], known: Known) -> dict[int, str]:
    """Single-document files whose size and mtime match the table's record: index in ``refs`` to doc_id.

    A join of the listed files with the stored state grouped per file (one Python object per listed
    file at most, none per stored document).
    """
    cand = [i for i, r in enumerate(refs) if r.part is None and r.kind in _STAT_KINDS]
    if not cand or known.num_rows == 0:
        return {}
    per_file = known.group_by([C.SOURCE, C.PATH], use_threads=False).aggregate(
        [(C.DOC_ID, "count"), (C.DOC_ID, "first"), (C.SIZE, "first"), (C.MTIME, "first")]
    )
    listed = pa.table(
        {
            C.SOURCE: [refs[i].source for i in cand],
            C.PATH: [refs[i].path for i in cand],
            "ref": pa.array(cand, pa.int64()),
            # stored under an id of an earlier form: read, and re-id
            "expected_id": [make_doc_id(refs[i].path) for i in cand],
            "size": pa.array([refs[i].size for i in cand], pa.int64()),
            # the same conversion the reader stores (microsecond timestamps)
            "mtime": pa.array([datetime.fromtimestamp(refs[i].mtime_ns / 1e9, tz=UTC) for i in cand], _MTIME),
        }
    )
    j = listed.join(per_file, [C.SOURCE, C.PATH], join_type="inner", use_threads=False)
    same = pc.and_(
        pc.and_(
            pc.equal(j.column(f"{C.DOC_ID}_count"), 1),
            pc.equal(j.column(f"{C.DOC_ID}_first"), j.column("expected_id")),
        ),
        pc.and_(
            pc.equal(j.column(f"{C.SIZE}_first").cast(pa.int64()), j.column("size")),
            pc.equal(j.column(f"{C.MTIME}_first").cast(_MTIME), j.column("mtime")),
        ),
    )
    hit = j.filter(pc.fill_null(same, False))
    return dict(zip(hit.column("ref").to_pylist(), hit.column(f"{C.DOC_ID}_first").to_pylist(), strict=True))


def ingest_shard(shard_no: int, refs: list[FileRef], settings: Settings, known: Known) -> Documents:
    """Read one shard of files and compare its documents with the table's state.

    With ``source.skip_unchanged_files`` a plain-text, Markdown or HTML file whose size and mtime
    equal the table's record is not read at all (the quick check of make and rsync).
    """
    same = unchanged_by_stat(refs, known) if settings.source.skip_unchanged_files else {}
    skipped = [(refs[i].source, same[i]) for i in sorted(same)]
    to_read = [ref for i, ref in enumerate(refs) if i not in same]
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
