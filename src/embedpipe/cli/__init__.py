"""The ``embedpipe`` command line: parse, load settings, call a flow or the store, map errors.

stdout carries results only (one JSON document with ``--json``); progress and diagnostics go to
stderr. Exit status is 0 on success and non-zero with a one-line reason on failure.

The package by concern: :mod:`~embedpipe.cli.parser` (arguments and the settings they override),
:mod:`~embedpipe.cli.runs` (run, reindex, check: the commands that run a flow),
:mod:`~embedpipe.cli.tables` (search, versions, rollback, compact, index, dashboard),
:mod:`~embedpipe.cli.serving` (Prefect's server, the serve command) and
:mod:`~embedpipe.cli.output` (what is printed, and a finished flow's exit status). Every heavy
import (Prefect, LanceDB, torch) stays inside the command that needs it, so that ``--help``,
``versions`` or ``search`` start cold without them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from embedpipe.cli.output import TerminalProgress
from embedpipe.cli.parser import FLAG_OF, build_parser
from embedpipe.cli.runs import cmd_check, cmd_reindex, cmd_run
from embedpipe.cli.serving import PREFECT_DEFAULTS as _PREFECT_DEFAULTS
from embedpipe.cli.serving import cmd_serve, running_server, stop_prefect_server
from embedpipe.cli.tables import (
    cmd_compact,
    cmd_dashboard,
    cmd_index,
    cmd_rollback,
    cmd_search,
    cmd_versions,
)
from embedpipe.errors import EmbedpipeError

__all__ = ["COMMANDS", "FLAG_OF", "_PREFECT_DEFAULTS", "TerminalProgress", "build_parser", "main"]

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "reindex": cmd_reindex,
    "check": cmd_check,
    "compact": cmd_compact,
    "search": cmd_search,
    "dashboard": cmd_dashboard,
    "versions": cmd_versions,
    "rollback": cmd_rollback,
    "index": cmd_index,
    "serve": cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``embedpipe`` command."""
    args = build_parser().parse_args(argv)
    before = running_server()
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
        stop_prefect_server(keep=before)
