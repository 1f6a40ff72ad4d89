"""Where a cold embedpipe command spends its time: a cProfile phase breakdown of one process.

Runs one CLI command in this (fresh) process under cProfile and prints one JSON line to stderr with
the cumulative seconds of its phases: all imports, and of them Prefect, LanceDB, torch,
transformers and sentence-transformers; Prefect's temporary server start (Prefect's own, or the
CLI's early start) and the wait for it and for the run to be recorded; the model load; the flow
run. The phases overlap where one runs inside another (before the early server, Prefect started it
inside the flow call), and profiling inflates Python-heavy parts: compare trees with each other,
and take wall times from ``coldstart.py``.

    export PYTHONPATH=<tree>/src EMBEDPIPE_STORE__URI=<db>
    python benchmarks/coldstart_profile.py run examples/corpus --json
    python benchmarks/coldstart_profile.py search "a query" -k 3 --json
    python benchmarks/coldstart_profile.py versions --json

Run each a few times after a warm-up; the closing note of issue 14 used the second of two runs.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import sys
import time
from collections.abc import Callable

T0 = time.perf_counter()
_profile = cProfile.Profile()
_profile.enable()
from embedpipe.cli import main  # noqa: E402


def _cumulative(stats: dict, pred: Callable[[str, int, str], bool]) -> float:
    return round(max([v[3] for k, v in stats.items() if pred(*k)] or [0.0]), 2)


def _module(stats: dict, package: str) -> float:
    suffix = f"/site-packages/{package}/__init__.py"
    return _cumulative(stats, lambda f, _l, n: n == "<module>" and f.endswith(suffix))


def breakdown(stats: dict, main_s: float) -> dict[str, float]:
    c = lambda pred: _cumulative(stats, pred)  # noqa: E731
    return {
        "profiled_main_s": round(main_s, 2),
        "imports_all": c(lambda f, _l, n: n == "_find_and_load"),
        "import_prefect": _module(stats, "prefect"),
        "import_lancedb": _module(stats, "lancedb"),
        "import_torch": _module(stats, "torch"),
        "import_transformers": _module(stats, "transformers"),
        "import_sentence_transformers": _module(stats, "sentence_transformers"),
        "server_start": max(
            c(lambda f, _l, n: f.endswith("prefect/server/api/server.py") and n == "start"),
            c(lambda f, _l, n: "embedpipe/cli" in f and n == "_start_prefect_server"),
        ),
        "server_wait_and_record": c(lambda f, _l, n: f.endswith("flows/_server.py") and n == "served_by"),
        "model_load": c(lambda f, _l, n: n == "_load_model" and "embedpipe" in f),
        "flow_run": c(lambda f, _l, n: f.endswith("prefect/flow_engine.py") and n == "run_flow_sync"),
    }


if __name__ == "__main__":
    rc: int | str | None = 0
    try:
        rc = main(sys.argv[1:]) or 0
    except SystemExit as e:
        rc = e.code or 0
    elapsed = time.perf_counter() - T0
    _profile.disable()
    figures = breakdown(pstats.Stats(_profile).stats, elapsed)  # type: ignore[attr-defined]
    print("BREAKDOWN " + json.dumps(figures), file=sys.stderr, flush=True)
    sys.exit(rc)
