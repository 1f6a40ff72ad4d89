"""Inference backends behind the embedder: torch, ONNX Runtime (fp32 or int8) and OpenVINO.

Everything here works one *batch* at a time; :mod:`embedpipe.embedding.embedder` cuts texts into
batches by a token budget (:mod:`embedpipe.embedding.batching`) and hands them to a :class:`Runner`.

- :class:`TorchRunner` runs the sentence-transformers model itself, in fp32, fp16 or bf16, on one
  device or on several (one replica per GPU, fed by one thread each). On CUDA out-of-memory a
  batch is halved and retried, and the budget for later batches shrinks with it.
- :class:`OrtRunner` runs an ONNX export of the whole sentence-transformers pipeline (transformer,
  pooling, normalisation) with ONNX Runtime; ``onnx-int8`` is the same export with dynamic int8
  quantization of its weights.
- :class:`OpenVINORunner` compiles the fp32 export with OpenVINO.

The exports themselves are made and cached by :mod:`embedpipe.embedding.exports`.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedpipe.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")


def have_module(name: str) -> bool:
    """Whether a package can be imported (without importing it)."""
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
