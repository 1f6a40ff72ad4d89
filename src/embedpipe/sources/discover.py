"""Discovery: which files (and parts of files) a run reads, grouped into shards (plain Python, no Prefect).

Discovery walks each source root (a folder, a file, or an ``s3://bucket/prefix``) through
:class:`~embedpipe.sources.files.SourceFS`, the one place where local and object-storage files
differ, and returns small :class:`~embedpipe.sources.files.FileRef` records; large JSONL and
Parquet files are split into parts so that no shard has to hold a whole big file.
:func:`plan_shards` then groups the refs into shards for :mod:`embedpipe.sources.parse` to read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pyarrow.parquet as pq

from embedpipe.config import SourceSettings
from embedpipe.schemas import Reject
from embedpipe.sources.files import FileRef, SourceFS, source_scope
from embedpipe.sources.globs import PathFilter
from embedpipe.sources.kinds import SPLITTABLE

log = logging.getLogger(__name__)


def discover(
    sources: Sequence[str], settings: SourceSettings, split_bytes: int | None
) -> tuple[list[FileRef], list[Reject]]:
    """List the files to read under each source, in a stable order.

    Args:
        sources: Folders or single files.
        settings: Include/exclude globs and the size limit.
        split_bytes: JSONL/Parquet files larger than this are split into parts of about this size
            (``None``: not yet, see :func:`split_large`).

    Returns:
        The file refs, and rejects for files that cannot be read at all (too large, unreadable,
        unsupported type).

    Raises:
        SourceError: A source does not exist.
    """
    refs: list[FileRef] = []
    rejects: list[Reject] = []
    keep = PathFilter(settings.include, settings.exclude)
    seen_roots: set[tuple[str, tuple[str, ...]]] = set()
    seen_files: set[tuple[str, str]] = set()  # a file under two given sources is read once
    for raw in sources:
        root, names = source_scope(raw, settings)
        key = (root, tuple(names or ()))
        if key in seen_roots:  # the same source given twice is read once
            continue
        seen_roots.add(key)
        for rel, ref_or_reject in SourceFS(root, settings).files(names, keep, rejects):
            if ref_or_reject is None or (root, rel) in seen_files:
                continue
            seen_files.add((root, rel))
            if isinstance(ref_or_reject, Reject):
                rejects.append(ref_or_reject)
                continue
            refs.append(ref_or_reject)
    return (refs if split_bytes is None else split_large(refs, split_bytes, settings)), rejects


def split_large(refs: Sequence[FileRef], split_bytes: int, settings: SourceSettings) -> list[FileRef]:
    """``refs`` with every JSONL/Parquet file larger than ``split_bytes`` replaced by its parts."""
    out: list[FileRef] = []
    for ref in refs:
        if ref.part is None and ref.kind in SPLITTABLE and ref.size > split_bytes:
            out.extend(_split(ref, split_bytes, settings))
        else:
            out.append(ref)
    return out


def _split(ref: FileRef, split_bytes: int, settings: SourceSettings) -> list[FileRef]:
    """Split a big JSONL file at line boundaries, or a Parquet file at row groups."""
    parts: list[FileRef] = []
    try:
        if ref.kind == "jsonl":
            start, line_no = 0, 1
            with SourceFS(ref.source, settings).open(ref.path) as fh:
                while start < ref.size:
                    fh.seek(start)
                    stop, lines = start, 0
                    while stop - start < split_bytes:
                        block = fh.read(min(1 << 20, split_bytes - (stop - start)))
                        if not block:
                            break
                        lines += block.count(b"\n")
                        stop += len(block)
                    if stop < ref.size:  # extend to the end of the current line
                        rest = fh.readline()
                        stop += len(rest)
                        lines += rest.count(b"\n")
                    parts.append(_part(ref, start, stop, line_no, stop - start))
                    line_no += lines
                    start = stop
        else:
            md = pq.ParquetFile(SourceFS(ref.source, settings).open_random(ref.path)).metadata
            row, acc, first_rg, first_row = 1, 0, 0, 1
            for rg in range(md.num_row_groups):
                acc += md.row_group(rg).total_byte_size
                if acc >= split_bytes or rg == md.num_row_groups - 1:
                    parts.append(_part(ref, first_rg, rg + 1, first_row, acc))
                    row += sum(md.row_group(i).num_rows for i in range(first_rg, rg + 1))
                    first_rg, first_row, acc = rg + 1, row, 0
    except Exception as e:  # unreadable or not Parquet: read it whole and let the reader reject it
        log.debug("cannot split path=%s: %s", ref.path, e)
        return [ref]
    return parts or [ref]


def _part(ref: FileRef, start: int, stop: int, first_row: int, nbytes: int) -> FileRef:
    return FileRef(ref.source, ref.path, ref.size, ref.mtime_ns, ref.kind, (start, stop, first_row), nbytes)


def plan_shards(
    refs: Sequence[FileRef], shard_bytes: int, shard_files: int, ramp: int = 0
) -> list[list[FileRef]]:
    """Group file refs into shards of about ``shard_bytes`` and at most ``shard_files`` files.

    With ``ramp`` > 0 the first ``ramp`` shards are smaller (``shard_bytes / 2**ramp``, then
    doubling), so the model gets its first chunks early while later shards are read and chunked
    behind it.
    """
    shards: list[list[FileRef]] = []
    cur: list[FileRef] = []
    weight = 0
    for ref in refs:
        k = len(shards)
        limit = shard_bytes >> (ramp - k) if k < ramp else shard_bytes
        if cur and (weight + ref.weight > max(1, limit) or len(cur) >= shard_files):
            shards.append(cur)
            cur, weight = [], 0
        cur.append(ref)
        weight += ref.weight
    if cur:
        shards.append(cur)
    return shards
