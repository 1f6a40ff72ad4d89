"""Work done in a child process of its own, so that its memory goes back when it ends.

Making an export and measuring ``auto``'s candidates load torch and sentence-transformers, trace
the model and run every backend: hundreds of MB that a Python process keeps to its end, although
the run that follows needs none of it (it loads the chosen export without torch,
:mod:`embedpipe.embedding.fastload`). Both run here in a fresh interpreter: the request goes in on
stdin as JSON, the answer comes back as the last line of stdout, and the child's log lines (on
stderr) are passed on, warnings as warnings.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import Any

from embedpipe.errors import ModelError

log = logging.getLogger(__name__)


def run_apart(entry: str, request: dict[str, Any], what: str, timeout: float = 3600) -> dict[str, Any]:
    """Call ``entry`` (``module:function``, a :func:`child_main` caller) in a child process.

    Returns:
        The JSON object the child printed last (``{}`` when it printed nothing).

    Raises:
        ModelError: The child could not start, or exited with an error; the message ends with the
            last lines it logged.
    """
    module, func = entry.split(":")
    code = f"from {module} import {func}; {func}()"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise ModelError(f"{what}: the child process failed: {type(e).__name__}: {e}") from e
    for line in done.stderr.splitlines():
        level = logging.WARNING if line.startswith(("WARNING", "ERROR")) else logging.DEBUG
        log.log(level, "%s: %s", what, line)
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = None
    if done.returncode != 0 or not isinstance(answer, dict):
        tail = " | ".join(done.stderr.strip().splitlines()[-4:])[-800:]
        raise ModelError(f"{what}: the child process exited with {done.returncode}: {tail}")
    return answer


def child_main(work: Any) -> None:
    """The child's side: read the request, log to stderr, print ``work(request)`` as one JSON line."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    answer = work(json.loads(sys.stdin.read()))
    print(json.dumps(answer if answer is not None else {}), flush=True)
