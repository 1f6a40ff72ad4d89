"""A first run on long chunks with the default ``model.backend = "auto"``, against plain torch encode.

Corpus: ``--pages`` (default 150) pages of the Python standard library's documentation, rendered as
plain text by ``pydoc`` (real prose and signatures, so most chunks fill the 256-token budget), one
``.txt`` file per module, written to a temporary folder.

Per repeat, in this process:

- **embedpipe**: the whole ``sync`` flow with default settings (``backend = auto``, checks on)
  into a fresh database and a *fresh export folder*, so the run pays everything a first run pays
  on a new machine: measuring the backends against torch, making and verifying the exports,
  embedding, the checks, the commit and the fast query path. Timed by the flow's own duration and
  by the wall time of the call.
- **baseline**: ``SentenceTransformer.encode`` in fp32 at ``batch_size=32`` (sentence-transformers'
  default), normalised, on the very chunk texts the run stored. Its model load is not timed.

Before timing, one small throwaway run (``examples/corpus/basics``, ``backend = torch``) starts
Prefect's temporary server and imports torch, as the baseline's own model load does.

Prints the chunk count, the backend chosen and the decision's figures, both times and the ratio
baseline encode time / embedpipe first-run time (target: >= 1.6).

    python benchmarks/first_run.py [--pages 150] [--repeats 1] [--keep]
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import pydoc
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backends import print_machine, run_sync  # also sets HF_HUB_OFFLINE etc.

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.6
_SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "pydoc_data", "test"}


def make_pages(folder: Path, pages: int) -> int:
    """Write ``pages`` standard-library modules' pydoc text as .txt files; returns the bytes written."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(
        m.name
        for m in pkgutil.iter_modules()
        if m.module_finder.path.startswith(sys.base_prefix)  # type: ignore[union-attr]
        and not m.name.startswith("_")
        and m.name not in _SKIP
    )
    written = n = 0
    for name in names:
        if n >= pages:
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                text = pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
        except Exception:  # a module that cannot be imported here
            continue
        if len(text) < 2_000:
            continue
        text = text[:40_000]  # a page, not a whole manual
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
        written += len(text.encode())
        n += 1
    return written


def plain_encode_seconds(texts: list[str], model: Any) -> float:
    t0 = time.perf_counter()
    model.encode(
        texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args(argv)

    from sentence_transformers import SentenceTransformer

    from embedpipe.config import get_settings
    from embedpipe.embedding.card import resolve_model_path
    from embedpipe.schemas import C
    from embedpipe.store import Store

    print_machine()
    work = Path(tempfile.mkdtemp(prefix="embedpipe-first-run-"))
    try:
        corpus = work / "pages"
        size = make_pages(corpus, args.pages)
        pages = len(list(corpus.iterdir()))
        print(f"corpus: {pages} standard-library pages (pydoc text), {size / 1e6:.1f} MB")

        warm = get_settings(
            {
                "store": {"uri": str(work / "warm-db")},
                "model": {"device": "cpu", "backend": "torch", "export_dir": str(work / "warm-exports")},
            }
        )
        run_sync([str(ROOT / "examples" / "corpus" / "basics")], warm)
        base_model = SentenceTransformer(
            str(resolve_model_path(warm.model.name, True)), device="cpu", local_files_only=True
        )

        ratios, firsts, walls, bases = [], [], [], []
        for r in range(args.repeats):
            settings = get_settings(
                {
                    "store": {"uri": str(work / f"db-{r}")},
                    "model": {"device": "cpu", "export_dir": str(work / f"exports-{r}")},
                }
            )
            assert settings.model.backend == "auto"
            t0 = time.perf_counter()
            s = run_sync([str(corpus)], settings)
            wall = time.perf_counter() - t0
            texts = Store(settings.store).open_table().to_arrow().column(C.TEXT).to_pylist()
            base = plain_encode_seconds(texts, base_model)
            ratio = base / s.duration_s
            choice = s.backend_choice or {}
            print(
                f"repeat {r + 1}: {s.chunks_embedded} chunks; backend={s.backend} ({s.precision}); "
                f"first run {s.duration_s:.1f} s by the flow ({wall:.1f} s wall), of which the backend "
                f"decision {choice.get('guard', {}).get('seconds', 0):.1f} s; plain torch encode "
                f"{base:.1f} s ({len(texts) / base:.1f} chunks/s) -> {ratio:.2f}x"
            )
            for c in choice.get("candidates", []):
                print(
                    f"    {c['backend']:<10} {c['precision']:<5} {c['texts_per_s']:6.2f} probe texts/s "
                    f"{c['speedup']:5.2f}x  cosine mean {c['mean_cosine']:.6f} min {c['min_cosine']:.6f} "
                    f"{'passed' if c['passed'] else 'failed'}  {c['note']}"
                )
            ratios.append(ratio)
            firsts.append(s.duration_s)
            walls.append(wall)
            bases.append(base)
        med = statistics.median(ratios)
        print(
            "\nfirst run with backend=auto, export and checks included: "
            f"median {statistics.median(firsts):.1f} s "
            f"(wall {statistics.median(walls):.1f} s); plain torch encode {statistics.median(bases):.1f} s; "
            f"ratio {med:.2f}x (target >= {TARGET}) {'MET' if med >= TARGET else 'NOT MET'}"
        )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    raise SystemExit(main())
