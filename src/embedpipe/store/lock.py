"""The per-table run lock: one writing run per table at a time (the Prefect-free parts).

A run that writes a table (sync, reindex, a publishing check, rollback, compact) holds the table's
lock from reading the table's state through its commit, audit and publish, so two runs never
compute their changes against the same version. The loser waits up to ``store.lock_timeout_s``,
then fails with :class:`~embedpipe.errors.TableBusyError` having written nothing.

Backends: :class:`FileTableLock` (``filelock`` on a file in the database folder: every process on
one machine) here, and a Prefect global concurrency limit (writers on any machine sharing a Prefect
server) in :mod:`embedpipe.flows._lock`. Either way the holder records who it is in a small JSON
sidecar next to the database, so a waiting run can say who it waits for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import pyarrow.fs as pafs

from embedpipe.config import StoreSettings
from embedpipe.errors import TableBusyError
from embedpipe.store import objectstore

log = logging.getLogger(__name__)

LOCK_DIR = "_embedpipe_locks"


def is_remote(uri: str) -> bool:
    """Whether the database URI is an object store (or any URL) rather than a local folder."""
    return "://" in uri and not uri.startswith("file://")


def lock_kind(settings: StoreSettings) -> str:
    """The lock backend a store uses: ``file``, ``prefect`` or ``none`` (``auto`` resolved).

    ``auto`` is a lock file for a local folder (no server needed) and a Prefect global concurrency
    limit for an object store, whose writers may run on different machines.
    """
    if settings.lock != "auto":
        return settings.lock
    return "prefect" if is_remote(settings.uri) else "file"


def database_uri(settings: StoreSettings) -> str:
    """The database URI as the store opens it (local paths made absolute)."""
    return settings.uri if "://" in settings.uri else os.path.abspath(settings.uri)


def limit_name(settings: StoreSettings) -> str:
    """The Prefect global concurrency limit of a table: ``embedpipe-table-<table>-<uri hash>``.

    The URI hash keeps two databases with a table of the same name apart.
    """
    digest = hashlib.sha256(database_uri(settings).rstrip("/").encode()).hexdigest()[:10]
    return f"embedpipe-table-{settings.table}-{digest}"


@dataclass(frozen=True)
class LockHolder:
    """Who holds a table's lock (recorded by the holder; informational only)."""

    run_id: str
    flow: str
    host: str
    pid: int
    since: str

    @classmethod
    def here(cls, run_id: str, flow: str) -> LockHolder:
        """This process, now."""
        return cls(
            run_id=run_id,
            flow=flow,
            host=socket.gethostname(),
            pid=os.getpid(),
            since=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def describe(self) -> str:
        return f"run={self.run_id} flow={self.flow} host={self.host} pid={self.pid} since {self.since}"

    def is_dead_here(self) -> bool:
        """Whether this holder ran on this host and its process is gone (it died holding the lock:
        a holder that ends clears its record). A process of another host is never declared dead."""
        if self.host != socket.gethostname() or self.pid == os.getpid() or self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, under another user
            return False
        return False


class HolderRecord:
    """The JSON sidecar ``<db>/_embedpipe_locks/<table>.holder.json`` naming the lock's holder.

    Best effort: the lock itself never depends on it, and a record that cannot be written or read
    only makes the waiting message less specific.
    """

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.uri = f"{database_uri(settings).rstrip('/')}/{LOCK_DIR}/{settings.table}.holder.json"

    def _fs(self) -> tuple[pafs.FileSystem, str]:
        if "://" not in self.uri or self.uri.startswith("file://"):
            return pafs.LocalFileSystem(), self.uri.removeprefix("file://")
        # the store's own object-store configuration (endpoint, credentials)
        return objectstore.filesystem(self.uri, self.settings.s3)

    def write(self, holder: LockHolder) -> None:
        try:
            fs, path = self._fs()
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with fs.open_output_stream(path) as out:
                out.write(json.dumps(asdict(holder)).encode())
        except (OSError, ValueError) as e:
            log.debug("could not record the lock holder at %s: %s", self.uri, e)

    def read(self) -> LockHolder | None:
        try:
            fs, path = self._fs()
            with fs.open_input_stream(path) as f:
                return LockHolder(**json.loads(f.read()))
        except (OSError, ValueError, TypeError) as e:
            log.debug("no readable lock holder record at %s: %s", self.uri, e)
            return None

    def clear(self) -> None:
        try:
            fs, path = self._fs()
            fs.delete_file(path)
        except (OSError, ValueError) as e:
            log.debug("lock holder record already gone at %s: %s", self.uri, e)


class LockBackend(Protocol):
    """What :func:`hold` needs from a lock: a non-blocking try, a bounded wait, a release."""

    description: str

    def try_acquire(self) -> bool: ...

    def acquire(self, timeout_s: float) -> bool: ...

    def release(self) -> None: ...


class FileTableLock:
    """An OS file lock (``flock``) on ``<db>/_embedpipe_locks/<table>.lock``.

    It serializes every process and thread on the machine (each instance opens its own file
    descriptor), needs no server, and is released by the OS when its holder dies, even by SIGKILL.
    It does not work across machines, nor on network filesystems without working ``flock``.
    """

    def __init__(self, settings: StoreSettings) -> None:
        import filelock

        root = database_uri(settings).removeprefix("file://")
        os.makedirs(os.path.join(root, LOCK_DIR), exist_ok=True)
        self.path = os.path.join(root, LOCK_DIR, f"{settings.table}.lock")
        self.description = f"lock file {self.path}"
        self._timeout = filelock.Timeout
        # thread_local=False: the flow may release from another thread than the one that acquired.
        self._lock = filelock.FileLock(self.path, thread_local=False, is_singleton=False)

    def try_acquire(self) -> bool:
        try:
            self._lock.acquire(blocking=False)
        except self._timeout:
            return False
        return True

    def acquire(self, timeout_s: float) -> bool:
        try:
            self._lock.acquire(timeout=max(timeout_s, 0.0), poll_interval=0.2)
        except self._timeout:
            return False
        return True

    def release(self) -> None:
        self._lock.release()


def _live(holder: LockHolder | None) -> LockHolder | None:
    """A recorded holder, unless it provably died (its stale record names no one)."""
    return None if holder is None or holder.is_dead_here() else holder


def busy_message(
    settings: StoreSettings, holder: LockHolder | None, waited_s: float, how: str, run_id: str
) -> str:
    """The one-line error of a run that gave up waiting for the table's lock."""
    who = holder.describe() if holder is not None else "another run (holder not recorded)"
    return (
        f"table={settings.table} at uri={database_uri(settings)} is locked by {who}; this run "
        f"(run={run_id}) waited {waited_s:.0f}s (store.lock_timeout_s={settings.lock_timeout_s:g}, "
        f"{how}) and wrote nothing. Wait for that run to finish and run again, or raise "
        "store.lock_timeout_s (EMBEDPIPE_STORE__LOCK_TIMEOUT_S)"
    )


@contextmanager
def hold(
    backend: LockBackend,
    settings: StoreSettings,
    run_id: str,
    flow: str,
    logger: Any = None,
    on_dead_holder: Callable[[LockHolder], None] | None = None,
) -> Iterator[LockHolder]:
    """Hold the table's lock for the block; wait for it first when another run holds it.

    Logs one INFO line when it has to wait (naming the holder) and one when it got the lock. A holder
    record left by a run that died holding the lock (SIGKILL) is replaced, and when that run's
    process is provably gone (:meth:`LockHolder.is_dead_here`) ``on_dead_holder`` cleans up after it.

    Raises:
        TableBusyError: Not acquired within ``store.lock_timeout_s``.
    """
    logger = logger or log
    record = HolderRecord(settings)
    me = LockHolder.here(run_id, flow)
    started = time.monotonic()
    if not backend.try_acquire():
        holder = _live(record.read())
        timeout = settings.lock_timeout_s
        if timeout > 0:
            logger.info(
                "stage=lock table=%s waiting up to %gs for %s held by %s",
                settings.table,
                timeout,
                backend.description,
                holder.describe() if holder else "another run",
            )
        if timeout <= 0 or not backend.acquire(timeout - (time.monotonic() - started)):
            waited = time.monotonic() - started
            raise TableBusyError(
                busy_message(settings, _live(record.read()) or holder, waited, backend.description, run_id)
            )
        logger.info("stage=lock table=%s acquired after %.1fs", settings.table, time.monotonic() - started)
    try:
        left = record.read()
        if left is not None and left.run_id != run_id and left.is_dead_here():
            logger.info(
                "stage=lock table=%s removing what %s left: it died holding the lock",
                settings.table,
                left.describe(),
            )
            if on_dead_holder is not None:
                on_dead_holder(left)
        record.write(me)
        yield me
    finally:
        record.clear()
        backend.release()
