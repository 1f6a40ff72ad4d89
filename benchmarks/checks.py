"""The full drift suite on 100,000 new vectors against 100,000 reference vectors (dimension 384).

Measures every statistical, geometry, integrity and text check that a run applies to a version,
at the size of a mid-sized table, in one process: wall time per check and in total, and the peak
resident memory of the process. Targets: under 60 s on 2 CPU cores, under 2 GB.

The baseline, run first in the same process, is one plain NumPy pass over both vector sets
(norms and means): the ratio says how many such passes the whole suite costs. The data are
clustered, anisotropic, unit-length vectors like sentence embeddings, with token counts and
short texts in two scripts; the "new" side is drawn from the same mixture.

    python benchmarks/checks.py [--n 100000] [--dim 384]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import pyarrow as pa

from embedpipe.checks import drift, quality
from embedpipe.checks.integrity import scan_vectors


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    centers = rng.standard_normal((12, args.dim)).astype(np.float32)
    basis = rng.standard_normal((48, args.dim)).astype(np.float32) / np.sqrt(48)
    ref = embeddings(rng, args.n, args.dim, centers, basis)
    new = embeddings(rng, args.n, args.dim, centers, basis)
    ref_tok = rng.integers(20, 254, args.n)
    new_tok = rng.integers(20, 254, args.n)
    ref_txt, new_txt = texts(rng, args.n), texts(rng, args.n)
    hashes = [quality.text_hash(t) for t in new_txt]
    vec_col = pa.FixedSizeListArray.from_arrays(pa.array(new.ravel()), args.dim)
    batches = [pa.record_batch([vec_col.slice(i, 16384)], names=["vector"]) for i in range(0, args.n, 16384)]
    jitter = new[:1000] + rng.normal(0, 1e-4, (1000, args.dim)).astype(np.float32)
    loaded_mb = rss_mb()

    t0 = time.perf_counter()
    for m in (ref, new):
        np.linalg.norm(m, axis=1).sum()
        m.mean(axis=0)
    baseline = time.perf_counter() - t0

    suite = [
        ("integrity", lambda: scan_vectors(batches, "vector", args.dim, True, vec_col.type)),
        ("centroid_shift", lambda: drift.centroid_shift(ref, new)),
        ("domain_auc", lambda: drift.domain_auc(ref, new)),
        ("mmd", lambda: drift.mmd(ref, new)),
        ("drifted_components", lambda: drift.drifted_components(ref, new)),
        ("anisotropy", lambda: drift.anisotropy(ref, new)),
        ("effective_rank", lambda: drift.effective_rank(ref, new)),
        ("duplicate_vectors", lambda: drift.duplicate_vectors(new, hashes)),
        ("token_length_psi", lambda: drift.token_length_psi(ref_tok, new_tok)),
        ("truncation_rate", lambda: drift.truncation_rate(new_tok, limit=254)),
        ("language_mix", lambda: drift.language_mix(ref_txt, new_txt)),
        # the same 1,000 chunks in both versions, re-embedded with float noise
        ("neighbour_stability", lambda: quality.neighbour_overlap(new[:1000], jitter, 10)),
    ]
    print(f"drift suite: {args.n:,} new vs {args.n:,} reference vectors, dim {args.dim}")
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
    peak = rss_mb()
    print(f"{'total':<22}{total:>9.2f}  (target < 60 s)")
    print(
        f"baseline (one NumPy pass over both sets): {baseline:.3f} s; "
        f"suite/baseline = {total / baseline:.0f}x"
    )
    print(f"suite time / 60 s target = {total / 60:.3f}")
    print(
        f"peak RSS of the process {peak:.0f} MB (target < 2048 MB); "
        f"peak before the suite ran (making the data): {loaded_mb:.0f} MB"
    )
    print(f"checks fired on same-distribution data: {fired or 'none'}")


if __name__ == "__main__":
    main()
