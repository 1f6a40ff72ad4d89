"""The embedpipe exception hierarchy.

Every error raised on purpose by embedpipe derives from :class:`EmbedpipeError`. Each class says
whether it is *transient* (worth a retry: a flaky disk or network) or *terminal* (retrying cannot
help: bad configuration, a model mismatch). Prefect tasks retry only transient errors.
"""

from __future__ import annotations

from typing import Any


class EmbedpipeError(Exception):
    """Base class of every embedpipe error."""

    transient: bool = False
    exit_code: int = 1


class ConfigError(EmbedpipeError):
    """A setting or flag has a wrong value; raised before any work starts."""

    exit_code = 2


class SourceError(EmbedpipeError):
    """A source location cannot be scanned at all (missing folder, unsupported scheme)."""

    exit_code = 2


class ModelError(EmbedpipeError):
    """The embedding model cannot be resolved or loaded."""

    exit_code = 3


class StoreError(EmbedpipeError):
    """The LanceDB store failed in a way a retry may fix (I/O, commit conflict)."""

    transient = True
    exit_code = 4


class StoreAccessError(StoreError):
    """The object store refused access (wrong or missing credentials) or the bucket does not exist;
    a retry cannot help."""

    transient = False


class TableNotFoundError(EmbedpipeError):
    """The requested table does not exist in the database."""

    exit_code = 4


class TableMismatchError(EmbedpipeError):
    """The table was built with another configuration than the one asked for; reindex instead."""

    exit_code = 5


class ModelMismatchError(TableMismatchError):
    """The table was built with another model or dimension than the one configured."""


class ChunkingMismatchError(TableMismatchError):
    """The table was built with other chunking settings or another tokenizer."""


class VersionNotFoundError(EmbedpipeError):
    """A rollback target names no version or tag of the table."""

    exit_code = 4


class IndexMissingError(EmbedpipeError):
    """A search mode needs an index the table version lacks (text and hybrid need the full-text
    index); ``embedpipe index`` builds it."""

    exit_code = 4


class NothingServedError(VersionNotFoundError):
    """The table was checked but no version of it has passed its checks yet: nothing is served."""


class RejectRatioExceeded(EmbedpipeError):
    """More input was rejected than ``source.max_reject_ratio`` allows; nothing was committed."""

    exit_code = 6


class GateFailed(EmbedpipeError):
    """A new version failed a check of severity ``fail``: it was written but is not served."""

    exit_code = 7


class CheckError(EmbedpipeError):
    """A check could not be measured (for example a golden set naming documents the table lacks)."""

    exit_code = 7


class ConcurrentRunError(EmbedpipeError):
    """Another run wrote, or is writing, the same table; this run wrote nothing."""

    exit_code = 8


class TableBusyError(ConcurrentRunError):
    """Another run held the table's run lock for longer than ``store.lock_timeout_s``."""


class StaleReadError(ConcurrentRunError):
    """The table moved on since the run read it: its changes were computed against an old version."""


class ServeError(EmbedpipeError):
    """The Prefect server a command needs could not be started or reached (``embedpipe serve``'s,
    or the temporary one a run starts when ``PREFECT_API_URL`` is unset)."""

    exit_code = 9


class ClusterError(EmbedpipeError):
    """The Dask cluster running a run's shards failed (a worker died, the scheduler went away);
    nothing was committed."""

    exit_code = 1


class RunFailed(EmbedpipeError):
    """A run or check called through the Python API failed; the table is as it was before it.

    Attributes:
        result: The run summary (:class:`~embedpipe.schemas.RunSummary`) or check report
            (:class:`~embedpipe.schemas.CheckReport`) the failed flow returned.
        exit_code: The exit status ``embedpipe`` would have given for it.
    """

    def __init__(self, message: str, result: Any, exit_code: int) -> None:
        super().__init__(message)
        self.result = result
        self.exit_code = exit_code


class RejectedInput(EmbedpipeError):
    """One file or record cannot be used; it is quarantined with this message as the reason.

    Raised inside the parsers (:mod:`embedpipe.sources.parse`) and caught by the ingestion loop,
    never by users.
    """


def is_transient(exc: BaseException | None) -> bool:
    """Tell whether an exception is worth retrying.

    Args:
        exc: The exception a task raised, or ``None``.

    Returns:
        True for embedpipe errors marked transient and for ``OSError``/``TimeoutError`` raised by
        storage libraries; False otherwise.
    """
    if exc is None:
        return False
    if isinstance(exc, EmbedpipeError):
        return exc.transient
    return isinstance(exc, (TimeoutError, ConnectionError))
