"""Inference backends behind the embedder: torch, ONNX Runtime (fp32 or int8) and OpenVINO.

Everything here works one *batch* at a time; :mod:`embedpipe.embedding.embedder` cuts texts into
batches by a token budget (:func:`token_batches`) and hands them to a :class:`Runner`.

- :class:`TorchRunner` runs the sentence-transformers model itself, in fp32, fp16 or bf16, on one
  device or on several (one replica per GPU, fed by one thread each). On CUDA out-of-memory a
  batch is halved and retried, and the budget for later batches shrinks with it.
- :class:`OrtRunner` runs an ONNX export of the whole sentence-transformers pipeline (transformer,
  pooling, normalisation) with ONNX Runtime; ``onnx-int8`` is the same export with dynamic int8
  quantization of its weights.
- :class:`OpenVINORunner` compiles the fp32 export with OpenVINO.

Exports are made locally from the loaded model (no download), once, and cached under
``model.export_dir`` (default ``$HF_HOME/embedpipe-exports``, beside the Hugging Face model cache).
Each export carries a manifest (model weights hash, recipe, library versions, file digest); an
export whose manifest, digest or loadability does not check out is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedpipe.errors import ConfigError, EmbedpipeError, ModelError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")
EXPORT_RECIPE = 1
"""Bumped whenever the export or quantization recipe changes: older exports are then rebuilt."""

# Sentences an export must reproduce before it is trusted (cosine against the torch model).
_VERIFY_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Vector databases store embeddings and answer nearest-neighbour queries.",
    "Prefect flows chain tasks; each task can be retried on its own.",
    "Ein kurzer deutscher Satz über das Wetter in Berlin.",
    "a",
    "Embeddings turn symbols a machine cannot read into dense vectors in which similar things sit "
    "close together; they are the base layer of semantic search and recommendation.",
)
_VERIFY_MIN_COS = {"onnx": 0.9999, "onnx-int8": 0.97, "openvino": 0.99}


# --------------------------------------------------------------------------- batching


def token_batches(lengths: np.ndarray, budget: int, max_batch: int) -> list[np.ndarray]:
    """Cut texts into batches of similar length whose padded size fits a token budget.

    Texts are sorted by token count; a batch grows while ``len(batch) * longest <= budget`` and
    ``len(batch) <= max_batch``. A text longer than the budget gets a batch of its own.

    Args:
        lengths: Tokens per text (special tokens included, capped at the model's maximum).
        budget: Most padded tokens per batch.
        max_batch: Most texts per batch.

    Returns:
        Index arrays into ``lengths``, shortest texts first; every index appears exactly once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        end = start + 1
        # sorted ascending: the last text of a batch is its longest
        while (
            end < n and end - start < max_batch and (end - start + 1) * max(1, lengths[order[end]]) <= budget
        ):
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def default_batch_tokens(backend: str, device: str) -> int:
    """Padded tokens per batch when ``model.batch_tokens`` is not set.

    Measured on a 2-core Sapphire Rapids CPU (``benchmarks/backends.py``): torch peaks at about
    4,096 tokens per batch, ONNX Runtime at about 1,024 (its int8 kernels like batches that stay
    in cache). On a GPU much larger batches keep the device busy; out-of-memory halves them.
    """
    if device.startswith("cuda"):
        return 65_536
    if backend in {"onnx", "onnx-int8"}:
        return 1024
    return 4096


# --------------------------------------------------------------------------- runners


class Runner(Protocol):
    """Runs one batch of texts through a model."""

    devices: list[str]

    def run(self, texts: list[str]) -> np.ndarray:
        """Pooled (not yet normalised) float32 vectors, shape ``(len(texts), dim)``."""
        ...

    def run_many(
        self, texts: Sequence[str], batches: list[np.ndarray]
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(indices, vectors)`` per batch, possibly out of order."""
        ...


def is_cuda_oom(exc: BaseException) -> bool:
    """True for a CUDA out-of-memory error (torch's own type, or a RuntimeError saying so)."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def run_halving(
    forward: Callable[[list[str]], np.ndarray],
    texts: list[str],
    on_oom: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Run ``forward`` on a batch; on CUDA out-of-memory, halve the batch and retry each half.

    Args:
        forward: Embeds one batch.
        texts: The batch.
        on_oom: Told the size of each batch that ran out of memory (to shrink later batches).

    Raises:
        ModelError: A single text does not fit in memory.
    """
    try:
        return forward(texts)
    except Exception as e:
        if not is_cuda_oom(e):
            raise
        if len(texts) == 1:
            _free_cuda_cache()
            if on_oom is not None:
                on_oom(1)
            raise ModelError(
                "CUDA ran out of memory on a single chunk; lower chunk.tokens or use a device with more "
                "memory (model.precision=fp16 halves the activations)"
            ) from e
    # Retry outside the except block: the exception's traceback holds the failed attempt's frames
    # and with them its activations, which only now can be freed and returned to the device.
    _free_cuda_cache()
    if on_oom is not None:
        on_oom(len(texts))
    half = len(texts) // 2
    log.warning(
        "CUDA out of memory on a batch of %d chunks: retrying as %d + %d",
        len(texts),
        half,
        len(texts) - half,
    )
    first = run_halving(forward, texts[:half], on_oom)
    second = run_halving(forward, texts[half:], on_oom)
    return np.concatenate([first, second])


def _free_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - best effort
        pass


def _run_sequential(
    run: Callable[[list[str]], np.ndarray], texts: Sequence[str], batches: list[np.ndarray]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for idx in batches:
        yield idx, run([texts[i] for i in idx])


@dataclass
class TorchRunner:
    """The sentence-transformers model on one or more torch devices.

    Attributes:
        models: One replica per device; the first is the model the embedder loaded.
        devices: Their devices.
        dtype: ``fp32``, ``fp16`` or ``bf16`` (vectors come back as float32 either way).
    """

    models: list[Any]
    devices: list[str]
    dtype: str = "fp32"
    on_oom: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        self._locks = [threading.Lock() for _ in self.models]

    @classmethod
    def build(cls, model: Any, devices: list[str], precision: str) -> TorchRunner:
        import copy

        import torch

        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        if dtype is not torch.float32:
            model.to(dtype)  # cast before copying: replicas never hold an fp32 copy on the first GPU
        replicas = [model]
        for dev in devices[1:]:
            replicas.append(copy.deepcopy(model).to(dev))
        return cls(replicas, devices, precision)

    def _forward(self, k: int) -> Callable[[list[str]], np.ndarray]:
        model = self.models[k]

        def forward(texts: list[str]) -> np.ndarray:
            vecs = model.encode(
                texts,
                batch_size=max(1, len(texts)),
                convert_to_numpy=False,
                convert_to_tensor=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            )
            return np.asarray(vecs.float().cpu().numpy(), dtype=np.float32)

        return forward

    def run(self, texts: list[str], k: int = 0) -> np.ndarray:
        with self._locks[k]:
            return run_halving(self._forward(k), texts, self.on_oom)

    def run_many(
        self, texts: Sequence[str], batches: list[np.ndarray]
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if len(self.models) == 1:
            yield from _run_sequential(self.run, texts, batches)
            return
        # One thread per device, each pulling the next batch: a slower device simply takes fewer.
        queue = list(reversed(batches))
        qlock = threading.Lock()

        def worker(k: int) -> list[tuple[np.ndarray, np.ndarray]]:
            done: list[tuple[np.ndarray, np.ndarray]] = []
            while True:
                with qlock:
                    if not queue:
                        return done
                    idx = queue.pop()
                done.append((idx, self.run([texts[i] for i in idx], k)))

        with ThreadPoolExecutor(len(self.models), thread_name_prefix="embedpipe-gpu") as pool:
            for part in pool.map(worker, range(len(self.models))):
                yield from part


class _Tokenize:
    """Tokenizes a batch into the numpy inputs an exported graph takes."""

    def __init__(
        self, tokenizer: Any, max_length: int, input_names: Sequence[str], lower: bool = False
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.input_names = list(input_names)
        self.lower = lower
        # Chunks come with their token ids from the chunker (the same tokenizer, on the same text):
        # batches are then built from them without tokenizing the text again. Not for models that
        # lowercase before tokenizing (the chunker saw the original case).
        self.template = None if lower else special_template(tokenizer)

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        # as sentence-transformers' Transformer module does before tokenizing
        texts = [t.strip().lower() if self.lower else t.strip() for t in texts]
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
        )
        feeds = {}
        for name in self.input_names:
            if name in enc:
                feeds[name] = np.asarray(enc[name], dtype=np.int64)
            elif name == "token_type_ids":
                feeds[name] = np.zeros_like(np.asarray(enc["input_ids"], dtype=np.int64))
            else:
                raise ModelError(
                    f"the exported model wants input {name!r}, which the tokenizer does not give"
                )
        return feeds

    def from_ids(self, ids: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The inputs for texts already tokenized (ids without special tokens), as ``__call__`` gives.

        The tokenizer's special ids are put around each text's ids, which are cut to ``max_length``
        first as the tokenizer's own truncation does, and rows are right-padded with its pad id.
        """
        assert self.template is not None
        prefix, suffix, pad = self.template
        room = self.max_length - len(prefix) - len(suffix)
        lens = [min(len(x), room) + len(prefix) + len(suffix) for x in ids]
        width = max(lens, default=0)
        input_ids = np.full((len(ids), width), pad, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        head = np.asarray(prefix, dtype=np.int64)
        tail = np.asarray(suffix, dtype=np.int64)
        for i, (x, n) in enumerate(zip(ids, lens, strict=True)):
            input_ids[i, :n] = np.concatenate([head, np.asarray(x[:room], dtype=np.int64), tail])
            mask[i, :n] = 1
        feeds = {}
        for name in self.input_names:
            if name == "input_ids":
                feeds[name] = input_ids
            elif name == "attention_mask":
                feeds[name] = mask
            elif name == "token_type_ids":
                feeds[name] = np.zeros_like(input_ids)
            else:
                raise ModelError(f"the exported model wants input {name!r}, which token ids do not give")
        return feeds


def special_template(tokenizer: Any) -> tuple[list[int], list[int], int] | None:
    """The special ids a tokenizer puts before and after a text's ids, and its pad id.

    ``([CLS], [SEP], [PAD])`` for BERT's tokenizers. ``None`` where the layout is not one fixed
    prefix and suffix around the text (checked on two texts), or padding is not on the right: the
    runner then tokenizes the texts itself.
    """
    try:
        pad = tokenizer.pad_token_id
        if pad is None or getattr(tokenizer, "padding_side", "right") != "right":
            return None
        layout: tuple[list[int], list[int]] | None = None
        for probe in ("Embeddings map text to vectors.", "x"):
            bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
            full = list(tokenizer(probe)["input_ids"])
            starts = [k for k in range(len(full) - len(bare) + 1) if full[k : k + len(bare)] == bare]
            if not bare or not starts:
                return None
            k = starts[0]
            found = (full[:k], full[k + len(bare) :])
            if layout is not None and found != layout:
                return None
            layout = found
        assert layout is not None
        return layout[0], layout[1], int(pad)
    except Exception:  # any tokenizer this cannot read: tokenize the texts instead
        return None


class _GraphRunner:
    """Shared by the ONNX Runtime and OpenVINO runners: tokenize batch i+1 while batch i runs."""

    devices: list[str]
    _tokenize: _Tokenize
    takes_ids = True
    """``run_many`` takes the texts' token ids (see :meth:`_Tokenize.from_ids`)."""

    def _infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def run(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._infer(self._tokenize(texts)), dtype=np.float32)

    def run_many(
        self, texts: Sequence[str], batches: list[np.ndarray], ids: Sequence[np.ndarray] | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Run the batches (index arrays into ``texts``), yielding each one's indices and vectors.

        ``ids``: each text's token ids (no special tokens) from the same tokenizer, when the caller
        has them: the batches are then built from them instead of tokenizing the texts again.
        """
        if not batches:
            return
        if ids is not None and self._tokenize.template is not None:
            for idx in batches:
                feeds = self._tokenize.from_ids([ids[i] for i in idx])
                yield idx, np.asarray(self._infer(feeds), dtype=np.float32)
            return
        # The tokenizer (Rust) and the runtimes release the GIL: overlap them.
        with ThreadPoolExecutor(1, thread_name_prefix="embedpipe-tokenize") as pool:
            nxt = pool.submit(self._tokenize, [texts[i] for i in batches[0]])
            for j, idx in enumerate(batches):
                feeds = nxt.result()
                if j + 1 < len(batches):
                    nxt = pool.submit(self._tokenize, [texts[i] for i in batches[j + 1]])
                yield idx, np.asarray(self._infer(feeds), dtype=np.float32)


class OrtRunner(_GraphRunner):
    """An exported sentence-transformers pipeline in ONNX Runtime."""

    def __init__(
        self,
        path: Path,
        tokenizer: Any,
        max_length: int,
        device: str,
        threads: int | None,
        lower: bool = False,
    ) -> None:
        self.session = ort_session(path, device, threads)
        self.devices = [device]
        names = [i.name for i in self.session.get_inputs()]
        self._tokenize = _Tokenize(tokenizer, max_length, names, lower)
        self._output = self.session.get_outputs()[0].name

    def _infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self._output], feeds)[0]


def ort_session(path: Path, device: str, threads: int | None) -> Any:
    """An ONNX Runtime session for ``path`` on ``device`` (CUDA where the GPU build is installed)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(
                f"model.backend=onnx on device={device} needs onnxruntime-gpu (this onnxruntime has "
                f"{', '.join(ort.get_available_providers())}); install it, or use model.backend=torch on GPUs"
            )
        dev_id = int(device.split(":")[1]) if ":" in device else 0
        providers = [("CUDAExecutionProvider", {"device_id": dev_id}), "CPUExecutionProvider"]
    return ort.InferenceSession(str(path), so, providers=providers)


class OpenVINORunner(_GraphRunner):
    """The fp32 ONNX export compiled by OpenVINO for the CPU."""

    def __init__(
        self,
        path: Path,
        tokenizer: Any,
        max_length: int,
        precision: str,
        threads: int | None,
        lower: bool = False,
    ) -> None:
        # OpenVINO's usage telemetry forks a process to send events to Google Analytics; an offline
        # pipeline must not phone home (and the fork upsets Lance, which is not fork-safe). Its
        # imports fall back to a stub when the package cannot be imported.
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        hint = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}.get(precision)
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        model = core.read_model(str(path))
        self.compiled = core.compile_model(model, "CPU", config)
        hinted = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        name = hinted.get_type_name() if hasattr(hinted, "get_type_name") else str(hinted)
        self.precision = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(name, name)
        self.devices = ["cpu"]
        self._tokenize = _Tokenize(tokenizer, max_length, [p.get_any_name() for p in model.inputs], lower)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def _infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:
            result = self._request.infer(feeds)
            return np.array(result[self.compiled.output(0)], dtype=np.float32, copy=True)


def cpu_fingerprint() -> str:
    """The CPU model, its feature flags and the cores this process may use (a short hash)."""
    import platform

    text = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "flags", "Features")):
                    text += line
                if not line.strip() and text:
                    break
    except OSError:
        text = platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return hashlib.sha256(f"{text}|{cores}".encode()).hexdigest()[:16]


def openvino_precision(root: Path) -> str:
    """The precision OpenVINO compiles an ``auto`` model in on this CPU (``bf16`` or ``fp32``, ...).

    Asked of OpenVINO once per CPU and OpenVINO version and remembered in ``root`` (the export
    folder), so that a run which embeds nothing knows its identity without importing OpenVINO.
    The runner reports the precision it really compiled in; the embedder corrects to that.
    """
    import importlib.metadata as md

    key = f"{cpu_fingerprint()}|{md.version('openvino')}"
    path = root / "openvino-precision.json"
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(known, dict) and isinstance(known.get(key), str):
            return str(known[key])
    except (OSError, ValueError):
        known = {}
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino as ov

    hinted = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    name = hinted.get_type_name() if hasattr(hinted, "get_type_name") else str(hinted)
    precision = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(name, name)
    try:
        root.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({**(known if isinstance(known, dict) else {}), key: precision}))
    except OSError:
        pass  # asked again next time
    return precision


def have_module(name: str) -> bool:
    """Whether a package can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec(name) is not None


def require_backend(backend: str) -> None:
    """Refuse a backend whose packages are missing, saying what to install.

    Raises:
        ConfigError: Unknown backend, or its runtime is not installed.
    """
    if backend == "auto":  # resolved to an installed backend (:mod:`.auto`)
        return
    if backend not in BACKENDS:
        raise ConfigError(f"model.backend={backend!r} is unknown; expected one of {', '.join(BACKENDS)}")
    need = {
        "onnx": ["onnx", "onnxruntime"],
        "onnx-int8": ["onnx", "onnxruntime"],
        "openvino": ["onnx", "openvino"],
    }
    missing = [m for m in need.get(backend, []) if not have_module(m)]
    if missing:
        extra = "openvino" if backend == "openvino" else "onnx"
        raise ConfigError(
            f"model.backend={backend} needs {', '.join(missing)}, which is not installed here; "
            f"run `pip install 'embedpipe[{extra}]'`"
        )


# --------------------------------------------------------------------------- export cache


def default_export_dir() -> Path:
    """``$HF_HOME/embedpipe-exports``: beside the Hugging Face model cache."""
    try:
        from huggingface_hub import constants

        home = Path(constants.HF_HOME)
    except Exception:  # pragma: no cover - huggingface_hub comes with sentence-transformers
        home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "embedpipe-exports"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[-60:] or "model"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_versions(*packages: str) -> dict[str, str]:
    """The installed version of each package (``""`` where it is not installed)."""
    import importlib.metadata as md

    out = {}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = ""
    return out


def _versions() -> dict[str, str]:
    return package_versions("torch", "onnx", "onnxruntime", "sentence-transformers", "transformers")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, readable by all users
    (a shared cache): readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class ExportKey:
    """What an export is made from; a cached export is valid only for the same key."""

    name: str
    weights_hash: str
    kind: str
    """``onnx`` (fp32) or ``onnx-int8``."""

    def folder(self, root: Path) -> Path:
        return root / f"{_slug(self.name)}-{self.weights_hash[:16]}" / f"{self.kind}-r{EXPORT_RECIPE}"

    def manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weights_hash": self.weights_hash,
            "kind": self.kind,
            "recipe": EXPORT_RECIPE,
            # recorded for diagnosis (cached_export_problem compares name, weights, kind, recipe)
            "torch": _versions()["torch"],
            "transformers": _versions()["transformers"],
        }


def cached_export_problem(folder: Path, key: ExportKey) -> str | None:
    """Why the export in ``folder`` cannot be used, or ``None`` when it can.

    Checks the manifest (same model weights, recipe and exporting library versions) and the digest
    of the ONNX file; whether the runtime can load it is checked by the caller.
    """
    model = folder / "model.onnx"
    manifest = folder / "manifest.json"
    if not model.is_file() or not manifest.is_file():
        return "no export yet"
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"manifest unreadable ({type(e).__name__})"
    if not isinstance(recorded, dict):
        return "manifest malformed"
    want = key.manifest()
    # Library versions are recorded for diagnosis only: an export that still loads and reproduces
    # the model (checked by the caller) stays valid across upgrades, and environments sharing a
    # cache do not rebuild each other's exports.
    for field in ("name", "weights_hash", "kind", "recipe"):
        if recorded.get(field) != want[field]:
            return f"stale: {field} was {recorded.get(field)!r}, now {want[field]!r}"
    if recorded.get("sha256") != _sha256(model):
        return "model.onnx does not match its recorded digest (truncated or modified)"
    return None


def export_onnx(st_model: Any, folder: Path, key: ExportKey, model_dir: Path) -> None:
    """Export the sentence-transformers pipeline to ``folder/model.onnx`` (atomically).

    The whole pipeline is traced (transformer, pooling, dense, normalise), so the graph outputs
    sentence embeddings. Attention is exported in its eager form, which ONNX Runtime's transformer
    optimizer fuses into its own attention kernels; ``onnx-int8`` is then quantized dynamically
    (int8 weights per output channel; activations quantized per batch at run time).
    """
    import torch

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700: a shared cache must be readable by other users
    try:
        raw = tmp / "raw.onnx"
        eager = _eager_copy(model_dir, st_model)
        preprocess = getattr(eager, "preprocess", None) or eager.tokenize  # tokenize before ST 6
        features = preprocess(["An example sentence to trace.", "Another, longer one, with more tokens."])
        input_names = [k for k, v in features.items() if isinstance(v, torch.Tensor)]

        class _Pipeline(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *args: Any) -> Any:
                feats = dict(zip(input_names, args, strict=True))
                return self.inner(feats)["sentence_embedding"]

        wrapper = _Pipeline(eager).eval()
        args = tuple(features[k].cpu() for k in input_names)
        axes = {k: {0: "batch", 1: "tokens"} for k in input_names}
        axes["sentence_embedding"] = {0: "batch"}
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                args,
                str(raw),
                input_names=input_names,
                output_names=["sentence_embedding"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        optimized = _optimize(raw, tmp / "optimized.onnx", eager)
        if key.kind == "onnx-int8":
            _quantize(optimized, tmp / "model.onnx")
        else:
            optimized.replace(tmp / "model.onnx")
        _publish(tmp, folder, key)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, folder: Path, key: ExportKey) -> None:
    """Keep only ``model.onnx`` in ``tmp``, write its manifest, and move it to ``folder``."""
    for extra in tmp.iterdir():
        if extra.name != "model.onnx":
            extra.unlink()
    manifest = key.manifest() | {"sha256": _sha256(tmp / "model.onnx"), "created": time.time()}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)


def quantize_fp32_export(folder: Path, key: ExportKey) -> bool:
    """Make the ``onnx-int8`` export by quantizing a valid cached fp32 export of the same model.

    The fp32 export *is* the optimized graph that :func:`export_onnx` quantizes, so the result is
    the same as tracing again, without loading torch's exporter. Returns False when there is no
    valid fp32 export to start from.
    """
    fp32_key = ExportKey(key.name, key.weights_hash, "onnx")
    fp32 = folder.parent / fp32_key.folder(Path()).name
    if key.kind != "onnx-int8" or cached_export_problem(fp32, fp32_key) is not None:
        return False
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    tmp.chmod(0o755)
    try:
        _quantize(fp32 / "model.onnx", tmp / "model.onnx")
        _publish(tmp, folder, key)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def _eager_copy(model_dir: Path, st_model: Any) -> Any:
    """The model again on the CPU in fp32, with eager attention (traceable, and fusable by ORT)."""
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(
            str(model_dir), device="cpu", local_files_only=True, model_kwargs={"attn_implementation": "eager"}
        ).eval()
    except Exception:  # a model whose architecture has no eager switch: trace it as it is
        import copy

        return copy.deepcopy(st_model).to("cpu").float().eval()


def _optimize(raw: Path, out: Path, st_model: Any) -> Path:
    """Fuse attention, layer norm and GELU with ONNX Runtime's transformer optimizer (BERT-like models)."""
    try:
        config = st_model[0].auto_model.config
        model_type = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "mpnet": "bert"}.get(
            config.model_type
        )
        if model_type is None:
            return raw
        from onnxruntime.transformers import optimizer

        with warnings.catch_warnings(), _quiet_logs():
            warnings.simplefilter("ignore")
            opt = optimizer.optimize_model(
                str(raw),
                model_type=model_type,
                num_heads=int(config.num_attention_heads),
                hidden_size=int(config.hidden_size),
                opt_level=1,
            )
        with _quiet_logs():
            opt.save_model_to_file(str(out))
        return out
    except Exception as e:  # the plain export still runs, only slower
        log.warning(
            "ONNX Runtime's transformer optimizer failed (%s: %s); using the plain export",
            type(e).__name__,
            e,
        )
        return raw


@contextmanager
def _quiet_logs(level: int = logging.INFO) -> Iterator[None]:
    """Silence the chatter of ONNX Runtime's optimizer and quantizer (they log to the root logger)."""
    previous = logging.root.manager.disable
    logging.disable(level)
    try:
        yield
    finally:
        logging.disable(previous)


def _quantize(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization: int8 weights per output channel, uint8 activations per batch.

    The first layer's feed-forward output projection stays in fp32: its inputs (after GELU) have the
    widest range of the network, and one per-tensor uint8 scale for them costs the most accuracy
    (mean cosine to torch 0.990 with it quantized, 0.9925 without, on the bundled model).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    names = [
        n.name for n in onnx.load(str(src), load_external_data=False).graph.node if n.op_type == "MatMul"
    ]
    exclude = [n for n in names if re.search(r"layer\.0/output/dense/MatMul$", n)]
    # (its one warning suggests shape pre-processing, which changes nothing for a fused BERT graph)
    with warnings.catch_warnings(), _quiet_logs(logging.WARNING):
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=exclude,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def verify_export(run: Callable[[list[str]], np.ndarray], st_model: Any, kind: str) -> float:
    """Lowest cosine between the runner's vectors and the torch model's on a few sentences.

    Raises:
        ModelError: Below the backend's floor: the export does not reproduce the model.
    """
    texts = list(_VERIFY_TEXTS)
    ref = np.asarray(
        st_model.encode(texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False),
        dtype=np.float32,
    )
    got = run(texts)
    got = got / np.maximum(np.linalg.norm(got, axis=1, keepdims=True), 1e-12)
    cos = float((got * ref).sum(axis=1).min())
    floor = _VERIFY_MIN_COS[kind]
    if not np.isfinite(cos) or cos < floor:
        raise ModelError(
            f"the {kind} export does not reproduce the model: cosine to torch {cos:.4f} < {floor} on the "
            "verification sentences; use model.backend=torch for this model"
        )
    return cos


def ensure_export(
    st_model: Any, model_dir: Path, key: ExportKey, root: Path, check: Callable[[Path], None]
) -> Path:
    """The folder of a usable export for ``key``, exporting (or re-exporting) it when needed.

    ``check`` loads the export in its runtime and verifies it; an export that fails it is rebuilt
    once. Concurrent processes wait on a file lock instead of exporting twice.
    """
    from filelock import FileLock, Timeout

    folder = key.folder(root)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"model.export_dir={root} is not writable ({type(e).__name__}: {e}); set model.export_dir "
            "(EMBEDPIPE_MODEL__EXPORT_DIR) to a writable folder"
        ) from e
    try:
        with FileLock(str(folder) + ".lock", timeout=900):
            return _ensure_locked(st_model, model_dir, key, folder, check)
    except Timeout as e:
        raise ModelError(
            f"another process has held the export lock {folder}.lock for 15 minutes; if none is "
            "exporting, delete the lock file"
        ) from e


def _ensure_locked(
    st_model: Any, model_dir: Path, key: ExportKey, folder: Path, check: Callable[[Path], None]
) -> Path:
    problem = cached_export_problem(folder, key)
    if problem is None:
        try:
            check(folder)
            log.info("using cached %s export %s", key.kind, folder)
            return folder
        except EmbedpipeError:
            # a device the runtime cannot use, or an export that loads but does not reproduce
            # the model: exporting again by the same recipe cannot help
            raise
        except Exception as e:
            problem = f"cached export failed to load ({type(e).__name__}: {e})"
    if problem != "no export yet":
        log.warning("rebuilding the %s export in %s: %s", key.kind, folder, problem)
    t0 = time.perf_counter()
    try:
        if not quantize_fp32_export(folder, key):
            export_onnx(st_model, folder, key, model_dir)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(
            f"cannot export model={key.name} to ONNX ({type(e).__name__}: {e}); use model.backend=torch"
        ) from e
    try:
        check(folder)
    except EmbedpipeError:
        raise
    except Exception as e:
        raise ModelError(
            f"the fresh {key.kind} export in {folder} does not load ({type(e).__name__}: {e}); "
            "use model.backend=torch"
        ) from e
    log.info("exported %s in %.1fs to %s", key.kind, time.perf_counter() - t0, folder)
    return folder
