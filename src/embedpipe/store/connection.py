"""The store's connection: the database URI, its storage options, opening tables, store errors.

:class:`StoreBase` is the part of :class:`~embedpipe.store.Store` every other part builds on. It
connects to LanceDB only when a table is asked for, so that making a store (and pickling it to a
task or a Dask worker) costs nothing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, cast

import pyarrow.fs as pafs

from embedpipe.config import StoreSettings
from embedpipe.errors import StoreAccessError, StoreError, TableNotFoundError
from embedpipe.store import objectstore

if TYPE_CHECKING:
    from lancedb.db import DBConnection
    from lancedb.table import Table

    from embedpipe.store import Store
    from embedpipe.store.vector_cache import VectorCache


class StoreBase:
    """LanceDB database access for one configured store; picklable, connects lazily."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.uri = settings.uri if "://" in settings.uri else os.path.abspath(settings.uri)
        self._db: DBConnection | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"])  # type: ignore[misc]

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

        # The cache reads through every part of the store; this base is only ever made as one.
        return VectorCache(cast("Store", self))

    @property
    def db(self) -> DBConnection:
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

    def open_table(self, name: str | None = None) -> Table | None:
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

    def require_table(self, name: str | None = None) -> Table:
        table = self.open_table(name)
        if table is None:
            raise TableNotFoundError(
                f"table={name or self.settings.table} not found in database uri={self.uri}; "
                "run `embedpipe run` first"
            )
        return table
