"""The table's indexes: the vector (ANN) index, the full-text (BM25) index, and their upkeep.

A writing run calls :meth:`IndexMixin.refresh_indexes` after its commit and before its checks, so
the gates judge the index that will be served:

- the **vector index** is trained once the table has ``index.min_rows`` rows, with parameters
  derived from the row count and the dimension (:func:`vector_params`); after that each run folds
  its new rows into it (Lance's ``optimize_indices``: existing partitions, no retraining), and it
  is retrained when the rows added or replaced since its training pass ``index.retrain_ratio`` of
  the table, after every reindex and on ``embedpipe index --rebuild``;
- the **full-text index** (Lance's inverted index, BM25) on the chunk text is created for any
  non-empty table with ``index.fts_tokenizer`` and refreshed the same way;
- every other index on the table (the scalar ones) is refreshed by the same ``optimize_indices``.

The search parameters that reach ``index.min_recall`` (``nprobes``, ``refine_factor``) are tuned
against exact search when the vector index is trained, and recorded with its training facts as one
JSON entry of the table version's metadata (:data:`VECTOR_META_KEY`). Table metadata lives in the
version's manifest: the served version carries the parameters of its own index, a restore or a
rollback brings back the parameters with the index, and both search paths (LanceDB's and the
Lance-only cold path) read them from the version they search. Rows the index has not absorbed yet
are still searched: Lance scans unindexed fragments exactly unless a query asks for ``fast_search``,
which embedpipe never does.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from embedpipe.config.index import IndexSettings
from embedpipe.schemas import C
from embedpipe.store.connection import StoreBase

if TYPE_CHECKING:
    from lancedb.table import Table

log = logging.getLogger(__name__)

VECTOR_META_KEY = "embedpipe.vector_index"
"""The table-metadata key of the vector index's record (:class:`VectorIndexRecord`, as JSON)."""

VECTOR_INDEX = f"{C.VECTOR}_idx"
TEXT_INDEX = f"{C.TEXT}_idx"
TUNE_QUERIES = 32
TUNE_SEED = 7
MIN_ROWS_PER_PARTITION = 256
"""Lance trains a partition from at least this many vectors; more partitions are cut back."""


@dataclass
class VectorIndexRecord:
    """What embedpipe knows of the vector index of one table version (kept in its metadata)."""

    name: str
    type: str
    params: dict[str, Any]
    trained_at_version: int
    trained_rows: int
    rows: int
    changed_rows: int = 0
    nprobes: int | None = None
    refine_factor: int | None = None
    recall: float | None = None
    forced: bool = False
    """The search parameters were set in the settings rather than tuned."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_metadata(cls, metadata: dict[str, str] | None) -> VectorIndexRecord | None:
        raw = (metadata or {}).get(VECTOR_META_KEY)
        if not raw:
            return None
        try:
            return cls(**json.loads(raw))
        except (TypeError, ValueError) as e:
            log.warning("ignoring an unreadable %s entry: %s", VECTOR_META_KEY, e)
            return None


@dataclass
class IndexRefresh:
    """What one refresh did: the table's version afterwards (``None``: nothing changed)."""

    version: int | None = None
    actions: list[str] = field(default_factory=list)
    record: VectorIndexRecord | None = None


def search_params(metadata: dict[str, str] | None) -> dict[str, int]:
    """The served search parameters recorded in a table version's metadata (``{}``: none)."""
    rec = VectorIndexRecord.from_metadata(metadata)
    if rec is None:
        return {}
    out = {}
    if rec.nprobes is not None:
        out["nprobes"] = int(rec.nprobes)
    if rec.refine_factor is not None:
        out["refine_factor"] = int(rec.refine_factor)
    return out


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return next(d for d in range(max(1, min(cap, n)), 0, -1) if n % d == 0)


def vector_params(rows: int, dim: int, kind: str = "auto") -> tuple[str, dict[str, Any]]:
    """The index type and build parameters for ``rows`` vectors of dimension ``dim``.

    ``auto`` is IVF_HNSW_SQ: on two cores it trains several times faster than IVF_PQ for the same
    recall and latency (docs/indexes.md has the measurements). Partitions are
    ``round(sqrt(rows))`` for IVF_PQ and IVF_FLAT, and an eighth of that for IVF_HNSW_SQ (each
    partition carries its own graph, so partitions can be larger), never more than
    ``rows / 256`` (Lance needs about 256 vectors to train a partition). IVF_PQ codes ``dim / 8``
    sub-vectors (the largest divisor of ``dim`` not above it), 8 bits each.

    Args:
        rows: Rows in the table.
        dim: Vector dimension.
        kind: ``auto`` or a LanceDB index type.

    Returns:
        (type as LanceDB names it, build parameters).
    """
    kind = "IVF_HNSW_SQ" if kind == "auto" else kind
    cap = max(1, rows // MIN_ROWS_PER_PARTITION)
    root = max(1, round(math.sqrt(rows)))
    if kind == "IVF_HNSW_SQ":
        return kind, {"num_partitions": max(1, min(cap, round(root / 8)))}
    params: dict[str, Any] = {"num_partitions": max(1, min(cap, root))}
    if kind == "IVF_PQ":
        params["num_sub_vectors"] = _largest_divisor_at_most(dim, max(1, dim // 8))
        params["num_bits"] = 8
    return kind, params


def _vector_config(kind: str, params: dict[str, Any]) -> Any:
    from lancedb.index import IvfFlat, IvfHnswSq, IvfPq

    if kind == "IVF_PQ":
        return IvfPq(distance_type="cosine", **params)
    if kind == "IVF_HNSW_SQ":
        return IvfHnswSq(distance_type="cosine", **params)
    return IvfFlat(distance_type="cosine", **params)


def fts_config(tokenizer: str) -> Any:
    """LanceDB's FTS (inverted, BM25) configuration for ``index.fts_tokenizer``.

    ``ngram`` indexes 2- and 3-character n-grams without stemming or stop words: Chinese (no spaces
    between words) matches on its two-character words, English on shared n-grams. ``simple`` and
    ``whitespace`` split words (English stemming and stop words); a run of Chinese characters is
    then one token and matches only whole.
    """
    from lancedb.index import FTS

    if tokenizer == "ngram":
        return FTS(
            base_tokenizer="ngram",
            ngram_min_length=2,
            ngram_max_length=3,
            stem=False,
            remove_stop_words=False,
        )
    return FTS(base_tokenizer=tokenizer)


def _queries(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Queries that are not rows of the table: midpoints of random pairs of stored vectors."""
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, len(vectors), size=(n, 2))
    return (vectors[pairs[:, 0]] + vectors[pairs[:, 1]]) / 2


def measure_recall(
    table: Table, queries: np.ndarray, k: int, params: dict[str, int], exact: list[set[str]] | None = None
) -> tuple[float, list[set[str]]]:
    """Mean recall@k of the index searched with ``params`` against exact search, and the exact sets."""
    from embedpipe.store.state import vector_query

    if exact is None:
        exact = []
        for q in queries:
            query = vector_query(table, q, {}).limit(k).bypass_vector_index().select([C.CHUNK_ID])
            exact.append({r[C.CHUNK_ID] for r in query.to_list()})
    recalls = []
    for q, want in zip(queries, exact, strict=True):
        got = {r[C.CHUNK_ID] for r in vector_query(table, q, params).limit(k).select([C.CHUNK_ID]).to_list()}
        recalls.append(len(got & want) / max(1, len(want)))
    return float(np.mean(recalls)) if recalls else 1.0, exact


def candidates(kind: str, partitions: int) -> list[dict[str, int]]:
    """Search parameters to try, cheapest first."""
    probes = sorted(
        {max(1, min(partitions, math.ceil(partitions * f))) for f in (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0)}
    )
    refines: tuple[int | None, ...] = (10, 30) if kind == "IVF_PQ" else (None, 10)
    out = []
    for p in probes:
        for r in refines:
            out.append({"nprobes": p} | ({"refine_factor": r} if r is not None else {}))
    return out


def tune(
    table: Table, vectors: np.ndarray, kind: str, partitions: int, k: int, min_recall: float
) -> tuple[dict[str, int], float]:
    """The cheapest search parameters whose recall@k reaches ``min_recall`` (with a small margin:
    the gate draws other queries), else the best found."""
    queries = _queries(vectors, TUNE_QUERIES, TUNE_SEED)
    target = min(1.0, min_recall + 0.02)
    exact: list[set[str]] | None = None
    best: tuple[dict[str, int], float] = ({}, -1.0)
    enough: tuple[dict[str, int], float] | None = None
    for params in candidates(kind, partitions):
        recall, exact = measure_recall(table, queries, k, params, exact)
        if recall >= target:
            return params, recall
        if enough is None and recall >= min_recall:
            enough = (params, recall)
        if recall > best[1]:
            best = (params, recall)
    return enough or best


def _quiet_stats() -> None:
    # Lance warns on every vector index_stats call unless told whether to include the centroids;
    # embedpipe never reads them.
    os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")


class IndexMixin(StoreBase):
    """Index upkeep and listing (part of :class:`~embedpipe.store.Store`)."""

    def refresh_indexes(self, settings: IndexSettings, retrain: bool = False, k: int = 10) -> IndexRefresh:
        """Create, fold new rows into, or retrain the table's indexes; see the module docstring.

        Args:
            settings: The ``index`` settings group.
            retrain: Retrain the vector index (and rebuild the full-text one) whatever changed.
            k: Neighbours per query when tuning the search parameters (``checks.k``).

        Returns:
            The table's newest version when anything changed, what was done, the vector index record.
        """
        _quiet_stats()
        table = self.require_table()
        before = int(table.version)
        rows = int(table.count_rows())
        out = IndexRefresh()
        if rows == 0:
            return out
        indexes = {i.name: i for i in table.list_indices()}
        if settings.fts:
            self._refresh_fts(table, settings, indexes, retrain, out)
        record = VectorIndexRecord.from_metadata(table.to_lance().metadata)
        vec = next((i for i in indexes.values() if C.VECTOR in list(i.columns)), None)
        dim = table.schema.field(C.VECTOR).type.list_size
        kind, params = vector_params(rows, dim, settings.vector_type)
        if vec is None:
            if rows >= settings.min_rows:
                record = self._train(table, settings, rows, kind, params, k, "created", out)
            elif record is not None:  # a record left over from an index this version no longer has
                table.to_lance().update_metadata({VECTOR_META_KEY: None})
                out.actions.append(f"{VECTOR_META_KEY} cleared")
                record = None
        else:
            stats = table.index_stats(vec.name)
            unindexed = int(stats.num_unindexed_rows) if stats else 0
            known = record.rows if record is not None else rows - unindexed
            deleted = max(0, known + unindexed - rows)
            changed = (record.changed_rows if record is not None else 0) + unindexed + deleted
            drift = changed / max(1, rows)
            # no record (an index embedpipe did not train) or another type asked for: train anew
            stale = record is None or record.type != kind
            if retrain or drift >= settings.retrain_ratio or stale:
                why = "rebuild" if retrain else "stale" if stale else f"changed={drift:.3f}"
                record = self._train(table, settings, rows, kind, params, k, f"retrained ({why})", out)
            elif unindexed or deleted:
                assert record is not None
                record.rows, record.changed_rows = rows, changed
                out.actions.append(f"{vec.name} +{unindexed} rows (changed={drift:.3f} of the table)")
                if self._forced(settings) is not None:
                    record = self._retune(table, settings, record, k)
                self._set_record(table, record)
            elif self._params_outdated(settings, record):
                assert record is not None
                record = self._retune(table, settings, record, k)
                self._set_record(table, record)
                out.actions.append(f"{vec.name} search parameters set")
        self._optimize_all(table, out)
        table = self.require_table()
        out.record = record
        if int(table.version) != before:
            out.version = int(table.version)
        return out

    # ------------------------------------------------------------------ parts

    @staticmethod
    def _forced(settings: IndexSettings) -> dict[str, int] | None:
        if settings.nprobes is None and settings.refine_factor is None:
            return None
        out = {}
        if settings.nprobes is not None:
            out["nprobes"] = settings.nprobes
        if settings.refine_factor is not None:
            out["refine_factor"] = settings.refine_factor
        return out

    def _params_outdated(self, settings: IndexSettings, record: VectorIndexRecord | None) -> bool:
        """Forced parameters other than those served, or tuned ones wanted where forced ones are."""
        forced = self._forced(settings)
        if record is None:
            return False
        return forced != self._served(record) if forced is not None else record.forced

    @staticmethod
    def _served(record: VectorIndexRecord | None) -> dict[str, int] | None:
        if record is None:
            return None
        return search_params({VECTOR_META_KEY: record.to_json()})

    def _retune(
        self, table: Table, settings: IndexSettings, record: VectorIndexRecord, k: int
    ) -> VectorIndexRecord:
        """Search parameters for an index kept as it is: the forced ones (measured), else tuned."""
        forced = self._forced(settings)
        if forced is not None and forced == self._served(record):
            return record
        vectors = self._sample_vectors(table)
        if forced is not None:
            chosen = forced
            recall, _ = measure_recall(table, _queries(vectors, TUNE_QUERIES, TUNE_SEED), k, forced)
        else:
            parts = int(record.params.get("num_partitions", 1))
            chosen, recall = tune(table, vectors, record.type, parts, k, settings.min_recall)
        record.nprobes, record.refine_factor = chosen.get("nprobes"), chosen.get("refine_factor")
        record.recall, record.forced = round(recall, 4), forced is not None
        return record

    def _sample_vectors(self, table: Table) -> np.ndarray:
        from embedpipe.schemas import vector_matrix

        ds = table.to_lance()
        total = ds.count_rows()
        n = min(total, 2000)
        idx = np.sort(np.random.default_rng(TUNE_SEED).choice(total, size=n, replace=False))
        rows = ds.take(idx.tolist(), columns=[C.VECTOR])
        return np.asarray(vector_matrix(rows.column(C.VECTOR)), dtype=np.float32)

    def _train(
        self,
        table: Table,
        settings: IndexSettings,
        rows: int,
        kind: str,
        params: dict[str, Any],
        k: int,
        what: str,
        out: IndexRefresh,
    ) -> VectorIndexRecord:
        table.create_index(C.VECTOR, config=_vector_config(kind, params), name=VECTOR_INDEX, replace=True)
        table = self.require_table()
        trained = int(table.version)
        forced = self._forced(settings)
        vectors = self._sample_vectors(table)
        if forced is not None:
            chosen = forced
            recall, _ = measure_recall(table, _queries(vectors, TUNE_QUERIES, TUNE_SEED), k, forced)
        else:
            chosen, recall = tune(table, vectors, kind, int(params["num_partitions"]), k, settings.min_recall)
        record = VectorIndexRecord(
            name=VECTOR_INDEX,
            type=kind,
            params=params,
            trained_at_version=trained,
            trained_rows=rows,
            rows=rows,
            nprobes=chosen.get("nprobes"),
            refine_factor=chosen.get("refine_factor"),
            recall=round(recall, 4),
            forced=forced is not None,
        )
        self._set_record(table, record)
        out.actions.append(
            f"{VECTOR_INDEX} {what}: {kind} {params} on {rows} rows, search {chosen} recall@{k}={recall:.3f}"
        )
        return record

    @staticmethod
    def _set_record(table: Table, record: VectorIndexRecord) -> None:
        table.to_lance().update_metadata({VECTOR_META_KEY: record.to_json()})

    def _refresh_fts(
        self, table: Table, settings: IndexSettings, indexes: dict[str, Any], rebuild: bool, out: IndexRefresh
    ) -> None:
        fts = next((i for i in indexes.values() if C.TEXT in list(i.columns) and i.index_type == "FTS"), None)
        base = (getattr(fts, "index_details", None) or {}).get("base_tokenizer") if fts else None
        if fts is not None and not rebuild and (base is None or base == settings.fts_tokenizer):
            return
        name = fts.name if fts is not None else TEXT_INDEX
        table.create_index(C.TEXT, config=fts_config(settings.fts_tokenizer), name=name, replace=True)
        what = "rebuilt" if fts else "created"
        out.actions.append(f"{name} {what}: FTS tokenizer={settings.fts_tokenizer}")

    def _optimize_all(self, table: Table, out: IndexRefresh) -> None:
        """Fold unindexed rows into every index of the table (one new version when any has some)."""
        table = self.require_table()
        behind = []
        for i in table.list_indices():
            stats = table.index_stats(i.name)
            if stats is not None and int(stats.num_unindexed_rows) > 0:
                behind.append(i.name)
        if behind:
            table.to_lance().optimize.optimize_indices(index_names=behind)
            out.actions.append(f"optimized {', '.join(sorted(behind))}")

    def move_run_tag(self, run_id: str, version: int) -> None:
        """Point a run's tag at ``version``, the run's last version (its indexes included): the one
        it audited and served, and the one ``rollback <run_id>`` brings back."""
        table = self.require_table()
        try:
            tags = table.tags.list()
            if run_id not in tags:
                table.tags.create(run_id, version)
            elif int(tags[run_id]["version"]) != version:
                table.tags.update(run_id, version)
        except Exception as e:  # the data is committed; a misplaced tag is reported, not fatal
            log.warning("could not move the tag run_id=%s to version=%d: %s", run_id, version, e)

    # ------------------------------------------------------------------ listing

    def index_rows(self, table: Table) -> list[dict[str, Any]]:
        """``embedpipe index`` rows of a table version: one per index, vector record merged in."""
        _quiet_stats()
        record = VectorIndexRecord.from_metadata(table.to_lance().metadata)
        segments = {d.name: d for d in table.to_lance().describe_indices()}
        out = []
        for i in sorted(table.list_indices(), key=lambda x: x.name):
            stats = table.index_stats(i.name)
            columns = list(i.columns)
            is_vec = record is not None and record.name == i.name
            if is_vec:
                assert record is not None
                params: dict[str, Any] = dict(record.params) | {
                    "nprobes": record.nprobes,
                    "refine_factor": record.refine_factor,
                }
                trained: int | None = record.trained_at_version
            else:
                params = {
                    k: v for k, v in (getattr(i, "index_details", None) or {}).items() if k != "runtime_hints"
                }
                desc = segments.get(i.name)
                versions = [int(s.dataset_version_at_last_update) for s in getattr(desc, "segments", [])]
                trained = min(versions) if versions else None
            out.append(
                {
                    "name": i.name,
                    "column": columns[0] if len(columns) == 1 else ",".join(columns),
                    "type": stats.index_type if stats is not None else str(i.index_type),
                    "params": params,
                    "indexed_rows": int(stats.num_indexed_rows) if stats else None,
                    "unindexed_rows": int(stats.num_unindexed_rows) if stats else None,
                    "trained_at_version": trained,
                    "recall": record.recall if is_vec and record is not None else None,
                }
            )
        return out
