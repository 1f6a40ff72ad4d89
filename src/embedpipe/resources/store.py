"""The LanceDB store: staged writes, one atomic commit per run, versions, tags and search.

A run never writes into the served table batch by batch. Embedded shards are staged as Arrow IPC
files next to the database (``<db>/_embedpipe_staging/<table>/<run_id>/``); the run then commits
them in a single ``merge_insert`` keyed on ``chunk_id``, which Lance applies atomically as one new
table version. A run that fails or is killed before that commit leaves the table exactly as it was;
its staged files are invisible to readers and are swept after ``runtime.staging_ttl_hours``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from embedpipe.config import StoreSettings
from embedpipe.errors import (
    ChunkingMismatchError,
    GateFailed,
    ModelMismatchError,
    StaleReadError,
    StoreAccessError,
    StoreError,
    TableNotFoundError,
    VersionNotFoundError,
)
from embedpipe.schemas import (
    CANARY_TABLE,
    CHECKS_TABLE,
    LEDGER_TABLES,
    REJECTS_TABLE,
    RUNS_TABLE,
    VECTOR_CACHE_TABLE,
    C,
    CheckResult,
    ChunkingIdentity,
    ModelIdentity,
    Reject,
    RunSummary,
    canary_schema,
    checks_schema,
    rejects_schema,
    runs_schema,
    vector_matrix,
)
from embedpipe.store import objectstore
from embedpipe.store.reader import (
    RUN_ID_TAG,
    SERVING_TAG,
    resolve_target,
    sql_quote,
    version_rows,
)

if TYPE_CHECKING:
    from embedpipe.store.vector_cache import VectorCache

log = logging.getLogger(__name__)

STAGING_DIR = "_embedpipe_staging"
_UUID = RUN_ID_TAG  # run ids are UUIDs; a version made by a run carries its id as a tag


@dataclass(frozen=True)
class StagedShard:
    """A reference to one staged shard file (what tasks pass around instead of the data)."""

    uri: str
    rows: int


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


@dataclass(frozen=True)
class CommitResult:
    """What a commit did."""

    version: int | None
    written: int
    deleted: int


_IN_LIST = 2000


def _in_filter(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(sql_quote(v) for v in sorted(set(values)))})"


def _docs_filter(docs: Sequence[tuple[str, str]]) -> str:
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


def _aware(ts: Any) -> Any:
    from datetime import UTC

    return ts if getattr(ts, "tzinfo", None) else ts.replace(tzinfo=UTC)


def model_mismatch(existing: ModelIdentity, identity: ModelIdentity, tname: str) -> None:
    """Refuse to put vectors of ``identity`` beside a table's vectors of ``existing``.

    Raises:
        ModelMismatchError: Another model, weights, dimension, backend or normalisation.
    """
    if existing.dim != identity.dim or existing.weights_hash != identity.weights_hash:
        raise ModelMismatchError(
            f"table={tname} was built with model={existing.name} (weights {existing.weights_hash[:12]}, "
            f"dim={existing.dim}); the configured model={identity.name} (weights "
            f"{identity.weights_hash[:12]}, dim={identity.dim}) would mix vectors from different spaces. "
            f"Run with --model {existing.name}, or switch the table to the new model with "
            f"`embedpipe reindex --model {identity.name}` (or write into a new table with --table NAME)"
        )
    if existing.backend != identity.backend:
        raise ModelMismatchError(
            f"table={tname} was embedded with model.backend={existing.backend}; this run uses "
            f"backend={identity.backend}, whose vectors differ slightly and would mix in one index. "
            f"Run with --backend {existing.backend}, or switch the table with "
            f"`embedpipe reindex --backend {identity.backend}`"
        )
    if existing.normalize != identity.normalize:
        raise ModelMismatchError(
            f"table={tname} stores normalize={existing.normalize} vectors; the configuration says "
            f"model.normalize={identity.normalize}. Use the table's setting, or run `embedpipe reindex`"
        )


class Store:
    """LanceDB database access for one configured store; picklable, connects lazily."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.uri = settings.uri if "://" in settings.uri else os.path.abspath(settings.uri)
        self._db: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"])  # type: ignore[misc]

    # ------------------------------------------------------------------ connection

    @property
    def storage_options(self) -> dict[str, str]:
        """Lance storage options: those derived from the ``s3`` settings for an S3 URI, then the
        explicit ``store.storage_options`` over them."""
        base = objectstore.lance_storage_options(self.settings.s3) if objectstore.is_s3(self.uri) else {}
        return base | {k: v.get_secret_value() for k, v in self.settings.storage_options.items()}

    def _error(self, what: str, e: BaseException) -> StoreError:
        """A one-line store error without secrets; access problems are terminal (no retry)."""
        if not objectstore.is_s3(self.uri):
            return StoreError(f"{what}: {type(e).__name__}: {e}")
        reason, kind = objectstore.explain(e)
        secrets = objectstore.secrets_of(self.settings.s3, dict(self.settings.storage_options))
        cls = StoreAccessError if kind in {"denied", "no-bucket"} else StoreError
        return cls(objectstore.redact(f"{what}: {reason}", secrets))

    @property
    def cache(self) -> VectorCache:
        """The database's vector cache (:class:`~embedpipe.store.vector_cache.VectorCache`)."""
        from embedpipe.store.vector_cache import VectorCache

        return VectorCache(self)

    @property
    def db(self) -> Any:
        if self._db is None:
            import lancedb

            try:
                if objectstore.is_s3(self.uri):
                    self._check_bucket()
                self._db = lancedb.connect(self.uri, storage_options=self.storage_options or None)
            except StoreError:
                raise
            except Exception as e:
                raise self._error(f"cannot open database uri={self.uri}", e) from e
        return self._db

    def _check_bucket(self) -> None:
        """Lance lists a missing bucket as an empty database; say what is wrong before any work."""
        fs, path = self._fs()
        bucket = path.split("/", 1)[0]
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise StoreAccessError(f"cannot open database uri={self.uri}: the bucket does not exist")

    def _fs(self) -> tuple[pafs.FileSystem, str]:
        return objectstore.filesystem(self.uri, self.settings.s3)

    def table_names(self) -> list[str]:
        res = self.db.table_names() if not hasattr(self.db, "list_tables") else self.db.list_tables()
        names = getattr(res, "tables", res)
        return list(names)

    def _local_folder(self) -> str | None:
        """The database folder of a local URI (``None`` for an object store)."""
        if "://" not in self.uri:
            return self.uri
        return self.uri.removeprefix("file://") if self.uri.startswith("file://") else None

    def exists(self) -> bool:
        """Whether the database is there to read; a local folder is checked without creating it
        (connecting would). An object store counts as there (its bucket is checked on connect)."""
        folder = self._local_folder()
        return folder is None or os.path.isdir(folder)

    def require_database(self) -> None:
        """Refuse to read a local database folder that does not exist (and create nothing).

        Raises:
            TableNotFoundError: The folder does not exist.
        """
        if not self.exists():
            raise TableNotFoundError(
                f"table={self.settings.table} not found: database uri={self.uri} does not exist; "
                "run `embedpipe run` first, or pass the --db of an existing database"
            )

    def open_table(self, name: str | None = None) -> Any | None:
        """The table, or ``None`` when it does not exist yet (a missing local database folder is
        not created by asking)."""
        name = name or self.settings.table
        if not self.exists():
            return None
        db = self.db
        try:
            return db.open_table(name)
        except Exception as e:
            # on S3 a refused or unreachable store must not pass for a missing table
            if objectstore.is_s3(self.uri) and objectstore.explain(e)[1] != "other":
                raise self._error(f"cannot open table={name} at uri={self.uri}", e) from e
            if isinstance(e, (FileNotFoundError, ValueError)):
                return None
            if "not found" in str(e).lower() or "does not exist" in str(e).lower():
                return None
            raise self._error(f"cannot open table={name} at uri={self.uri}", e) from e

    def require_table(self, name: str | None = None) -> Any:
        table = self.open_table(name)
        if table is None:
            raise TableNotFoundError(
                f"table={name or self.settings.table} not found in database uri={self.uri}; "
                "run `embedpipe run` first"
            )
        return table

    # ------------------------------------------------------------------ identity

    @staticmethod
    def _metadata(table: Any) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}

    def table_identity(self, name: str | None = None, table: Any = None) -> ModelIdentity | None:
        """The model identity recorded in the table, ``None`` if the table does not exist.

        Raises:
            ModelMismatchError: The table exists but records no embedpipe identity.
        """
        table = table if table is not None else self.open_table(name)
        if table is None:
            return None
        identity = ModelIdentity.from_table_metadata(self._metadata(table))
        if identity is None:
            vec = table.schema.field(C.VECTOR) if C.VECTOR in table.schema.names else None
            dim = getattr(vec.type, "list_size", None) if vec is not None else None
            raise ModelMismatchError(
                f"table={table.name} (dim={dim}) records no embedpipe model identity; "
                "write into a new table with --table NAME"
            )
        return identity

    def table_chunking(self, table: Any) -> ChunkingIdentity | None:
        return ChunkingIdentity.from_table_metadata(self._metadata(table))

    def check_compatible(
        self,
        identity: ModelIdentity,
        chunking: ChunkingIdentity | None = None,
        name: str | None = None,
        table: Any = None,
    ) -> None:
        """Refuse to write into a table built with another model or other chunking.

        Raises:
            ModelMismatchError: Another model, weights, dimension or normalisation.
            ChunkingMismatchError: Other chunk size, overlap or tokenizer.
        """
        table = table if table is not None else self.open_table(name)
        if table is None:
            return
        existing = self.table_identity(table=table)
        assert existing is not None
        tname = name or self.settings.table
        model_mismatch(existing, identity, tname)
        stored = self.table_chunking(table)
        if chunking is not None and stored is not None and not stored.same_chunks(chunking):
            raise ChunkingMismatchError(
                f"table={tname} was built with chunk.tokens={stored.tokens} chunk.overlap={stored.overlap} "
                f"(budget {stored.budget}, tokenizer {stored.tokenizer_hash[:12]}); this run asks for "
                f"chunk.tokens={chunking.tokens} chunk.overlap={chunking.overlap} (budget {chunking.budget}, "
                f"tokenizer {chunking.tokenizer_hash[:12]}). Run `embedpipe reindex --chunk-tokens "
                f"{chunking.tokens} --chunk-overlap {chunking.overlap}` to rebuild the table, or run with "
                f"--chunk-tokens {stored.tokens} --chunk-overlap {stored.overlap}"
            )

    # ------------------------------------------------------------------ state at a version

    def snapshot(self, name: str | None = None) -> Any | None:
        """The table pinned at its current latest version (a consistent read), or ``None``."""
        table = self.open_table(name)
        if table is not None:
            table.checkout(int(table.version))
        return table

    def doc_state(self, table: Any, scopes: Sequence[Scope]) -> dict[tuple[str, str], dict[str, DocState]]:
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

    def vectors_for_hashes(self, table: Any, hashes: Sequence[str]) -> dict[str, Any]:
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

    def rows_for_docs(self, table: Any, docs: Sequence[tuple[str, str]], schema: pa.Schema) -> pa.Table:
        """All stored chunk rows of these (source, doc_id) documents."""
        parts = []
        uniq = sorted(set(docs))
        for i in range(0, len(uniq), _IN_LIST):
            flt = _docs_filter(uniq[i : i + _IN_LIST])
            parts.append(table.search().where(flt).select(schema.names).limit(None).to_arrow())
        if not parts:
            return schema.empty_table()
        return pa.concat_tables([p.select(schema.names).cast(schema) for p in parts])

    def iter_rows(self, table: Any, columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Stream the given columns of a pinned table."""
        yield from table.search().select(list(columns)).limit(None).to_batches(batch_rows)

    # ------------------------------------------------------------------ staging

    def staging_uri(self, run_id: str) -> str:
        return f"{self.uri.rstrip('/')}/{STAGING_DIR}/{self.settings.table}/{run_id}"

    def stage(self, run_id: str, shard_no: int, data: pa.Table) -> StagedShard:
        """Write one embedded shard as an Arrow IPC file outside the served table."""
        fs, _ = self._fs()
        uri = f"{self.staging_uri(run_id)}/shard-{shard_no:06d}.arrow"
        path = objectstore.fs_path(uri)
        # On an object store one PUT is already all-or-nothing (and a rename is a copy): no temp file.
        remote = objectstore.is_s3(uri)
        try:
            if not remote:
                fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            tmp = path if remote else path + ".tmp"
            with fs.open_output_stream(tmp) as out, pa.ipc.new_file(out, data.schema) as writer:
                writer.write_table(data, max_chunksize=8192)
            if not remote:
                fs.move(tmp, path)
        except OSError as e:
            raise self._error(f"cannot stage shard={shard_no} at uri={uri}", e) from e
        return StagedShard(uri=uri, rows=data.num_rows)

    def drop_staging(self, run_id: str) -> None:
        fs, _ = self._fs()
        uri = self.staging_uri(run_id)
        path = objectstore.fs_path(uri)
        try:
            fs.delete_dir(path)
        except (FileNotFoundError, OSError) as e:
            log.debug("staging already gone uri=%s: %s", uri, e)

    def sweep_staging(self, ttl_hours: float) -> int:
        """Remove staged runs older than ``ttl_hours`` (left by runs that died). Returns how many."""
        fs, base = self._fs()
        root = f"{base.rstrip('/')}/{STAGING_DIR}/{self.settings.table}"
        try:
            infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        except OSError:
            return 0
        cutoff = time.time() - ttl_hours * 3600
        removed = 0
        if objectstore.is_s3(self.uri):
            return self._sweep_objects(fs, root, cutoff)
        for info in infos:
            if info.type == pafs.FileType.Directory and info.mtime and info.mtime.timestamp() < cutoff:
                fs.delete_dir(info.path)
                removed += 1
        return removed

    @staticmethod
    def _sweep_objects(fs: pafs.FileSystem, root: str, cutoff: float) -> int:
        """Object stores have no folder mtimes: a staged run is stale when its newest object is."""
        try:
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        except OSError:
            return 0
        newest: dict[str, float] = {}
        for info in infos:
            if info.type == pafs.FileType.File and info.mtime is not None:
                run = info.path[len(root) :].strip("/").split("/", 1)[0]
                newest[run] = max(newest.get(run, 0.0), info.mtime.timestamp())
        removed = 0
        for run, ts in newest.items():
            if ts < cutoff:
                fs.delete_dir(f"{root}/{run}")
                removed += 1
        return removed

    # ------------------------------------------------------------------ commit

    def _staged_reader(
        self,
        staged: Sequence[StagedShard],
        schema: pa.Schema,
        exclude: dict[str, list[str]],
        counter: list[int],
    ) -> pa.RecordBatchReader:
        files = [s.uri for s in staged if s.rows]
        fs, _ = self._fs()

        def batches() -> Iterator[pa.RecordBatch]:
            for uri in files:
                path = objectstore.fs_path(uri)
                dataset = pads.dataset(path, format="ipc", filesystem=fs, schema=schema)
                drop = exclude.get(uri)
                flt = ~pc.field(C.DOC_ID).isin(drop) if drop else None
                for batch in dataset.to_batches(filter=flt, batch_size=8192):
                    counter[0] += batch.num_rows
                    yield batch

        return pa.RecordBatchReader.from_batches(schema, batches())

    def verify_head(self, table: Any, run_id: str, read_version: int | None) -> int | None:
        """Refuse to commit a delta computed against a version that is no longer the newest.

        Args:
            table: The table at its latest version, or ``None`` when it does not exist.
            run_id: The committing run.
            read_version: The version the run read (``None``: there was no table).

        Returns:
            ``None`` when the head is still ``read_version``; the version this run already
            committed (a retried write whose first attempt landed), tagged with its run id.

        Raises:
            StaleReadError: Another writer committed since ``read_version``: nothing is written.
        """
        head = None if table is None else int(table.version)
        if head == read_version:
            return None
        tags = table.tags.list() if table is not None else {}
        mine = int(tags[run_id]["version"]) if run_id in tags else None
        if mine is not None and (read_version is None or mine > read_version) and mine == head:
            return mine
        by = [t for t, i in tags.items() if _UUID.match(t) and head is not None and int(i["version"]) == head]
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
                reader = self._staged_reader(staged, schema, exclude or {}, counter)
                builder = (
                    table.merge_insert(C.CHUNK_ID).when_matched_update_all().when_not_matched_insert_all()
                )
                if replace_docs:
                    builder = builder.when_not_matched_by_source_delete(_docs_filter(replace_docs))
                result = builder.execute(reader)
                deleted = int(getattr(result, "num_deleted_rows", 0) or 0)
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
        table that moved on since ``read_version`` is refused (:meth:`verify_head`).
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
    def _tag(table: Any, run_id: str, version: int) -> None:
        try:
            table.tags.create(run_id, version)
        except Exception as e:  # the data is committed; a missing tag is reported, not fatal
            log.warning("could not tag version=%d with run_id=%s: %s", version, run_id, e)

    # ------------------------------------------------------------------ serving

    def serving_version(self, table: Any = None) -> int | None:
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
        flt = f"`{C.TABLE}` = {sql_quote(self.settings.table)}"
        return bool(checks.search().where(flt).select([C.TABLE]).limit(1).to_list())

    def resolve_version(self, target: str | int | None, table: Any = None) -> int:
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

    def open_version(self, target: str | int | None = None, name: str | None = None) -> Any:
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

    def run_ids(self, table: Any) -> set[str]:
        """The ids of the runs whose rows a pinned table holds."""
        ids: set[str] = set()
        for batch in table.search().select([C.RUN_ID]).limit(None).to_batches(65536):
            ids.update(pc.unique(batch.column(0)).to_pylist())
        return ids

    def failed_checks(self, version: int) -> list[str]:
        """Checks of severity ``fail`` that failed (or errored) on ``version`` of this table."""
        checks = self.open_table(CHECKS_TABLE)
        if checks is None:
            return []
        flt = (
            f"`{C.TABLE}` = {sql_quote(self.settings.table)} AND table_version = {int(version)} "
            "AND severity = 'fail' AND (status = 'fail' OR status = 'error')"
        )
        rows = checks.search().where(flt).select(["check"]).limit(None).to_list()
        return sorted({r["check"] for r in rows})

    def sample_rows(self, table: Any, n: int, seed: int, columns: Sequence[str]) -> pa.Table:
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
        self, table: Any, column: str, values: Sequence[str], columns: Sequence[str]
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

    # ------------------------------------------------------------------ check records

    def append_checks(self, run_id: str, results: Sequence[CheckResult], at: Any) -> None:
        """Append check results to the ``checks`` table (created on first use)."""
        if not results:
            return
        rows = [
            {
                C.RUN_ID: run_id,
                C.TABLE: self.settings.table,
                "table_version": r.table_version,
                "check": r.check,
                "statistic": r.statistic,
                "threshold": r.threshold,
                "severity": r.severity,
                "status": r.status,
                C.AT: at,
                "reference_version": r.reference_version,
                "p_value": r.p_value,
                "effect": r.effect,
                "detail": r.detail,
            }
            for r in results
        ]
        self._append(CHECKS_TABLE, pa.Table.from_pylist(rows, schema=checks_schema()))

    def recorded_checks(self, version: int) -> dict[str, float]:
        """The latest recorded statistic of each check on ``version`` of this table (for comparisons)."""
        table = self.open_table(CHECKS_TABLE)
        if table is None:
            return {}
        rows = (
            table.search()
            .where(
                f"`{C.TABLE}` = {sql_quote(self.settings.table)} AND table_version = {int(version)} "
                "AND status <> 'error' AND status <> 'skipped'"
            )
            .select(["check", "statistic", C.AT])
            .limit(None)
            .to_arrow()
            .to_pylist()
        )
        out: dict[str, float] = {}
        for r in sorted(rows, key=lambda r: r[C.AT]):
            if r["statistic"] is not None:
                out[r["check"]] = float(r["statistic"])
        return out

    def append_canary(
        self, run_id: str, version: int | None, model_id: str, hashes: Sequence[str], vectors: Any, at: Any
    ) -> None:
        """Store the canary probe vectors embedded by a run."""
        rows = [
            {
                C.RUN_ID: run_id,
                C.TABLE: self.settings.table,
                "table_version": version,
                C.MODEL_ID: model_id,
                "probe": i,
                "probe_hash": h,
                C.VECTOR: [float(x) for x in v],
                C.AT: at,
            }
            for i, (h, v) in enumerate(zip(hashes, vectors, strict=True))
        ]
        self._append(CANARY_TABLE, pa.Table.from_pylist(rows, schema=canary_schema()))

    def canary_baseline(self, model_id: str, version: int | None) -> tuple[int | None, dict[str, Any]]:
        """Stored probe vectors of ``model_id``: those of ``version`` if any, else the oldest stored.

        Returns:
            (the version they were stored with, {probe_hash: vector}); empty when none are stored.
        """
        table = self.open_table(CANARY_TABLE)
        if table is None:
            return None, {}
        rows = (
            table.search()
            .where(f"{C.MODEL_ID} = {sql_quote(model_id)} AND `{C.TABLE}` = {sql_quote(self.settings.table)}")
            .select(["table_version", "probe_hash", C.VECTOR, C.AT])
            .limit(None)
            .to_arrow()
            .to_pylist()
        )
        if not rows:
            return None, {}
        chosen = [r for r in rows if version is not None and r["table_version"] == version]
        if not chosen:
            first = min(rows, key=lambda r: r[C.AT])
            chosen = [r for r in rows if r["table_version"] == first["table_version"]]
        ver = chosen[0]["table_version"]
        return ver, {r["probe_hash"]: r[C.VECTOR] for r in chosen}

    # ------------------------------------------------------------------ retention

    def apply_retention(
        self, keep_versions: int, max_age_hours: float, compact: bool = False
    ) -> dict[str, Any]:
        """Remove old versions of the chunks, runs, rejects, checks, canary and vector cache tables.

        A version is removed only when it is older than ``max_age_hours`` and not among the last
        ``keep_versions``. Tags other than run-id tags (for example a served or baseline tag) always
        protect their version. Run-id tags of versions past the policy are dropped first (the run
        and its version stay recorded in the ``runs`` table). With ``compact``, small data files of
        the chunks table are merged first (that makes one new version). The vector cache is first
        trimmed to ``store.cache`` (age and size), and compacted with ``compact``.

        Returns:
            Per table: versions before and after, bytes removed, run tags dropped, compaction.
        """
        from datetime import UTC, datetime, timedelta

        report: dict[str, Any] = {}
        age = timedelta(hours=max_age_hours)
        cutoff = datetime.now(UTC) - age
        trimmed = self.cache.trim()
        for name in (self.settings.table, *LEDGER_TABLES):
            table = self.open_table(name)
            if table is None:
                continue
            entry: dict[str, Any] = {"versions_before": len(table.list_versions())}
            if name == VECTOR_CACHE_TABLE:
                entry.update(trimmed)
                if compact:
                    entry["compacted"] = str(table.compact_files())
            if compact and name == self.settings.table:
                served, before = self.serving_version(table), int(table.version)
                stats = table.compact_files()
                entry["compacted"] = str(stats)
                # Compaction rewrites files, not content: a served latest version stays served as
                # its compacted copy (and the old files can go). It commits up to two versions; any
                # other commit meanwhile (a row count that moved, more versions) keeps the tag put.
                table = self.require_table(name)
                rows = {
                    int(v["version"]): (v.get("metadata") or {}).get("total_rows")
                    for v in table.list_versions()
                }
                after = int(table.version)
                same = all(rows.get(v) == rows.get(before) for v in range(before + 1, after + 1))
                if served is not None and served == before and 0 < after - before <= 2 and same:
                    self.publish(after, expect_serving=served)
            versions = sorted(table.list_versions(), key=lambda v: int(v["version"]))
            keep = {int(v["version"]) for v in versions[-keep_versions:]}
            dropped = []
            for tag, info in table.tags.list().items():
                v = int(info["version"])
                ts = next((x["timestamp"] for x in versions if int(x["version"]) == v), None)
                if _UUID.match(tag) and v not in keep and ts is not None and _aware(ts) < cutoff:
                    table.tags.delete(tag)
                    dropped.append(tag)
            try:
                stats = table.to_lance().cleanup_old_versions(
                    older_than=age, retain_versions=keep_versions, error_if_tagged_old_versions=False
                )
            except Exception as e:
                raise self._error(f"cleanup of table={name} failed", e) from e
            entry.update(
                versions_after=len(table.list_versions()),
                bytes_removed=int(getattr(stats, "bytes_removed", 0)),
                run_tags_dropped=len(dropped),
            )
            report[name] = entry
        return report

    # ------------------------------------------------------------------ records

    def append_run(self, summary: RunSummary) -> None:
        """Append the run summary to the ``runs`` table (created on first use)."""
        row = summary.model_dump()
        for extra in ("rejects", "reused_chunk_texts", "checks", "gate", "served_version"):
            row.pop(extra)
        data = pa.Table.from_pylist([row], schema=runs_schema())
        self._append(RUNS_TABLE, data)

    def append_rejects(self, run_id: str, rejects: Sequence[Reject], at: Any) -> None:
        if not rejects:
            return
        data = pa.Table.from_pylist(
            [
                {C.RUN_ID: run_id, C.SOURCE: r.source, C.PATH: r.path, C.REASON: r.reason, C.AT: at}
                for r in rejects
            ],
            schema=rejects_schema(),
        )
        self._append(REJECTS_TABLE, data)

    def _append(self, name: str, data: pa.Table) -> None:
        table = self.open_table(name)
        try:
            if table is None:
                try:
                    self.db.create_table(name, data=data, schema=data.schema)
                    return
                except (ValueError, OSError) as e:  # created meanwhile by a concurrent run
                    if "exist" not in str(e).lower():
                        raise
                    table = self.db.open_table(name)
            table.add(data)
        except Exception as e:
            raise self._error(f"cannot append to table={name}", e) from e

    # ------------------------------------------------------------------ reading

    def _local_dataset(self, name: str | None = None) -> Any:
        """The table of a local database as a Lance dataset, opened without ``lancedb``.

        Listing versions and tags needs only the dataset's manifests, and ``lance`` alone imports
        in a fraction of ``lancedb``'s time. An object store goes through ``lancedb`` (its errors
        are explained there).

        Raises:
            TableNotFoundError: The database or the table does not exist.
        """
        import lance

        name = name or self.settings.table
        folder = self._local_folder()
        assert folder is not None
        path = os.path.join(folder, f"{name}.lance")
        if not os.path.isdir(path):
            self.require_table(name)  # the database's own answer (and message) for a missing table
        try:
            return lance.dataset(path)
        except Exception as e:
            raise self._error(f"cannot open table={name} at uri={self.uri}", e) from e

    def versions(self, name: str | None = None) -> list[dict[str, Any]]:
        """Versions of the table with their tags and the run that created each."""
        table = self.require_table(name) if self._local_folder() is None else self._local_dataset(name)
        listed = table.list_versions() if hasattr(table, "list_versions") else table.versions()
        return version_rows(table.tags.list(), listed)

    def rollback(self, target: str, name: str | None = None, force: bool = False) -> dict[str, Any]:
        """Make a past version (number or tag) the latest again, as a new version, and serve it.

        A version that failed a check of severity ``fail`` is refused unless ``force`` is set.

        Raises:
            VersionNotFoundError: No such version or tag.
            GateFailed: The target failed its checks (and ``force`` is not set).
        """
        table = self.require_table(name)
        tags = table.tags.list()
        if target in tags:
            version = int(tags[target]["version"])
        elif target.isdigit():
            version = int(target)
            if version not in {int(v["version"]) for v in table.list_versions()}:
                raise VersionNotFoundError(
                    f"version={version} not found in table={table.name}; see `embedpipe versions`"
                )
        else:
            raise VersionNotFoundError(
                f"no version or tag named {target!r} in table={table.name}; see `embedpipe versions`"
            )
        failed = self.failed_checks(version)
        if failed and not force:
            raise GateFailed(
                f"version={version} of table={table.name} failed its checks ({', '.join(failed)}); "
                "rolling back to it would serve it. Pass --force to do it anyway"
            )
        previous = int(table.version)
        self.cache.keep_replaced(table, version, "rollback")
        table.restore(version)
        # An operator's rollback is a decision to serve that content again: the restored copy is
        # published at once (the version it copies was served or inspected before).
        self.publish(int(table.version))
        return {
            "table": table.name,
            "restored": version,
            "previous_version": previous,
            "version": int(table.version),
        }

    def search(self, vector: Any, k: int, name: str | None = None, table: Any = None) -> list[dict[str, Any]]:
        """Nearest chunks by cosine similarity, best first (on ``table`` when given: a pinned snapshot)."""
        table = table if table is not None else self.require_table(name)
        rows = (
            table.search(vector, vector_column_name=C.VECTOR)
            .distance_type("cosine")
            .limit(k)
            .select([C.DOC_ID, C.CHUNK_ID, C.TEXT])
            .to_list()
        )
        return [
            {
                C.DOC_ID: r[C.DOC_ID],
                C.CHUNK_ID: r[C.CHUNK_ID],
                C.TEXT: r[C.TEXT],
                "score": round(1.0 - float(r["_distance"]), 6),
            }
            for r in rows
        ]
