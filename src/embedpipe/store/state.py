"""Reading a table at a pinned version: per-document state, stored rows and vectors, search.

Everything here reads a table pinned at one version (:meth:`StateMixin.snapshot`), so a run
computes its changes against one consistent state. Filters are built for bounded lists of keys
(documents are keyed by ``(source, doc_id)``: a doc_id is only unique within its source).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa
import pyarrow.compute as pc

from embedpipe.schemas import C, search_hits, vector_matrix
from embedpipe.store import fulltext
from embedpipe.store.connection import StoreBase
from embedpipe.store.reader import sql_quote

if TYPE_CHECKING:
    from lancedb.query import LanceHybridQueryBuilder, LanceVectorQueryBuilder
    from lancedb.table import Table


@dataclass(frozen=True)
class Scope:
    """A scanned source: a whole root, or only some files of it (a file given as the source)."""

    source: str
    paths: tuple[str, ...] | None = None


@dataclass(frozen=True)
class DocState:
    """What the table knows of one document."""

    doc_hash: str
    size: int
    mtime: Any
    metadata: str | None


_IN_LIST = 2000
_HIT_COLUMNS = [C.DOC_ID, C.CHUNK_ID, C.TEXT]


def _in_filter(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(sql_quote(v) for v in sorted(set(values)))})"


def docs_filter(docs: Sequence[tuple[str, str]]) -> str:
    """A filter matching these (source, doc_id) pairs: doc_ids are only unique within a source."""
    by_source: dict[str, list[str]] = {}
    for source, doc_id in docs:
        by_source.setdefault(source, []).append(doc_id)
    return " OR ".join(
        f"({C.SOURCE} = {sql_quote(src)} AND {_in_filter(C.DOC_ID, ids)})"
        for src, ids in sorted(by_source.items())
    )


def _scopes_filter(scopes: Sequence[Scope]) -> str:
    clauses = []
    for sc in scopes:
        clause = f"{C.SOURCE} = {sql_quote(sc.source)}"
        if sc.paths is not None:
            if not sc.paths:
                continue
            clause += f" AND {_in_filter(C.PATH, sc.paths)}"
        clauses.append(f"({clause})")
    return " OR ".join(clauses)


def vector_query(table: Table, vector: Any) -> LanceVectorQueryBuilder:
    """A cosine nearest-neighbour query for ``vector`` on the chunks' vector column."""
    # LanceDB's Table.search is typed for every query kind; a vector query gives a vector builder.
    query = cast("LanceVectorQueryBuilder", table.search(vector, vector_column_name=C.VECTOR))
    return query.distance_type("cosine")


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

    def doc_state(
        self, table: Table | None, scopes: Sequence[Scope]
    ) -> dict[tuple[str, str], dict[str, DocState]]:
        """Per (source, path), the documents the table holds and their content state.

        Args:
            table: A pinned table (:meth:`snapshot`).
            scopes: Which sources (or single files) to read state for.
        """
        out: dict[tuple[str, str], dict[str, DocState]] = {}
        flt = _scopes_filter(scopes)
        if table is None or not flt:
            return out
        cols = [C.SOURCE, C.PATH, C.DOC_ID, C.DOC_HASH, C.SIZE, C.MTIME, C.METADATA]
        for batch in table.search().where(flt).select(cols).limit(None).to_batches(65536):
            for src, path, doc_id, h, size, mtime, md in zip(
                *(batch.column(c).to_pylist() for c in cols), strict=True
            ):
                docs = out.setdefault((src, path), {})
                if doc_id not in docs:
                    docs[doc_id] = DocState(doc_hash=h, size=size, mtime=mtime, metadata=md)
        return out

    def vectors_for_hashes(self, table: Table | None, hashes: Sequence[str]) -> dict[str, Any]:
        """Stored vectors of chunks with these text hashes (any document), for reuse."""
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
        for i in range(0, len(uniq), _IN_LIST):
            flt = docs_filter(uniq[i : i + _IN_LIST])
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
        parts = []
        uniq = sorted(set(values))
        for i in range(0, len(uniq), _IN_LIST):
            flt = _in_filter(column, uniq[i : i + _IN_LIST])
            parts.append(table.search().where(flt).select(list(columns)).limit(None).to_arrow())
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
