"""The ``embedpipe`` command line: parse, load settings, call a flow or the store, map errors.

stdout carries results only (one JSON document with ``--json``); progress and diagnostics go to
stderr. Exit status is 0 on success and non-zero with a one-line reason on failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from embedpipe import __version__
from embedpipe.errors import ConfigError, EmbedpipeError, GateFailed

# Quiet, self-contained defaults for Prefect's embedded mode; every one can be overridden by the
# environment. Logs still reach the Prefect API at INFO: only the console is held to WARNING.
_PREFECT_DEFAULTS = {
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_CLI_PROMPT": "false",
}


_FLAGS: dict[str, tuple[str, str]] = {
    # dest: (setting path, flag) of every flag that overrides a setting
    "keep_versions": ("retention.keep_versions", "--keep-versions"),
    "max_age_hours": ("retention.max_age_hours", "--older-than-hours"),
    "db": ("store.uri", "--db"),
    "table": ("store.table", "--table"),
    "model": ("model.name", "--model"),
    "device": ("model.device", "--device"),
    "batch_size": ("model.batch_size", "--batch-size"),
    "backend": ("model.backend", "--backend"),
    "precision": ("model.precision", "--precision"),
    "batch_tokens": ("model.batch_tokens", "--batch-tokens"),
    "chunk_tokens": ("chunk.tokens", "--chunk-tokens"),
    "chunk_overlap": ("chunk.overlap", "--chunk-overlap"),
    "golden": ("checks.golden", "--golden"),
    "baseline": ("checks.baseline_tag", "--baseline"),
    "no_checks": ("checks.enabled", "--no-checks"),
    "include": ("source.include", "--include"),
    "exclude": ("source.exclude", "--exclude"),
    "text_field": ("source.text_field", "--text-field"),
    "id_field": ("source.id_field", "--id-field"),
    "max_file_mb": ("source.max_file_mb", "--max-file-mb"),
    "max_reject_ratio": ("source.max_reject_ratio", "--max-reject-ratio"),
    "runner": ("runtime.runner", "--runner"),
    "dask_address": ("runtime.dask_address", "--dask-address"),
    "workers": ("runtime.dask_workers", "--workers"),
}
FLAG_OF = {path: flag for path, flag in _FLAGS.values()}
"""The flag of each setting path, so that a settings error names the flag that set it."""


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dest, (path, _) in _FLAGS.items():
        value = getattr(args, dest, None)
        if dest == "no_checks":
            value = False if value else None
        if value is not None and not dest.startswith(("runner", "dask_", "workers")):
            group, key = path.split(".")
            out.setdefault(group, {})[key] = value
    return out


def _runtime_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--runner``, ``--dask-address`` and ``--workers``; either of the last two implies dask."""
    runner = getattr(args, "runner", None)
    address, workers = getattr(args, "dask_address", None), getattr(args, "workers", None)
    given = [f for f, v in (("--dask-address", address), ("--workers", workers)) if v is not None]
    if given and runner == "local":
        raise ConfigError(f"{' and '.join(given)} need --runner dask (got --runner local)")
    if len(given) == 2:
        raise ConfigError(
            "--dask-address and --workers exclude each other: connect to an existing cluster, "
            "or start a local one of N workers"
        )
    if given and runner is None:
        runner = "dask"
    return {"runtime": {"runner": runner, "dask_address": address, "dask_workers": workers}}


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runner",
        choices=["local", "dask"],
        help="local (default): this process; dask: shards on Dask workers",
    )
    p.add_argument(
        "--dask-address", dest="dask_address", help="scheduler of an existing Dask cluster (tcp://host:port)"
    )
    p.add_argument(
        "--workers", type=int, help="worker processes of a local Dask cluster (default: one per GPU)"
    )


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="LanceDB database URI (default ./.embedpipe/db)")
    p.add_argument("--table", help="table name (default chunks)")
    p.add_argument("--config", help="TOML settings file (default ./embedpipe.toml)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="sentence-transformers model id or local path")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=int, dest="batch_size", help="most chunks per forward pass")
    p.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx", "onnx-int8", "openvino"],
        help="inference backend (default auto: for a new table the fastest installed one that passes "
        "the quality guard against torch; an existing table keeps its own); part of the model "
        "identity: switching it is a reindex",
    )
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], help="compute precision")
    p.add_argument("--batch-tokens", type=int, dest="batch_tokens", help="padded tokens per batch")
    p.add_argument("--chunk-tokens", type=int, dest="chunk_tokens")
    p.add_argument("--chunk-overlap", type=int, dest="chunk_overlap")


def _check_args(p: argparse.ArgumentParser, writes: bool) -> None:
    p.add_argument(
        "--golden", action="append", help="golden-set JSONL file checked through search (repeatable)"
    )
    p.add_argument("--baseline", help="compare with this tag or version instead of the served version")
    if writes:
        p.add_argument(
            "--no-checks",
            action="store_true",
            dest="no_checks",
            help="serve the new version without checking it (checks.enabled=false)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedpipe",
        description=__doc__.splitlines()[0],
        epilog="exit status: 0 ok; 1 other failure; 2 bad setting or source; 3 model; 4 store; "
        "5 model or chunking mismatch; 6 too many rejects; 7 a check gate failed; 8 another run "
        "holds the table's lock past store.lock_timeout_s, or wrote the table meanwhile (nothing written); "
        "9 serve could not start or reach its Prefect server",
    )
    parser.add_argument("--version", action="version", version=f"embedpipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="sync documents into the chunks table (one new version)")
    run.add_argument("sources", nargs="+", metavar="SOURCE", help="folders or files to read")
    _store_args(run)
    _model_args(run)
    run.add_argument("--include", action="append", help="glob of files to read (repeatable)")
    run.add_argument("--exclude", action="append", help="glob of files to skip (repeatable)")
    run.add_argument("--text-field", dest="text_field")
    run.add_argument("--id-field", dest="id_field")
    run.add_argument("--max-file-mb", type=float, dest="max_file_mb")
    run.add_argument("--max-reject-ratio", type=float, dest="max_reject_ratio")
    run.add_argument(
        "--no-delete",
        action="store_true",
        dest="no_delete",
        help="keep the chunks of documents that disappeared from the sources",
    )
    _check_args(run, writes=True)
    _runtime_args(run)
    run.add_argument("--json", action="store_true", help="print one JSON object with the run summary")

    reindex = sub.add_parser(
        "reindex", help="rebuild the table with another model or chunking, then switch to it atomically"
    )
    _store_args(reindex)
    _model_args(reindex)
    reindex.add_argument(
        "--source",
        action="append",
        dest="reindex_sources",
        help="re-read this source instead of reusing stored chunk texts (repeatable)",
    )
    _check_args(reindex, writes=True)
    _runtime_args(reindex)
    reindex.add_argument("--json", action="store_true", help="print one JSON object with the run summary")

    check = sub.add_parser(
        "check", help="run the drift and quality checks on a version (and publish it with --publish)"
    )
    _store_args(check)
    check.add_argument(
        "--version",
        dest="check_version",
        default="latest",
        help="latest (default), serving, a version number or a tag",
    )
    check.add_argument("--publish", action="store_true", help="serve the version if its gates pass")
    check.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    _check_args(check, writes=False)
    check.add_argument("--json", action="store_true", help="print one JSON object with the report")

    compact = sub.add_parser(
        "compact", help="compact small files and remove old versions by the retention policy"
    )
    _store_args(compact)
    compact.add_argument(
        "--keep-versions", type=int, dest="keep_versions", help="always keep the last N versions"
    )
    compact.add_argument(
        "--older-than-hours", type=float, dest="max_age_hours", help="remove only versions older than this"
    )
    compact.add_argument("--no-compact-files", action="store_true", dest="no_compact_files")
    compact.add_argument("--json", action="store_true")

    search = sub.add_parser("search", help="nearest chunks to a query")
    search.add_argument("query")
    _store_args(search)
    search.add_argument("-k", type=int, default=5, help="results (default 5)")
    search.add_argument(
        "--version",
        dest="search_version",
        default="serving",
        help="serving (default: the version that passed its checks), latest, a number or a tag",
    )
    search.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    search.add_argument("--json", action="store_true")

    versions = sub.add_parser("versions", help="list table versions with tags and run ids")
    _store_args(versions)
    versions.add_argument("--json", action="store_true")

    dash = sub.add_parser("dashboard", help="write (or serve) the self-contained HTML dashboard")
    _store_args(dash)
    dash.add_argument("--out", default="embedpipe-dashboard.html", help="HTML file to write")
    dash.add_argument("--serve", action="store_true", help="serve the page (rebuilt per request) instead")
    dash.add_argument("--host", default="127.0.0.1", help="address to bind with --serve (default loopback)")
    dash.add_argument("--port", default="8765", help="port for --serve (default 8765; 0: any free one)")
    dash.add_argument(
        "--allow-remote",
        action="store_true",
        dest="allow_remote",
        help="let --host be a non-loopback address (document text becomes visible to that network)",
    )
    dash.add_argument("--sample", type=int, default=2000, help="chunks drawn for the embedding map")

    rollback = sub.add_parser("rollback", help="restore a version or tag as the latest version, and serve it")
    rollback.add_argument("target", help="version number or tag (a run id)")
    rollback.add_argument(
        "--force", action="store_true", help="roll back even to a version that failed its checks"
    )
    _store_args(rollback)
    rollback.add_argument("--json", action="store_true")

    serve = sub.add_parser(
        "serve", help="serve the deployments of deploy/prefect.yaml with their schedules from this process"
    )
    serve.add_argument("--file", help="prefect.yaml to read (default deploy/prefect.yaml)")
    serve.add_argument(
        "--only", action="append", metavar="NAME", help="serve only this deployment (repeatable)"
    )
    serve.add_argument("--limit", type=int, help="most flow runs at the same time (default Prefect's)")
    serve.add_argument(
        "--port",
        default="4200",
        help="port of the local Prefect server started when PREFECT_API_URL is unset (default 4200)",
    )
    return parser


class TerminalProgress:
    """Chunk progress on stderr: a live bar on a terminal, plain lines every few seconds otherwise."""

    def __init__(self, stream: TextIO, interval: float = 3.0, clock: Any = time.monotonic) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = interval
        self.clock = clock
        self.total = 0
        self.done = 0
        self.t0: float | None = None
        self.last = float("-inf")
        self._bar: Any = None
        self._task: Any = None
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("embedding"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("chunks {task.fields[rate]}"),
                TimeRemainingColumn(),
                console=Console(file=stream),
                transient=True,
            )
            self._task = self._bar.add_task("embed", total=None, rate="")
            self._bar.start()

    def _rate(self) -> float:
        elapsed = self.clock() - (self.t0 if self.t0 is not None else self.clock())
        return self.done / elapsed if elapsed > 0 else 0.0

    def start(self) -> None:
        self.t0 = self.clock()

    def add_total(self, n: int) -> None:
        if self.t0 is None:
            self.t0 = self.clock()  # the rate counts model time, not start-up
        self.total += n
        if self._bar is not None:
            self._bar.update(self._task, total=self.total)

    def advance(self, n: int) -> None:
        self.done += n
        rate = self._rate()
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=f"{rate:.1f}/s")
            return
        now = self.clock()
        if now - self.last >= self.interval or self.done >= self.total:
            self.last = now
            eta = (self.total - self.done) / rate if rate > 0 and self.total >= self.done else 0.0
            print(
                f"embedpipe: embedded {self.done}/{self.total} chunks ({rate:.1f}/s, eta {eta:.0f}s)",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class _NoTracebackForKnownErrors(logging.Filter):
    """Expected failures (bad config, model mismatch) get their one-line message, not a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], EmbedpipeError):
            record.exc_info = None
            record.exc_text = None
        return True


_flow_runs: list[str] = []
"""Flow runs of this process, whose records Prefect's temporary server finishes before it stops."""


def _running_server() -> Any:
    """Prefect's temporary server when one runs in this process already (``None`` otherwise)."""
    if "prefect.server.api.server" not in sys.modules:
        return None
    from embedpipe.flows._server import _temporary_server

    return _temporary_server()


def _stop_prefect_server(keep: Any = None) -> None:
    """Let Prefect's temporary server record the runs, then stop it: only a server this command
    started, never ``keep`` (one the calling process ran before, such as a test harness's)."""
    if "prefect.server.api.server" in sys.modules:
        import contextlib

        from embedpipe.flows._server import _temporary_server, stop_temporary_server

        if keep is not None and _temporary_server() is keep:
            return
        # a second Ctrl-C ends the wait; Prefect's own exit hook still stops the server
        with contextlib.suppress(KeyboardInterrupt):
            stop_temporary_server(_flow_runs)


def _prepare_prefect() -> None:
    for k, v in _PREFECT_DEFAULTS.items():
        os.environ.setdefault(k, v)


def _start_prefect_server() -> Any:
    """Prefect's defaults, then its temporary server started now (when no API is configured), so
    that it boots while the flow's modules import; see :mod:`embedpipe.flows._server`."""
    _prepare_prefect()
    from embedpipe.flows._server import start_early

    server = start_early()
    if server is not None:
        # Every flow opens the table: its library imports while the server boots, not after.
        import lancedb  # noqa: F401
    return server


def _install_log_filter() -> None:
    flt = _NoTracebackForKnownErrors()
    # Prefect's console handlers hang off its own loggers (which do not propagate to the root).
    names = ["", "prefect", "prefect.flow_runs", "prefect.task_runs"]
    for name in names:
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(flt)


def _emit(data: Any, as_json: bool, text: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")
    else:
        sys.stdout.write(text + ("\n" if text and not text.endswith("\n") else ""))
    sys.stdout.flush()


def _summary_text(s: dict[str, Any]) -> str:
    lines = [
        f"embedpipe {s['flow']} {s['run_id']} {s['status']} in {s['duration_s']:.1f}s",
        f"  documents  {s['docs_seen']} seen, {s['docs_rejected']} rejected, {s['docs_new']} new, "
        f"{s['docs_changed']} changed, {s['docs_unchanged']} unchanged, {s['docs_deleted']} deleted",
        f"  chunks     {s['chunks_written']} written, {s['chunks_embedded']} embedded, "
        f"{s['chunks_reused']} reused, {s['chunks_deleted']} deleted, {s['chunks_truncated']} truncated "
        f"({s['chunks_per_s']:.1f} chunks/s)",
        f"  table      {s['table']} "
        + (
            f"version {s['table_version']}"
            if s["table_version"] is not None
            else "unchanged (no new version)"
        )
        + f"  model {s['model_id']} on {s['device']}",
    ]
    if s.get("gate"):
        lines.append(_checks_line(s))
    if s["rejects"]:
        lines.append("  rejects")
        for r in s["rejects"][:20]:
            lines.append(f"    {r['path']}: {r['reason']}")
        if len(s["rejects"]) > 20:
            lines.append(f"    ... and {len(s['rejects']) - 20} more (see the rejects table)")
    if s.get("message"):
        lines.append(f"  reason     {s['message']}")
    return "\n".join(lines)


def _checks_line(s: dict[str, Any]) -> str:
    fired = [c for c in s.get("checks", []) if c["status"] in {"warn", "fail", "error"}]
    counts: dict[str, int] = {}
    for c in s.get("checks", []):
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    line = f"  checks     {s['gate']}, serving version {s.get('served_version')}"
    if counts:
        line += " (" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")"
    for c in fired:
        line += f"\n    {c['status']:<5} {c['check']}: {c['detail']}"
    return line


def _check_text(r: dict[str, Any]) -> str:
    lines = [
        f"embedpipe check: table {r['table']} version {r['version']} against {r['reference']}: "
        f"{r['gate'].upper()}" + (f" (blocked by {', '.join(r['blocking'])})" if r["blocking"] else ""),
    ]
    for c in r["checks"]:
        stat = "" if c["statistic"] is None else f"{c['statistic']:.4g}"
        thr = "" if c["threshold"] is None else f"{c['threshold']:.4g}"
        lines.append(f"  {c['status']:<7} {c['check']:<20} {stat:>10} {thr:>10}  {c['detail']}")
    lines.append(
        f"  serving version {r['served_version']}" + (" (published by this check)" if r["published"] else "")
    )
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    from embedpipe.config import get_settings

    settings = get_settings(_overrides(args), args.config, FLAG_OF)
    from embedpipe.checks.suite.context import validate_setup
    from embedpipe.store import Store

    # Usage errors (exit 2 or 4) are said plainly before the flow starts.
    store = Store(settings.store)
    validate_setup(store, settings.checks, store.resolve_version(args.check_version), args.baseline)
    server = _start_prefect_server()
    _install_log_filter()
    from embedpipe.flows._server import served_by
    from embedpipe.flows.check import check

    with served_by(server, _flow_runs):
        state = check(
            settings,
            version=args.check_version,
            baseline=args.baseline,
            publish=args.publish,
            return_state=True,
        )
        _flow_runs.append(str(state.state_details.flow_run_id))
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    report = result.model_dump(mode="json")
    _emit(report, args.json, _check_text(report))
    if state.is_failed():
        print(f"embedpipe: error: {report.get('message') or state.message}", file=sys.stderr)
        return GateFailed.exit_code
    return 0


def _run_flow(name: str, call: Any, as_json: bool) -> int:
    """Run a flow in this process with terminal progress, then print its summary."""
    from embedpipe.progress import chunks_progress

    _install_log_filter()
    progress = TerminalProgress(sys.stderr)
    chunks_progress.add(progress)
    print(
        f"embedpipe: starting the {name} flow (Prefect) ...",
        file=sys.stderr,
        flush=True,
    )
    try:
        state = call()
    finally:
        chunks_progress.remove(progress)
        progress.close()
    return _finish(state, as_json)


def cmd_run(args: argparse.Namespace) -> int:
    from embedpipe.config import get_settings

    settings = get_settings(_overrides(args) | _runtime_overrides(args), args.config, FLAG_OF)
    _require_backend(settings)
    _require_store(settings)
    server = _start_prefect_server()
    from embedpipe.flows import flow_runtime
    from embedpipe.flows._server import served_by
    from embedpipe.flows.sync import sync

    with served_by(server, _flow_runs), flow_runtime(settings) as rt:
        flow = sync if rt.task_runner is None else sync.with_options(task_runner=rt.task_runner)
        _announce(rt)
        return _run_flow(
            "sync",
            lambda: flow(args.sources, rt.settings, delete_missing=not args.no_delete, return_state=True),
            args.json,
        )


def _announce(rt: Any) -> None:
    if rt.task_runner is not None:
        print(f"embedpipe: runtime {rt.describe()}", file=sys.stderr, flush=True)


def _require_store(settings: Any) -> None:
    """An object store that refuses the credentials, lacks the bucket or cannot be reached is a plain
    error before the flow starts (a local folder is created on first write)."""
    from embedpipe.store import Store, objectstore

    if objectstore.is_s3(settings.store.uri):
        _ = Store(settings.store).db


def _require_backend(settings: Any) -> None:
    """A backend whose runtime is not installed is a plain error before the flow starts."""
    from embedpipe.resources.backends import require_backend

    require_backend(settings.model.backend)


def _finish(state: Any, as_json: bool) -> int:
    _flow_runs.append(str(state.state_details.flow_run_id))
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    summary = result.model_dump(mode="json")
    _emit(summary, as_json, _summary_text(summary))
    if state.is_failed():
        print(f"embedpipe: error: {summary.get('message') or state.message}", file=sys.stderr)
        if summary.get("gate") == "failed":
            return GateFailed.exit_code
        return int(summary.get("exit_code") or 1)
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    from embedpipe.config import get_settings

    settings = get_settings(_overrides(args) | _runtime_overrides(args), args.config, FLAG_OF)
    _require_backend(settings)
    _require_store(settings)
    server = _start_prefect_server()
    from embedpipe.flows import flow_runtime
    from embedpipe.flows._server import served_by
    from embedpipe.flows.reindex import reindex

    with served_by(server, _flow_runs), flow_runtime(settings) as rt:
        flow = reindex if rt.task_runner is None else reindex.with_options(task_runner=rt.task_runner)
        _announce(rt)
        return _run_flow(
            "reindex", lambda: flow(rt.settings, args.reindex_sources, return_state=True), args.json
        )


def cmd_compact(args: argparse.Namespace) -> int:
    from embedpipe.config import get_settings
    from embedpipe.store import Store

    settings = get_settings(_overrides(args), args.config, FLAG_OF)
    store = Store(settings.store)
    store.require_table()
    r = settings.retention
    with _table_lock(settings, "compact"):
        report = store.apply_retention(r.keep_versions, r.max_age_hours, compact=not args.no_compact_files)
    text = "\n".join(
        f"{name}: {e['versions_before']} -> {e['versions_after']} versions, "
        f"{e['bytes_removed']} bytes removed, "
        f"{e['run_tags_dropped']} run tags dropped"
        for name, e in report.items()
    )
    _emit(report, args.json, text)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from pathlib import Path

    from embedpipe import dashboard
    from embedpipe.config import get_settings
    from embedpipe.store import Store

    settings = get_settings(_overrides(args), args.config, FLAG_OF)
    store = Store(settings.store)
    store.require_database()
    if args.sample < 1:
        raise ConfigError(f"--sample={args.sample}: expected a positive number of chunks")
    if args.serve:
        from embedpipe.listen import exposure_warning, parse_port, require_exposure_allowed

        what = "the text of every chunk"
        require_exposure_allowed(args.host, args.allow_remote, what)
        server = dashboard.serve(store, host=args.host, port=parse_port(args.port), sample=args.sample)
        port = server.server_address[1]
        if warning := exposure_warning(args.host, port, what):
            print(warning, file=sys.stderr, flush=True)
        print(
            f"embedpipe: dashboard at http://{_url_host(args.host)}:{port}/ (Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )
        try:
            server.serve_forever()
        finally:
            server.server_close()
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dashboard.build(store, sample=args.sample), encoding="utf-8")
    print(f"embedpipe: wrote {out} ({out.stat().st_size // 1024} KiB, works offline)", file=sys.stderr)
    return 0


def _url_host(host: str) -> str:
    return f"[{host.strip('[]')}]" if ":" in host else host


def cmd_search(args: argparse.Namespace) -> int:
    from embedpipe.config import get_settings
    from embedpipe.search import Searcher

    settings = get_settings(_overrides(args), args.config, FLAG_OF)
    if args.k < 1:
        raise ConfigError(f"-k={args.k}: expected a positive number of results")
    if not args.query.strip():
        raise ConfigError("empty query: pass the text to search for, e.g. embedpipe search 'vector index'")
    # Queries are embedded with the table's own model (ONNX Runtime where its export passed the
    # query check), so they land in the same vector space; Prefect and LanceDB are not loaded.
    searcher = Searcher(settings)
    hits = searcher.search(args.query, args.k, args.search_version)
    text = "\n".join(f"{h['score']:.3f}  {h['doc_id']}  {h['text'][:100]!r}" for h in hits) or "no results"
    _emit(hits, args.json, text)
    if searcher.can_prepare:
        # After the results: this search paid for the model already; later ones need not.
        print("embedpipe: preparing the fast query path for later searches (once) ...", file=sys.stderr)
        searcher.prepare()
    return 0


def _table_lock(settings: Any, what: str) -> Any:
    """The table's run lock for a command that writes outside a flow (compact, rollback)."""
    import uuid

    from embedpipe.flows._lock import table_lock

    _prepare_prefect()
    return table_lock(settings.store, str(uuid.uuid4()), what)


def cmd_versions(args: argparse.Namespace) -> int:
    from embedpipe.config import get_settings
    from embedpipe.store import Store

    settings = get_settings(_overrides(args), args.config, FLAG_OF)
    rows = Store(settings.store).versions()
    text = "\n".join(f"{r['version']:>6}  {r['timestamp']}  {','.join(r['tags']) or '-'}" for r in rows)
    _emit(rows, args.json, text)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from embedpipe.config import get_settings
    from embedpipe.store import Store

    settings = get_settings(_overrides(args), args.config, FLAG_OF)
    Store(settings.store).require_table()  # before the lock, whose file would create the folder
    with _table_lock(settings, "rollback"):
        res = Store(settings.store).rollback(args.target, force=args.force)
    _emit(
        res,
        args.json,
        f"table {res['table']}: restored version {res['restored']} as new version {res['version']}",
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import contextlib
    import signal

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit={args.limit}: expected a positive number of concurrent runs")
    from embedpipe.listen import parse_port

    args.port = parse_port(args.port)
    _prepare_prefect()
    from embedpipe.flows import serve as served

    specs = served.load_deployments(args.file or served.DEFAULT_FILE, args.only)
    _install_log_filter()

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


COMMANDS = {
    "run": cmd_run,
    "reindex": cmd_reindex,
    "check": cmd_check,
    "compact": cmd_compact,
    "search": cmd_search,
    "dashboard": cmd_dashboard,
    "versions": cmd_versions,
    "rollback": cmd_rollback,
    "serve": cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``embedpipe`` command."""
    args = build_parser().parse_args(argv)
    before = _running_server()
    try:
        return COMMANDS[args.command](args)
    except EmbedpipeError as e:
        print(f"embedpipe: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(
            "embedpipe: interrupted; the table is unchanged unless the commit had finished", file=sys.stderr
        )
        return 130
    finally:
        _stop_prefect_server(keep=before)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
