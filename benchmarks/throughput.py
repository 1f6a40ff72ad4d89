"""Pipeline throughput against a hand-written ``SentenceTransformer.encode`` loop.

Runs the whole ``sync`` flow (discover, ingest, chunk, embed, stage, one commit, run record) on a
corpus of 2,000+ chunks made from the bundled sample corpus, then, in the same process, plain
``SentenceTransformer.encode`` on the very same chunk texts with the same batch size and device.
Prints both rates and their ratio (target: pipeline/raw >= 0.90 on CPU).

One-time start-up (Prefect's temporary server, loading the model) is paid by a warm-up run before
either is timed, as it is for a long-running deployment; the cold first run is printed as well.

    python benchmarks/throughput.py [--copies 20] [--repeats 2] [--batch-size 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "corpus"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def make_corpus(dest: Path, copies: int) -> Path:
    """``copies`` copies of the sample corpus; a copy number in every text keeps chunks distinct."""
    for k in range(copies):
        for src in SAMPLE.rglob("*"):
            if not src.is_file():
                continue
            out = dest / f"copy{k:03d}" / src.relative_to(SAMPLE)
            out.parent.mkdir(parents=True, exist_ok=True)
            if src.suffix in {".txt", ".md"}:
                out.write_text(f"Copy {k}.\n\n" + src.read_text(encoding="utf-8"), encoding="utf-8")
            else:
                shutil.copy(src, out)  # records repeat: their doc_ids differ by folder
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from embedpipe.config import get_settings
    from embedpipe.embedding.embedder import get_embedder
    from embedpipe.flows.sync import sync
    from embedpipe.store import Store

    work = Path(tempfile.mkdtemp(prefix="embedpipe-bench-"))
    corpus = make_corpus(work / "corpus", args.copies)
    model = {"device": args.device, "batch_size": args.batch_size}

    def settings(db: str):
        return get_settings({"store": {"uri": str(work / db)}, "model": model})

    t0 = time.perf_counter()
    warm = sync([str(SAMPLE / "basics")], settings("warmup"))
    cold_s = time.perf_counter() - t0
    print(
        f"cold start (temporary Prefect server + model load + {warm.chunks_embedded} chunks): {cold_s:.1f}s"
    )

    embedder = get_embedder(settings("x").model)
    st_model = embedder._model  # the very SentenceTransformer object the pipeline uses

    pipe_rates, raw_rates, ratios = [], [], []
    for rep in range(args.repeats):
        s = settings(f"db{rep}")
        t = time.perf_counter()
        summary = sync([str(corpus)], s)
        pipe_s = time.perf_counter() - t
        assert summary.status == "completed" and summary.docs_rejected == 0, summary
        texts = Store(s.store).open_table().to_arrow().column("text").to_pylist()
        assert len(texts) == summary.chunks_embedded >= 2000, len(texts)

        t = time.perf_counter()
        st_model.encode(
            texts,
            batch_size=args.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        raw_s = time.perf_counter() - t
        pipe_rate, raw_rate = len(texts) / pipe_s, len(texts) / raw_s
        pipe_rates.append(pipe_rate)
        raw_rates.append(raw_rate)
        ratios.append(pipe_rate / raw_rate)
        print(
            f"repeat {rep + 1}: {len(texts)} chunks  pipeline {pipe_s:.1f}s = {pipe_rate:.1f} chunks/s  "
            f"raw encode {raw_s:.1f}s = {raw_rate:.1f} chunks/s  ratio {pipe_rate / raw_rate:.3f}"
        )
    print()
    print(f"chunks:            {len(texts)} (batch size {args.batch_size}, device {embedder.device})")
    print(f"pipeline (sync):   {statistics.median(pipe_rates):.1f} chunks/s (median of {args.repeats})")
    print(f"raw encode:        {statistics.median(raw_rates):.1f} chunks/s (median of {args.repeats})")
    print(f"ratio pipeline/raw: {statistics.median(ratios):.3f}  (target >= 0.90)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
