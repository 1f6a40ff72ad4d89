"""``model.backend = "auto"``: the fastest backend on this machine that reproduces torch's vectors.

A new table needs a backend, and the backend is part of its model identity (switching it later is a
reindex). ``auto`` decides once per machine and model, by measurement rather than by a fixed list:

1. An existing table keeps the backend it was built with (no silent identity change).
2. On a GPU (``cuda``, ``mps``), torch: it runs fp16 there, and the other backends are CPU-only.
3. On the CPU, every installed backend is loaded (its export made and verified as usual) and run on
   a fixed probe set: the opening paragraphs of the bundled sample corpus, 256-token chunks in
   English and Chinese, plus the exports' short verification sentences. Its vectors are compared
   with torch fp32's (the **quality guard**: mean cosine at least :data:`GUARD_MEAN_COSINE` and
   lowest at least :data:`GUARD_MIN_COSINE`), and it is timed on the long texts. The fastest
   backend that passes the guard and beats torch by :data:`MIN_SPEEDUP` is chosen; among those
   within :data:`TIE` of the fastest, the most faithful one.

The guard admits what reduced-precision float arithmetic does to the vectors (fp32 exports,
OpenVINO's bf16: cosine 0.99998 to torch on the bundled model) and keeps out int8 quantization
(0.992 to 0.995), which stays available as an explicit ``--backend onnx-int8``: it changes the
vectors about a hundred times more, and a default must not move retrieval figures.

The decision, with every candidate's figures, is cached next to the exports
(``<export_dir>/<model>/backend-choice.json``), keyed by the model weights, the CPU, the thread
setting and the runtimes' versions, so later runs and new tables on the same machine do not
measure again. The flows record it in the run summary and in the new table's schema metadata
(``embedpipe.model.backend_choice``).
"""

from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.config import ModelSettings, Settings
from embedpipe.embedding.card import resolve_model_path, weights_hash
from embedpipe.embedding.devices import choose_device, cpu_fingerprint
from embedpipe.embedding.exports import (
    EXPORT_RECIPE,
    VERIFY_TEXTS,
    ExportKey,
    default_export_dir,
    package_versions,
    write_atomic,
)
from embedpipe.embedding.runners import require_backend
from embedpipe.errors import ConfigError, EmbedpipeError, ModelError

log = logging.getLogger(__name__)

AUTO = "auto"
CHOICE_RECIPE = 1
"""Bumped when the probe, the guard or the rule changes: cached decisions are then made again."""
GUARD_MEAN_COSINE = 0.999
"""Lowest mean cosine to torch fp32 over the probe texts that a backend may have."""
GUARD_MIN_COSINE = 0.998
"""Lowest cosine to torch fp32 that any single probe text may have."""
MIN_SPEEDUP = 1.10
"""A backend other than torch is chosen only when it embeds the long probes this much faster."""
TIE = 0.05
"""Backends within this share of the fastest count as equally fast; the most faithful one wins."""
CANDIDATES = ("openvino", "onnx", "onnx-int8")
"""CPU backends tried besides torch, where installed (exports shared: onnx first, then the rest)."""
PROBE_ORDER = ("onnx", "openvino", "onnx-int8")
METADATA_KEY = "embedpipe.model.backend_choice"
_REPEATS = 2


@dataclass(frozen=True)
class Candidate:
    """One backend's figures on the probe set."""

    backend: str
    precision: str = ""
    texts_per_s: float = 0.0
    speedup: float = 0.0
    """Against torch fp32 on the same texts, in this process."""
    mean_cosine: float = 0.0
    min_cosine: float = 0.0
    passed: bool = False
    """Whether it passed the quality guard (torch itself always does)."""
    note: str = ""
    """Why it was not usable or not chosen, when it was not."""


@dataclass(frozen=True)
class BackendChoice:
    """What ``model.backend = "auto"`` resolved to, and why."""

    backend: str
    reason: str
    candidates: tuple[Candidate, ...] = ()
    guard: dict[str, float] = field(default_factory=dict)
    probe_texts: int = 0
    decided_at: float = 0.0
    measured: bool = False
    """True when the candidates were measured (now or earlier on this machine, see ``cached``)."""
    cached: bool = False
    """True when the decision was read from the cache instead of measured by this run."""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["candidates"] = [asdict(c) for c in self.candidates]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackendChoice:
        cands = tuple(Candidate(**c) for c in d.get("candidates", []))
        return cls(**{**d, "candidates": cands})

    def table_metadata(self) -> dict[str, str]:
        """The schema metadata a new table records (only decisions that measured something)."""
        return {METADATA_KEY: json.dumps(self.as_dict(), sort_keys=True)} if self.measured else {}


def with_backend(settings: Settings, choice: BackendChoice | None) -> Settings:
    """``settings`` with ``model.backend`` set to the choice's (unchanged without a choice)."""
    if choice is None:
        return settings
    model = settings.model.model_copy(update={"backend": choice.backend})
    return settings.model_copy(update={"model": model})


def probe_texts() -> tuple[list[str], list[str]]:
    """The long probe texts (timed and compared) and the short ones (compared only)."""
    data = json.loads((Path(__file__).with_name("probe_texts.json")).read_text(encoding="utf-8"))
    return list(data["texts"]), list(VERIFY_TEXTS)


def choose_backend(
    model: ModelSettings, existing_backend: str | None = None, existing_model: str | None = None
) -> BackendChoice:
    """Resolve ``model.backend = "auto"`` (see the module's description).

    Args:
        model: The model settings; ``backend`` must be ``auto``.
        existing_backend: The backend of the target table, when it exists.
        existing_model: The model name the target table was built with.

    Raises:
        ModelError, ConfigError: torch itself cannot load the model (a candidate that fails is
            only recorded as failed).
    """
    assert model.backend == AUTO
    if existing_backend is not None and existing_model == model.name:
        return BackendChoice(
            existing_backend,
            f"kept: the table was built with backend={existing_backend} (switch it with "
            "`embedpipe reindex --backend NAME`)",
        )
    from embedpipe.embedding.embedder import is_registered

    if is_registered(model.name):
        return BackendChoice("torch", "a registered embedder factory serves this model (its own runtime)")
    if model.devices:
        return BackendChoice("torch", "model.devices lists several devices: only torch runs replicas")
    device = choose_device(model.device)
    if device != "cpu":
        return BackendChoice(
            "torch", f"device={device}: torch runs there (fp16 on CUDA); the other backends are CPU-only"
        )
    installed = [b for b in CANDIDATES if _installed(b) and _allowed(model, b)]
    if not installed:
        return BackendChoice("torch", "no other backend is installed (pip install 'embedpipe[fast]')")
    folder = resolve_model_path(model.name, model.offline)
    whash = weights_hash(folder)
    root = Path(model.export_dir).expanduser() if model.export_dir else default_export_dir()
    path = ExportKey(model.name, whash, "onnx").folder(root).parent / "backend-choice.json"
    key = _cache_key(model, whash, installed)
    cached = _read_cache(path, key)
    if cached is not None:
        return cached
    choice = _measure_apart(model, installed)
    _write_cache(path, key, choice)
    return choice


def _measure_apart(model: ModelSettings, installed: list[str]) -> BackendChoice:
    """:func:`_measure` in a child process of its own.

    Measuring loads torch and every candidate (and makes their exports): several hundred MB that
    a long run would otherwise carry to its end, although it then runs one backend, which loads
    from its verified export without torch (:mod:`embedpipe.embedding.fastload`). The child's
    exit hands all of it back. Its errors come back as the same error types.
    """
    from embedpipe.embedding.apart import run_apart

    request = {"model": model.model_dump(mode="json"), "installed": installed}
    answer = run_apart("embedpipe.embedding.auto:measure_main", request, "model.backend=auto measuring")
    if "error" in answer:
        kind = {"ConfigError": ConfigError}.get(str(answer["error"]), ModelError)
        raise kind(str(answer["message"]))
    choice = BackendChoice.from_dict(answer["choice"])
    log.info("model.backend=auto chose %s: %s", choice.backend, choice.reason)
    return choice


def measure_main() -> None:
    """The measuring child process (:func:`_measure_apart`): the choice, or the error it met."""
    from embedpipe.embedding.apart import child_main

    def work(request: dict[str, Any]) -> dict[str, Any]:
        model = ModelSettings.model_validate(request["model"])
        try:
            return {"choice": _measure(model, list(request["installed"])).as_dict()}
        except EmbedpipeError as e:
            return {"error": type(e).__name__, "message": str(e)}

    child_main(work)


def _installed(backend: str) -> bool:
    try:
        require_backend(backend)
        return True
    except EmbedpipeError:
        return False


def _allowed(model: ModelSettings, backend: str) -> bool:
    """Whether the configured precision and device allow ``backend`` (as ModelSettings rules)."""
    try:
        ModelSettings.model_validate(model.model_dump() | {"backend": backend})
        return True
    except ValueError:
        return False


def _cache_key(model: ModelSettings, whash: str, installed: list[str]) -> dict[str, Any]:
    versions = package_versions("torch", "sentence-transformers", "transformers", "onnxruntime", "openvino")
    return {
        "recipe": CHOICE_RECIPE,
        "export_recipe": EXPORT_RECIPE,
        "name": model.name,
        "weights_hash": whash,
        "normalize": model.normalize,
        "precision": model.precision,
        "threads": model.threads,
        "batch_tokens": model.batch_tokens,
        "candidates": installed,
        "cpu": cpu_fingerprint(),
        "versions": versions,
    }


def _read_cache(path: Path, key: dict[str, Any]) -> BackendChoice | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("key") != key:
            return None
        choice = BackendChoice.from_dict(data["choice"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    log.info("model.backend=auto: %s (decided %s, cached in %s)", choice.backend, _when(choice), path)
    return BackendChoice(**{**asdict(choice), "candidates": choice.candidates, "cached": True})


def _write_cache(path: Path, key: dict[str, Any], choice: BackendChoice) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"key": key, "choice": choice.as_dict()}, indent=2))
    except OSError as e:  # the next new table measures again; nothing else depends on it
        log.warning("model.backend=auto: decision not cached in %s (%s)", path, e)


def _when(choice: BackendChoice) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(choice.decided_at)) if choice.decided_at else "?"


def _timed(embedder: Any, texts: list[str]) -> tuple[np.ndarray, float]:
    """Vectors of ``texts`` and the best texts/s of :data:`_REPEATS` runs, after a warm-up batch."""
    embedder.encode(texts[:2], batch_size=64)
    best = float("inf")
    vecs = np.empty(0)
    for _ in range(_REPEATS):
        t0 = time.perf_counter()
        vecs = np.asarray(embedder.encode(texts, batch_size=64), dtype=np.float32)
        best = min(best, time.perf_counter() - t0)
    return vecs, len(texts) / max(best, 1e-9)


def _unit(m: np.ndarray) -> np.ndarray:
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def _measure(model: ModelSettings, installed: list[str]) -> BackendChoice:
    """Load, guard and time torch and each installed candidate on the probe set."""
    from embedpipe.embedding.embedder import forget_embedder, get_embedder

    t_start = time.perf_counter()
    long_texts, short_texts = probe_texts()
    torch_settings = model.model_copy(update={"backend": "torch"})
    torch_emb = get_embedder(torch_settings)
    ref_long, torch_speed = _timed(torch_emb, long_texts)
    ref = _unit(np.concatenate([ref_long, torch_emb.encode(short_texts, batch_size=64)]))
    results = [Candidate("torch", torch_emb.identity.precision, round(torch_speed, 2), 1.0, 1.0, 1.0, True)]
    for backend in [b for b in PROBE_ORDER if b in installed]:
        settings = model.model_copy(update={"backend": backend})
        try:
            cand = get_embedder(settings)
            got_long, speed = _timed(cand, long_texts)
            got = _unit(np.concatenate([got_long, cand.encode(short_texts, batch_size=64)]))
            precision = cand.identity.precision
            # measured: freed before the next candidate loads (the run loads its choice afresh)
            del cand
            forget_embedder(settings)
            gc.collect()
        except Exception as e:  # a backend that cannot load or export this model: not a candidate
            log.warning("model.backend=auto: %s is not usable here: %s: %s", backend, type(e).__name__, e)
            results.append(Candidate(backend, note=f"not usable: {type(e).__name__}: {e}"[:300]))
            forget_embedder(settings)
            continue
        cos = (got * ref).sum(axis=1)
        mean_c, min_c = float(cos.mean()), float(cos.min())
        passed = bool(np.isfinite(mean_c) and mean_c >= GUARD_MEAN_COSINE and min_c >= GUARD_MIN_COSINE)
        note = (
            ""
            if passed
            else (
                f"fails the quality guard (mean cosine {mean_c:.5f}, lowest {min_c:.5f}; needs "
                f"{GUARD_MEAN_COSINE} and {GUARD_MIN_COSINE}): use --backend {backend} to opt in"
            )
        )
        results.append(
            Candidate(
                backend,
                precision,
                round(speed, 2),
                round(speed / torch_speed, 3),
                round(mean_c, 6),
                round(min_c, 6),
                passed,
                note,
            )
        )
    chosen = _pick(results)
    final = tuple(
        c
        if c.backend == chosen.backend or c.note or not c.passed
        else Candidate(**{**asdict(c), "note": _why_not(c, chosen)})
        for c in results
    )
    forget_embedder(torch_settings)
    seconds = time.perf_counter() - t_start
    reason = (
        f"fastest backend passing the quality guard: {chosen.speedup:.2f}x torch on the probe texts"
        if chosen.backend != "torch"
        else f"no backend passing the quality guard was {MIN_SPEEDUP:.2f}x faster than torch"
    )
    log.info(
        "model.backend=auto chose %s (%s) after measuring %s in %.1fs",
        chosen.backend,
        reason,
        ", ".join(f"{c.backend} {c.speedup:.2f}x cos {c.mean_cosine:.5f}" for c in final if c.texts_per_s),
        seconds,
    )
    return BackendChoice(
        backend=chosen.backend,
        reason=reason,
        candidates=final,
        guard={
            "mean_cosine": GUARD_MEAN_COSINE,
            "min_cosine": GUARD_MIN_COSINE,
            "min_speedup": MIN_SPEEDUP,
            "seconds": round(seconds, 2),
        },
        probe_texts=len(long_texts) + len(short_texts),
        decided_at=time.time(),
        measured=True,
    )


def _pick(results: list[Candidate]) -> Candidate:
    torch_c = results[0]
    fast = [c for c in results[1:] if c.passed and c.speedup >= MIN_SPEEDUP]
    if not fast:
        return torch_c
    top = max(c.texts_per_s for c in fast)
    near = [c for c in fast if c.texts_per_s >= (1 - TIE) * top]
    return max(near, key=lambda c: (c.mean_cosine, c.texts_per_s))


def _why_not(c: Candidate, chosen: Candidate) -> str:
    if c.backend == "torch":
        return "the reference; slower than the chosen backend"
    if c.speedup < MIN_SPEEDUP:
        return f"not {MIN_SPEEDUP:.2f}x faster than torch"
    return f"slower than {chosen.backend}, or as fast and less faithful"
