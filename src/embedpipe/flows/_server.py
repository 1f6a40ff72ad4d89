"""Prefect's temporary server as the CLI leaves it: the run recorded first, then a clean stop.

Without ``PREFECT_API_URL`` Prefect starts a temporary API server in a child process and stops it
at interpreter exit. Task runs reach that server as events, which its task-run recorder writes to
the database one by one; stopping the server while the recorder is still writing the last ones
cancels that write, and the server prints ``ERROR | prefect.server.services.task_run_recorder -
Error flushing 1 events`` with about 150 lines of ``asyncio.CancelledError`` tracebacks after the
CLI's own last line. :func:`stop_temporary_server` sends this process's pending events, waits
until the server has recorded the runs' task runs (bounded), then stops it itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

_COUNTED_STATES = ("PENDING", "SCHEDULED", "RUNNING")
"""A task run leaves each of these exactly once per recorded event that moves it on."""


def _temporary_server() -> Any:
    """Prefect's temporary server when this process started it (``None`` with ``PREFECT_API_URL``)."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer._instances.get(None)
    return server if server is not None and server.running else None


def _drain_client_events(timeout_s: float) -> None:
    """Send what this process's event and log workers still hold (they would at exit, too late)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (EventsWorker, APILogWorker):
        try:
            worker.drain_all(timeout=timeout_s)
        except RuntimeError as e:  # a worker that never started
            log.debug("nothing to drain in %s: %s", worker.__name__, e)


def _signature(client: Any, api_url: str, flow_run_ids: list[str]) -> tuple[int, ...]:
    """How many task runs of the flow runs the server holds, in all and per unfinished state."""
    base = {"flow_runs": {"id": {"any_": flow_run_ids}}}
    counts = [client.post(f"{api_url}/task_runs/count", json=base).json()]
    for state in _COUNTED_STATES:
        body = base | {"task_runs": {"state": {"type": {"any_": [state]}}}}
        counts.append(client.post(f"{api_url}/task_runs/count", json=body).json())
    return tuple(int(c) for c in counts)


def wait_recorded(
    api_url: str, flow_run_ids: Iterable[str], quiet_s: float = 0.6, timeout_s: float = 20.0
) -> bool:
    """Wait until the server's record of the flow runs' task runs stops changing.

    The recorder takes events in the order they were sent, one at a time, so once every event of
    this process was sent, a record that stays the same for ``quiet_s`` is complete.

    Args:
        api_url: The server's API URL.
        flow_run_ids: The flow runs this process ran.
        quiet_s: How long the record must stay unchanged.
        timeout_s: The longest wait.

    Returns:
        True when the record settled, False when it still changed after ``timeout_s`` (or the
        server did not answer).
    """
    import httpx

    ids = [str(i) for i in flow_run_ids]
    if not ids:
        return True
    deadline = time.monotonic() + timeout_s
    last: tuple[int, ...] | None = None
    since = time.monotonic()
    try:
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                sig = _signature(client, api_url, ids)
                now = time.monotonic()
                if sig != last:
                    last, since = sig, now
                elif now - since >= quiet_s:
                    return True
                time.sleep(0.1)
    except (httpx.HTTPError, ValueError) as e:
        log.debug("could not read the temporary server's task runs: %s", e)
    return False


def stop_temporary_server(flow_run_ids: Iterable[str], timeout_s: float = 20.0) -> None:
    """Stop Prefect's temporary server, if this process started one, once it recorded the runs.

    Args:
        flow_run_ids: The flow runs this process ran (their task runs are waited for).
        timeout_s: The longest wait for the server to record them.
    """
    server = _temporary_server()
    if server is None:
        return
    _drain_client_events(timeout_s)
    if not wait_recorded(server.api_url, flow_run_ids, timeout_s=timeout_s):
        log.debug("the temporary Prefect server still records task runs; stopping it anyway")
    server.stop()
