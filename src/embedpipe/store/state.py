"""Reading a table at a pinned version: per-document state, stored rows and vectors, search.

Everything here reads a table pinned at one version (:meth:`StateMixin.snapshot`), so a run
computes its changes against one consistent state. Filters are expressions
(:mod:`embedpipe.store.filters`) over bounded lists of keys (documents are keyed by
``(source, doc_id)``: a doc_id is only unique within its source).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedpipe.schemas import C, doc_state_schema, search_hits, vector_matrix
from embedpipe.store import fulltext
from embedpipe.store.connection import StoreBase
from embedpipe.store.filters import IN_LIST, any_of, batched, docs_filter, eq, isin

if TYPE_CHECKING:
    from lancedb.expr import Expr
    from lancedb.query import LanceHybridQueryBuilder, LanceQueryBuilder, LanceVectorQueryBuilder
    from lancedb.table import Table


@dataclass(frozen=True)
class Scope:
    """A scanned source: a whole root, or only some files of it (a file given as the source)."""

    source: str
    paths: tuple[str, ...] | None = None


@dataclass(frozen=True)
class DocState:
    """What the table knows of one document (a row of :func:`~embedpipe.schemas.doc_state_schema`)."""

    doc_hash: str
    size: int
    mtime: Any
    metadata: str | None


_HIT_COLUMNS = [C.DOC_ID, C.CHUNK_ID, C.TEXT]
_STATE_KEYS = [C.SOURCE, C.PATH, C.DOC_ID]
_STATE_BATCH = 131072
_ROW = "__row"


def scopes_filter(scopes: Sequence[Scope]) -> Expr | None:
    """Rows under these scanned sources (or single files of them); ``None`` when none can match."""
    clauses = []
    for sc in scopes:
        clause = eq(C.SOURCE, sc.source)
        if sc.paths is not None:
            if not sc.paths:
                continue
            clause = clause & isin(C.PATH, sc.paths)
        clauses.append(clause)
    return any_of(clauses)


def first_per_document(rows: pa.Table) -> pa.Table:
    """One row per (source, path, doc_id): the first of each (chunks of a document share these).

    When the doc_ids are already distinct (after :func:`drop_repeats`, the usual case), so are the
    keys, and ``rows`` is returned as it is: one hash of one column, where grouping three string
    columns and taking the rows held about four copies of the keys at once (690 MB above the
    imports for a million documents). Otherwise, grouping only an integer row number (its minimum
    per key) and then taking those rows is several times faster than asking the grouping for the
    first value of every string column.
    """
    if rows.num_rows < 2 or pc.count_distinct(rows.column(C.DOC_ID)).as_py() == rows.num_rows:
        return rows
    numbered = rows.append_column(_ROW, pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    first = numbered.group_by(_STATE_KEYS, use_threads=False).aggregate([(_ROW, "min")]).column(f"{_ROW}_min")
    return rows.take(pc.take(first, pc.sort_indices(first)))


def _same_key(before: pa.Table, after: pa.Table) -> bool:
    """Whether the last row of ``before`` and the first row of ``after`` have the same key."""
    last = before.num_rows - 1
    return all(before.column(k)[last].as_py() == after.column(k)[0].as_py() for k in _STATE_KEYS)


def drop_repeats(rows: pa.Table) -> pa.Table:
    """``rows`` less each row whose key equals the previous row's key.

    A document's chunks are written together, so they mostly sit next to each other: this cheap
    vectorised pass leaves about one row per document for the hash grouping that follows.
    """
    if rows.num_rows < 2:
        return rows
    same = None
    for k in _STATE_KEYS:
        col = rows.column(k)
        eq_prev = pc.equal(col.slice(1), col.slice(0, rows.num_rows - 1))
        same = eq_prev if same is None else pc.and_(same, eq_prev)
    keep = pa.concat_arrays([pa.array([True]), pc.invert(pc.fill_null(same, False)).combine_chunks()])
    return rows.filter(keep)


def where_in(table: Table, column: str, values: Sequence[str], columns: Sequence[str]) -> LanceQueryBuilder:
    """A query of ``columns`` of the rows whose ``column`` is one of ``values``: an ``isin`` filter,
    which a scalar index on ``column`` answers (see ``explain_plan``) instead of a scan."""
    return table.search().where(isin(column, values)).select(list(columns)).limit(None)


def vector_query(table: Table, vector: Any, params: dict[str, int] | None = None) -> LanceVectorQueryBuilder:
    """A cosine nearest-neighbour query for ``vector`` on the chunks' vector column.

    Args:
        table: The table (pinned at the version searched).
        vector: The query vector.
        params: Index search parameters (``nprobes``, ``refine_factor``); by default those the
            table version records for its vector index (:func:`~embedpipe.store.vector_index.search_params`).
    """
    from embedpipe.store.vector_index import search_params

    # LanceDB's Table.search is typed for every query kind; a vector query gives a vector builder.
    query = cast("LanceVectorQueryBuilder", table.search(vector, vector_column_name=C.VECTOR))
    query = query.distance_type("cosine")
    params = search_params(table.to_lance().metadata) if params is None else params
    if "nprobes" in params:
        query = query.nprobes(params["nprobes"])
    if "refine_factor" in params:
        query = query.refine_factor(params["refine_factor"])
    return query


def _match_query(query: str) -> Any:
    """The query as LanceDB's match query on the text column: plain words, never query syntax."""
    from lancedb.query import MatchQuery

    # pydantic dataclass: its keyword fields have defaults the type checker does not see
    return MatchQuery(fulltext.query_text(query), C.TEXT)  # type: ignore[call-arg]


class StateMixin(StoreBase):
    """Reads of a pinned table (part of :class:`~embedpipe.store.Store`)."""

    def snapshot(self, name: str | None = None) -> Table | None:
        """The table pinned at its current latest version (a consistent read), or ``None``."""
        table = self.open_table(name)
        if table is not None:
            table.checkout(int(table.version))
        return table

    def doc_state(self, table: Table | None, scopes: Sequence[Scope]) -> pa.Table:
        """What a pinned table holds of each document under ``scopes``, one row per document.

        A columnar scan of the few document-level columns, reduced batch by batch (repeats of the
        previous row dropped), then grouped to one row per (source, path, doc_id): no Python
        object is made per chunk or per document.

        Args:
            table: A pinned table (:meth:`snapshot`).
            scopes: Which sources (or single files) to read state for.

        Returns:
            A table of :func:`~embedpipe.schemas.doc_state_schema`.
        """
        schema = doc_state_schema()
        flt = scopes_filter(scopes)
        if table is None or flt is None:
            return schema.empty_table()
        query = table.search().where(flt).select(schema.names).limit(None)
        parts: list[pa.Table] = []
        for batch in query.to_batches(_STATE_BATCH):
            rows = drop_repeats(pa.Table.from_batches([batch]))
            if parts and rows.num_rows and _same_key(parts[-1], rows):
                rows = rows.slice(1)  # a document's chunks across the batch boundary
            if rows.num_rows:
                parts.append(rows)
        if not parts:
            return schema.empty_table()
        return first_per_document(pa.concat_tables(parts)).select(schema.names).cast(schema)

    def vectors_for_hashes(self, table: Table | None, hashes: Sequence[str]) -> dict[str, Any]:
        """Stored vectors of chunks with these text hashes (any document), for reuse.

        Looked up in bounded ``isin`` batches that the ``chunk_hash`` scalar index answers
        (:mod:`embedpipe.store.scalar_index`), so a shard's lookup reads only matching rows.
        """
        out: dict[str, Any] = {}
        if table is None:
            return out
        rows = self.rows_where_in(table, C.CHUNK_HASH, hashes, [C.CHUNK_HASH, C.VECTOR])
        vecs = vector_matrix(rows.column(C.VECTOR))
        for j, h in enumerate(rows.column(C.CHUNK_HASH).to_pylist()):
            if h not in out:
                out[h] = vecs[j]
        return out

    def rows_for_docs(self, table: Table, docs: Sequence[tuple[str, str]], schema: pa.Schema) -> pa.Table:
        """All stored chunk rows of these (source, doc_id) documents."""
        parts = []
        uniq = sorted(set(docs))
        for i in range(0, len(uniq), IN_LIST):
            flt = docs_filter(uniq[i : i + IN_LIST])
            if flt is not None:
                parts.append(table.search().where(flt).select(schema.names).limit(None).to_arrow())
        if not parts:
            return schema.empty_table()
        return pa.concat_tables([p.select(schema.names).cast(schema) for p in parts])

    def iter_rows(self, table: Table, columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Stream the given columns of a pinned table."""
        yield from table.search().select(list(columns)).limit(None).to_batches(batch_rows)

    def run_ids(self, table: Table) -> set[str]:
        """The ids of the runs whose rows a pinned table holds."""
        ids: set[str] = set()
        for batch in table.search().select([C.RUN_ID]).limit(None).to_batches(65536):
            ids.update(pc.unique(batch.column(0)).to_pylist())
        return ids

    def sample_rows(self, table: Table, n: int, seed: int, columns: Sequence[str]) -> pa.Table:
        """At most ``n`` rows of a pinned table, drawn uniformly with a fixed seed."""
        import numpy as np

        ds = table.to_lance()
        total = ds.count_rows()
        if total == 0:
            return ds.schema.empty_table().select(list(columns))
        if total <= n:
            return ds.to_table(columns=list(columns))
        idx = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
        return ds.take(idx.tolist(), columns=list(columns))

    def rows_where_in(
        self, table: Table, column: str, values: Sequence[str], columns: Sequence[str]
    ) -> pa.Table:
        """Rows of a pinned table whose ``column`` is one of ``values`` (queried in bounded IN lists)."""
        parts = [where_in(table, column, part, columns).to_arrow() for part in batched(values)]
        if not parts:
            return pa.table({c: pa.array([], type=table.schema.field(c).type) for c in columns})
        return pa.concat_tables(parts)

    def search(
        self, vector: Any, k: int, name: str | None = None, table: Table | None = None
    ) -> list[dict[str, Any]]:
        """Nearest chunks by cosine similarity, best first (on ``table`` when given: a pinned snapshot)."""
        table = table if table is not None else self.require_table(name)
        rows = vector_query(table, vector).limit(k).select([C.DOC_ID, C.CHUNK_ID, C.TEXT]).to_list()
        return search_hits(rows)

    def text_search(
        self, query: str, k: int, name: str | None = None, table: Table | None = None
    ) -> list[dict[str, Any]]:
        """Best chunks by BM25 over the full-text index, best first (``score`` is the BM25 score).

        Raises:
            IndexMissingError: The table (version) has no full-text index.
        """
        table = table if table is not None else self.require_table(name)
        fulltext.require_text_index(table.to_lance(), "text", table.name)
        rows = table.search(_match_query(query), query_type="fts").limit(k).select(_HIT_COLUMNS).to_list()
        return search_hits(rows, "_score")

    def hybrid_search(
        self, vector: Any, query: str, k: int, name: str | None = None, table: Table | None = None
    ) -> list[dict[str, Any]]:
        """LanceDB's hybrid query: the vector and BM25 rankings fused by ``RRFReranker``, best
        first (``score`` is the reciprocal-rank-fusion score).

        Raises:
            IndexMissingError: The table (version) has no full-text index.
        """
        from lancedb.rerankers import RRFReranker

        table = table if table is not None else self.require_table(name)
        fulltext.require_text_index(table.to_lance(), "hybrid", table.name)
        builder = cast(
            "LanceHybridQueryBuilder", table.search(query_type="hybrid", vector_column_name=C.VECTOR)
        )
        rows = (
            builder.vector(vector)
            .text(_match_query(query))
            .distance_type("cosine")
            .rerank(RRFReranker(K=fulltext.RRF_K))
            .limit(k)
            .select(_HIT_COLUMNS)
            .to_list()
        )
        return search_hits(rows, "_relevance_score")
