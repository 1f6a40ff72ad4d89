"""The vector cache: vectors a discarded table version held, found again by content.

A version can be thrown away after its vectors were computed: its checks failed (the run restores
the served content), an operator rolled back, a reindex switched to another model, or a run failed
after staging its shards but before its commit. Vectors are a function of (model, text) only, so
before anything is discarded its vectors are copied into the database's ``vector_cache`` table,
keyed by ``ModelIdentity.vector_key`` and the chunk's text hash, and every run looks up there the
texts its table does not hold before it sends them through the model.

The table is shared by every chunks table of the database: the key is content-addressed, so a
vector is valid whichever table it came from, and writes are keyed upserts that LanceDB retries on
a concurrent commit. It is bounded by ``store.cache`` (``max_rows``, ``ttl_days``): trimmed after
each insert and by the retention step, oldest first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from embedpipe.errors import EmbedpipeError
from embedpipe.schemas import VECTOR_CACHE_TABLE, C, ModelIdentity, vector_cache_schema, vector_matrix
from embedpipe.store import objectstore
from embedpipe.store.filters import batched, isin

if TYPE_CHECKING:
    from lancedb.expr import Expr

    from embedpipe.store import Store

log = logging.getLogger(__name__)

_WRITE_ROWS = 32768
"""Rows per upsert: bounds the memory of a stash of a large table (one commit each)."""
_SCAN_ROWS = 65536


def _older_than(ts: datetime, key: str | None = None) -> Expr:
    """Rows cached before ``ts`` (and, with ``key``, those cached at ``ts`` with a smaller key)."""
    from lancedb.expr import col, lit

    at = lit(ts.astimezone(UTC))
    older = col("cached_at") < at
    return older if key is None else older | ((col("cached_at") == at) & (col("key") < lit(key)))


class VectorCache:
    """The ``vector_cache`` table of one store's database (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.settings = store.settings.cache

    def _table(self) -> Any | None:
        return self.store.open_table(VECTOR_CACHE_TABLE)

    # ------------------------------------------------------------------ lookup

    def lookup(self, identity: ModelIdentity, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors of these chunk text hashes computed by this model configuration."""
        out: dict[str, np.ndarray] = {}
        if not self.settings.enabled or not hashes:
            return out
        table = self._table()
        if table is None:
            return out
        prefix = identity.vector_key + ":"
        for keys in batched(prefix + h for h in hashes):
            flt = isin("key", keys)  # answered by the BTREE on key
            rows = table.search().where(flt).select([C.CHUNK_HASH, C.VECTOR]).limit(None).to_arrow()
            vectors = vector_matrix(rows.column(C.VECTOR))  # one model key: one dimension
            for j, h in enumerate(rows.column(C.CHUNK_HASH).to_pylist()):
                out.setdefault(h, vectors[j])
        return out

    # ------------------------------------------------------------------ keeping what is discarded

    def keep_replaced(self, head: Any, by: int | None, reason: str) -> int:
        """Cache the vectors of ``head`` that the content replacing it does not hold.

        Called before a restore, a rollback or a reindex switch makes other content the newest
        version. Never raises: the cache saves work, and a failure to fill it must not stop the
        operation that discards (it is logged with its reason).

        The rows are keyed with the model identity the table records (the one its own reuse of
        vectors trusts); a staged shard carries the identity of the run that embedded it.

        Args:
            head: The table at the version about to be replaced.
            by: The version of this table whose content replaces it, or ``None`` (the table is
                emptied, or replaced by a reindex: every vector of ``head`` is kept).
            reason: Recorded with each row (``failed-gate``, ``rollback``, ``reindex``, ...).

        Returns:
            Rows written to the cache.
        """
        if not self.settings.enabled or head is None:
            return 0
        try:
            identity = self.store.table_identity(table=head)
            if identity is None or head.count_rows() == 0:
                return 0
            where = self._discarded_rows(head, by, identity)
            if isinstance(where, str):
                return 0
            return self.put(identity, self._head_batches(head, where), reason)
        except Exception as e:  # an optimisation must not block a rollback or a fall-back
            log.warning(
                "could not cache the vectors of table=%s version=%s (%s): %s: %s",
                self.store.settings.table,
                getattr(head, "version", None),
                reason,
                type(e).__name__,
                e,
            )
            return 0

    def _discarded_rows(self, head: Any, by: int | None, identity: ModelIdentity) -> Expr | str | None:
        """A filter of the head rows the replacing content lacks (``None``: all, ``""``: none).

        Against a version with vectors of the same model, those are the rows of the runs that
        version does not hold (the same comparison the checks make to find a version's new rows):
        a failed run's rows, or those of the runs a rollback undoes. Reading run ids rather than
        every text hash keeps this cheap on a large table; rows of those runs whose text the
        version also holds are cached too, which is redundant but harmless.
        """
        if by is None:
            return None
        target = self.store.require_table()
        target.checkout(by)
        other = self.store.table_identity(table=target)
        if other is None or other.vector_key != identity.vector_key:
            return None
        runs = sorted(self.store.run_ids(head) - self.store.run_ids(target))
        return isin(C.RUN_ID, runs) if runs else ""

    @staticmethod
    def _head_batches(head: Any, where: Expr | None) -> Iterator[pa.RecordBatch]:
        query = head.search()
        if where is not None:
            query = query.where(where)
        yield from query.select([C.CHUNK_HASH, C.VECTOR]).limit(None).to_batches(_SCAN_ROWS)

    def keep_staged(self, run_id: str) -> int:
        """Cache the vectors of a run's staged shards (a run that failed before its commit).

        Never raises (see :meth:`keep_replaced`). Returns rows written.
        """
        if not self.settings.enabled:
            return 0
        fs, _ = objectstore.filesystem(self.store.uri, self.store.settings.s3)
        root = objectstore.fs_path(self.store.staging_uri(run_id))
        try:
            infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
            files = sorted(
                i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".arrow")
            )
            if not files:
                return 0
            dataset = pads.dataset(files, format="ipc", filesystem=fs)
            identity = ModelIdentity.from_table_metadata(_metadata(dataset.schema))
            if identity is None:
                return 0
            batches = dataset.to_batches(columns=[C.CHUNK_HASH, C.VECTOR], batch_size=_SCAN_ROWS)
            return self.put(identity, batches, "failed-run")
        except Exception as e:  # see keep_replaced
            log.warning("could not cache the staged vectors of run=%s: %s: %s", run_id, type(e).__name__, e)
            return 0

    # ------------------------------------------------------------------ writing and trimming

    def put(self, identity: ModelIdentity, batches: Any, reason: str) -> int:
        """Upsert (chunk_hash, vector) batches of one model as cache rows; then trim.

        At most ``max_rows`` rows are taken (the cache could not keep more); a text met twice is
        written once.

        Raises:
            StoreError: The cache table cannot be written.
        """
        prefix = identity.vector_key + ":"
        seen: set[str] = set()
        pending: list[pa.Table] = []
        pending_rows = written = 0
        now = datetime.now(UTC)
        for batch in batches:
            if written + pending_rows >= self.settings.max_rows:
                break
            hashes = batch.column(C.CHUNK_HASH).to_pylist()
            take = []
            for i, h in enumerate(hashes):
                if h not in seen:
                    seen.add(h)
                    take.append(i)
            room = self.settings.max_rows - written - pending_rows
            take = take[:room]
            if not take:
                continue
            idx = pa.array(take, pa.int64())
            n = len(take)
            picked = [hashes[i] for i in take]
            pending.append(
                pa.Table.from_arrays(
                    [
                        pa.array([prefix + h for h in picked], pa.string()),
                        pa.array([identity.vector_key] * n, pa.string()),
                        pa.array([identity.model_id] * n, pa.string()),
                        pa.array(picked, pa.string()),
                        pc.cast(batch.column(C.VECTOR).take(idx), pa.list_(pa.float32())),
                        pa.array([self.store.settings.table] * n, pa.string()),
                        pa.array([reason] * n, pa.string()),
                        pa.array([now] * n, pa.timestamp("us", tz="UTC")),
                    ],
                    schema=vector_cache_schema(),
                )
            )
            pending_rows += n
            if pending_rows >= _WRITE_ROWS:
                self._upsert(pa.concat_tables(pending))
                written += pending_rows
                pending, pending_rows = [], 0
        if pending:
            self._upsert(pa.concat_tables(pending))
            written += pending_rows
        if written:
            self._index()
            self.trim()
            log.info(
                "stage=vector-cache table=%s model=%s reason=%s cached=%d",
                self.store.settings.table,
                identity.model_id,
                reason,
                written,
            )
        return written

    def _upsert(self, data: pa.Table) -> None:
        table = self._table()
        try:
            if table is None:
                try:
                    self.store.db.create_table(VECTOR_CACHE_TABLE, data=data, schema=data.schema)
                    return
                except (ValueError, OSError) as e:  # created meanwhile by a run on another table
                    if "exist" not in str(e).lower():
                        raise
                    table = self.store.db.open_table(VECTOR_CACHE_TABLE)
            # LanceDB retries a merge that meets a concurrent commit (another table's run)
            table.merge_insert("key").when_matched_update_all().when_not_matched_insert_all().execute(data)
        except EmbedpipeError:
            raise
        except Exception as e:
            raise self.store._error(f"cannot write table={VECTOR_CACHE_TABLE}", e) from e

    def _index(self) -> None:
        """A B-tree on the key, so that a lookup does not scan the cache."""
        from lancedb.index import BTree

        table = self._table()
        if table is None:
            return
        try:
            table.create_index("key", config=BTree(), replace=True)
        except Exception as e:  # lookups still work (as scans)
            log.warning("could not index table=%s: %s: %s", VECTOR_CACHE_TABLE, type(e).__name__, e)

    def trim(self, now: datetime | None = None) -> dict[str, int]:
        """Remove rows older than ``ttl_days``, then the oldest rows beyond ``max_rows``.

        Returns:
            ``{"rows_before", "rows_after"}``; empty when there is no cache table.
        """
        table = self._table()
        if table is None:
            return {}
        now = now or datetime.now(UTC)
        try:
            before = int(table.count_rows())
            cutoff = now - timedelta(days=self.settings.ttl_days)
            expired = _older_than(cutoff)
            if before and table.search().where(expired).select(["key"]).limit(1).to_arrow().num_rows:
                table.delete(expired)
            rows = int(table.count_rows())
            if rows > self.settings.max_rows:
                order = (
                    table.search()
                    .select(["key", "cached_at"])
                    .limit(None)
                    .to_arrow()
                    .sort_by([("cached_at", "descending"), ("key", "descending")])
                )
                last = self.settings.max_rows - 1
                key, ts = order.column("key")[last].as_py(), order.column("cached_at")[last].as_py()
                # Everything after the last row kept, in (newest first, then key) order.
                table.delete(_older_than(ts, key))
                rows = int(table.count_rows())
        except Exception as e:
            raise self.store._error(f"cannot trim table={VECTOR_CACHE_TABLE}", e) from e
        return {"rows_before": before, "rows_after": rows}


def _metadata(schema: pa.Schema) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
