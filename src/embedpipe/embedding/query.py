"""Query embedding for search: the lightest runtime that reproduces the table's vectors.

A search embeds one short text. Loading torch, transformers and sentence-transformers for it
costs seconds; the ONNX export the backends make (:mod:`embedpipe.embedding.exports`) run by
ONNX Runtime, with the model's tokenizer read by the ``tokenizers`` package directly, gives the
same vectors in a fraction of that. "The same" is checked, not assumed: once per export, the
query path is compared with the table's own embedder on a fixed probe set, and the result is
stored next to the export (``query-check-<backend>.json``, with a copy of the tokenizer). Search
uses the fast path only when that record exists, passed, and still describes the export on disk.

The export graph holds the whole sentence-transformers pipeline (transformer, mean pooling and,
for models that have it, normalisation), so the query path only tokenizes, runs the graph and
normalises as the embedder does.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.config import ModelSettings
from embedpipe.embedding.exports import (
    VERIFY_TEXTS,
    ExportKey,
    default_export_dir,
    ensure_export,
    exporter_versions,
    verify_export,
    write_atomic,
)
from embedpipe.embedding.fastload import FastTokenizer, tokenizer_file
from embedpipe.embedding.runners import OrtRunner, have_module
from embedpipe.schemas import ModelIdentity

log = logging.getLogger(__name__)

QUERY_CHECK_RECIPE = 1
"""Bumped when the query path or its check changes: older records are then ignored."""
MAX_ABS_DIFF = 1e-4
"""Largest difference allowed in any vector component, fast path against the table's embedder."""
MIN_COSINE = 0.9999
"""Lowest cosine allowed between the fast path's vector and the table's embedder's, per probe."""

# Search-like queries and the export's verification sentences: short and long, cased, accented,
# punctuation, a single character, and one past the model's sequence length (truncation).
PROBES = (
    *VERIFY_TEXTS,
    "how do vector indexes trade recall for speed",
    "What is an embedding?",
    "  leading and trailing spaces  ",
    "HNSW vs IVF-PQ: which approximate nearest neighbour index?",
    "Überprüfung der Qualität — café, naïve, 東京",
    " ".join(["token"] * 600),
)

_SUPPORTED = {"torch": "onnx", "onnx": "onnx", "onnx-int8": "onnx-int8", "openvino": "onnx"}
"""The table backends with a fast query path, and the export each uses (OpenVINO compiles the
fp32 export; its query path runs that export in ONNX Runtime)."""
REDUCED_MAX_ABS_DIFF = 4e-3
"""The component tolerance against a table embedded in bf16 or fp16 (OpenVINO's ``auto`` on a CPU
with bf16 support): the reference itself is rounded to 8 significant bits. The cosine tolerance
stays :data:`MIN_COSINE`, the agreement required of fp16 and fp32 vectors mixed in one table."""


def tolerance(identity: ModelIdentity) -> dict[str, float]:
    """How close the query path must come to the table's own embedder."""
    reduced = identity.precision in {"bf16", "fp16"}
    return {"max_abs_diff": REDUCED_MAX_ABS_DIFF if reduced else MAX_ABS_DIFF, "min_cosine": MIN_COSINE}


def check_file(backend: str) -> str:
    """The name of the record of the query check against a table embedded with ``backend``."""
    return f"query-check-{backend}.json"


def export_root(settings: ModelSettings) -> Path:
    """Where exports are cached (``model.export_dir``, else beside the Hugging Face cache)."""
    return Path(settings.export_dir).expanduser() if settings.export_dir else default_export_dir()


def export_folder(settings: ModelSettings, identity: ModelIdentity) -> Path | None:
    """The export folder the fast path of a table with this identity reads; ``None`` if it has none."""
    kind = _SUPPORTED.get(identity.backend)
    if kind is None:
        return None
    return ExportKey(identity.name, identity.weights_hash, kind).folder(export_root(settings))


class OnnxQueryEmbedder:
    """Embeds queries with ONNX Runtime and the ``tokenizers`` package: no torch, no transformers.

    Args:
        folder: The export folder (``model.onnx``, and the tokenizer the check copied there).
        record: The passed query check (:func:`fast_record`): tokenizer, its settings, pooling.
        threads: ONNX Runtime's intra-op threads (``None``: its default).
    """

    def __init__(self, folder: Path, record: dict[str, Any], threads: int | None = None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.output = self.session.get_outputs()[0].name
        definition = (folder / record["tokenizer_file"]).read_text(encoding="utf-8")
        # called as the export's runner calls the Hugging Face tokenizer (fastload.FastTokenizer)
        self.tokenizer = FastTokenizer(definition, int(record["pad_id"]), str(record["pad_token"]))
        self.max_length = int(record["max_length"])
        self.lower = bool(record["lower"])
        self.normalize = bool(record["normalize"])

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 vectors, shape ``(len(texts), dim)``, unit length when the table's are."""
        texts = [t.strip().lower() if self.lower else t.strip() for t in texts]
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
        )
        missing = [name for name in self.inputs if name not in enc]
        if missing:  # checked when the record was made: cannot happen for a recorded export
            raise ValueError(f"the exported model wants inputs {missing!r}")
        feeds = {name: enc[name] for name in self.inputs}
        out = np.asarray(self.session.run([self.output], feeds)[0], dtype=np.float32)
        if self.normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            np.divide(out, norms, out=out, where=norms > 0)
        return out


def _model_stamp(folder: Path) -> dict[str, int]:
    st = (folder / "model.onnx").stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def fast_record(settings: ModelSettings, identity: ModelIdentity) -> tuple[Path, dict[str, Any]] | str:
    """The export folder and its passed query check for a table, or why the fast path is not used.

    Reads two small files; imports nothing heavy.
    """
    folder = export_folder(settings, identity)
    if folder is None:
        return f"no fast query path for backend={identity.backend}"
    if not (have_module("onnxruntime") and have_module("tokenizers")):
        return "onnxruntime is not installed (pip install 'embedpipe[onnx]')"
    path = folder / check_file(identity.backend)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no query check recorded in {folder}"
    except (OSError, ValueError) as e:
        return f"query check {path} unreadable ({type(e).__name__})"
    if not isinstance(record, dict) or record.get("recipe") != QUERY_CHECK_RECIPE:
        return f"query check {path} is of another recipe"
    if record.get("weights_hash") != identity.weights_hash or record.get("normalize") != identity.normalize:
        return f"query check {path} was made for another model identity"
    if not record.get("passed"):
        return (
            f"the query path did not reproduce backend={identity.backend} "
            f"(max abs diff {record.get('max_abs_diff')}, min cosine {record.get('min_cosine')})"
        )
    try:
        if record.get("model") != _model_stamp(folder):
            return f"the export in {folder} changed since its query check"
    except OSError:
        return f"the export in {folder} is gone"
    return folder, record


def fast_embedder(settings: ModelSettings, identity: ModelIdentity) -> OnnxQueryEmbedder | str:
    """The fast query embedder for a table, or the reason it cannot be used (then use torch)."""
    found = fast_record(settings, identity)
    if isinstance(found, str):
        return found
    folder, record = found
    try:
        return OnnxQueryEmbedder(folder, record, settings.threads)
    except Exception as e:  # a damaged export: the embedder's own path rebuilds it
        return f"the export in {folder} does not load ({type(e).__name__}: {e})"


def record_query_check(
    embedder: Any, identity: ModelIdentity, settings: ModelSettings
) -> dict[str, Any] | None:
    """Make the fast query path for a table, check it, and record the result next to the export.

    ``embedder`` is the table's own embedder (a loaded
    :class:`~embedpipe.embedding.embedder.SentenceTransformerEmbedder` for ``identity``); for a
    torch table the fp32 ONNX export is made first if it does not exist. The probes are embedded
    by both paths and compared: the record says ``passed`` when every component is within
    :data:`MAX_ABS_DIFF` and every cosine at least :data:`MIN_COSINE`.

    Returns:
        The record written, or ``None`` when this embedder or machine cannot make one (a fake
        embedder, onnx not installed; an unwritable export folder or a model that does not export
        is logged as a warning).
    """
    folder = export_folder(settings, identity)
    facts = getattr(embedder, "tokenizer_facts", None)
    if folder is None or not facts:
        return None
    if not all(have_module(m) for m in ("onnx", "onnxruntime", "tokenizers")):
        log.info("query check skipped: onnx and onnxruntime are not installed")
        return None
    t0 = time.perf_counter()
    try:
        if identity.backend == "torch":
            _ensure_fp32_export(embedder, identity, settings)
        if not (folder / "model.onnx").is_file():
            return None
        tok_file = tokenizer_file(folder, facts["definition"])  # the one fastload keeps there too
        record: dict[str, Any] = {
            "recipe": QUERY_CHECK_RECIPE,
            "reference": identity.backend,
            "name": identity.name,
            "weights_hash": identity.weights_hash,
            "normalize": identity.normalize,
            "max_length": identity.max_seq_length,
            "lower": bool(facts["lower"]),
            "pad_id": int(facts["pad_id"]),
            "pad_token": str(facts["pad_token"]),
            "tokenizer_file": tok_file,
            "model": _model_stamp(folder),
            "tolerance": tolerance(identity),
            "probes": len(PROBES),
        }
        fast = OnnxQueryEmbedder(folder, record, settings.threads)
        got = np.concatenate([fast.encode([p]) for p in PROBES])
        ref = np.asarray(embedder.encode(list(PROBES), batch_size=1), dtype=np.float32)
        diff = float(np.abs(got - ref).max())
        unit = lambda m: m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)  # noqa: E731
        cos = float((unit(got) * unit(ref)).sum(axis=1).min())
        record |= {
            "max_abs_diff": diff,
            "min_cosine": cos,
            "passed": bool(
                np.isfinite(diff)
                and diff <= record["tolerance"]["max_abs_diff"]
                and cos >= record["tolerance"]["min_cosine"]
            ),
            "created": time.time(),
            "versions": exporter_versions(),
        }
        write_atomic(folder / check_file(identity.backend), json.dumps(record, indent=2))
    except Exception as e:
        # Best effort, after the search has answered: an unwritable cache, a model that does not
        # export, a runtime that cannot load it. Searches keep using the table's backend.
        log.warning("query check not recorded in %s: %s: %s", folder, type(e).__name__, e)
        return None
    log.info(
        "query check backend=%s passed=%s max_abs_diff=%.2e min_cosine=%.6f in %.1fs",
        identity.backend,
        record["passed"],
        diff,
        cos,
        time.perf_counter() - t0,
    )
    return record


def record_after_run(embedder: Any, settings: ModelSettings) -> dict[str, Any] | None:
    """At the end of a run that loaded the model: make the table's fast query path if it is missing.

    Only where the export it needs already exists (a torch table without one gets it from its
    first search instead, which answers first), so a run pays well under a second for it, and the
    first search after a new table is already fast.
    """
    identity = getattr(embedder, "identity", None)
    if identity is None or not getattr(embedder, "loaded", False):
        return None
    folder = export_folder(settings, identity)
    if folder is None or not (folder / "model.onnx").is_file():
        return None
    found = fast_record(settings, identity)
    if not isinstance(found, str) or not found.startswith(
        ("no query check recorded", "query check ", "the export in")
    ):
        return None  # recorded already, or not makeable here (onnx missing, a failed check)
    return record_query_check(embedder, identity, settings)


def _ensure_fp32_export(embedder: Any, identity: ModelIdentity, settings: ModelSettings) -> None:
    """The fp32 ONNX export of a torch table's model (made once, verified, cached)."""
    from embedpipe.embedding.card import resolve_model_path

    model = embedder._model
    model_dir = resolve_model_path(identity.name, settings.offline)
    key = ExportKey(identity.name, identity.weights_hash, "onnx")
    lower = bool(getattr(model[0], "do_lower_case", False))

    def check(export: Path) -> None:
        runner = OrtRunner(
            export / "model.onnx", model.tokenizer, identity.max_seq_length, "cpu", settings.threads, lower
        )
        verify_export(runner.run, model, "onnx")

    ensure_export(model, model_dir, key, export_root(settings), check)
