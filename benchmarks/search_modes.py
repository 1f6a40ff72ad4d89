"""Golden-set figures of each search mode (vector, text, hybrid) and full-text tokenizer on the
bundled sample corpus, and each mode's search latency: the measurements behind ``index.search_mode``.

The sample corpus (English and Chinese, every format) is chunked and embedded with the bundled
all-MiniLM-L6-v2 as a run does, and committed to a LanceDB table in a temporary folder (no Prefect
run, no checks). For each tokenizer the full-text index is rebuilt on the text column, then the
golden set ``examples/quality/golden.jsonl`` is searched in each mode by the path the golden checks
use (``checks.suite.probes.search_docs``): recall@k, MRR and nDCG@10, over all queries and over the
Chinese ones alone. Latency: p50 of ``Searcher.search`` (the ``embedpipe search`` path: Lance read
directly, the query embedded by the table's model) over the golden queries, after one warm-up
pass; vector mode is the baseline of the ratios.

    python benchmarks/search_modes.py [--tokenizers icu ngram simple] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "corpus"
GOLDEN = ROOT / "examples" / "quality" / "golden.jsonl"
RUN = "00000000-0000-4000-8000-000000000015"
MODES = ("vector", "text", "hybrid")


def build(db: Path):  # type: ignore[no-untyped-def]
    """The sample corpus as a one-version table, embedded as a run embeds it; returns the settings."""
    from embedpipe.chunking import chunk_documents
    from embedpipe.config import get_settings
    from embedpipe.embedding.embedder import get_embedder
    from embedpipe.sources.discover import discover
    from embedpipe.sources.parse import read_documents
    from embedpipe.store import Store
    from embedpipe.tasks.chunking import chunking_identity
    from embedpipe.tasks.embedding import embed_chunks, table_schema

    settings = get_settings({"store": {"uri": str(db)}, "model": {"device": "cpu"}})
    refs, _ = discover([str(SAMPLE)], settings.source, split_bytes=1 << 30)
    docs, _, _ = read_documents(refs, settings.source)
    embedder = get_embedder(settings.model)
    ident = chunking_identity(embedder, settings)
    chunks, _ = chunk_documents(docs, embedder.tokenizer, ident.budget, ident.overlap)
    schema = table_schema(embedder, settings)
    rows, *_ = embed_chunks(chunks, embedder, settings.model.batch_size, RUN, schema)
    store = Store(settings.store)
    store.commit(RUN, [store.stage(RUN, 0, rows)], schema)
    return settings, embedder, rows.num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizers", nargs="+", default=["icu", "ngram", "simple"])
    parser.add_argument("--repeat", type=int, default=5, help="timed passes over the golden queries")
    args = parser.parse_args()

    from embedpipe.checks import quality
    from embedpipe.checks.suite.probes import search_docs
    from embedpipe.schemas import C
    from embedpipe.search import Searcher
    from embedpipe.store import Store
    from embedpipe.store.vector_index import fts_config

    golden = quality.load_golden([str(GOLDEN)])
    zh = [i for i, q in enumerate(golden) if any("\u4e00" <= ch <= "\u9fff" for ch in q.query)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        settings, embedder, n_rows = build(Path(tmp) / "db")
        print(f"sample corpus: {n_rows} chunks embedded in {time.perf_counter() - t0:.1f} s")
        k = settings.checks.k
        texts = [q.query for q in golden]
        qv = embedder.encode(texts, batch_size=32)
        store = Store(settings.store)
        print(f"golden set: {len(golden)} queries ({len(zh)} Chinese), recall@{k}, MRR, nDCG@10")
        head = f"{'tokenizer':<10} {'mode':<7} {'recall':>7} {'mrr':>7} {'ndcg':>7}"
        print(f"{head}   {'zh recall':>9} {'zh mrr':>7}")
        for tok in args.tokenizers:
            table = store.require_table()
            # the index embedpipe builds for index.fts_tokenizer = tok
            table.create_index(C.TEXT, config=fts_config(tok), replace=True)
            table = store.require_table()
            for mode in MODES:
                if mode == "vector" and tok != args.tokenizers[0]:
                    continue
                ranked = [
                    search_docs(store, table, v, max(k, 10), mode, t) for v, t in zip(qv, texts, strict=True)
                ]
                m = quality.retrieval_metrics(ranked, golden, k)
                mz = quality.retrieval_metrics([ranked[i] for i in zh], [golden[i] for i in zh], k)
                print(
                    f"{tok if mode != 'vector' else '-':<10} {mode:<7} {m['recall']:>7.3f} {m['mrr']:>7.3f} "
                    f"{m['ndcg']:>7.3f}   {mz['recall']:>9.3f} {mz['mrr']:>7.3f}"
                )
        searcher = Searcher(settings)
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for q in texts:  # warm-up: the query model loads once
            searcher.search(q, 10, "latest", "hybrid")
        for _ in range(args.repeat):  # modes interleaved, so that other load on the machine hits each alike
            for q in texts:
                for mode in MODES:
                    t = time.perf_counter()
                    searcher.search(q, 10, "latest", mode)
                    times[mode].append(time.perf_counter() - t)
        p50 = {mode: statistics.median(ts) for mode, ts in times.items()}
        print(
            f"search p50 (k=10, {n_rows} rows, tokenizer {args.tokenizers[-1]}, query by {searcher.runtime}):"
        )
        for mode in MODES:
            print(f"  {mode:<7} {p50[mode] * 1000:7.2f} ms  ({p50[mode] / p50['vector']:.2f}x vector)")


if __name__ == "__main__":
    main()
