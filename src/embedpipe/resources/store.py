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
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from embedpipe.config import StoreSettings
from embedpipe.errors import ModelMismatchError, StoreError, TableNotFoundError, VersionNotFoundError
from embedpipe.schemas import C, ModelIdentity, Reject, RunSummary, rejects_schema, runs_schema

log = logging.getLogger(__name__)

STAGING_DIR = "_embedpipe_staging"
RUNS_TABLE = "runs"
REJECTS_TABLE = "rejects"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class StagedShard:
    """A reference to one staged shard file (what tasks pass around instead of the data)."""

    uri: str
    rows: int


def sql_quote(value: str) -> str:
    """A SQL string literal for a Lance filter."""
    return "'" + value.replace("'", "''") + "'"


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
        return {k: v.get_secret_value() for k, v in self.settings.storage_options.items()}

    @property
    def db(self) -> Any:
        if self._db is None:
            import lancedb

            try:
                self._db = lancedb.connect(self.uri, storage_options=self.storage_options or None)
            except Exception as e:
                raise StoreError(f"cannot open database uri={self.uri}: {type(e).__name__}: {e}") from e
        return self._db

    def _fs(self) -> tuple[pafs.FileSystem, str]:
        if "://" not in self.uri:
            return pafs.LocalFileSystem(), self.uri
        fs, path = pafs.FileSystem.from_uri(self.uri)
        return fs, path

    def table_names(self) -> list[str]:
        res = self.db.table_names() if not hasattr(self.db, "list_tables") else self.db.list_tables()
        names = getattr(res, "tables", res)
        return list(names)

    def open_table(self, name: str | None = None) -> Any | None:
        """The table, or ``None`` when it does not exist yet."""
        name = name or self.settings.table
        try:
            return self.db.open_table(name)
        except (FileNotFoundError, ValueError):
            return None
        except Exception as e:
            if "not found" in str(e).lower() or "does not exist" in str(e).lower():
                return None
            raise StoreError(f"cannot open table={name} at uri={self.uri}: {type(e).__name__}: {e}") from e

    def require_table(self, name: str | None = None) -> Any:
        table = self.open_table(name)
        if table is None:
            raise TableNotFoundError(
                f"table={name or self.settings.table} not found in database uri={self.uri}; "
                "run `embedpipe run` first"
            )
        return table

    # ------------------------------------------------------------------ identity

    def table_identity(self, name: str | None = None) -> ModelIdentity | None:
        table = self.open_table(name)
        if table is None:
            return None
        md = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        identity = ModelIdentity.from_table_metadata(md)
        if identity is None:
            vec = table.schema.field(C.VECTOR) if C.VECTOR in table.schema.names else None
            dim = getattr(vec.type, "list_size", None) if vec is not None else None
            raise ModelMismatchError(
                f"table={table.name} (dim={dim}) records no embedpipe model identity; "
                "write into a new table with --table NAME"
            )
        return identity

    def check_compatible(self, identity: ModelIdentity, name: str | None = None) -> None:
        """Refuse to write vectors of another model or dimension into an existing table.

        Raises:
            ModelMismatchError: The table was built with another model, weights or dimension.
        """
        existing = self.table_identity(name)
        if existing is None:
            return
        table = name or self.settings.table
        if existing.dim != identity.dim or existing.weights_hash != identity.weights_hash:
            raise ModelMismatchError(
                f"table={table} was built with model={existing.name} (weights {existing.weights_hash[:12]}, "
                f"dim={existing.dim}); the configured model={identity.name} (weights "
                f"{identity.weights_hash[:12]}, dim={identity.dim}) would mix vectors from different spaces. "
                f"Run with --model {existing.name}, or write into a new table with --table NAME"
            )
        if existing.normalize != identity.normalize:
            raise ModelMismatchError(
                f"table={table} stores normalize={existing.normalize} vectors; the configuration says "
                f"model.normalize={identity.normalize}. Use the table's setting or a new --table"
            )

    # ------------------------------------------------------------------ staging

    def staging_uri(self, run_id: str) -> str:
        return f"{self.uri.rstrip('/')}/{STAGING_DIR}/{self.settings.table}/{run_id}"

    def stage(self, run_id: str, shard_no: int, data: pa.Table) -> StagedShard:
        """Write one embedded shard as an Arrow IPC file outside the served table."""
        fs, _ = self._fs()
        uri = f"{self.staging_uri(run_id)}/shard-{shard_no:06d}.arrow"
        path = uri if "://" not in uri else pafs.FileSystem.from_uri(uri)[1]
        try:
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            tmp = path + ".tmp"
            with fs.open_output_stream(tmp) as out, pa.ipc.new_file(out, data.schema) as writer:
                writer.write_table(data, max_chunksize=8192)
            fs.move(tmp, path)
        except OSError as e:
            raise StoreError(f"cannot stage shard={shard_no} at uri={uri}: {e}") from e
        return StagedShard(uri=uri, rows=data.num_rows)

    def drop_staging(self, run_id: str) -> None:
        fs, _ = self._fs()
        uri = self.staging_uri(run_id)
        path = uri if "://" not in uri else pafs.FileSystem.from_uri(uri)[1]
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
        for info in infos:
            if info.type == pafs.FileType.Directory and info.mtime and info.mtime.timestamp() < cutoff:
                fs.delete_dir(info.path)
                removed += 1
        return removed

    # ------------------------------------------------------------------ commit

    def commit(
        self,
        run_id: str,
        staged: Sequence[StagedShard],
        schema: pa.Schema,
        replace_scope: dict[str, list[str]],
        exclude: dict[str, list[str]] | None = None,
    ) -> tuple[int | None, int]:
        """Apply a run's staged shards to the table as exactly one new version, tagged with the run id.

        Args:
            run_id: The run; the new version gets a tag of this name.
            staged: Staged shard files.
            schema: The chunks schema (with model identity metadata).
            replace_scope: Per source root, the files this run re-read: their chunks that the run did
                not produce again are removed in the same commit.
            exclude: Per staged file URI, documents to leave out (found to be duplicates later).

        Returns:
            ``(version, rows)``: the new version (``None`` when there was nothing to write) and the
            number of chunk rows written.
        """
        files = [s.uri for s in staged if s.rows]
        if not files:
            return None, 0
        exclude = exclude or {}
        fs, _ = self._fs()
        written = 0

        def batches() -> Iterator[pa.RecordBatch]:
            nonlocal written
            for uri in files:
                path = uri if "://" not in uri else pafs.FileSystem.from_uri(uri)[1]
                dataset = pads.dataset(path, format="ipc", filesystem=fs, schema=schema)
                drop = exclude.get(uri)
                flt = ~pc.field(C.DOC_ID).isin(drop) if drop else None
                for batch in dataset.to_batches(filter=flt, batch_size=8192):
                    written += batch.num_rows
                    yield batch

        reader = pa.RecordBatchReader.from_batches(schema, batches())
        name = self.settings.table
        try:
            table = self.open_table(name)
            if table is None:
                table = self.db.create_table(name, data=reader, schema=schema)
            else:
                builder = (
                    table.merge_insert(C.CHUNK_ID).when_matched_update_all().when_not_matched_insert_all()
                )
                scope = _scope_filter(replace_scope)
                if scope:
                    builder = builder.when_not_matched_by_source_delete(scope)
                builder.execute(reader)
            version = int(table.version)
        except Exception as e:
            raise StoreError(
                f"commit of run={run_id} into table={name} failed: {type(e).__name__}: {e}"
            ) from e
        try:
            table.tags.create(run_id, version)
        except Exception as e:  # the data is committed; a missing tag is reported, not fatal
            log.warning("could not tag version=%d with run_id=%s: %s", version, run_id, e)
        return version, written

    # ------------------------------------------------------------------ records

    def append_run(self, summary: RunSummary) -> None:
        """Append the run summary to the ``runs`` table (created on first use)."""
        row = summary.model_dump()
        row.pop("rejects")
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
            raise StoreError(f"cannot append to table={name}: {type(e).__name__}: {e}") from e

    # ------------------------------------------------------------------ reading

    def versions(self, name: str | None = None) -> list[dict[str, Any]]:
        """Versions of the table with their tags and the run that created each."""
        table = self.require_table(name)
        by_version: dict[int, list[str]] = {}
        for tag, info in table.tags.list().items():
            by_version.setdefault(int(info["version"]), []).append(tag)
        out = []
        for v in table.list_versions():
            version = int(v["version"])
            tags = sorted(by_version.get(version, []))
            run_ids = [t for t in tags if _UUID.match(t)]
            ts = v["timestamp"]
            out.append(
                {
                    "version": version,
                    "timestamp": ts.isoformat() if hasattr(ts, "isoformat") else str(ts),
                    "tags": tags,
                    "run_id": run_ids[0] if run_ids else None,
                }
            )
        return out

    def rollback(self, target: str, name: str | None = None) -> dict[str, Any]:
        """Make a past version (number or tag) the latest again, as a new version.

        Raises:
            VersionNotFoundError: No such version or tag.
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
        previous = int(table.version)
        table.restore(version)
        return {
            "table": table.name,
            "restored": version,
            "previous_version": previous,
            "version": int(table.version),
        }

    def search(self, vector: Any, k: int, name: str | None = None) -> list[dict[str, Any]]:
        """Nearest chunks by cosine similarity, best first."""
        table = self.require_table(name)
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


def _scope_filter(scope: dict[str, list[str]]) -> str:
    clauses = []
    for source, paths in sorted(scope.items()):
        if paths:
            plist = ", ".join(sql_quote(p) for p in sorted(set(paths)))
            clauses.append(f"({C.SOURCE} = {sql_quote(source)} AND {C.PATH} IN ({plist}))")
    return " OR ".join(clauses)
