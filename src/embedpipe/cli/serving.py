"""Prefect for the commands: its quiet defaults, its temporary server started early and stopped after
the runs are recorded, and the ``serve`` command."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from embedpipe.cli.output import install_log_filter
from embedpipe.errors import ConfigError

# Quiet, self-contained defaults for Prefect's embedded mode; every one can be overridden by the
# environment. Logs still reach the Prefect API at INFO: only the console is held to WARNING.
PREFECT_DEFAULTS = {
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_CLI_PROMPT": "false",
}


flow_runs: list[str] = []
"""Flow runs of this process, whose records Prefect's temporary server finishes before it stops."""


def running_server() -> Any:
    """Prefect's temporary server when one runs in this process already (``None`` otherwise)."""
    if "prefect.server.api.server" not in sys.modules:
        return None
    from embedpipe.flows._server import _temporary_server

    return _temporary_server()


def stop_prefect_server(keep: Any = None) -> None:
    """Let Prefect's temporary server record the runs, then stop it: only a server this command
    started, never ``keep`` (one the calling process ran before, such as a test harness's)."""
    if "prefect.server.api.server" in sys.modules:
        import contextlib

        from embedpipe.flows._server import _temporary_server, stop_temporary_server

        if keep is not None and _temporary_server() is keep:
            return
        # a second Ctrl-C ends the wait; Prefect's own exit hook still stops the server
        with contextlib.suppress(KeyboardInterrupt):
            stop_temporary_server(flow_runs)


def prepare_prefect() -> None:
    """Set :data:`PREFECT_DEFAULTS` where the environment does not, before Prefect imports."""
    for k, v in PREFECT_DEFAULTS.items():
        os.environ.setdefault(k, v)


def start_prefect_server() -> Any:
    """Prefect's defaults, then its temporary server started now (when no API is configured), so
    that it boots while the flow's modules import; see :mod:`embedpipe.flows._server`."""
    prepare_prefect()
    from embedpipe.flows._server import start_early

    server = start_early()
    if server is not None:
        # Every flow opens the table: its library imports while the server boots, not after.
        import lancedb  # noqa: F401
    return server


def cmd_serve(args: argparse.Namespace) -> int:
    """``embedpipe serve``: serve the deployments of prefect.yaml until stopped."""
    import contextlib
    import signal

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit={args.limit}: expected a positive number of concurrent runs")
    from embedpipe.listen import parse_port

    args.port = parse_port(args.port)
    prepare_prefect()
    from embedpipe.flows import serve as served

    specs = served.load_deployments(args.file or served.DEFAULT_FILE, args.only)
    install_log_filter()

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # until Prefect's runner installs its own graceful handler

    previous = signal.signal(signal.SIGTERM, _stop)
    with contextlib.ExitStack() as stack:
        stack.callback(signal.signal, signal.SIGTERM, previous)
        api = served.configured_api_url()
        if api is None:
            print(
                "embedpipe: starting a local Prefect server (PREFECT_API_URL is unset) ...", file=sys.stderr
            )
            api = stack.enter_context(served.local_server(args.port))
            stack.enter_context(served.pointed_at(api))
            print(f"embedpipe: Prefect UI at {api.removesuffix('/api')}", file=sys.stderr)
        else:
            served.check_api(api)
        names = ", ".join(s.full_name for s in specs)
        print(
            f"embedpipe: serving {len(specs)} deployment(s) ({names}) against {api}; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        served.serve_deployments(specs, limit=args.limit)
    print("embedpipe: stopped serving; schedules paused until the next serve", file=sys.stderr)
    return 0
