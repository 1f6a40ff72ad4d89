"""Incremental sync: cost of a no-change re-run and of a 1% edit, against the full first run.

Builds a corpus of 500+ documents from copies of the bundled sample corpus, then in one process:

1. a full run into an empty table (timed);
2. the same run again with nothing changed (timed): prints its wall time as a fraction of the full
   run (target <= 0.05);
3. edits 1% of the documents (one sentence appended to one paragraph) and runs again: prints the
   chunks embedded as a fraction of all chunks (target <= 0.015).

Prefect's temporary server start and the model load are paid by a warm-up run before anything is
timed, as they are for a long-running deployment.

    python benchmarks/incremental.py [--copies 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from throughput import SAMPLE, make_corpus  # noqa: E402


def empty_flow_seconds() -> float:
    """Wall time of a flow that does nothing (median of 3): the fixed cost of any Prefect run."""
    from prefect import flow

    @flow(name="empty", persist_result=False)
    def empty() -> int:
        return 0

    empty()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        empty()
        times.append(time.perf_counter() - t)
    return sorted(times)[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from embedpipe.config import get_settings
    from embedpipe.flows.sync import sync

    work = Path(tempfile.mkdtemp(prefix="embedpipe-incr-"))
    corpus = make_corpus(work / "corpus", args.copies)

    def settings(db: str):
        return get_settings({"store": {"uri": str(work / db)}, "model": {"device": args.device}})

    sync([str(SAMPLE / "basics")], settings("warmup"))  # server start + model load, not timed

    s = settings("db")
    t = time.perf_counter()
    full = sync([str(corpus)], s)
    full_s = time.perf_counter() - t
    assert full.status == "completed" and full.docs_rejected == 0
    print(f"full run:      {full.docs_seen} documents, {full.chunks_embedded} chunks, {full_s:.2f}s")
    assert full.docs_seen >= 500, full.docs_seen

    t = time.perf_counter()
    same = sync([str(corpus)], s)
    same_s = time.perf_counter() - t
    assert same.table_version is None and same.chunks_embedded == 0, same
    print(f"no-change run: {same.docs_unchanged} unchanged, 0 embedded, no new version, {same_s:.2f}s")

    editable = sorted(p for p in corpus.rglob("*") if p.suffix in {".md", ".txt"})
    n_edit = max(1, round(full.docs_seen * 0.01))
    for p in editable[:: max(1, len(editable) // n_edit)][:n_edit]:
        paras = p.read_text(encoding="utf-8").split("\n\n")
        mid = len(paras) // 2
        paras[mid] = paras[mid] + " This sentence was added by the incremental benchmark."
        p.write_text("\n\n".join(paras), encoding="utf-8")
    t = time.perf_counter()
    edit = sync([str(corpus)], s)
    edit_s = time.perf_counter() - t
    print(
        f"1% edit run:   {edit.docs_changed} changed ({n_edit} edited), {edit.chunks_embedded} embedded, "
        f"{edit.chunks_reused} reused, {edit.chunks_deleted} deleted, {edit_s:.2f}s"
    )
    print()
    print(f"no-change re-run / full run (wall time): {same_s / full_s:.4f}  (target <= 0.05)")
    floor = empty_flow_seconds()
    own = max(0.0, same_s - floor)
    print(
        f"Prefect's floor: an empty flow takes {floor:.2f}s here, so embedpipe's own share of the "
        f"no-change run is {own:.2f}s ({own / full_s:.4f} of the full run)"
    )
    print(
        f"chunks embedded after a 1% edit / all chunks: {edit.chunks_embedded}/{full.chunks_embedded} = "
        f"{edit.chunks_embedded / full.chunks_embedded:.4f}  (target <= 0.015)"
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
