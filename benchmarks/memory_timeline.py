"""Where a process's memory goes: run a command, sample the RSS of it and its descendants.

Samples ``VmRSS`` of the command and every descendant from ``/proc`` every 0.2 s, stamps each
line the command writes with the time and the command's own RSS then, and prints the exact peak
of the tree (``RUSAGE_CHILDREN``), a 5-second timeline and the stamped lines. Used for the
"What holds embedpipe's memory" figures of ``docs/benchmarks.md``, e.g.::

    PREFECT_LOGGING_LEVEL=INFO PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=INFO \\
    EMBEDPIPE_MODEL__EXPORT_DIR=/tmp/exports \\
    python benchmarks/memory_timeline.py python -m embedpipe.cli run CORPUS --db FRESH --batch-size 64 --json
"""

from __future__ import annotations

import resource
import subprocess
import sys
import threading
import time
from typing import IO


def descendants(pid: int) -> list[int]:
    out = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except OSError:
        return out
    for c in children:
        out += descendants(int(c))
    return out


def rss_mib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def main() -> int:
    argv = sys.argv[1:]
    if not argv:
        raise SystemExit(__doc__)
    t0 = time.time()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str, str]] = []

    def read(stream: IO[str], tag: str) -> None:
        for line in stream:
            lines.append((time.time() - t0, tag, line.rstrip()[:200]))

    readers = [
        threading.Thread(target=read, args=(p.stderr, "E"), daemon=True),
        threading.Thread(target=read, args=(p.stdout, "O"), daemon=True),
    ]
    for r in readers:
        r.start()
    samples: list[tuple[float, dict[int, int]]] = []
    while p.poll() is None:
        samples.append((time.time() - t0, {pid: rss_mib(pid) for pid in descendants(p.pid)}))
        time.sleep(0.2)
    for r in readers:
        r.join(2)

    def own_at(t: float) -> int:
        best = 0
        for when, s in samples:
            if when > t:
                break
            best = s.get(p.pid, 0)
        return best

    peak_tree = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    print(f"exit {p.returncode}; peak RSS of the largest process of the tree: {peak_tree} MiB")
    for when, s in samples[::25]:
        others = sorted((v for k, v in s.items() if k != p.pid), reverse=True)[:3]
        print(f"{when:6.1f}s  command {s.get(p.pid, 0):5d} MiB  other processes {others}")
    print("--- output lines (seconds, the command's RSS MiB)")
    for when, tag, line in lines:
        print(f"{when:6.1f}s {own_at(when):5d} {tag} {line}")
    return p.returncode


if __name__ == "__main__":
    sys.exit(main())
