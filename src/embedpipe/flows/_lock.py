"""The table run lock as flows take it: a lock file, or a Prefect global concurrency limit.

``store.lock`` picks the backend (``auto``: a lock file for a local database folder, a Prefect
global concurrency limit named after the table for an object-store URI). The waiting, the holder
record and the timeout error are in :mod:`embedpipe.store.lock`; this module adds the backend
that talks to the Prefect API, which only flows may import.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any
from uuid import UUID

from embedpipe.config import StoreSettings
from embedpipe.errors import StoreError
from embedpipe.store.lock import FileTableLock, LockHolder, hold, limit_name, lock_kind

log = logging.getLogger(__name__)

LEASE_S = 120.0
"""Lease of a Prefect slot, renewed in the background while the run lives: a holder that dies
without releasing blocks the table for at most about this long."""


def _flow_run_holder(run_id: str) -> Any:
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.runtime import flow_run

    if not flow_run.get_id():
        return None
    return ConcurrencyLeaseHolder(type="flow_run", id=UUID(str(flow_run.get_id())))


class PrefectTableLock:
    """One slot of a Prefect global concurrency limit of size 1 named after the table.

    Writers on different machines serialize through the Prefect server they share (the
    ``PREFECT_API_URL`` of every writer must be the same server). The limit is created on first use;
    the slot is a lease that Prefect renews while the run lives and expires after :data:`LEASE_S`
    when its holder dies.
    """

    def __init__(self, settings: StoreSettings, run_id: str) -> None:
        self.name = limit_name(settings)
        self.description = f"Prefect global concurrency limit {self.name}"
        self._holder = _flow_run_holder(run_id)
        self._cm: AbstractContextManager[None] | None = None
        self._ensure_limit()

    def _ensure_limit(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
        from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

        try:
            with get_client(sync_client=True) as client:
                try:
                    existing = client.read_global_concurrency_limit_by_name(self.name)
                except ObjectNotFound:
                    # ObjectAlreadyExists: created meanwhile by a concurrent run, which is fine.
                    with suppress(ObjectAlreadyExists):
                        client.create_global_concurrency_limit(
                            GlobalConcurrencyLimitCreate(name=self.name, limit=1)
                        )
                    return
                if existing.limit != 1 or not existing.active:
                    # Anything but one active slot would let two writers in at once.
                    client.update_global_concurrency_limit(
                        self.name, GlobalConcurrencyLimitUpdate(limit=1, active=True)
                    )
        except Exception as e:  # httpx and server errors: the lock cannot be taken at all
            raise StoreError(
                f"cannot set up the table lock {self.description} on the Prefect API: "
                f"{type(e).__name__}: {e}; check PREFECT_API_URL, or set store.lock=file (one machine) "
                "or store.lock=none (a single writer)"
            ) from e

    def _enter(self, timeout_s: float | None, max_retries: int | None) -> bool:
        from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
        from prefect.concurrency.sync import concurrency

        cm = concurrency(
            self.name,
            occupy=1,
            timeout_seconds=timeout_s,
            max_retries=max_retries,
            lease_duration=LEASE_S,
            strict=True,
            holder=self._holder,
            # A renewal blip must not kill a run in the middle of its commit; were the lease really
            # lost, the commit's own head check still refuses a stale write.
            raise_on_lease_renewal_failure=False,
        )
        try:
            cm.__enter__()
        except TimeoutError:
            return False
        except ConcurrencySlotAcquisitionError as e:
            response = getattr(e.__cause__, "response", None)
            if getattr(response, "status_code", None) == 423:  # locked: the slot is taken
                return False
            raise StoreError(f"cannot take the table lock {self.description}: {e}") from e
        self._cm = cm
        return True

    def try_acquire(self) -> bool:
        return self._enter(None, 0)

    def acquire(self, timeout_s: float) -> bool:
        return self._enter(max(timeout_s, 0.001), None)

    def release(self) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(None, None, None)


@contextmanager
def table_lock(
    settings: StoreSettings, run_id: str, flow: str, logger: Any = None
) -> Iterator[LockHolder | None]:
    """Hold the run lock of ``settings.table`` for the block (nothing with ``store.lock=none``).

    Raises:
        TableBusyError: Another run held it for longer than ``store.lock_timeout_s``.
        StoreError: The lock itself cannot be taken (lock folder not writable, Prefect API down).
    """
    kind = lock_kind(settings)
    if kind == "none":
        yield None
        return
    backend: FileTableLock | PrefectTableLock
    if kind == "file":
        try:
            backend = FileTableLock(settings)
        except OSError as e:
            raise StoreError(
                f"cannot create the lock file of table={settings.table} under uri={settings.uri}: {e}"
            ) from e
    else:
        from prefect.settings import get_current_settings

        if not get_current_settings().api.url:
            (logger or log).info(
                "stage=lock table=%s no PREFECT_API_URL: the concurrency limit lives in this machine's "
                "temporary Prefect server and does not serialize writers on other machines",
                settings.table,
            )
        backend = PrefectTableLock(settings, run_id)
    with hold(backend, settings, run_id, flow, logger, on_dead_holder=_drop_staging_of(settings)) as me:
        yield me


def _drop_staging_of(settings: StoreSettings) -> Any:
    """Remove the staged files of a run that died holding the lock (not kept until the TTL sweep),
    keeping the vectors it had embedded in the vector cache first, so the next run does not pay
    for them again."""
    from embedpipe.store import Store

    def drop(dead: LockHolder) -> None:
        store = Store(settings)
        store.cache.keep_staged(dead.run_id)
        store.drop_staging(dead.run_id)

    return drop
