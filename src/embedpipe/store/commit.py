"""Committing a run and serving a version: one atomic commit per run, the ``serving`` tag.

A run's staged shards (:mod:`embedpipe.store.staging`) are committed in a single ``merge_insert``
keyed on ``chunk_id``, which Lance applies atomically as one new table version tagged with the run
id; a reindex replaces the whole table in one commit instead. A run that fails or is killed before
that commit leaves the table exactly as it was. A commit computed against a version that is no
longer the newest is refused (:meth:`CommitMixin.verify_head`).

Readers that ask for the served table read the version the ``serving`` tag points at; a version
is published there once it passed its checks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from embedpipe.errors import StaleReadError
from embedpipe.schemas import CHECKS_TABLE, READER_META_KEY, C
from embedpipe.store.filters import docs_filter, eq
from embedpipe.store.reader import RUN_ID_TAG, SERVING_TAG, resolve_target
from embedpipe.store.scalar_index import ScalarIndexMixin, only_indexed_since
from embedpipe.store.staging import StagedShard, StagingMixin

if TYPE_CHECKING:
    from lancedb.table import Table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommitResult:
    """What a commit did."""

    version: int | None
    written: int
    deleted: int


class CommitMixin(StagingMixin, ScalarIndexMixin):
    """Commits, the stale-head check and the ``serving`` tag (part of :class:`~embedpipe.store.Store`)."""

    def verify_head(self, table: Table | None, run_id: str, read_version: int | None) -> int | None:
        """Refuse to commit a delta computed against a version that is no longer the newest.

        Args:
            table: The table at its latest version, or ``None`` when it does not exist.
            run_id: The committing run.
            read_version: The version the run read (``None``: there was no table).

        Returns:
            ``None`` when the head is still ``read_version``, or moved on only by index commits
            (they change no row, so the delta is still current: a retried write whose first
            attempt created the scalar indexes); the version this run already committed (a
            retried write whose first attempt landed), tagged with its run id.

        Raises:
            StaleReadError: Another writer committed since ``read_version``: nothing is written.
        """
        head = None if table is None else int(table.version)
        if head == read_version:
            return None
        if table is not None and read_version is not None and only_indexed_since(table, read_version):
            return None
        tags = table.tags.list() if table is not None else {}
        mine = int(tags[run_id]["version"]) if run_id in tags else None
        if mine is not None and (read_version is None or mine > read_version) and mine == head:
            return mine
        by = [
            t
            for t, i in tags.items()
            if RUN_ID_TAG.match(t) and head is not None and int(i["version"]) == head
        ]
        name = self.settings.table
        raise StaleReadError(
            f"table={name} moved from version {read_version} to version {head}"
            + (f" (run={by[0]})" if by else "")
            + f" while run={run_id} computed its changes against version {read_version}: another run "
            f"wrote the table at the same time, and this run's changes would be stale, so nothing was "
            f"written. Run again (the next run starts from version {head}); keep store.lock "
            f"(now {self.settings.lock!r}) enabled so that runs on one table wait for each other"
        )

    def commit(
        self,
        run_id: str,
        staged: Sequence[StagedShard],
        schema: pa.Schema,
        replace_docs: Sequence[tuple[str, str]] = (),
        exclude: dict[str, list[str]] | None = None,
        read_version: int | None = None,
        verify: bool = False,
        scalar_indexes: int | None = None,
    ) -> CommitResult:
        """Apply a run's changes to the table as exactly one new version, tagged with the run id.

        Staged rows are upserted by ``chunk_id``; rows of ``replace_docs`` that the staged rows do
        not carry (stale chunks of changed documents, all chunks of deleted documents) are removed
        in the same commit.

        Args:
            run_id: The run; the new version gets a tag of this name.
            staged: Staged shard files.
            schema: The chunks schema (with model identity metadata).
            replace_docs: (source, doc_id) of documents whose stored chunks are replaced by the staged
                ones (or removed).
            exclude: Per staged file URI, documents to leave out (found to be duplicates later).
            read_version: The version the run computed its changes against (with ``verify``).
            verify: Refuse the commit when the table's head is no longer ``read_version``
                (see :meth:`verify_head`).
            scalar_indexes: First create the scalar indexes an existing table lacks once it has
                this many rows (:meth:`~embedpipe.store.scalar_index.ScalarIndexMixin.ensure_scalar_indexes`),
                as a version of its own before the commit, with the rows the run read; ``None``:
                never. A new table gets them from the next run that writes to it.

        Returns:
            The new version (``None`` when there was nothing to change) and row counts.

        Raises:
            StaleReadError: With ``verify``, another writer committed since ``read_version``.
        """
        has_rows = any(s.rows for s in staged)
        if not has_rows and not replace_docs:
            return CommitResult(None, 0, 0)
        counter = [0]
        name = self.settings.table
        deleted = 0
        if verify:
            done = self.verify_head(self.open_table(name), run_id, read_version)
            if done is not None:
                return CommitResult(done, sum(s.rows for s in staged), 0)
        try:
            table = self.open_table(name)
            if table is None:
                if not has_rows:
                    return CommitResult(None, 0, 0)
                reader = self._staged_reader(staged, schema, exclude or {}, counter)
                table = self.db.create_table(name, data=reader, schema=schema)
            else:
                if scalar_indexes is not None:
                    # Before the commit, on the rows the run read: the commit is then the run's
                    # one version, the one its checks judge and its publication serves.
                    self.ensure_scalar_indexes(table, scalar_indexes)
                reader = self._staged_reader(staged, schema, exclude or {}, counter)
                builder = (
                    table.merge_insert(C.CHUNK_ID).when_matched_update_all().when_not_matched_insert_all()
                )
                replace = docs_filter(replace_docs)
                if replace is not None:
                    builder = builder.when_not_matched_by_source_delete(replace)
                result = builder.execute(reader)
                deleted = int(getattr(result, "num_deleted_rows", 0) or 0)
                self._carry_schema_metadata(table, schema)
            version = int(table.version)
        except Exception as e:
            raise self._error(f"commit of run={run_id} into table={name} failed", e) from e
        self._tag(table, run_id, version)
        return CommitResult(version, counter[0], deleted)

    def overwrite(
        self,
        run_id: str,
        staged: Sequence[StagedShard],
        schema: pa.Schema,
        read_version: int | None = None,
        verify: bool = False,
    ) -> CommitResult:
        """Replace the whole table (new model, new schema) as one new version: the atomic switch.

        Readers keep reading the previous version until this single commit lands; the previous
        versions stay available for ``rollback`` until retention removes them. With ``verify``, a
        table that moved on since ``read_version`` is refused (:meth:`verify_head`). Scalar
        indexes the new content lacks are created by the next run that writes to it.
        """
        counter = [0]
        name = self.settings.table
        if verify:
            done = self.verify_head(self.open_table(name), run_id, read_version)
            if done is not None:
                return CommitResult(done, sum(s.rows for s in staged), 0)
        reader = self._staged_reader(staged, schema, {}, counter)
        previous_rows = 0
        try:
            table = self.open_table(name)
            if table is None:
                table = self.db.create_table(name, data=reader, schema=schema)
            else:
                previous_rows = int(table.count_rows())
                self.cache.keep_replaced(table, None, "reindex")
                table.add(reader, mode="overwrite")
            version = int(table.version)
        except Exception as e:
            raise self._error(f"reindex commit of run={run_id} into table={name} failed", e) from e
        self._tag(table, run_id, version)
        return CommitResult(version, counter[0], previous_rows)

    @staticmethod
    def _carry_schema_metadata(table: Table, schema: pa.Schema) -> None:
        """Record the run's reader identity on the table when it differs from the table's.

        An upsert keeps the table's schema metadata; the reader identity (which settings the
        documents were read with, :func:`embedpipe.sources.parse.reader_identity`) is the one
        entry a later run may change. Only then does this add a version, with the same rows.
        """
        wanted = (schema.metadata or {}).get(READER_META_KEY.encode())
        if wanted is None:
            return
        ds = table.to_lance()
        if (ds.schema.metadata or {}).get(READER_META_KEY.encode()) != wanted:
            ds.update_schema_metadata({READER_META_KEY: wanted.decode()})
            table.checkout_latest()

    @staticmethod
    def _tag(table: Table, run_id: str, version: int) -> None:
        try:
            table.tags.create(run_id, version)
        except Exception as e:  # the data is committed; a missing tag is reported, not fatal
            log.warning("could not tag version=%d with run_id=%s: %s", version, run_id, e)

    # ------------------------------------------------------------------ serving

    def serving_version(self, table: Table | None = None) -> int | None:
        """The version the ``serving`` tag points at, or ``None`` when nothing was published."""
        table = table if table is not None else self.open_table()
        if table is None:
            return None
        info = table.tags.list().get(SERVING_TAG)
        return int(info["version"]) if info else None

    def audited(self) -> bool:
        """Whether any version of this table was ever checked (then only a served version is read)."""
        checks = self.open_table(CHECKS_TABLE)
        if checks is None:
            return False
        flt = eq(C.TABLE, self.settings.table)
        return bool(checks.search().where(flt).select([C.TABLE]).limit(1).to_list())

    def resolve_version(self, target: str | int | None, table: Table | None = None) -> int:
        """A version number from ``serving``, ``latest``, a tag or a number (``None`` = serving).

        A table that was never checked (built before checks existed, or with checks turned off
        from the start) serves its latest version.

        Raises:
            NothingServedError: Serving was asked for, and no version has passed its checks yet.
            VersionNotFoundError: No such version or tag.
        """
        table = table if table is not None else self.require_table()
        return resolve_target(
            target,
            name=table.name,
            latest=int(table.version),
            tags=table.tags.list(),
            versions=lambda: (int(v["version"]) for v in table.list_versions()),
            audited=self.audited,
        )

    def open_version(self, target: str | int | None = None, name: str | None = None) -> Table:
        """The table pinned at a version (default: the served one), for consistent reads.

        Raises:
            TableNotFoundError: No such table.
            NothingServedError: No version has passed its checks yet.
            VersionNotFoundError: No such version or tag.
        """
        table = self.require_table(name)
        table.checkout(self.resolve_version(target, table))
        return table

    def publish(self, version: int, expect_serving: int | bool | None = False) -> bool:
        """Point the ``serving`` tag at ``version``: readers that ask for the served table get it.

        Args:
            version: The version to serve.
            expect_serving: When not ``False``, publish only if the tag still points where the
                caller saw it (``None``: no tag); a run never moves the tag over a concurrent
                publication (compare, then set: Lance tags have no atomic swap, so this narrows
                rather than closes the window; runs on one table are meant to be serialized).

        Returns:
            Whether the tag was moved.
        """
        table = self.require_table()
        try:
            tags = table.tags.list()
            current = int(tags[SERVING_TAG]["version"]) if SERVING_TAG in tags else None
            if expect_serving is not False and current != expect_serving:
                log.warning(
                    "not publishing version=%d of table=%s: serving moved to %s meanwhile",
                    version,
                    table.name,
                    current,
                )
                return False
            if current is not None:
                table.tags.update(SERVING_TAG, version)
            else:
                table.tags.create(SERVING_TAG, version)
        except Exception as e:
            raise self._error(f"cannot publish version={version} of table={table.name}", e) from e
        return True

    def make_head(self, version: int | None, reason: str = "failed-gate") -> int:
        """Make ``version``'s content the newest version again (a new commit); ``None``: empty it.

        Used when a version fails its checks: the next run must build on checked content, not on
        the rows that failed. The failed version stays in the history for inspection; the vectors
        the new head lacks go to the vector cache first (``reason`` is recorded with them).
        """
        table = self.require_table()
        self.cache.keep_replaced(table, version, reason)
        try:
            if version is None:
                table.delete("true")
            else:
                table.restore(version)
        except Exception as e:
            raise self._error(f"cannot restore version={version} of table={table.name}", e) from e
        return int(table.version)
