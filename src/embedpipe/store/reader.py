"""Read-only access to a store's tables through Lance alone: no LanceDB, no Prefect.

``search``, the public :class:`embedpipe.api.Table` handle and other readers open only the
datasets they read. LanceDB stores each table as the Lance dataset ``<db>/<name>.lance``; reading
it with ``lance`` directly gives the same rows, versions and tags as LanceDB's table does, and
saves importing LanceDB (its import alone is most of a cold search's start-up).

The served-version rules (:func:`resolve_target`) are shared with :class:`~embedpipe.store.Store`,
so both read the same version for the same request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc

from embedpipe.config import StoreSettings
from embedpipe.errors import (
    ModelMismatchError,
    NothingServedError,
    TableNotFoundError,
    VersionNotFoundError,
)
from embedpipe.schemas import CHECKS_TABLE, RUNS_TABLE, C, ModelIdentity, search_hits
from embedpipe.store import fulltext
from embedpipe.store.connection import StoreBase

SERVING_TAG = "serving"


def _this_table(table: str) -> pc.Expression:
    """Record rows of one chunks table, as a typed expression (no SQL text to quote)."""
    return pc.field(C.TABLE) == pa.scalar(table, pa.string())


def resolve_target(
    target: str | int | None,
    *,
    name: str,
    latest: int,
    tags: dict[str, Any],
    versions: Callable[[], Iterable[int]],
    audited: Callable[[], bool],
) -> int:
    """A version number from ``serving``, ``latest``, a tag or a number (``None`` = serving).

    A table that was never checked (built before checks existed, or with checks turned off from
    the start) serves its latest version.

    Args:
        target: What was asked for.
        name: The table's name (for messages).
        latest: Its latest version.
        tags: Its tags (tag to a mapping with ``version``).
        versions: Lists its versions (called only for a number).
        audited: Whether any version of the table was ever checked (called only for ``serving``
            when nothing is served).

    Raises:
        NothingServedError: Serving was asked for, and no version has passed its checks yet.
        VersionNotFoundError: No such version or tag.
    """
    if target is None or target == SERVING_TAG:
        info = tags.get(SERVING_TAG)
        if info:
            return int(info["version"])
        if audited():
            raise NothingServedError(
                f"table={name} has no served version: no version has passed its checks yet. "
                "See `embedpipe check --version latest`, or read it anyway with --version latest"
            )
        return latest
    if target == "latest":
        return latest
    if isinstance(target, str) and target in tags:
        return int(tags[target]["version"])
    if isinstance(target, int) or str(target).isdigit():
        version = int(target)
        if version in set(versions()):
            return version
    raise VersionNotFoundError(
        f"no version or tag named {target!r} in table={name}; see `embedpipe versions`"
    )


RUN_ID_TAG = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def version_rows(tags: dict[str, Any], versions: Any) -> list[dict[str, Any]]:
    """``embedpipe versions`` rows: each version with its tags and the run (a UUID tag) that made it.

    Args:
        tags: A Lance tag listing (tag name to a mapping with ``version``).
        versions: Lance version records (mappings with ``version`` and ``timestamp``).
    """
    by_version: dict[int, list[str]] = {}
    for tag, info in tags.items():
        by_version.setdefault(int(info["version"]), []).append(tag)
    out = []
    for v in versions:
        version = int(v["version"])
        names = sorted(by_version.get(version, []))
        run_ids = [t for t in names if RUN_ID_TAG.match(t)]
        ts = v["timestamp"]
        out.append(
            {
                "version": version,
                "timestamp": ts.isoformat() if hasattr(ts, "isoformat") else str(ts),
                "tags": names,
                "run_id": run_ids[0] if run_ids else None,
            }
        )
    return out


class TableReader:
    """The tables of one configured store, read through Lance datasets.

    Picklable and cheap to make: nothing is opened until a method reads.
    """

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        # The store knows the URI and storage options; it connects to LanceDB only when asked.
        self._store = StoreBase(settings)
        self.uri = self._store.uri
        self._session: Any = None

    @property
    def table(self) -> str:
        """The chunks table's name."""
        return self.settings.table

    def _path(self, name: str) -> str:
        if "://" in self.uri:
            return f"{self.uri.rstrip('/')}/{name}.lance"
        return os.path.join(self.uri, f"{name}.lance")

    def dataset(self, name: str | None = None, version: int | None = None) -> Any | None:
        """The table as a Lance dataset (at ``version``, else its latest), ``None`` when absent.

        Raises:
            StoreError: The store cannot be read (refused credentials, unreachable).
        """
        import lance

        from embedpipe.store import objectstore

        name = name or self.table
        if not self._store.exists():
            return None
        path = self._path(name)
        if "://" not in path and not os.path.isdir(path):
            return None
        if self._session is None:
            # One Lance session per reader: the datasets it opens share their index and metadata
            # caches, so repeated searches (embedpipe.open, the dashboard) read an index once,
            # not once per query (a fresh dataset per search re-read the vector index each time).
            self._session = lance.Session()
        try:
            return lance.dataset(
                path,
                version=version,
                storage_options=self._store.storage_options or None,
                session=self._session,
            )
        except Exception as e:
            if objectstore.is_s3(self.uri) and objectstore.explain(e)[1] != "other":
                raise self._store._error(f"cannot open table={name} at uri={self.uri}", e) from e
            if version is None and "not found" in str(e).lower():
                return None
            raise self._store._error(f"cannot open table={name} at uri={self.uri}", e) from e

    def require(self, name: str | None = None) -> Any:
        """The table's dataset at its latest version.

        Raises:
            TableNotFoundError: No such table.
        """
        ds = self.dataset(name)
        if ds is None:
            raise TableNotFoundError(
                f"table={name or self.table} not found in database uri={self.uri}; run `embedpipe run` first"
            )
        return ds

    def audited(self) -> bool:
        """Whether any version of the chunks table was ever checked."""
        checks = self.dataset(CHECKS_TABLE)
        if checks is None:
            return False
        return checks.to_table(columns=[C.TABLE], filter=_this_table(self.table), limit=1).num_rows > 0

    def serving_version(self, ds: Any = None) -> int | None:
        """The version the ``serving`` tag points at, or ``None`` when nothing was published."""
        ds = ds if ds is not None else self.dataset()
        if ds is None:
            return None
        info = ds.tags.list().get(SERVING_TAG)
        return int(info["version"]) if info else None

    def resolve_version(self, target: str | int | None, ds: Any = None) -> int:
        """As :meth:`Store.resolve_version <embedpipe.store.Store.resolve_version>`."""
        ds = ds if ds is not None else self.require()
        return resolve_target(
            target,
            name=self.table,
            latest=int(ds.latest_version),
            tags=ds.tags.list(),
            versions=lambda: (int(v["version"]) for v in ds.versions()),
            audited=self.audited,
        )

    def open_version(self, target: str | int | None = None) -> Any:
        """The chunks table pinned at a version (default: the served one).

        Raises:
            TableNotFoundError: No such table.
            NothingServedError: No version has passed its checks yet.
            VersionNotFoundError: No such version or tag.
        """
        ds = self.require()
        version = self.resolve_version(target, ds)
        return ds if int(ds.version) == version else ds.checkout_version(version)

    @staticmethod
    def identity(ds: Any) -> ModelIdentity:
        """The model identity the table records.

        Raises:
            ModelMismatchError: The table records no embedpipe identity.
        """
        md = {k.decode(): v.decode() for k, v in (ds.schema.metadata or {}).items()}
        identity = ModelIdentity.from_table_metadata(md)
        if identity is None:
            raise ModelMismatchError(
                f"table at {ds.uri} records no embedpipe model identity; write into a new table with "
                "--table NAME"
            )
        return identity

    @staticmethod
    def search(ds: Any, vector: Any, k: int) -> list[dict[str, Any]]:
        """Nearest chunks by cosine similarity, best first; the rows of ``Store.search``."""
        return search_hits(_vector_rows(ds, vector, k))

    def text_search(self, ds: Any, query: str, k: int) -> list[dict[str, Any]]:
        """Best chunks by BM25 over the full-text index, best first; the rows of ``Store.text_search``.

        Raises:
            IndexMissingError: The version has no full-text index.
        """
        fulltext.require_text_index(ds, "text", self.table)
        return search_hits(_text_rows(ds, query, k), "_score")

    def hybrid_search(self, ds: Any, vector: Any, query: str, k: int) -> list[dict[str, Any]]:
        """Vector and BM25 rankings fused by reciprocal rank fusion, best first; the rows of
        LanceDB's hybrid query with ``RRFReranker`` (``Store.hybrid_search``).

        Raises:
            IndexMissingError: The version has no full-text index.
        """
        fulltext.require_text_index(ds, "hybrid", self.table)
        by_row: dict[Any, dict[str, Any]] = {}
        vector_ids: list[Any] = []
        text_ids: list[Any] = []
        for ids, rows in ((vector_ids, _vector_rows(ds, vector, k)), (text_ids, _text_rows(ds, query, k))):
            for r in rows:
                ids.append(r[fulltext.ROW_ID])
                by_row.setdefault(r[fulltext.ROW_ID], r)
        fused = fulltext.rrf_fuse(vector_ids, text_ids, k)
        return search_hits([{**by_row[row], "_relevance_score": s} for row, s in fused], "_relevance_score")

    def versions(self) -> list[dict[str, Any]]:
        """Versions of the chunks table with their tags and the run that created each.

        The rows of :meth:`Store.versions <embedpipe.store.Store.versions>`.
        """
        ds = self.require()
        return version_rows(ds.tags.list(), ds.versions())

    def records(self, name: str) -> pa.Table:
        """The rows of a record table (``runs``, ``checks``) about the chunks table; empty when none.

        Raises:
            TableNotFoundError: The record table does not exist yet.
        """
        ds = self.dataset(name)
        if ds is None:
            raise TableNotFoundError(
                f"table={name} not found in database uri={self.uri}; it is written by the first "
                f"{'run' if name == RUNS_TABLE else 'check'}"
            )
        return ds.to_table(filter=_this_table(self.table))


_HIT_COLUMNS = [C.DOC_ID, C.CHUNK_ID, C.TEXT]


def _hit_rows(ds: Any, score: str, **scan: Any) -> list[dict[str, Any]]:
    """The hit columns and the ``score`` column (``_distance`` or ``_score``) of one Lance scan."""
    table = ds.to_table(
        columns=[*_HIT_COLUMNS, score], with_row_id=True, disable_scoring_autoprojection=True, **scan
    )
    return cast("list[dict[str, Any]]", table.to_pylist())


def _vector_rows(ds: Any, vector: Any, k: int) -> list[dict[str, Any]]:
    import numpy as np

    from embedpipe.store.vector_index import search_params

    q = np.asarray(vector, dtype=np.float32)
    # the version's own index search parameters (tuned to index.min_recall when it was trained)
    nearest = {"column": C.VECTOR, "q": q, "k": int(k), "metric": "cosine", **search_params(ds.metadata)}
    return _hit_rows(ds, "_distance", nearest=nearest)


def _text_rows(ds: Any, query: str, k: int) -> list[dict[str, Any]]:
    from lance.query import MatchQuery

    match = MatchQuery(fulltext.query_text(query), C.TEXT)
    return _hit_rows(ds, "_score", full_text_query=match, limit=int(k))
