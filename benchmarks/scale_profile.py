"""Where a no-change run over a large corpus spends its time: the pure steps, without Prefect.

Builds ``benchmarks/scale.py``'s synthetic corpus of ``--size`` one-chunk documents (half small
``.txt`` files, half JSONL records) and, with its tiny random model, one real ``embedpipe run``
into a fresh database (not timed). Then, in this process and without Prefect, times the steps a
run that changes nothing goes through: reading the table's per-document state, planning (listing
and stat of the sources, leaving out the files the table holds unchanged), and ingesting what is
left (nothing, when nothing changed); and prints a cProfile of the planning. The rest
of a no-change run's flow time is Prefect's (its tasks, the flow's start and end): compare with
the ``no-change`` row of ``benchmarks/scale.py`` at the same size.

    python benchmarks/scale_profile.py [--size 100000] [--work DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=100_000, help="documents (one chunk each)")
    ap.add_argument("--work", help="work folder (default: a new temporary one, kept)")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="embedpipe-scale-profile-"))
    corpus, db = work / "corpus", work / "db"
    model = scale.make_tiny_model(work / "tiny-model")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDPIPE_")}
    env.update(
        HF_HUB_OFFLINE="1",
        EMBEDPIPE_MODEL__EXPORT_DIR=str(work / "exports"),
        EMBEDPIPE_CHECKS__GATES__TRIPLETS__SEVERITY="warn",
        EMBEDPIPE_CHECKS__GATES__PAIRS_SPEARMAN__SEVERITY="warn",
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING",
    )
    if not db.exists():
        scale.make_corpus(corpus, args.size, scale.vocabulary())
        t = time.perf_counter()
        argv = [sys.executable, "-m", "embedpipe.cli", "run", str(corpus), "--db", str(db)]
        p = subprocess.run([*argv, "--model", str(model), "--json"], env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"the full run failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        print(
            f"setup: full run of {args.size:,} documents in {time.perf_counter() - t:.1f}s (not timed below)"
        )

    os.environ["HF_HUB_OFFLINE"] = "1"
    from embedpipe.config import get_settings
    from embedpipe.incremental import split_state
    from embedpipe.sources.parse import reader_identity, reader_map
    from embedpipe.store import Store
    from embedpipe.tasks.sources import ingest_shard, make_plan, source_scopes
    from embedpipe.tasks.store import load_state

    settings = get_settings({"store": {"uri": str(db)}, "model": {"name": str(model)}})
    store = Store(settings.store)
    table = store.snapshot()
    assert table is not None
    identity = reader_identity(settings.source)
    records = {root for root, used in reader_map(store.table_reader(table)).items() if used == identity}
    t = time.perf_counter()
    known = load_state(settings, source_scopes([str(corpus)], settings), store.serving_version())
    state_s = time.perf_counter() - t
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    plan = make_plan([str(corpus)], settings, known, records)
    prof.disable()
    plan_s = time.perf_counter() - t
    t = time.perf_counter()
    states = split_state(known, plan.shards)
    split_s = time.perf_counter() - t
    changed = 0
    t = time.perf_counter()
    for i, (refs, shard_known) in enumerate(zip(plan.shards, states, strict=True)):
        docs = ingest_shard(i, refs, settings, shard_known)
        changed += docs.delta.to_chunk.num_rows + docs.delta.meta_only.num_rows
    ingest_s = time.perf_counter() - t
    figures = {
        "documents": args.size,
        "files_listed": plan.files,
        "files_unchanged": plan.unchanged.num_rows if plan.unchanged is not None else 0,
        "shards_left": len(plan.shards),
        "load_state_s": round(state_s, 2),
        "plan_s": round(plan_s, 2),
        "split_state_s": round(split_s, 2),
        "ingest_left_shards_s": round(ingest_s, 2),
        "documents_changed": changed,
    }
    print(json.dumps(figures))
    pstats.Stats(prof).sort_stats("cumulative").print_stats(15)
    print(f"work folder kept at {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
