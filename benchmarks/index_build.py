"""Vector index: exact scan against IVF_HNSW_SQ and IVF_PQ, and a refresh against a full build.

On synthetic clustered unit vectors (200 centres, so neighbourhoods are real) of ``--dim``
dimensions, for each size in ``--rows``:

- the baseline: p50 of an exact (flat) cosine search, k=10, over 30 fresh queries;
- each index type built with embedpipe's parameters (``vector_params``): its build time, and its
  p50 and recall@10 against the exact results at a few (nprobes, refine_factor) pairs;
- with ``--refresh``: ``Store.refresh_indexes`` on the table (build and tuning), then again after
  0.1 % more rows (the incremental refresh), printed as a share of the full build.

Used for the ``index.min_rows`` default and the figures in docs/indexes.md::

    python benchmarks/index_build.py --dim 384 --rows 20000,50000,100000
    python benchmarks/index_build.py --dim 384 --rows 50000 --refresh --types none
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa

from embedpipe.config import get_settings
from embedpipe.schemas import C
from embedpipe.store import Store
from embedpipe.store.vector_index import _vector_config, vector_params


def make_rows(rng: np.random.Generator, centres: np.ndarray, n: int, start: int) -> pa.Table:
    dim = centres.shape[1]
    v = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = [f"c{i}" for i in range(start, start + n)]
    return pa.table(
        {
            C.CHUNK_ID: ids,
            C.DOC_ID: ids,
            C.TEXT: [f"chunk {i}" for i in range(start, start + n)],
            C.VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), dim),
        }
    )


def p50_ms(table: lancedb.table.Table, queries: list, **params: int) -> tuple[float, list[set[str]]]:
    times, found = [], []
    for q in queries:
        s = time.perf_counter()
        query = table.search(q).distance_type("cosine").limit(10)
        if "nprobes" in params:
            query = query.nprobes(params["nprobes"])
        if "refine_factor" in params:
            query = query.refine_factor(params["refine_factor"])
        rows = query.select([C.CHUNK_ID]).to_list()
        times.append(time.perf_counter() - s)
        found.append({r[C.CHUNK_ID] for r in rows})
    return float(np.median(times)) * 1000, found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--rows", default="20000,50000")
    ap.add_argument("--types", default="IVF_HNSW_SQ,IVF_PQ", help="comma-separated, or none")
    ap.add_argument("--refresh", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, args.dim)).astype(np.float32)
    for n in (int(x) for x in args.rows.split(",")):
        folder = Path(tempfile.mkdtemp(prefix="embedpipe-index-bench-"))
        try:
            settings = get_settings({"store": {"uri": str(folder)}, "index": {"min_rows": 1, "fts": False}})
            table = lancedb.connect(str(folder)).create_table(
                settings.store.table, make_rows(rng, centres, n, 0)
            )
            queries = make_rows(rng, centres, 30, 10**8).column(C.VECTOR).to_pylist()
            exact_ms, exact = p50_ms(table, queries)
            print(f"dim={args.dim} rows={n}: exact p50 {exact_ms:.1f} ms (the baseline)", flush=True)
            for kind in [t for t in args.types.split(",") if t != "none"]:
                kind, params = vector_params(n, args.dim, kind)
                s = time.perf_counter()
                table.create_index(C.VECTOR, config=_vector_config(kind, params), replace=True)
                build = time.perf_counter() - s
                parts = int(params["num_partitions"])
                for nprobes, refine in ((max(1, parts // 20), 10), (max(1, parts // 10), 20)):
                    ms, got = p50_ms(table, queries, nprobes=nprobes, refine_factor=refine)
                    recall = np.mean([len(a & b) / 10 for a, b in zip(got, exact, strict=True)])
                    print(
                        f"  {kind} {params}: build {build:.1f} s; nprobes={nprobes} refine={refine}: "
                        f"p50 {ms:.1f} ms ({ms / exact_ms:.2f}x exact), recall@10 {recall:.3f}",
                        flush=True,
                    )
            if args.refresh:
                store = Store(settings.store)
                s = time.perf_counter()
                done = store.refresh_indexes(settings.index, retrain=True)
                full = time.perf_counter() - s
                print(f"  refresh_indexes, full build and tuning: {full:.1f} s {done.actions}", flush=True)
                table.add(make_rows(rng, centres, max(1, n // 1000), n))
                s = time.perf_counter()
                done = store.refresh_indexes(settings.index)
                inc = time.perf_counter() - s
                print(
                    f"  refresh_indexes after +0.1% rows: {inc:.2f} s = {inc / full:.1%} of the full build "
                    f"{done.actions}",
                    flush=True,
                )
        finally:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
