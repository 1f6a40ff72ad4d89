"""Change detection against the table itself (plain Python, no Prefect).

The table is the only state: every chunk row carries its document's content hash, size, mtime
and metadata, and its own text hash. A run reads that state at the version it started from and
sorts each document it reads into new, text-changed, metadata-only or unchanged; documents the
table holds under a fully scanned source that the run did not see are deleted.

It joins two stages, the documents :mod:`embedpipe.sources` reads and the state :mod:`embedpipe.store`
holds, and serves three callers (the ingest and embed tasks and the sync flow), so it sits beside
both packages rather than inside either.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedpipe.schemas import C, doc_state_schema
from embedpipe.sources.docids import escape_path, is_legacy_id, make_doc_id
from embedpipe.sources.files import FileRef
from embedpipe.sources.globs import PathFilter

Known: TypeAlias = pa.Table
"""The table's document state (:func:`~embedpipe.schemas.doc_state_schema`): one row per
(source, path, doc_id) with its content hash, size, mtime and metadata."""

_ROW = "__row"
_OLD = "__old_"
_KEYS = [C.SOURCE, C.PATH, C.DOC_ID]
_COMPARED = [C.DOC_HASH, C.SIZE, C.MTIME, C.METADATA]


@dataclass
class Delta:
    """How one shard's documents compare with the table."""

    to_chunk: pa.Table
    """New documents and documents whose text changed: they are chunked (and maybe embedded)."""
    meta_only: pa.Table
    """Documents with the same text but another size, mtime or metadata: rows are updated."""
    new: int = 0
    changed_text: list[tuple[str, str]] = field(default_factory=list)
    """(source, doc_id) of documents whose text changed."""
    unchanged: int = 0
    seen: list[tuple[str, str]] = field(default_factory=list)
    """(source, doc_id) of every document read."""

    @property
    def changed(self) -> int:
        return len(self.changed_text) + self.meta_only.num_rows


def empty_state() -> pa.Table:
    """A document state holding no document."""
    return doc_state_schema().empty_table()


def _pairs(table: pa.Table, a: str, b: str) -> list[tuple[str, str]]:
    return list(zip(table.column(a).to_pylist(), table.column(b).to_pylist(), strict=True))


def _same(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
    """Element-wise equality where two nulls are equal (as ``None == None`` in Python)."""
    both_null = pc.and_(pc.is_null(a), pc.is_null(b))
    return pc.or_(pc.fill_null(pc.equal(a, b), False), both_null)


def _matched(docs: pa.Table, known: Known) -> pa.Table:
    """``docs``' keys (in their order, with a row number) left-joined with the stored state."""
    left = pa.table(
        [*(docs.column(k) for k in _KEYS), pa.array(np.arange(docs.num_rows))], names=[*_KEYS, _ROW]
    )
    types = {c: docs.schema.field(c).type for c in _COMPARED}
    right = pa.table(
        [*(known.column(k) for k in _KEYS), *(known.column(c).cast(types[c]) for c in _COMPARED)],
        names=[*_KEYS, *(_OLD + c for c in _COMPARED)],
    )
    return left.join(right, _KEYS, join_type="left outer", use_threads=False).sort_by(_ROW)


def classify(docs: pa.Table, known: Known) -> Delta:
    """Compare freshly read documents with what the table holds.

    A join of the documents' keys with the stored state, then column-wise comparisons: Python
    objects are made only for documents whose text changed, and for the ids of those read.

    Args:
        docs: Documents (:func:`~embedpipe.schemas.docs_schema`).
        known: The table's state for the files these documents come from.

    Returns:
        The documents to chunk, the documents whose rows only need new metadata, and counts.
    """
    m = _matched(docs, known)
    is_new = pc.is_null(m.column(_OLD + C.DOC_HASH)).combine_chunks()
    same = {c: _same(docs.column(c), m.column(_OLD + c)) for c in _COMPARED}
    text_changed = pc.and_(pc.invert(is_new), pc.invert(same[C.DOC_HASH]))
    same_meta = pc.and_(pc.and_(same[C.SIZE], same[C.MTIME]), same[C.METADATA])
    meta_only = pc.and_(pc.and_(pc.invert(is_new), same[C.DOC_HASH]), pc.invert(same_meta))
    to_chunk = pc.or_(is_new, text_changed)
    new = int(pc.sum(is_new).as_py() or 0)
    changed = int(pc.sum(text_changed).as_py() or 0)
    metas = int(pc.sum(meta_only).as_py() or 0)
    return Delta(
        to_chunk=docs.filter(to_chunk),
        meta_only=docs.filter(meta_only).drop_columns([C.TEXT]),
        new=new,
        changed_text=_pairs(docs.filter(text_changed), C.SOURCE, C.DOC_ID) if changed else [],
        unchanged=docs.num_rows - new - changed - metas,
        seen=_pairs(docs, C.SOURCE, C.DOC_ID),
    )


# Kinds whose one document depends on the file's bytes alone: unchanged size and mtime mean an
# unchanged document. Every other kind (JSON, JSONL, CSV, Parquet) holds records read with
# ``source.text_field``/``id_field``: its stat answers only while those are what the table was
# written with (:func:`embedpipe.sources.parse.reader_identity`).
WHOLE_FILE_KINDS = frozenset({"text", "html"})
_MTIME = pa.timestamp("us", tz="UTC")


@dataclass
class Unchanged:
    """Listed files the table already holds as they are now: they are not read again."""

    refs: list[int]
    """Indexes in the listed refs of the files to skip."""
    files: pa.Table
    """Their (source, path)."""
    docs: int
    """How many stored documents they hold."""


def unchanged_files(refs: Sequence[FileRef], known: Known, records: Collection[str] = ()) -> Unchanged:
    """Listed files whose size and mtime equal the table's record (the quick check of make and rsync).

    A join of the listed files with the stored state grouped per file: one Python object per
    listed file at most, none per stored document. A whole-file document must be stored under
    the id its path makes now (one row). A record file (under a source of ``records``: read in
    full with the run's reader settings) must have every stored document carrying its current
    size and mtime, and a path without ``#`` or ``%`` (whose record ids changed form once, see
    :mod:`embedpipe.sources.docids`).

    Args:
        refs: Listed files, not split into parts.
        known: The stored state of the scanned sources.
        records: Source roots whose record files may be skipped too.
    """
    cand = [
        i
        for i, r in enumerate(refs)
        if r.part is None
        and (r.kind in WHOLE_FILE_KINDS or (r.source in records and escape_path(r.path) == r.path))
    ]
    if not cand or known.num_rows == 0:
        none = pa.table({C.SOURCE: pa.array([], pa.string()), C.PATH: pa.array([], pa.string())})
        return Unchanged([], none, 0)
    per_file = known.group_by([C.SOURCE, C.PATH], use_threads=False).aggregate(
        [
            (C.DOC_ID, "count"),
            (C.DOC_ID, "first"),
            (C.SIZE, "min"),
            (C.SIZE, "max"),
            (C.MTIME, "min"),
            (C.MTIME, "max"),
        ]
    )
    listed = pa.table(
        {
            C.SOURCE: [refs[i].source for i in cand],
            C.PATH: [refs[i].path for i in cand],
            "ref": pa.array(cand, pa.int64()),
            "whole": pa.array([refs[i].kind in WHOLE_FILE_KINDS for i in cand], pa.bool_()),
            # a whole file stored under the id of an earlier form: read, and re-id
            "expected_id": [make_doc_id(refs[i].path) for i in cand],
            "size": pa.array([refs[i].size for i in cand], pa.int64()),
            # the same conversion the reader stores (microsecond timestamps)
            "mtime": pa.array([datetime.fromtimestamp(refs[i].mtime_ns / 1e9, tz=UTC) for i in cand], _MTIME),
        }
    )
    j = listed.join(per_file, [C.SOURCE, C.PATH], join_type="inner", use_threads=False)
    same_stat = pc.and_(
        pc.and_(
            pc.equal(j.column(f"{C.SIZE}_min").cast(pa.int64()), j.column("size")),
            pc.equal(j.column(f"{C.SIZE}_max").cast(pa.int64()), j.column("size")),
        ),
        pc.and_(
            pc.equal(j.column(f"{C.MTIME}_min").cast(_MTIME), j.column("mtime")),
            pc.equal(j.column(f"{C.MTIME}_max").cast(_MTIME), j.column("mtime")),
        ),
    )
    one_current_doc = pc.and_(
        pc.equal(j.column(f"{C.DOC_ID}_count"), 1),
        pc.equal(j.column(f"{C.DOC_ID}_first"), j.column("expected_id")),
    )
    same_ids = pc.or_(pc.invert(j.column("whole")), one_current_doc)
    hit = j.filter(pc.fill_null(pc.and_(same_stat, same_ids), False)).sort_by("ref")
    return Unchanged(
        hit.column("ref").to_pylist(),
        hit.select([C.SOURCE, C.PATH]),
        int(pc.sum(hit.column(f"{C.DOC_ID}_count")).as_py() or 0),
    )


def split_state(known: Known, shards: Sequence[Sequence[FileRef]]) -> list[pa.Table]:
    """The state of each shard's files, in one pass over the state (not one per shard).

    A file whose parts fall in several shards gives its state to each of them.
    """
    src: list[str] = []
    path: list[str] = []
    shard: list[int] = []
    for i, refs in enumerate(shards):
        for key in dict.fromkeys((r.source, r.path) for r in refs):
            src.append(key[0])
            path.append(key[1])
            shard.append(i)
    if not shard or known.num_rows == 0:
        return [known.slice(0, 0) for _ in shards]
    keys = pa.table({C.SOURCE: src, C.PATH: path, _ROW: pa.array(shard, pa.int64())})
    joined = known.join(keys, [C.SOURCE, C.PATH], join_type="inner", use_threads=False).sort_by(_ROW)
    counts = np.bincount(joined.column(_ROW).to_numpy(), minlength=len(shards))
    joined = joined.select(known.column_names).cast(known.schema)
    starts = np.concatenate([[0], np.cumsum(counts)])
    return [joined.slice(int(starts[i]), int(counts[i])) for i in range(len(shards))]


def _pairs_table(pairs: Iterable[tuple[str, str]]) -> pa.Table:
    items = list(pairs)
    src = [s for s, _ in items]
    ids = [d for _, d in items]
    return pa.table({C.SOURCE: pa.array(src, pa.string()), C.DOC_ID: pa.array(ids, pa.string())})


def _keyed(known: Known, pairs: Iterable[tuple[str, str]], join_type: str) -> pa.Table:
    """Rows of ``known`` whose (source, doc_id) is (semi) or is not (anti) among ``pairs``."""
    return known.join(_pairs_table(pairs), [C.SOURCE, C.DOC_ID], join_type=join_type, use_threads=False)


def missing_documents(
    known: Known,
    seen: Iterable[tuple[str, str]],
    scanned_files: set[tuple[str, str]],
    protected_files: set[tuple[str, str]],
    keep: PathFilter,
    unchanged: pa.Table | None = None,
) -> list[tuple[str, str]]:
    """Documents the table holds under the scanned sources that the run no longer found.

    An anti-join of the stored state with the documents read; only the documents it leaves (the
    candidates for deletion) are looked at one by one.

    Args:
        known: The table's state for the scanned sources.
        seen: (source, doc_id) of the documents the run read successfully.
        scanned_files: (source, path) of every file discovery listed.
        protected_files: Files with any reject: their missing records are kept, not deleted.
        keep: The run's include/exclude filter: a file it excludes was not scanned, so it stays.
        unchanged: (source, path) of files not read because they are unchanged
            (:func:`unchanged_files`): their documents are all still there.

    Returns:
        (source, doc_id) of the documents to delete, sorted.
    """
    state = known.select(_KEYS)
    if unchanged is not None and unchanged.num_rows:
        state = state.join(unchanged, [C.SOURCE, C.PATH], join_type="left anti", use_threads=False)
    gone = _keyed(state, seen, "left anti")
    out = []
    for src, path, doc_id in zip(*(gone.column(k).to_pylist() for k in _KEYS), strict=True):
        if (src, path) in protected_files:
            continue
        if (src, path) not in scanned_files and not keep(path):
            continue
        out.append((src, doc_id))
    return sorted(out)


def renamed_documents(known: Known, deleted: Iterable[tuple[str, str]]) -> int:
    """How many of ``deleted`` go only because their id changed form (a one-time migration).

    Since paths in doc_ids are escaped (:mod:`embedpipe.sources.docids`), a file whose name has ``#`` or
    ``%`` gets a new id: the run adds it under the new id and deletes the old one in the same
    version. This counts those, so the run can say so.
    """
    gone = _keyed(known.select(_KEYS), deleted, "left semi")
    return sum(
        1
        for doc_id, path in zip(
            gone.column(C.DOC_ID).to_pylist(), gone.column(C.PATH).to_pylist(), strict=True
        )
        if is_legacy_id(doc_id, path)
    )


def refresh_rows(stored: pa.Table, docs: pa.Table) -> pa.Table:
    """Stored chunk rows with their document-level columns replaced by freshly read values."""
    if stored.num_rows == 0:
        return stored
    keys = zip(docs.column(C.SOURCE).to_pylist(), docs.column(C.DOC_ID).to_pylist(), strict=True)
    index = {k: i for i, k in enumerate(keys)}
    stored_keys = zip(stored.column(C.SOURCE).to_pylist(), stored.column(C.DOC_ID).to_pylist(), strict=True)
    take = pa.array([index[k] for k in stored_keys], pa.int64())
    out = stored
    for col in (C.SIZE, C.MTIME, C.METADATA, C.DOC_HASH):
        out = out.set_column(
            out.schema.get_field_index(col), out.schema.field(col), docs.column(col).take(take)
        )
    return out


def chunk_hashes(chunks: pa.Table) -> Sequence[str]:
    return pc.unique(chunks.column(C.CHUNK_HASH)).to_pylist() if chunks.num_rows else []
