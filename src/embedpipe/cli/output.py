"""What the commands print: results on stdout (text or one JSON document), progress and the
one-line reasons of known failures on stderr, and the exit status of a finished flow."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from embedpipe.errors import EmbedpipeError


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


def install_log_filter() -> None:
    """Known errors in Prefect's console logs: their one-line message, no traceback."""
    flt = _NoTracebackForKnownErrors()
    # Prefect's console handlers hang off its own loggers (which do not propagate to the root).
    names = ["", "prefect", "prefect.flow_runs", "prefect.task_runs"]
    for name in names:
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(flt)


def emit(data: Any, as_json: bool, text: str) -> None:
    """Print a result on stdout: ``data`` as one JSON document, or ``text`` ending in one newline."""
    if as_json:
        sys.stdout.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")
    else:
        sys.stdout.write(text + ("\n" if text and not text.endswith("\n") else ""))
    sys.stdout.flush()


def summary_text(s: dict[str, Any]) -> str:
    """The human-readable form of a run summary (``run``, ``reindex``)."""
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


def check_text(r: dict[str, Any]) -> str:
    """The human-readable form of a check report (``check``)."""
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


def report(
    state: Any, as_json: bool, text: Callable[[dict[str, Any]], str], failed: Callable[[dict[str, Any]], int]
) -> int:
    """Print a finished flow's result (a run summary or a check report); return the exit status.

    Args:
        state: the flow run's final Prefect state.
        as_json: print the result as one JSON document instead of ``text`` of it.
        text: the human-readable form of the result.
        failed: the exit status of a failed run, from its result.

    Returns:
        0, or ``failed(result)`` after a one-line reason on stderr when the run failed.

    Raises:
        BaseException: the exception the flow ended with, when it returned no result.
    """
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    data = result.model_dump(mode="json")
    emit(data, as_json, text(data))
    if state.is_failed():
        print(f"embedpipe: error: {data.get('message') or state.message}", file=sys.stderr)
        return failed(data)
    return 0
