"""Prefect's temporary server as the CLI leaves it: the run recorded first, then a clean stop.

Without ``PREFECT_API_URL`` Prefect starts a temporary API server in a child process and stops it
at interpreter exit. Task runs reach that server as events, which its task-run recorder writes to
the database one by one; stopping the server while the recorder is still writing the last ones
cancels that write, and the server prints ``ERROR | prefect.server.services.task_run_recorder -
Error flushing 1 events`` with about 150 lines of ``asyncio.CancelledError`` tracebacks after the
CLI's own last line. :func:`stop_temporary_server` sends this process's pending events, waits
until the server has recorded the runs' task runs (bounded), then stops it itself.

Prefect starts that server on the first API call, after the flow's modules were imported, and
imports its whole server package into the client process only to spawn it. The CLI instead starts
it itself as early as Prefect's settings allow (:func:`start_early`), with Prefect's own command,
environment and database, so that the server boots on the other core while the flow's modules
import, and points this process at it (:func:`served_by`), as Prefect's test harness does.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from embedpipe.errors import ServeError

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


_QUIET_SERVICES = {
    # Services of Prefect's temporary server that add nothing to a server living for one command:
    # automations (triggers) and the events vacuum. They compete with the run for the CPU while
    # it boots. The task-run recorder and event persister, which record the run, stay on.
    # Either can be switched back on through the environment.
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "false",
}


class EarlyServer:
    """Prefect's temporary API server, spawned by the CLI the way Prefect spawns it."""

    def __init__(self) -> None:
        import prefect
        from prefect.settings import get_current_settings

        self._app_dir = str(prefect.__module_path__.parent)
        # what Prefect's SubprocessASGIServer gives its server: this environment, the settings
        # made here, no UI, and the ephemeral flags (services that record runs, no telemetry)
        self._env = {
            **_QUIET_SERVICES,
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True),
        }
        self.port = 0
        self.process: subprocess.Popen[Any] | None = None
        self._spawn()
        atexit.register(self.stop)  # whatever happens before served_by, the server never outlives us

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _spawn(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                self._app_dir,
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            env=self._env,
        )

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until the server answers ``/health``.

        Raises:
            RuntimeError: It exited or did not answer within ``timeout_s`` (as Prefect's own start).
        """
        import httpx

        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                code = self.process.poll()
                if code == 3:  # uvicorn: the port was taken meanwhile
                    self._spawn()
                    continue
                if code is not None:
                    raise RuntimeError(f"Prefect's temporary API server exited with code {code}")
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Timed out after {timeout_s:.0f}s waiting for Prefect's temporary API server")

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def start_early() -> EarlyServer | None:
    """Start Prefect's temporary server now when a flow would start it later, else ``None``.

    ``None`` when Prefect's settings name an API (``PREFECT_API_URL`` in the environment, a profile
    or a settings file) or disable the temporary server: nothing changes then.
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    return EarlyServer()


@contextmanager
def served_by(server: EarlyServer | None, flow_run_ids: list[str], timeout_s: float = 20.0) -> Iterator[None]:
    """Run the block against ``server`` (waited for first), then let it record the runs and stop it.

    The API URL is set in the environment and in Prefect's process-wide settings, so that Prefect's
    worker threads (events, logs) and any child process use the same server; both are restored
    after. ``flow_run_ids`` is read when the block ends (the runs it added are waited for).
    """
    if server is None:
        yield
        return
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    try:
        server.wait_ready(float(get_current_settings().server.ephemeral.startup_timeout_seconds))
    except RuntimeError as e:
        raise ServeError(
            f"cannot start Prefect's temporary API server: {e}; nothing was run. Point "
            "PREFECT_API_URL at a running Prefect server, or allow a slower start with "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
        ) from None
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    refresh_global_settings_context()
    try:
        yield
    finally:
        try:
            with suppress(KeyboardInterrupt):  # a second Ctrl-C ends the wait
                _drain_client_events(timeout_s)
                if not wait_recorded(server.api_url, flow_run_ids, timeout_s=timeout_s):
                    log.debug("the temporary Prefect server still records task runs; stopping it anyway")
        finally:
            server.stop()
            if before is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = before
            refresh_global_settings_context()
