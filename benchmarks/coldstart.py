"""Cold starts: three commands of issue 14 timed as whole processes, as a cron job or a person runs them.

Builds its own temporary database with one real `embedpipe run` of the sample corpus (not timed),
then times, each as a fresh process, a warm-up run and then ``--repeat`` runs (median reported):

1. ``embedpipe run examples/corpus --json`` with nothing changed (target 8 s);
2. ``embedpipe search "how do vector indexes trade recall for speed" -k 3 --json`` (target 3 s);
3. ``embedpipe versions --json`` (target 2 s).

Prints wall time (median), its ratio to the target (<= 1.0 meets it), CPU time (user + system of
the process and its children, median) and peak RSS of the largest process (max over the runs).
Prefect's temporary server is used as a first run on a machine without ``PREFECT_API_URL`` uses it
(its database stays in ``PREFECT_HOME``, as for a user); pass ``--api-url`` to time against a
running server instead. The model card and ONNX exports live in the usual cache, as for a user.

    python benchmarks/coldstart.py [--repeat 5] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "corpus"
QUERY = "how do vector indexes trade recall for speed"

TARGETS = {"run (no change)": 8.0, "search": 3.0, "versions": 2.0}


def commands(db: Path) -> dict[str, list[str]]:
    return {
        "run (no change)": ["run", str(SAMPLE), "--db", str(db), "--json"],
        "search": ["search", QUERY, "-k", "3", "--db", str(db), "--json"],
        "versions": ["versions", "--db", str(db), "--json"],
    }


def timed(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int, str]:
    """Run ``embedpipe ARGS`` as its own process: wall s, CPU s, peak RSS (bytes), stdout.

    Each run is a child of a fresh ``python -c`` that runs the command and reports its own
    ``getrusage(RUSAGE_CHILDREN)``, so that CPU and RSS are those of this command alone (and of the
    processes it started, such as Prefect's temporary server).
    """
    wrapper = (
        "import json, resource, subprocess, sys;"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "r = resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(json.dumps({'rc': p.returncode, 'cpu': r.ru_utime + r.ru_stime, 'rss_kb': r.ru_maxrss,"
        " 'out': p.stdout, 'err': p.stderr[-2000:]}))"
    )
    cmd = [sys.executable, "-c", wrapper, sys.executable, "-m", "embedpipe.cli", *args]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    res = json.loads(proc.stdout)
    if res["rc"] != 0:
        raise SystemExit(f"embedpipe {' '.join(args)} exited {res['rc']}:\n{res['err']}")
    return wall, res["cpu"], res["rss_kb"] * 1024, res["out"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per command after one warm-up")
    ap.add_argument("--api-url", help="time against this Prefect API instead of the temporary server")
    ap.add_argument("--keep", action="store_true", help="keep the temporary database")
    args = ap.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDPIPE_")}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if args.api_url:
        env["PREFECT_API_URL"] = args.api_url
    work = Path(tempfile.mkdtemp(prefix="embedpipe-cold-"))
    db = work / "db"
    try:
        wall, _, _, out = timed(commands(db)["run (no change)"], env, work)
        first = json.loads(out)
        assert first["status"] == "completed" and first["table_version"] is not None, first
        print(
            f"setup: first run of {first['docs_seen']} documents, {first['chunks_embedded']} chunks "
            f"embedded, {wall:.1f}s (not timed below)"
        )
        print(f"each command: 1 warm-up + {args.repeat} runs as fresh processes; median wall and CPU")
        print(
            f"{'command':<18} {'wall s':>7} {'target':>7} {'ratio':>6} {'cpu s':>7} {'peak RSS':>9}  runs (s)"
        )
        failed = 0
        for name, cmd in commands(db).items():
            timed(cmd, env, work)  # warm-up: page cache, bytecode, model card
            runs = [timed(cmd, env, work) for _ in range(args.repeat)]
            if name == "run (no change)":
                for *_, out in runs:
                    s = json.loads(out)
                    assert s["table_version"] is None and s["chunks_embedded"] == 0, s
            walls = [r[0] for r in runs]
            wall = statistics.median(walls)
            cpu = statistics.median(r[1] for r in runs)
            rss = max(r[2] for r in runs)
            ratio = wall / TARGETS[name]
            failed += ratio > 1.0
            print(
                f"{name:<18} {wall:>7.2f} {TARGETS[name]:>7.1f} {ratio:>6.2f} {cpu:>7.2f} "
                f"{rss / 2**20:>7.0f}MB  {' '.join(f'{w:.2f}' for w in walls)}"
            )
        print(
            f"{3 - failed} of 3 within target (ratio <= 1.00); "
            f"machine load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        return 0
    finally:
        if args.keep:
            print(f"database kept at {db}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
