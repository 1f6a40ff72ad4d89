"""Reading a table's document state and detecting changes, at scale: per-row Python (the baseline)
against the columnar path (Arrow state, joins), and vector reuse with and without the scalar index.

Writes a synthetic chunks table with LanceDB directly (``--docs`` documents of ``--chunks-per-doc``
chunks, random 8-dim vectors), then times, each in a fresh process so that peak RSS is its own:

- ``legacy``: the state as a dict of per-document objects built from every chunk row, each shard's
  slice of it, and a per-document classification loop (the code this replaced, kept here as the
  baseline);
- ``arrow``: :meth:`Store.doc_state` (one row per document), :func:`split_state`,
  :func:`classify` and :func:`missing_documents`;
- ``reuse``: vector look-ups of ``--lookups`` chunk hashes per shard for 10 shards, before and
  after the scalar indexes exist.

A listing of every document with ``--changed`` of them edited is classified in shards of
``--shard-docs``. Prints seconds and peak RSS per mode and the ratio against the baseline.

    python benchmarks/state_scale.py [--docs 100000] [--chunks-per-doc 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from embedpipe.schemas import C

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "/corpus"
TABLE = "chunks"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def build(uri: str, docs: int, per_doc: int) -> None:
    """The synthetic chunks table (only the columns the state and reuse read, plus the keys)."""
    import lancedb

    n = docs * per_doc
    d = np.arange(n) // per_doc
    paths = pa.array([f"dir{i % 100}/doc{i}.txt" for i in range(docs)]).take(pa.array(d))
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "chunk_id": [f"c{i:012d}" for i in range(n)],
            "doc_id": paths,
            "source": pa.array([SOURCE] * n),
            "path": paths,
            C.SIZE: pa.array(1000 + d, pa.int64()),
            "mtime": pa.array([T0] * n, pa.timestamp("us", tz="UTC")),
            "doc_hash": pa.array([f"{i:064x}" for i in range(docs)]).take(pa.array(d)),
            "metadata": pa.array([None] * n, pa.string()),
            "chunk_index": pa.array(np.arange(n) % per_doc, pa.int32()),
            "chunk_hash": [f"{i:064x}" for i in range(n)],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(rng.random(n * 8, dtype=np.float32)), 8),
        }
    )
    lancedb.connect(uri).create_table(TABLE, table, mode="overwrite")


def listing(docs: int, changed: int) -> pa.Table:
    """Every document as a fresh read would give it, ``changed`` of them with new text."""
    from embedpipe.schemas import docs_schema

    edited = set(np.linspace(0, docs - 1, changed, dtype=int).tolist()) if changed else set()
    paths = [f"dir{i % 100}/doc{i}.txt" for i in range(docs)]
    return pa.table(
        {
            "doc_id": paths,
            "source": [SOURCE] * docs,
            "path": paths,
            "text": ["text"] * docs,
            C.SIZE: pa.array(1000 + np.arange(docs), pa.int64()),
            "mtime": pa.array([T0] * docs, pa.timestamp("us", tz="UTC")),
            "doc_hash": [("edited" if i in edited else f"{i:064x}") for i in range(docs)],
            "metadata": pa.array([None] * docs, pa.string()),
        },
        schema=docs_schema(),
    )


def legacy(table: Any, docs: pa.Table, shard_docs: int) -> dict[str, Any]:
    """The replaced implementation: per-chunk rows to a dict of per-document objects, per-row loops."""
    from embedpipe.store import DocState

    t = time.perf_counter()
    known: dict[tuple[str, str], dict[str, DocState]] = {}
    cols = [C.SOURCE, C.PATH, C.DOC_ID, C.DOC_HASH, C.SIZE, C.MTIME, C.METADATA]
    flt = f"(source = '{SOURCE}')"  # the baseline's own hand-quoted filter
    for batch in table.search().where(flt).select(cols).limit(None).to_batches(65536):
        for src, path, doc_id, h, size, mtime, md in zip(
            *(batch.column(c).to_pylist() for c in cols), strict=True
        ):
            per = known.setdefault((src, path), {})
            if doc_id not in per:
                per[doc_id] = DocState(doc_hash=h, size=size, mtime=mtime, metadata=md)
    read = time.perf_counter() - t
    changed = 0
    seen: set[tuple[str, str]] = set()
    for off in range(0, docs.num_rows, shard_docs):
        shard = docs.slice(off, shard_docs)
        shard_known = {
            k: known[k]
            for k in zip(shard.column("source").to_pylist(), shard.column("path").to_pylist(), strict=True)
            if k in known
        }
        values = [shard.column(c).to_pylist() for c in cols]
        for src, path, doc_id, h, size, mtime, md in zip(*values, strict=True):
            seen.add((src, doc_id))
            old = shard_known.get((src, path), {}).get(doc_id)
            if old is None or old.doc_hash != h or (old.size, old.mtime, old.metadata) != (size, mtime, md):
                changed += 1
    gone = [(s, d) for (s, _p), ds in known.items() for d in ds if (s, d) not in seen]
    return {
        "read_s": read,
        "total_s": time.perf_counter() - t,
        "docs": sum(map(len, known.values())),
        "changed": changed,
        "deleted": len(gone),
    }


def arrow(table: Any, store: Any, docs: pa.Table, shard_docs: int) -> dict[str, Any]:
    from embedpipe.incremental import classify, missing_documents, split_state
    from embedpipe.sources.files import FileRef
    from embedpipe.sources.globs import PathFilter
    from embedpipe.store import Scope

    src, paths = docs.column("source").to_pylist(), docs.column("path").to_pylist()
    shards = [  # the listing the run has anyway (discovery's file refs): not timed
        [FileRef(src[i], paths[i], 0, 0, "text") for i in range(off, min(off + shard_docs, docs.num_rows))]
        for off in range(0, docs.num_rows, shard_docs)
    ]
    t = time.perf_counter()
    known = store.doc_state(table, [Scope(SOURCE)])
    read = time.perf_counter() - t
    states = split_state(known, shards)
    changed = 0
    seen: set[tuple[str, str]] = set()
    for i, off in enumerate(range(0, docs.num_rows, shard_docs)):
        delta = classify(docs.slice(off, shard_docs), states[i])
        changed += delta.changed + delta.new
        seen.update(delta.seen)
    gone = missing_documents(known, seen, set(), set(), PathFilter(["**"], []))
    return {
        "read_s": read,
        "total_s": time.perf_counter() - t,
        "docs": known.num_rows,
        "changed": changed,
        "deleted": len(gone),
    }


def reuse(store: Any, lookups: int) -> dict[str, Any]:
    """Vector look-ups per shard for 10 shards, before and after the scalar indexes."""
    table = store.require_table()
    hashes = table.search().select(["chunk_hash"]).limit(None).to_arrow().column(0).to_pylist()
    rng = np.random.default_rng(1)
    shards = [[hashes[j] for j in rng.choice(len(hashes), lookups, replace=False)] for _ in range(10)]

    def timed() -> float:
        snap = store.snapshot()
        t = time.perf_counter()
        for s in shards:
            assert len(store.vectors_for_hashes(snap, s)) == lookups
        return time.perf_counter() - t

    before = timed()
    store.ensure_scalar_indexes(table)
    return {"scan_s": before, "indexed_s": timed()}


def child(mode: str, uri: str, args: argparse.Namespace) -> None:
    from embedpipe.config import StoreSettings
    from embedpipe.store import Store

    store = Store(StoreSettings(uri=uri, table=TABLE))
    docs = listing(args.docs, int(args.docs * args.changed))
    table = store.snapshot()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "legacy":
        out = legacy(table, docs, args.shard_docs)
    elif mode == "arrow":
        out = arrow(table, store, docs, args.shard_docs)
    else:
        out = reuse(store, args.lookups)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["rss_before_mb"] = rss0 / 1024
    print(json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--chunks-per-doc", type=int, default=2)
    ap.add_argument("--changed", type=float, default=0.001, help="share of documents edited")
    ap.add_argument("--shard-docs", type=int, default=2000)
    ap.add_argument("--lookups", type=int, default=200, help="chunk hashes looked up per shard")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--uri", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        child(args.mode, args.uri, args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        uri = str(Path(tmp) / "db")
        t = time.perf_counter()
        build(uri, args.docs, args.chunks_per_doc)
        print(
            f"table: {args.docs * args.chunks_per_doc} chunk rows, {args.docs} documents "
            f"({time.perf_counter() - t:.1f} s to write)"
        )
        results = {}
        for mode in ("legacy", "arrow", "reuse"):
            cmd = [sys.executable, __file__, "--mode", mode, "--uri", uri, *sys.argv[1:]]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(mode, results[mode])
        old, new = results["legacy"], results["arrow"]
        assert (old["docs"], old["changed"], old["deleted"]) == (new["docs"], new["changed"], new["deleted"])
        grown_old = max(1.0, old["peak_rss_mb"] - old["rss_before_mb"])
        grown_new = new["peak_rss_mb"] - new["rss_before_mb"]
        print(
            f"state+change detection: legacy {old['total_s']:.2f} s, {old['peak_rss_mb']:.0f} MB peak; "
            f"arrow {new['total_s']:.2f} s, {new['peak_rss_mb']:.0f} MB peak; "
            f"time ratio {new['total_s'] / old['total_s']:.2f}, RSS growth ratio {grown_new / grown_old:.2f}"
        )
        r = results["reuse"]
        print(
            f"vector reuse, 10 shards x {args.lookups} hashes: scan {r['scan_s']:.2f} s, "
            f"scalar index {r['indexed_s']:.2f} s (ratio {r['indexed_s'] / r['scan_s']:.2f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
