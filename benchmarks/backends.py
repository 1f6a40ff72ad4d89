"""Pipeline throughput per inference backend against plain ``SentenceTransformer.encode``.

On one corpus of 2,000+ chunks made from the bundled sample corpus (as ``throughput.py`` makes
it), runs, in the same process and interleaved repeat by repeat:

- the baseline: a ``SentenceTransformer`` loaded by this script, ``encode`` in fp32 on the very
  chunk texts the pipeline stored, at ``--batch-size`` (default 32, sentence-transformers' own
  default), normalised, to numpy;
- for each backend (``torch``, ``onnx``, ``onnx-int8``, ``openvino``): the whole ``sync`` flow
  (discover, ingest, chunk, embed, stage, checks, one commit, run record) with default settings
  into a fresh database, and the pipeline's embedder alone on the same texts ("model only").

Order within each repeat: the first backend's pipeline, then the baseline (it encodes the chunk
texts that run stored), then the other backends.

Prints chunks/s (medians over ``--repeats``), the ratio of each pipeline to the baseline (median
of the per-repeat ratios), the cosine between each backend's stored vectors and the baseline's
vectors for the same texts, and the targets on CPU: pipeline with ``onnx-int8`` >= 2.0x and
pipeline with ``torch`` >= 0.95x plain torch encode.

Before timing, each backend syncs ``examples/corpus/basics`` once into a scratch database: that
loads its model and makes its ONNX export (into a fresh export folder in the temporary directory
unless ``--export-dir`` is given), so the cold time printed for it includes the export. The first
warm-up also starts Prefect's temporary server. ``openvino`` compiles the fp32 ``onnx`` export, so
it reuses that export when ``onnx`` ran first.

Backends whose packages are not installed, or that cannot run on the device or at the precision
asked for (a ``ConfigError`` when the embedder loads), are skipped with a note. ``backends_gpu.py``
reuses :func:`run` on a CUDA machine.

    python benchmarks/backends.py [--copies 20] [--repeats 2] [--batch-size 32] [--device cpu]
        [--backends torch,onnx,onnx-int8,openvino] [--precision auto] [--export-dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import SAMPLE, make_corpus  # also sets HF_HUB_OFFLINE etc.

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
ALL_BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")
CPU_TARGETS = {"onnx-int8": 2.0, "torch": 0.95}
"""Minimum pipeline / plain torch encode ratio per backend on CPU (the issue's targets)."""


@dataclass
class Variant:
    """One pipeline configuration to measure.

    Attributes:
        label: Its name in the table (and in ``targets``).
        model: Overrides for ``settings.model`` (``backend``, ``precision``, ``devices``, ...).
    """

    label: str
    model: dict[str, Any]
    precision: str = "?"
    devices: str = ""
    batch_tokens: int = 0
    cold_s: float = 0.0
    export_s: float | None = None
    pipe_rates: list[float] = field(default_factory=list)
    model_rates: list[float] = field(default_factory=list)
    ratios: dict[str, list[float]] = field(default_factory=dict)
    last_db: Path | None = None
    cos_mean: float | None = None
    cos_min: float | None = None
    error: str | None = None


@dataclass
class Baseline:
    """Plain ``SentenceTransformer.encode`` at one batch size."""

    label: str
    batch_size: int
    rates: list[float] = field(default_factory=list)
    vectors: np.ndarray | None = None


class _ExportLog(logging.Handler):
    """Catches the export time that :func:`embedpipe.embedding.exports.ensure_export` logs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.exports: list[tuple[str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith("exported %s in") and isinstance(record.args, tuple) and len(record.args) >= 2:
            kind, seconds = record.args[0], record.args[1]
            self.exports.append((str(kind), float(seconds)))


def cpu_model() -> str:
    """The CPU's model name and its vector-ISA flags that matter here, from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8") if f in flags]
    return f"{name or 'unknown'} (ISA: {' '.join(isa) or 'none of avx2/avx512/amx'})"


def print_machine() -> None:
    import importlib.metadata as md

    import torch

    print(f"CPU: {cpu_model()}")
    print(f"CPU cores visible: {os.cpu_count()}, torch threads: {torch.get_num_threads()}")
    versions = []
    for pkg in ("torch", "sentence-transformers", "onnxruntime", "openvino", "lancedb", "prefect"):
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            versions.append(f"{pkg} -")
    print("versions: " + ", ".join(versions))


def run_sync(sources: list[str], settings: Any) -> Any:
    """The RunSummary of a completed ``sync`` run, as the CLI gets it (``return_state=True``).

    Raises:
        RuntimeError: The run failed (its message says why).
    """
    from embedpipe.flows.sync import sync

    state = sync(sources, settings, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    if state.is_failed() or getattr(result, "status", None) != "completed":
        raise RuntimeError(f"sync failed: {getattr(result, 'message', None) or state.message}")
    return result


def _dtype_name(st_model: Any) -> str:
    try:
        dtype = str(next(st_model.parameters()).dtype)
    except StopIteration:  # pragma: no cover
        return "?"
    return {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}.get(dtype, dtype)


def _read_table(settings: Any) -> tuple[list[str], np.ndarray]:
    from embedpipe.store import Store

    table = Store(settings.store).open_table().to_arrow()
    texts = table.column("text").to_pylist()
    vectors = table.column("vector").combine_chunks()
    dim = vectors.type.list_size
    flat = vectors.flatten().to_numpy(zero_copy_only=False)
    return texts, np.asarray(flat, dtype=np.float32).reshape(-1, dim)


def _cosines(texts: list[str], vectors: np.ndarray, ref_texts: list[str], ref: np.ndarray) -> np.ndarray:
    """Cosine of each stored vector to the reference vector of the same text."""
    where = {t: i for i, t in enumerate(ref_texts)}
    idx = np.fromiter((where[t] for t in texts), dtype=np.int64, count=len(texts))
    a = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    b = ref[idx] / np.maximum(np.linalg.norm(ref[idx], axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "–" if x is None else format(x, spec)


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def run(
    variants: list[Variant],
    baselines: list[Baseline],
    *,
    device: str = "cpu",
    copies: int = 20,
    repeats: int = 2,
    export_dir: str | None = None,
    targets: dict[str, float] | None = None,
    keep: bool = False,
) -> int:
    """Measure ``variants`` against ``baselines`` and print the table.

    Args:
        variants: Pipeline configurations, run in this order in every repeat; the baselines run
            right after the first one (whose stored chunk texts they encode).
        baselines: Plain ``SentenceTransformer.encode`` runs; the first is the reference of the
            targets (and of the cosine column).
        device: Device for the baseline model and ``model.device`` of every variant.
        copies: Copies of the sample corpus (20 give about 2,500 chunks).
        repeats: Interleaved repeats; medians are reported.
        export_dir: ONNX export cache; unset: a fresh folder in the temporary directory.
        targets: Minimum pipeline / first-baseline ratio per variant label.
        keep: Keep the temporary directory (corpus, databases, exports) and print its path.

    Returns:
        0, or 1 when a run of an available backend failed.
    """
    from embedpipe.config import get_settings
    from embedpipe.embedding import exports as eb
    from embedpipe.embedding.card import resolve_model_path
    from embedpipe.embedding.embedder import get_embedder
    from embedpipe.embedding.runners import require_backend
    from embedpipe.errors import ConfigError

    print_machine()
    work = Path(tempfile.mkdtemp(prefix="embedpipe-bench-backends-"))
    exports = export_dir or str(work / "exports")
    corpus = make_corpus(work / "corpus", copies)
    print(f"work dir: {work}  export dir: {exports}{'' if export_dir else ' (fresh)'}")

    def settings(variant: Variant, db: str) -> Any:
        model = {"device": device, "export_dir": exports, **variant.model}
        return get_settings({"store": {"uri": str(work / db)}, "model": model})

    export_log = _ExportLog()
    blog = logging.getLogger(eb.__name__)
    blog.addHandler(export_log)
    if blog.getEffectiveLevel() > logging.INFO:
        blog.setLevel(logging.INFO)

    # ---- which variants can run here; warm-up (model load, export, Prefect's server)
    failed = False
    active: list[Variant] = []
    print()
    for k, v in enumerate(variants):
        try:
            require_backend(v.model.get("backend", "torch"))
        except ConfigError as e:
            v.error = f"skipped: {e}"
            print(f"{v.label}: {v.error}")
            continue
        before = len(export_log.exports)
        t0 = time.perf_counter()
        try:
            s = settings(v, f"warmup-{k}")
            emb = get_embedder(s.model)  # an unusable configuration raises ConfigError here
            warm = run_sync([str(SAMPLE / "basics")], s)
        except ConfigError as e:
            v.error = f"skipped: {e}"
            print(f"{v.label}: {v.error}")
            continue
        except Exception as e:
            v.error = f"warm-up failed: {type(e).__name__}: {e}"
            print(f"{v.label}: {v.error}")
            traceback.print_exc()
            failed = True
            continue
        v.cold_s = time.perf_counter() - t0
        made = export_log.exports[before:]
        v.export_s = sum(sec for _, sec in made) if made else None
        v.precision = emb.identity.precision
        v.devices = ",".join(getattr(emb, "devices", [emb.device]))
        v.batch_tokens = int(getattr(emb, "batch_tokens", 0))
        if v.model.get("backend", "torch") == "torch":
            export = "no export"
        elif made:
            export = ", ".join(f"{kind} export made in {sec:.1f}s" for kind, sec in made)
        else:
            export = "cached export reused"
        first = " + starting Prefect's temporary server" if not active else ""
        print(
            f"{v.label}: cold warm-up {v.cold_s:.1f}s ({warm.chunks_embedded} chunks, model load{first}; "
            f"{export}); precision {v.precision}, devices {v.devices}, batch_tokens {v.batch_tokens}"
        )
        active.append(v)
    if not active:
        print("\nno backend could run: nothing measured")
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        return 1

    # ---- baseline model, loaded by the benchmark itself
    from sentence_transformers import SentenceTransformer

    t0 = time.perf_counter()
    st_model = SentenceTransformer(str(resolve_model_path(MODEL, True)), device=device)
    st_model.encode(["warm-up sentence"] * 8, batch_size=8, convert_to_numpy=True, show_progress_bar=False)
    base_precision = _dtype_name(st_model)
    print(
        f"baseline: SentenceTransformer loaded in {time.perf_counter() - t0:.1f}s on {st_model.device} "
        f"({base_precision})"
    )

    # ---- interleaved repeats
    ref_texts: list[str] | None = None
    print()
    for rep in range(repeats):
        pipe_rate: dict[str, float] = {}
        base_rate: dict[str, float] = {}
        pending = list(baselines)  # run as soon as the chunk texts are known: after the first variant
        for v in active:
            if v.error:
                continue
            db = f"db-{active.index(v)}-{rep}"
            try:
                s = settings(v, db)
                t = time.perf_counter()
                summary = run_sync([str(corpus)], s)
                sec = time.perf_counter() - t
                if summary.docs_rejected:
                    print(f"  note: {v.label} rejected {summary.docs_rejected} documents")
                texts, _ = _read_table(s)
                if len(texts) != summary.chunks_embedded:
                    print(
                        f"  note: {v.label} stored {len(texts)} chunks but embedded {summary.chunks_embedded}"
                    )
                if ref_texts is None:
                    ref_texts = texts
                    print(f"chunks: {len(texts)} from {copies} copies of the sample corpus")
                elif sorted(texts) != sorted(ref_texts):
                    print(f"  WARNING: {v.label} stored other chunk texts than the first run")
                rate = len(texts) / sec
                v.pipe_rates.append(rate)
                pipe_rate[v.label] = rate
                emb = get_embedder(s.model)
                t = time.perf_counter()
                emb.encode(ref_texts, s.model.batch_size)
                msec = time.perf_counter() - t
                v.model_rates.append(len(ref_texts) / msec)
            except Exception as e:
                v.error = f"run failed: {type(e).__name__}: {e}"
                print(f"repeat {rep + 1}: {v.label}: {v.error}")
                traceback.print_exc()
                failed = True
                continue
            if v.last_db is not None:
                shutil.rmtree(v.last_db, ignore_errors=True)
            v.last_db = work / db
            print(
                f"repeat {rep + 1}: {v.label + ' pipeline':<34} {sec:7.1f}s = {rate:8.1f} chunks/s   "
                f"model only {msec:6.1f}s = {len(ref_texts) / msec:8.1f} chunks/s"
            )
            while pending:
                b = pending.pop(0)
                t = time.perf_counter()
                vecs = st_model.encode(
                    ref_texts,
                    batch_size=b.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                sec = time.perf_counter() - t
                b.vectors = np.asarray(vecs, dtype=np.float32)
                rate = len(ref_texts) / sec
                b.rates.append(rate)
                base_rate[b.label] = rate
                print(f"repeat {rep + 1}: {b.label:<34} {sec:7.1f}s = {rate:8.1f} chunks/s")
        for v in active:
            if v.label in pipe_rate:
                for b in baselines:
                    if b.label in base_rate:
                        v.ratios.setdefault(b.label, []).append(pipe_rate[v.label] / base_rate[b.label])

    # ---- quality: stored vectors against the first baseline's, joined by text
    ref = baselines[0]
    if ref_texts is not None and ref.vectors is not None:
        for v in active:
            if v.last_db is None:
                continue
            texts, vectors = _read_table(settings(v, v.last_db.name))
            cos = _cosines(texts, vectors, ref_texts, ref.vectors)
            v.cos_mean, v.cos_min = float(cos.mean()), float(cos.min())

    # ---- the table
    n = len(ref_texts) if ref_texts else 0
    print()
    print(
        f"{n} chunks, device {device}, medians of {repeats} repeat(s); pipeline = whole `sync` flow with "
        "default settings (checks on) into a fresh table; model only = the pipeline's embedder "
        "`.encode(texts, model.batch_size)`; baseline batch size "
        + ", ".join(str(b.batch_size) for b in baselines)
        + " (32 is sentence-transformers' default)"
    )
    print()
    ratio_heads = [f"pipeline / {b.label}" for b in baselines]
    head = ["backend", "precision", "pipeline chunks/s", "model-only chunks/s", *ratio_heads]
    head += ["mean cos to torch", "min cos to torch", "cold warm-up s (export s)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for b in baselines:
        row = [f"baseline: {b.label}", base_precision, "–", _fmt(_median(b.rates))]
        row += [_fmt(_median(b.rates) / _median(ref.rates), ".3f") if b.rates and ref.rates else "–"]
        row += ["–"] * (len(baselines) - 1)
        row += ["(reference)" if b is ref else "–", "–", "–"]
        print("| " + " | ".join(row) + " |")
    for v in variants:
        if v.error and not v.pipe_rates:
            print("| " + " | ".join([v.label, "–", v.error, *["–"] * (len(head) - 3)]) + " |")
            continue
        row = [v.label, v.precision, _fmt(_median(v.pipe_rates)), _fmt(_median(v.model_rates))]
        row += [_fmt(_median(v.ratios.get(b.label, [])), ".3f") for b in baselines]
        row += [_fmt(v.cos_mean, ".5f"), _fmt(v.cos_min, ".5f")]
        row += [f"{v.cold_s:.1f}" + (f" ({v.export_s:.1f})" if v.export_s is not None else "")]
        print("| " + " | ".join(row) + " |")
    print()
    for v in variants:
        if v.error and v.pipe_rates:
            print(f"note: {v.label} measured {len(v.pipe_rates)} of {repeats} repeat(s); then {v.error}")
    if targets:
        for label, floor in targets.items():
            v = next((x for x in variants if x.label == label), None)
            got = _median(v.ratios.get(ref.label, [])) if v else None
            if got is None:
                verdict = "NOT MEASURED" + (f" ({v.error})" if v and v.error else "")
                print(f"target: pipeline {label} / {ref.label} >= {floor:.2f}: {verdict}")
            else:
                verdict = "PASS" if got >= floor else "MISS"
                print(f"target: pipeline {label} / {ref.label} >= {floor:.2f}: {got:.3f}  {verdict}")
    else:
        print("targets: none set for this device")

    logging.getLogger(eb.__name__).removeHandler(export_log)
    if keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def cpu_variants(names: list[str], precision: str) -> list[Variant]:
    return [Variant(name, {"backend": name, "precision": precision}) for name in names]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=20, help="copies of the sample corpus (20: ~2,500 chunks)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--batch-size", type=int, default=32, help="baseline batch size (sentence-transformers' default)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backends", default=",".join(ALL_BACKENDS), help="comma-separated")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    ap.add_argument("--export-dir", default=None, help="ONNX export cache (default: fresh, temporary)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)

    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in names if b not in ALL_BACKENDS]
    if unknown:
        ap.error(f"unknown backend(s) {', '.join(unknown)}; expected some of {', '.join(ALL_BACKENDS)}")
    return run(
        cpu_variants(names, args.precision),
        [Baseline("plain torch encode", args.batch_size)],
        device=args.device,
        copies=args.copies,
        repeats=args.repeats,
        export_dir=args.export_dir,
        targets=CPU_TARGETS if args.device == "cpu" else None,
        keep=args.keep,
    )


if __name__ == "__main__":
    sys.exit(main())
