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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedpipe.schemas import C
from embedpipe.sources.docids import is_legacy_id
from embedpipe.sources.globs import PathFilter
from embedpipe.store import DocState

Known = Mapping[tuple[str, str], Mapping[str, DocState]]
"""Per (source, path): the documents the table holds for that file and their state."""


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


def classify(docs: pa.Table, known: Known) -> Delta:
    """Compare freshly read documents with what the table holds.

    Args:
        docs: Documents (:func:`~embedpipe.schemas.docs_schema`).
        known: The table's state for the files these documents come from.

    Returns:
        The documents to chunk, the documents whose rows only need new metadata, and counts.
    """
    cols = [C.SOURCE, C.PATH, C.DOC_ID, C.DOC_HASH, C.SIZE, C.MTIME, C.METADATA]
    values = [docs.column(c).to_pylist() for c in cols]
    chunk_mask = np.zeros(docs.num_rows, dtype=bool)
    meta_mask = np.zeros(docs.num_rows, dtype=bool)
    delta = Delta(to_chunk=docs.slice(0, 0), meta_only=docs.slice(0, 0))
    for i, (src, path, doc_id, h, size, mtime, md) in enumerate(zip(*values, strict=True)):
        delta.seen.append((src, doc_id))
        old = known.get((src, path), {}).get(doc_id)
        if old is None:
            delta.new += 1
            chunk_mask[i] = True
        elif old.doc_hash != h:
            delta.changed_text.append((src, doc_id))
            chunk_mask[i] = True
        elif (old.size, old.mtime, old.metadata) != (size, mtime, md):
            meta_mask[i] = True
        else:
            delta.unchanged += 1
    delta.to_chunk = docs.filter(pa.array(chunk_mask))
    delta.meta_only = docs.filter(pa.array(meta_mask)).drop_columns([C.TEXT])
    return delta


def missing_documents(
    known: Known,
    seen: Iterable[tuple[str, str]],
    scanned_files: set[tuple[str, str]],
    protected_files: set[tuple[str, str]],
    keep: PathFilter,
) -> list[tuple[str, str]]:
    """Documents the table holds under the scanned sources that the run no longer found.

    Args:
        known: The table's state for the scanned sources.
        seen: (source, doc_id) of the documents the run read successfully.
        scanned_files: (source, path) of every file discovery listed.
        protected_files: Files with any reject: their missing records are kept, not deleted.
        keep: The run's include/exclude filter: a file it excludes was not scanned, so it stays.

    Returns:
        (source, doc_id) of the documents to delete, sorted.
    """
    seen_set = set(seen)
    out: list[tuple[str, str]] = []
    for (src, path), docs in known.items():
        if (src, path) in protected_files:
            continue
        if (src, path) not in scanned_files and not keep(path):
            continue
        out.extend((src, d) for d in docs if (src, d) not in seen_set)
    return sorted(out)


def renamed_documents(known: Known, deleted: Iterable[tuple[str, str]]) -> int:
    """How many of ``deleted`` go only because their id changed form (a one-time migration).

    Since paths in doc_ids are escaped (:mod:`embedpipe.sources.docids`), a file whose name has ``#`` or
    ``%`` gets a new id: the run adds it under the new id and deletes the old one in the same
    version. This counts those, so the run can say so.
    """
    gone = set(deleted)
    return sum(
        1
        for (src, path), docs in known.items()
        for doc_id in docs
        if (src, doc_id) in gone and is_legacy_id(doc_id, path)
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
