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

import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from embedpipe.config.index import IndexSettings
from embedpipe.schemas import C
from embedpipe.store.connection import StoreBase
from embedpipe.store.vector_index import (
    TEXT_INDEX,
    TUNE_QUERIES,
    TUNE_SEED,
    VECTOR_INDEX,
    VECTOR_META_KEY,
    IndexRefresh,
    VectorIndexRecord,
    _queries,
    _vector_config,
    candidates,
    fts_config,
    measure_recall,
    search_params,
    tune,
    vector_params,
)

if TYPE_CHECKING:
    from lancedb.table import Table

log = logging.getLogger(__name__)

__all__ = [
    "MAX_SEGMENTS",
    "VECTOR_META_KEY",
    "IndexMixin",
    "IndexRefresh",
    "VectorIndexRecord",
    "candidates",
    "search_params",
    "vector_params",
]

MAX_SEGMENTS = 8
"""Index segments (one per incremental refresh) kept before a refresh merges them."""


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
        if settings.fts and self._refresh_fts(table, settings, indexes, retrain, out):
            table = self.require_table()  # the handle at the version the full-text index made
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
    ) -> bool:
        """Create the full-text index, or rebuild it (asked, or another tokenizer); whether it did."""
        fts = next((i for i in indexes.values() if C.TEXT in list(i.columns) and i.index_type == "FTS"), None)
        base = (getattr(fts, "index_details", None) or {}).get("base_tokenizer") if fts else None
        if fts is not None and not rebuild and (base is None or base == settings.fts_tokenizer):
            return False
        name = fts.name if fts is not None else TEXT_INDEX
        table.create_index(C.TEXT, config=fts_config(settings.fts_tokenizer), name=name, replace=True)
        what = "rebuilt" if fts else "created"
        out.actions.append(f"{name} {what}: FTS tokenizer={settings.fts_tokenizer}")
        return True

    def _optimize_all(self, table: Table, out: IndexRefresh) -> None:
        """Fold unindexed rows into every index of the table (one new version when any has some).

        New rows go into a new delta segment of each index (``num_indices_to_merge=0``): merging
        them into the existing segment rewrites the whole index, as costly as building it. Once an
        index has :data:`MAX_SEGMENTS` segments they are merged into one, so searches do not fan
        out over ever more segments between retrains.
        """
        table = self.require_table()
        fresh: list[str] = []
        merge: list[str] = []
        for i in table.list_indices():
            stats = table.index_stats(i.name)
            if stats is None or int(stats.num_unindexed_rows) == 0:
                continue
            (merge if int(stats.num_indices or 1) >= MAX_SEGMENTS else fresh).append(i.name)
        ds = table.to_lance()
        if fresh:
            ds.optimize.optimize_indices(index_names=fresh, num_indices_to_merge=0)
            out.actions.append(f"optimized {', '.join(sorted(fresh))} (new delta segment)")
        if merge:
            ds = self.require_table().to_lance()
            ds.optimize.optimize_indices(index_names=merge, num_indices_to_merge=MAX_SEGMENTS)
            out.actions.append(f"optimized {', '.join(sorted(merge))} (segments merged)")

    def last_other_version(self, version: int) -> int | None:
        """The newest version before ``version`` whose rows differ from it, or ``None``.

        Building or refreshing an index makes versions with the very rows of the one before (the
        same fragments and deletions); a version is compared with content that differs from it.
        """
        ds = self.require_table().to_lance()

        def rows_of(v: int) -> list[tuple[int, int, str]]:
            frags = ds.checkout_version(v).get_fragments()
            return [(f.fragment_id, f.metadata.physical_rows, str(f.metadata.deletion_file)) for f in frags]

        mine = rows_of(version)
        for v in sorted(
            (int(x["version"]) for x in ds.versions() if int(x["version"]) < version), reverse=True
        ):
            if rows_of(v) != mine:
                return v
        return None

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
