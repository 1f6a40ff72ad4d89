"""The commands that run a flow: ``run`` (the sync flow) and ``reindex`` share one path, and ``check``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from embedpipe.cli.output import TerminalProgress, check_text, install_log_filter, report, summary_text
from embedpipe.cli.parser import FLAG_OF, overrides, runtime_overrides
from embedpipe.cli.serving import flow_runs, start_prefect_server
from embedpipe.errors import GateFailed


def cmd_run(args: argparse.Namespace) -> int:
    """``embedpipe run``: sync the sources into the table (the sync flow)."""
    return _write(
        args,
        "sync",
        lambda flow, settings: flow(
            args.sources, settings, delete_missing=not args.no_delete, return_state=True
        ),
    )


def cmd_reindex(args: argparse.Namespace) -> int:
    """``embedpipe reindex``: rebuild the table with the model and chunking of the settings."""
    return _write(
        args, "reindex", lambda flow, settings: flow(settings, args.reindex_sources, return_state=True)
    )


def _write(args: argparse.Namespace, name: str, call: Callable[[Any, Any], Any]) -> int:
    """Run the flow ``embedpipe.flows.<name>.<name>`` in this process, on the runtime the settings
    choose, with terminal progress; print its summary and return the exit status.

    Args:
        args: the parsed ``run`` or ``reindex`` command line.
        name: the flow's module and function name (``sync`` or ``reindex``).
        call: runs the flow (with the runtime's task runner) on the runtime's settings, returning
            its final state.
    """
    import importlib

    from embedpipe.config import get_settings

    settings = get_settings(overrides(args) | runtime_overrides(args), args.config, FLAG_OF)
    _require_backend(settings)
    _require_store(settings)
    server = start_prefect_server()
    from embedpipe.flows import flow_runtime
    from embedpipe.flows._server import served_by

    flow = getattr(importlib.import_module(f"embedpipe.flows.{name}"), name)
    with served_by(server, flow_runs), flow_runtime(settings) as rt:
        if rt.task_runner is not None:
            flow = flow.with_options(task_runner=rt.task_runner)
            print(f"embedpipe: runtime {rt.describe()}", file=sys.stderr, flush=True)
        state = _with_progress(name, lambda: call(flow, rt.settings))
        flow_runs.append(str(state.state_details.flow_run_id))
        return report(state, args.json, summary_text, _exit_code)


def _with_progress(name: str, call: Callable[[], Any]) -> Any:
    """Run a flow in this process with terminal progress on stderr; return its final state."""
    from embedpipe.progress import chunks_progress

    install_log_filter()
    progress = TerminalProgress(sys.stderr)
    chunks_progress.add(progress)
    print(f"embedpipe: starting the {name} flow (Prefect) ...", file=sys.stderr, flush=True)
    try:
        return call()
    finally:
        chunks_progress.remove(progress)
        progress.close()


def _exit_code(summary: dict[str, Any]) -> int:
    """The exit status of a failed run: a failed gate's, else the one its summary names."""
    if summary.get("gate") == "failed":
        return GateFailed.exit_code
    return int(summary.get("exit_code") or 1)


def _require_store(settings: Any) -> None:
    """An object store that refuses the credentials, lacks the bucket or cannot be reached is a plain
    error before the flow starts (a local folder is created on first write)."""
    from embedpipe.store import Store, objectstore

    if objectstore.is_s3(settings.store.uri):
        _ = Store(settings.store).db


def _require_backend(settings: Any) -> None:
    """A backend whose runtime is not installed is a plain error before the flow starts."""
    from embedpipe.embedding.runners import require_backend

    require_backend(settings.model.backend)


def cmd_check(args: argparse.Namespace) -> int:
    """``embedpipe check``: the drift and quality checks on a version (the check flow)."""
    from embedpipe.config import get_settings

    settings = get_settings(overrides(args), args.config, FLAG_OF)
    from embedpipe.checks.suite.context import validate_setup
    from embedpipe.store import Store

    # Usage errors (exit 2 or 4) are said plainly before the flow starts.
    store = Store(settings.store)
    validate_setup(store, settings.checks, store.resolve_version(args.check_version), args.baseline)
    server = start_prefect_server()
    install_log_filter()
    from embedpipe.flows._server import served_by
    from embedpipe.flows.check import check

    with served_by(server, flow_runs):
        state = check(
            settings,
            version=args.check_version,
            baseline=args.baseline,
            publish=args.publish,
            return_state=True,
        )
        flow_runs.append(str(state.state_details.flow_run_id))
    return report(state, args.json, check_text, lambda _: GateFailed.exit_code)
