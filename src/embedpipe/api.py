"""The public Python API: run embedpipe from your own code, flows and notebooks.

Everything public is re-exported by :mod:`embedpipe` and listed in its ``__all__``; the rest of
the package is private and may change.

- :func:`sync`, :func:`reindex` and :func:`check` run embedpipe's Prefect flows. Called inside
  your own ``@flow`` they run as its subflows (they appear under it in the Prefect UI); called
  anywhere else they run as flows of their own, exactly as ``embedpipe run`` does.
- :func:`open` returns a :class:`Table` handle for reading: search, versions, the served version,
  and the run and check records as Arrow tables. It never imports or starts Prefect, and loads
  neither LanceDB nor torch where the table's model has a checked ONNX export.

Settings are chosen the same way everywhere: an explicit ``settings=Settings(...)`` (or else the
environment and ``embedpipe.toml``, as the command line reads them), then the keyword overrides on
top: the shortcuts ``db``, ``table`` and ``model``, and whole groups as mappings, for example
``chunk={"tokens": 128}`` or ``checks={"enabled": False}`` (the groups and keys of
:class:`~embedpipe.config.Settings`, as in ``embedpipe.toml``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from embedpipe.errors import ConfigError, RunFailed

if TYPE_CHECKING:
    import pyarrow as pa

    from embedpipe.config import Settings
    from embedpipe.schemas import CheckReport, RunSummary
    from embedpipe.search import Searcher

PathLike = str | os.PathLike[str]

_GROUPS = (
    "source",
    "chunk",
    "model",
    "store",
    "checks",
    "retention",
    "runtime",
    "index",
)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def make_settings(
    settings: Settings | None = None,
    *,
    db: PathLike | None = None,
    table: str | None = None,
    model: str | Mapping[str, Any] | None = None,
    config: PathLike | None = None,
    **groups: Mapping[str, Any],
) -> Settings:
    """Settings for the API's calls: ``settings`` (or the environment), with overrides on top.

    Args:
        settings: Complete settings to start from; when omitted they are loaded as the command
            line loads them (``EMBEDPIPE_*`` variables, ``config`` or ``./embedpipe.toml``, defaults).
        db: The database URI (``store.uri``): a folder or an ``s3://`` URI.
        table: The chunks table's name (``store.table``).
        model: The model (``model.name``): a sentence-transformers id or a local folder; or the
            whole ``model`` group as a mapping (``model={"name": ..., "device": "cpu"}``).
        config: A TOML settings file to read instead of ``./embedpipe.toml``.
        **groups: Settings groups as mappings, e.g. ``chunk={"tokens": 128}``.

    Returns:
        The validated settings.

    Raises:
        ConfigError: An unknown group or key, or an invalid value (the message names it).
    """
    from embedpipe.config import get_settings

    unknown = sorted(set(groups) - set(_GROUPS))
    if unknown:
        raise ConfigError(
            f"unknown settings group {', '.join(unknown)}; expected db=, table=, model=, settings= or "
            f"one of {', '.join(_GROUPS)} as a mapping"
        )
    over: dict[str, Any] = {g: dict(v) for g, v in groups.items()}
    if isinstance(model, Mapping):
        over["model"] = dict(model)
        model = None
    shortcuts = {("store", "uri"): db, ("store", "table"): table, ("model", "name"): model}
    for (group, key), value in shortcuts.items():
        if value is not None:
            over.setdefault(group, {})[key] = os.fspath(value) if key == "uri" else value
    if settings is None:
        return get_settings(over, config)
    # Start from every value of the given settings (secrets included), then the overrides.
    base = settings.model_dump()
    return get_settings(_merge(base, over), config)


def _result(state: Any, raise_on_failure: bool) -> Any:
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    if state.is_failed() and raise_on_failure:
        code = getattr(result, "exit_code", None) or (7 if getattr(result, "gate", None) == "failed" else 1)
        raise RunFailed(f"{getattr(result, 'message', None) or state.message}", result, int(code))
    return result


def _run(flow: Any, settings: Settings, call: Any, raise_on_failure: bool) -> Any:
    """Run one of embedpipe's flows with the runtime its settings ask for (Dask or this process)."""
    from embedpipe.flows import flow_runtime

    with flow_runtime(settings) as rt:
        runnable = flow if rt.task_runner is None else flow.with_options(task_runner=rt.task_runner)
        return _result(call(runnable, rt.settings), raise_on_failure)


def sync(
    sources: PathLike | Sequence[PathLike],
    *,
    settings: Settings | None = None,
    db: PathLike | None = None,
    table: str | None = None,
    model: str | None = None,
    config: PathLike | None = None,
    delete_missing: bool = True,
    raise_on_failure: bool = True,
    **groups: Mapping[str, Any],
) -> RunSummary:
    """Sync documents into the chunks table as at most one new version (``embedpipe run``).

    Only changed documents are read and embedded; a run that changes nothing writes nothing. A
    new version is checked and served when its gates pass. Inside a Prefect flow this runs as a
    subflow.

    Args:
        sources: Folders or files (local paths or ``s3://`` URIs) to read.
        settings: Settings to start from (see :func:`make_settings`).
        db: The database URI (``store.uri``).
        table: The chunks table (``store.table``).
        model: The model (``model.name``); a table keeps the model it was built with.
        config: A TOML settings file.
        delete_missing: Remove the chunks of documents that disappeared from a scanned source.
        raise_on_failure: Raise :class:`~embedpipe.errors.RunFailed` when the run fails; else
            return its summary (``status="failed"``) either way.
        **groups: Settings groups as mappings, e.g. ``chunk={"tokens": 128}``.

    Returns:
        The run summary (what was read, embedded, written and served).

    Raises:
        ConfigError: Bad settings (before anything runs).
        RunFailed: The run failed (its summary is ``.result``); the table is unchanged.
    """
    from embedpipe.flows.sync import sync as sync_flow

    s = make_settings(settings, db=db, table=table, model=model, config=config, **groups)
    paths = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    names = [os.fspath(p) for p in paths]
    return _run(  # type: ignore[no-any-return]
        sync_flow,
        s,
        lambda f, rs: f(names, rs, delete_missing=delete_missing, return_state=True),
        raise_on_failure,
    )


def reindex(
    *,
    sources: Sequence[PathLike] | None = None,
    settings: Settings | None = None,
    db: PathLike | None = None,
    table: str | None = None,
    model: str | None = None,
    config: PathLike | None = None,
    raise_on_failure: bool = True,
    **groups: Mapping[str, Any],
) -> RunSummary:
    """Rebuild the table with the configured model and chunking, then switch to it atomically.

    Args:
        sources: Re-read these sources instead of reusing the stored chunk texts.
        settings: Settings to start from (see :func:`make_settings`).
        db: The database URI (``store.uri``).
        table: The chunks table (``store.table``).
        model: The model to rebuild with (``model.name``).
        config: A TOML settings file.
        raise_on_failure: Raise :class:`~embedpipe.errors.RunFailed` when the run fails.
        **groups: Settings groups as mappings, e.g. ``model={"backend": "onnx"}``.

    Returns:
        The run summary.

    Raises:
        ConfigError: Bad settings.
        RunFailed: The rebuild failed (its summary is ``.result``); the served table is unchanged.
    """
    from embedpipe.flows.reindex import reindex as reindex_flow

    s = make_settings(settings, db=db, table=table, model=model, config=config, **groups)
    names = [os.fspath(p) for p in sources] if sources is not None else None
    return _run(  # type: ignore[no-any-return]
        reindex_flow, s, lambda f, rs: f(rs, names, return_state=True), raise_on_failure
    )


def check(
    *,
    version: str | int = "latest",
    baseline: str | None = None,
    publish: bool = False,
    settings: Settings | None = None,
    db: PathLike | None = None,
    table: str | None = None,
    config: PathLike | None = None,
    raise_on_failure: bool = True,
    **groups: Mapping[str, Any],
) -> CheckReport:
    """Run the drift and quality checks on one version (``embedpipe check``).

    Args:
        version: ``latest``, ``serving``, a version number or a tag.
        baseline: Compare with this tag or version instead of the served one.
        publish: Serve the version when its gates pass.
        settings: Settings to start from (see :func:`make_settings`).
        db: The database URI (``store.uri``).
        table: The chunks table (``store.table``).
        config: A TOML settings file.
        raise_on_failure: Raise :class:`~embedpipe.errors.RunFailed` when a gate fails.
        **groups: Settings groups as mappings, e.g. ``checks={"golden": ["golden.jsonl"]}``.

    Returns:
        The check report.

    Raises:
        ConfigError: Bad settings, a check set file that cannot be read, or a baseline that names
            nothing (before the flow starts).
        TableNotFoundError: No such table.
        VersionNotFoundError: No such version or tag.
        RunFailed: A gate failed (the report is ``.result``); nothing was published.
    """
    from embedpipe.checks.suite.context import validate_setup
    from embedpipe.flows.check import check as check_flow
    from embedpipe.store import Store

    model = groups.pop("model", None)
    s = make_settings(settings, db=db, table=table, model=model, config=config, **groups)
    # Usage errors are said plainly before the flow starts, as `embedpipe check` does.
    store = Store(s.store)
    validate_setup(store, s.checks, store.resolve_version(str(version)), baseline)
    state = check_flow(s, version=str(version), baseline=baseline, publish=publish, return_state=True)
    return _result(state, raise_on_failure)  # type: ignore[no-any-return]


class Table:
    """A read handle on one chunks table: search, versions and records, without Prefect.

    Made by :func:`open`. Reads go to the table's files each time (a run elsewhere is seen by the
    next call); the query model is loaded on the first search and kept.
    """

    def __init__(self, settings: Settings) -> None:
        from embedpipe.store.reader import TableReader

        self.settings = settings
        self._reader = TableReader(settings.store)
        self._searcher: Searcher | None = None

    def __repr__(self) -> str:
        return f"embedpipe.Table(db={self.db!r}, table={self.name!r})"

    @property
    def name(self) -> str:
        """The table's name."""
        return self.settings.store.table

    @property
    def db(self) -> str:
        """The database URI."""
        return self._reader.uri

    def search(
        self, query: str, k: int = 5, *, mode: str | None = None, version: str | int = "serving"
    ) -> list[dict[str, Any]]:
        """The ``k`` best chunks for ``query``, best first (as ``embedpipe search --json``).

        The query is embedded with the table's own model (ONNX Runtime where its export passed
        the query check; the first search without one makes it, for later searches). The query is
        plain words in every mode: quotes, parentheses, ``AND``, ``*`` and the like are not syntax.

        Args:
            query: The text to search for.
            k: How many results.
            mode: ``"vector"`` (``score``: cosine similarity of embeddings), ``"text"`` (BM25 over
                the full-text index; ``score``: the BM25 score) or ``"hybrid"`` (both rankings
                fused by reciprocal rank fusion; ``score``: the RRF score); ``None``: the
                configured ``index.search_mode`` (vector on a version without a full-text index).
            version: ``serving`` (the version that passed its checks), ``latest``, a number or a tag.

        Returns:
            One dict per chunk with ``doc_id``, ``chunk_id``, ``text`` and ``score``.

        Raises:
            ConfigError: An unsupported mode, ``k`` below 1, or an empty query.
            TableNotFoundError: No such table.
            NothingServedError: No version has passed its checks yet (pass ``version="latest"``).
            VersionNotFoundError: No such version or tag.
            IndexMissingError: ``text`` or ``hybrid`` asked for on a version without a full-text
                index (``embedpipe index`` builds it).
        """
        from embedpipe.search import Searcher, check_mode

        if mode is not None:
            check_mode(mode)
        if k < 1:
            raise ConfigError(f"k={k}: expected a positive number of results")
        if not query.strip("\x00 \t\n\r\f\v"):
            raise ConfigError("empty query: pass the text to search for")
        if self._searcher is None:
            self._searcher = Searcher(self.settings)
        hits = self._searcher.search(query, k, version, mode)
        if self._searcher.can_prepare:
            self._searcher.prepare()
        return hits

    @property
    def served_version(self) -> int | None:
        """The version searches read by default: the served one (the latest for a table that was
        never checked); ``None`` while no version has passed its checks."""
        from embedpipe.errors import NothingServedError

        try:
            return self._reader.resolve_version("serving")
        except NothingServedError:
            return None

    def versions(self) -> pa.Table:
        """The table's versions: ``version``, ``timestamp``, ``tags`` and ``run_id`` (as ``embedpipe
        versions --json``, one row each, oldest first).

        Raises:
            TableNotFoundError: No such table.
        """
        from datetime import datetime

        import pyarrow as pa

        rows = self._reader.versions()
        schema = pa.schema(
            [
                pa.field("version", pa.int64(), nullable=False),
                pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
                pa.field("tags", pa.list_(pa.string()), nullable=False),
                pa.field("run_id", pa.string()),
            ]
        )
        for r in rows:
            ts = datetime.fromisoformat(r["timestamp"])
            r["timestamp"] = ts if ts.tzinfo else ts.astimezone()
        return pa.Table.from_pylist(rows, schema=schema)

    def runs(self) -> pa.Table:
        """One row per run that wrote (or tried to write) this table: the ``runs`` records."""
        from embedpipe.schemas import RUNS_TABLE, runs_schema

        return self._records(RUNS_TABLE, runs_schema())

    def checks(self) -> pa.Table:
        """One row per check of a version of this table: the ``checks`` records."""
        from embedpipe.schemas import CHECKS_TABLE, checks_schema

        return self._records(CHECKS_TABLE, checks_schema())

    def _records(self, name: str, schema: pa.Schema) -> pa.Table:
        if self._reader.dataset(name) is None:
            return schema.empty_table()
        return self._reader.records(name)


def open(  # the package's one door for reading, as lancedb.connect is (shadows the builtin here)
    db: PathLike | None = None,
    table: str | None = None,
    *,
    settings: Settings | None = None,
    config: PathLike | None = None,
    **groups: Mapping[str, Any],
) -> Table:
    """A read handle on a chunks table, usable in a notebook or a service (Prefect never starts).

    Args:
        db: The database URI (``store.uri``); default from the settings (``./.embedpipe/db``).
        table: The chunks table (``store.table``; default ``chunks``).
        settings: Settings to start from (see :func:`make_settings`).
        config: A TOML settings file.
        **groups: Settings groups as mappings, e.g. ``store={"storage_options": {...}}``.

    Returns:
        The handle; nothing is read until it is used.

    Raises:
        ConfigError: Bad settings.
        TableNotFoundError: The table does not exist.
    """
    model = groups.pop("model", None)
    s = make_settings(settings, db=db, table=table, model=model, config=config, **groups)
    handle = Table(s)
    handle._reader.require()
    return handle
