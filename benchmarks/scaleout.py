"""Scale-out on Dask: the same corpus with 1 and with 2 (or ``--workers``) Dask workers.

On one corpus of 2,000+ chunks made from the bundled sample corpus (as ``throughput.py`` makes it),
runs the whole ``sync`` flow (discover, ingest, chunk, embed, stage, one commit, run record; checks
off unless ``--checks``) in this process with ``runtime.runner=dask`` on a local Dask cluster of
1 worker, then of 2 workers (each a separate process bound to 127.0.0.1 with its share of the
cores as model threads, or one GPU each where there are GPUs), and the local runner as a
reference. Each configuration first syncs ``examples/corpus/basics`` into a scratch database, so
that the workers have loaded the model and the cold start is not in the timed run.

Prints, per configuration, the cluster's start time, the timed run's wall time and chunks/s, and
the speed-up of N workers over 1 worker (the baseline: a 1-worker Dask run in the same process).
Every run must produce the same chunk ids; the vectors are compared with the local run's (min
cosine). On a machine with C cores, N CPU workers get C // N threads each, so CPU speed-up stays
near 1x (the same cores do the work); the speed-up comes with one worker per GPU.

    python benchmarks/scaleout.py [--copies 20] [--workers 1,2] [--device auto] [--no-local] [--checks]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import SAMPLE, make_corpus  # also sets HF_HUB_OFFLINE and quiet Prefect logging


def _table(db: Path) -> tuple[list[str], np.ndarray]:
    import lancedb

    t = lancedb.connect(str(db)).open_table("chunks").to_arrow().sort_by("chunk_id")
    return t.column("chunk_id").to_pylist(), np.asarray(t.column("vector").to_pylist(), dtype=np.float32)


def run_one(label: str, overrides: dict[str, Any], corpus: Path, work: Path) -> dict[str, Any]:
    """Start the runtime, warm it up, then time one sync of the corpus into a fresh database."""
    from embedpipe.config import get_settings
    from embedpipe.flows import flow_runtime
    from embedpipe.flows.sync import sync

    def settings(db: str) -> Any:
        return get_settings(overrides | {"store": {"uri": str(work / label / db)}})

    t0 = time.perf_counter()
    with flow_runtime(settings("warm")) as rt:
        flow = sync if rt.task_runner is None else sync.with_options(task_runner=rt.task_runner)
        start_s = time.perf_counter() - t0
        warm = flow(
            [str(SAMPLE / "basics")], settings("warm").model_copy(update={"model": rt.settings.model})
        )
        assert warm.status == "completed", warm.message
        s = settings("db")
        assert rt.settings is not None
        s = s.model_copy(update={"model": rt.settings.model})
        t = time.perf_counter()
        summary = flow([str(corpus)], s)
        wall = time.perf_counter() - t
    assert summary.status == "completed" and summary.docs_rejected == 0, summary.message
    ids, vectors = _table(work / label / "db")
    assert len(ids) == summary.chunks_embedded, (len(ids), summary.chunks_embedded)
    rate = summary.chunks_embedded / wall
    print(
        f"{label:<16} start {start_s:5.1f}s  run {wall:6.1f}s  {summary.chunks_embedded} chunks  "
        f"{rate:7.1f} chunks/s  ({rt.describe()})",
        flush=True,
    )
    return {"label": label, "rate": rate, "ids": ids, "vectors": vectors, "start": start_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=20, help="copies of the sample corpus (20: 2,000+ chunks)")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare; the first is the baseline")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--shard-mb", type=float, default=0.5, help="runtime.shard_mb: several shards per worker")
    ap.add_argument("--no-local", action="store_true", help="skip the local-runner reference run")
    ap.add_argument("--checks", action="store_true", help="run the checks too (in the flow process)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="embedpipe-scaleout-"))
    corpus = make_corpus(work / "corpus", args.copies)
    base: dict[str, Any] = {
        "model": {"device": args.device},
        "checks": {"enabled": args.checks},
        "runtime": {"shard_mb": args.shard_mb, "ramp_shards": 0},
    }
    counts = [int(n) for n in args.workers.split(",")]
    results = []
    if not args.no_local:
        results.append(run_one("local", base, corpus, work))
    for n in counts:
        runtime = base["runtime"] | {"runner": "dask", "dask_workers": n}
        results.append(run_one(f"dask {n} worker(s)", base | {"runtime": runtime}, corpus, work))

    ref = results[0]
    dask = [r for r in results if r["label"] != "local"]
    print()
    print(f"{'configuration':<18} {'chunks/s':>9} {'vs 1 worker':>12} {'min cosine vs ' + ref['label']:>24}")
    for r in results:
        assert r["ids"] == ref["ids"], f"{r['label']}: other chunk ids than {ref['label']}"
        cos = float((r["vectors"] * ref["vectors"]).sum(axis=1).min())
        ratio = r["rate"] / dask[0]["rate"] if dask else float("nan")
        print(f"{r['label']:<18} {r['rate']:9.1f} {ratio:11.2f}x {cos:24.6f}")
    if len(dask) > 1:
        print(
            f"\nspeed-up {dask[-1]['label']} / {dask[0]['label']}: {dask[-1]['rate'] / dask[0]['rate']:.2f}x"
        )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":  # Dask starts worker processes with spawn: the guard is required
    sys.exit(main())
