"""The full drift suite on 100,000 new vectors against 100,000 reference vectors (dimension 384).

Measures every statistical, geometry, integrity and text check that a run applies to a version,
at the size of a mid-sized table, in one process: wall time per check and in total, and the peak
resident memory of the process. Targets: under 60 s on 2 CPU cores, under 2 GB.

The baseline, run first in the same process, is one plain NumPy pass over both vector sets
(norms and means): the ratio says how many such passes the whole suite costs. The data are
clustered, anisotropic, unit-length vectors like sentence embeddings, with token counts and
short texts in two scripts; the "new" side is drawn from the same mixture.

Part two runs the suite as a run does, on a real LanceDB table: version 1 holds the 100,000
reference rows and is served, version 2 adds 100,000 new rows; ``load_context`` samples both
through Lance (``checks.sample_size`` = all rows here) and every family that does not need the
model runs as in a flow (the model-based canary, golden set, triplets and pairs are left out: they
cost the embedding of their few hundred texts).

    python benchmarks/checks.py [--n 100000] [--dim 384]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from embedpipe.checks import quality
from embedpipe.checks.drift.classifier import domain_auc
from embedpipe.checks.drift.distribution import centroid_shift, drifted_components
from embedpipe.checks.drift.geometry import anisotropy, duplicate_vectors, effective_rank
from embedpipe.checks.drift.kernel import mmd
from embedpipe.checks.drift.text import language_mix, token_length_psi, truncation_rate
from embedpipe.checks.integrity import scan_vectors
from embedpipe.hashing import sha256_text


def embeddings(
    rng: np.random.Generator, n: int, dim: int, centers: np.ndarray, basis: np.ndarray
) -> np.ndarray:
    """Unit vectors from a mixture of anisotropic clusters (low-rank structure plus noise)."""
    labels = rng.integers(0, len(centers), n)
    latent = rng.standard_normal((n, basis.shape[0])).astype(np.float32)
    x = centers[labels] + 0.35 * (latent @ basis) + 0.05 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def texts(rng: np.random.Generator, n: int) -> list[str]:
    words = "vector index chunk model drift table search query embedding pipeline".split()  # noqa: SIM905
    han = "向量索引分块模型漂移表搜索查询嵌入"
    out = []
    for i in range(n):
        if rng.random() < 0.1:
            out.append("".join(rng.choice(list(han), 20)))
        else:
            out.append(" ".join(rng.choice(words, 12)) + f" {i}")
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_data(n: int, dim: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((12, dim)).astype(np.float32)
    basis = rng.standard_normal((48, dim)).astype(np.float32) / np.sqrt(48)
    return {
        "ref": embeddings(rng, n, dim, centers, basis),
        "new": embeddings(rng, n, dim, centers, basis),
        "ref_tok": rng.integers(20, 254, n),
        "new_tok": rng.integers(20, 254, n),
        "ref_txt": texts(rng, n),
        "new_txt": texts(rng, n),
        "noise": rng.normal(0, 1e-4, (1000, dim)).astype(np.float32),
    }


def in_memory(d: dict[str, Any], dim: int) -> None:
    ref, new, new_tok = d["ref"], d["new"], d["new_tok"]
    hashes = [sha256_text(t) for t in d["new_txt"]]
    vec_col = pa.FixedSizeListArray.from_arrays(pa.array(new.ravel()), dim)
    batches = [
        pa.record_batch([vec_col.slice(i, 16384)], names=["vector"]) for i in range(0, len(new), 16384)
    ]
    jitter = new[:1000] + d["noise"]
    loaded_mb = rss_mb()

    t0 = time.perf_counter()
    for m in (ref, new):
        np.linalg.norm(m, axis=1).sum()
        m.mean(axis=0)
    baseline = time.perf_counter() - t0

    suite: list[tuple[str, Callable[[], Any]]] = [
        ("integrity", lambda: scan_vectors(batches, "vector", dim, True, vec_col.type)),
        ("centroid_shift", lambda: centroid_shift(ref, new)),
        ("domain_auc", lambda: domain_auc(ref, new)),
        ("mmd", lambda: mmd(ref, new)),
        ("drifted_components", lambda: drifted_components(ref, new)),
        ("anisotropy", lambda: anisotropy(ref, new)),
        ("effective_rank", lambda: effective_rank(ref, new)),
        ("duplicate_vectors", lambda: duplicate_vectors(new, hashes)),
        ("token_length_psi", lambda: token_length_psi(d["ref_tok"], new_tok)),
        ("truncation_rate", lambda: truncation_rate(new_tok, limit=254)),
        ("language_mix", lambda: language_mix(d["ref_txt"], d["new_txt"])),
        # the same 1,000 chunks in both versions, re-embedded with float noise
        ("neighbour_stability", lambda: quality.neighbour_overlap(new[:1000], jitter, 10)),
    ]
    print(f"drift suite in memory: {len(new):,} new vs {len(ref):,} reference vectors, dim {dim}")
    print(f"{'check':<22}{'seconds':>9}  result")
    total = 0.0
    fired = []
    for name, fn in suite:
        t = time.perf_counter()
        res = fn()
        dt = time.perf_counter() - t
        total += dt
        if hasattr(res, "fired"):
            fired += [name] if res.fired else []
            shown = f"statistic={res.statistic:.4g} threshold={res.threshold:.4g} fired={res.fired}"
        else:
            shown = f"overlap={res:.3f}"
        print(f"{name:<22}{dt:>9.2f}  {shown}")
    print(f"{'total':<22}{total:>9.2f}  (target < 60 s)")
    print(
        f"baseline (one NumPy pass over both sets): {baseline:.3f} s; "
        f"suite/baseline = {total / baseline:.0f}x"
    )
    print(f"suite time / 60 s target = {total / 60:.3f}")
    print(
        f"peak RSS of this process {rss_mb():.0f} MB (target < 2048 MB); "
        f"of which making the data: {loaded_mb:.0f} MB"
    )
    print(f"checks fired on same-distribution data: {fired or 'none'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--part", choices=["both", "memory", "run"], default="both")
    args = ap.parse_args()
    if args.part in ("both", "memory"):
        in_memory(make_data(args.n, args.dim, args.seed), args.dim)
    if args.part == "both":  # its own process, so that its memory is measured on its own
        print(flush=True)
        subprocess.run(
            [sys.executable, __file__, "--part", "run", "--n", str(args.n), "--dim", str(args.dim)],
            check=True,
        )
    if args.part == "run":
        as_a_run(make_data(args.n, args.dim, args.seed), args.dim)


def _rows(
    vectors: np.ndarray, tokens: np.ndarray, texts: list[str], run_id: str, dim: int, tag: str
) -> pa.Table:
    from datetime import UTC, datetime

    from embedpipe.schemas import ModelIdentity, chunks_schema

    n = len(vectors)
    identity = ModelIdentity(name="bench", weights_hash="0" * 64, dim=dim, max_seq_length=256, normalize=True)
    schema = chunks_schema(dim, identity.table_metadata())
    now = datetime.now(UTC)
    cols = {
        "chunk_id": [f"{tag}-{i}" for i in range(n)],
        "doc_id": [f"{tag}/doc{i // 4}.md" for i in range(n)],
        "source": ["/bench"] * n,
        "path": [f"{tag}/doc{i // 4}.md" for i in range(n)],
        "size_bytes": [1000] * n,
        "mtime": [now] * n,
        "doc_hash": ["h"] * n,
        "metadata": [None] * n,
        "chunk_index": [i % 4 for i in range(n)],
        "text": texts,
        "char_start": [0] * n,
        "char_end": [len(t) for t in texts],
        "n_tokens": tokens.astype(np.int32),
        "chunk_hash": [sha256_text(t) for t in texts],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        "model_id": [identity.model_id] * n,
        "run_id": [run_id] * n,
        "embedded_at": [now] * n,
    }
    return pa.Table.from_pydict(cols, schema=schema)


def as_a_run(d: dict[str, Any], dim: int) -> None:
    ref, new, ref_tok, new_tok, ref_txt, new_txt = (
        d[k] for k in ("ref", "new", "ref_tok", "new_tok", "ref_txt", "new_txt")
    )
    import tempfile
    import uuid

    from embedpipe.checks.registry import FAMILIES
    from embedpipe.checks.suite.context import load_context
    from embedpipe.checks.suite.run import run_family
    from embedpipe.config import get_settings
    from embedpipe.store import Store

    model_based = {"canary", "golden", "triplets", "pairs"}
    with tempfile.TemporaryDirectory() as tmp:
        settings = get_settings(
            {"store": {"uri": f"{tmp}/db"}, "checks": {"sample_size": len(new), "triplets": [], "pairs": []}}
        )
        store = Store(settings.store)
        first = _rows(ref, ref_tok, ref_txt, str(uuid.uuid4()), dim, "a")
        store.db.create_table(settings.store.table, data=first, schema=first.schema)
        store.publish(1)
        table = store.open_table()
        table.add(_rows(new, new_tok, new_txt, str(uuid.uuid4()), dim, "b"))
        del first, d, ref, new, ref_txt, new_txt
        t = time.perf_counter()
        ctx = load_context(store, settings.checks, settings.model, "bench", int(table.version))
        sample_s = time.perf_counter() - t
        sampled = len(ctx.ref.vectors) if ctx.ref else 0
        print(
            f"as a run: table of {table.count_rows():,} rows, version 2 adds {len(ctx.new.vectors):,} "
            f"rows; reference version {ctx.reference_version} sampled {sampled:,}"
        )
        print(f"{'load samples (Lance)':<22}{sample_s:>9.2f}")
        total = sample_s
        for family in (f.name for f in FAMILIES):
            if family in model_based:
                continue
            t = time.perf_counter()
            results = run_family(family, ctx, settings.checks, store)
            dt = time.perf_counter() - t
            total += dt
            shown = ", ".join(f"{r.check}={r.status}" for r in results)
            print(f"{family:<22}{dt:>9.2f}  {shown}")
        print(f"{'total':<22}{total:>9.2f}  (target < 60 s)")
        print(f"peak RSS of this process {rss_mb():.0f} MB (target < 2048 MB), writing the table included")


if __name__ == "__main__":
    main()
