"""The sentence-transformers embedder: loaded once per process, identified by its weights.

An embedder knows its identity and tokenizer before it loads the model, from the model card
(:mod:`embedpipe.embedding.card`). It loads the model (torch, transformers, sentence-transformers
and the weights) only when something needs embedding, runs it through the configured backend's
runner (:mod:`embedpipe.embedding.runners`), and checks the card on that load.
:func:`get_embedder` keeps one embedder per settings per process; :func:`register_embedder` routes
model names to other factories (the tests' deterministic fake embedder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedpipe.config import ModelSettings
from embedpipe.embedding import fastload
from embedpipe.embedding.batching import default_batch_tokens, token_batches
from embedpipe.embedding.card import (
    ModelCard,
    card_path,
    read_card,
    resolve_model_path,
    weights_hash,
    write_card,
)
from embedpipe.embedding.devices import (
    check_graph_device,
    graph_device,
    openvino_precision,
    resolve_devices,
    resolve_precision,
)
from embedpipe.embedding.exports import (
    ExportKey,
    default_export_dir,
    ensure_export,
    reference_vectors,
    verify_against,
)
from embedpipe.embedding.runners import OpenVINORunner, OrtRunner, TorchRunner, require_backend
from embedpipe.errors import ModelError
from embedpipe.schemas import ModelIdentity

log = logging.getLogger(__name__)


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

    def encode(self, texts: Sequence[str], batch_size: int, lengths: np.ndarray | None = None) -> np.ndarray:
        """Embed texts into a float32 array of shape ``(len(texts), dim)``.

        ``lengths`` (tokens per text, special tokens excluded) saves counting them again. Embedders
        that can also take the texts' token ids have an ``ids`` keyword (see
        :meth:`SentenceTransformerEmbedder.encode`); the pipeline passes it only to those.
        """
        ...


class HFTokenCounter:
    """Token offsets from a Hugging Face fast tokenizer, with truncation and padding switched off."""

    def __init__(self, backend: Any) -> None:
        """``backend``: a ``tokenizers.Tokenizer`` (or anything with ``to_str()``), or its JSON definition."""
        from tokenizers import Tokenizer

        definition = backend if isinstance(backend, str) else backend.to_str()
        self.definition = definition
        self._tok = Tokenizer.from_str(definition)
        self._tok.no_truncation()
        self._tok.no_padding()
        self.special_tokens = len(self._tok.encode("", add_special_tokens=True).ids)
        self.tokenizer_hash = hashlib.sha256(definition.encode()).hexdigest()
        # WordPiece maps a longer word to one [UNK]: the chunker counts it as several tokens
        model = json.loads(definition).get("model") or {}
        self.max_token_chars = int(model.get("max_input_chars_per_word") or 100)
        unk = model.get("unk_token")
        self.unk_id: int | None = self._tok.token_to_id(unk) if isinstance(unk, str) else None
        """The id of the unknown token: a chunk made only of it carries no meaning."""

    def token_spans(self, texts: Sequence[str]) -> list[np.ndarray]:
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2) for e in encs]

    def count(self, texts: Sequence[str]) -> np.ndarray:
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))

    def token_ids(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per text, its token ids (int32, no special tokens)."""
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encs]


class SentenceTransformerEmbedder:
    """A sentence-transformers model behind the :class:`Embedder` protocol.

    The model runs through the configured backend (:mod:`embedpipe.embedding.runners`). Texts are
    sorted by token count and cut into batches by a token budget, so short chunks go many to a
    batch and long ones few. Pickling drops the loaded model, so an instance can be shipped to
    another process and reloads there.
    """

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings = resolve_auto(settings)
        self._model: Any = None
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self.identity: ModelIdentity
        self.device: str
        self.devices: list[str]
        self.special_tokens: int
        self.tokenizer: HFTokenCounter
        self.batch_tokens: int
        self.runner: Any = None
        self.tokenizer_facts: dict[str, Any] | None = None
        """The tokenizer's definition and settings once loaded (:func:`.fastload.tokenizer_facts`)."""
        self._describe()

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"])  # type: ignore[misc]

    def _describe(self) -> None:
        """Identity, tokenizer and devices: from the model card when there is one, else by loading."""
        s = self.settings
        require_backend(s.backend)
        if s.offline:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self._folder = folder = resolve_model_path(s.name, s.offline)
        if s.backend == "torch":
            devices = resolve_devices(s)
        else:
            device = graph_device(s)
            check_graph_device(s, device)  # backend/device/precision combinations: ModelSettings
            devices = [device]
        self.device = devices[0]
        self.devices = devices
        self._precision = resolve_precision(s, self.device)
        self._whash = weights_hash(folder)
        self.batch_tokens = s.batch_tokens or default_batch_tokens(s.backend, self.device)
        root = Path(s.export_dir).expanduser() if s.export_dir else default_export_dir()
        self._card_path = card_path(root, s.name, folder, self._whash)
        if s.backend == "openvino" and self._precision == "auto":
            # what OpenVINO will compile in on this CPU (asked once, remembered beside the exports)
            self._precision = openvino_precision(root)
        card = read_card(self._card_path)
        self._card = card
        if card is None:
            self.load()
        else:
            self._set_facts(card, self._precision)

    def _set_facts(self, card: ModelCard, precision: str) -> None:
        s = self.settings
        self.tokenizer = HFTokenCounter(card.tokenizer)
        self.special_tokens = self.tokenizer.special_tokens
        self.identity = ModelIdentity(
            name=s.name,
            weights_hash=self._whash,
            dim=card.dim,
            max_seq_length=card.max_seq_length,
            normalize=s.normalize,
            backend=s.backend,
            precision=precision,
        )

    @property
    def loaded(self) -> bool:
        """Whether the model itself is loaded (its identity and tokenizer never need that)."""
        return self.runner is not None

    def load(self) -> None:
        """Load the model and its backend runner (once); record or check the model card.

        Raises:
            ModelError: The model cannot be loaded, or it no longer matches its card.
        """
        with self._load_lock:
            if self.runner is not None:
                return
            self._load_model()

    def _export_key(self) -> tuple[Path, ExportKey]:
        s = self.settings
        root = Path(s.export_dir).expanduser() if s.export_dir else default_export_dir()
        return root, ExportKey(s.name, self._whash, "onnx-int8" if s.backend == "onnx-int8" else "onnx")

    def _graph_runner(self, path: Path, tokenizer: Any, max_seq: int, lower: bool) -> Any:
        s = self.settings
        if s.backend == "openvino":
            return OpenVINORunner(path, tokenizer, max_seq, self._precision, s.threads, lower)
        return OrtRunner(path, tokenizer, max_seq, self.devices[0], s.threads, lower)

    def _load_model(self) -> None:
        if self.settings.backend != "torch" and self._card is not None and self._load_without_torch():
            return
        s = self.settings
        folder = self._folder
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # no weight-loading bars on a clean console

            load_on = self.device if s.backend == "torch" else "cpu"
            model = SentenceTransformer(str(folder), device=load_on, local_files_only=s.offline)
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
        card = ModelCard(dim=int(dim), max_seq_length=max_seq, tokenizer=backend.to_str())
        if self._card is not None and card != self._card:
            # Chunking and the identity already used the card's facts in this process.
            self._card_path.unlink(missing_ok=True)
            raise ModelError(
                f"model={s.name} loaded from {folder} does not match its model card {self._card_path} "
                "(removed now); run again"
            )
        if self._card is None:
            write_card(self._card_path, card)
        runner, precision = self._runner(model, card)
        if self._card is None or precision != self.identity.precision:
            self._set_facts(card, precision)  # OpenVINO reports what it really compiled in
        self._card = card
        self._model = model
        self.tokenizer_facts = fastload.tokenizer_facts(model.tokenizer, _lowercases(model), card.tokenizer)
        self.runner = runner
        self._log_loaded(precision, "sentence-transformers")

    def _load_without_torch(self) -> bool:
        """Load a verified export with the ``tokenizers`` package and its stored reference
        (:mod:`embedpipe.embedding.fastload`): no torch, transformers or sentence-transformers.

        Returns False (the caller then loads through sentence-transformers, which checks the export
        against torch again) where there is no valid record or the export fails its check.
        """
        card = self._card
        assert card is not None
        root, key = self._export_key()
        folder = key.folder(root)
        record = fastload.read_record(folder, key)
        if isinstance(record, str) or record["max_length"] != card.max_seq_length:
            log.debug("loading model=%s through sentence-transformers: %s", key.name, record)
            return False
        try:
            tokenizer, facts = fastload.load_tokenizer(folder, record)
            if facts["definition"] != card.tokenizer:
                log.debug("loading model=%s through sentence-transformers: its tokenizer changed", key.name)
                return False
            runner = self._graph_runner(folder / "model.onnx", tokenizer, card.max_seq_length, facts["lower"])
            fastload.check_runner(runner.run, record, self.settings.backend)
        except Exception as e:  # the path through torch gives the definitive answer (or error)
            log.warning(
                "loading %s without torch failed (%s: %s); loading it with torch", folder, type(e).__name__, e
            )
            return False
        precision = runner.precision if self.settings.backend == "openvino" else self._precision
        if precision != self.identity.precision:
            self._set_facts(card, precision)
        self.tokenizer_facts = facts
        self.runner = runner
        self._log_loaded(precision, "export and tokenizers (no torch)")
        return True

    def _log_loaded(self, precision: str, how: str) -> None:
        s = self.settings
        log.info(
            "model loaded name=%s backend=%s precision=%s devices=%s dim=%d max_seq=%d batch_tokens=%d "
            "via %s",
            s.name,
            s.backend,
            precision,
            ",".join(self.devices),
            self.identity.dim,
            self.identity.max_seq_length,
            self.batch_tokens,
            how,
        )

    def _runner(self, model: Any, card: ModelCard) -> tuple[Any, str]:
        s = self.settings
        if s.backend == "torch":
            runner = TorchRunner.build(model, self.devices, self._precision)
            runner.on_oom = self._shrink
            return runner, self._precision
        root, key = self._export_key()
        made: dict[str, Any] = {}
        lower = _lowercases(model)

        def check(export: Path) -> None:
            r = self._graph_runner(export / "model.onnx", model.tokenizer, card.max_seq_length, lower)
            ref = reference_vectors(model)
            verify_against(r.run, ref, s.backend)
            made["runner"], made["ref"] = r, ref

        folder = ensure_export(model, self._folder, key, root, check)
        if isinstance(fastload.read_record(folder, key), str):
            facts = fastload.tokenizer_facts(model.tokenizer, lower, card.tokenizer)
            fastload.write_record(folder, key, facts, card.max_seq_length, made["ref"], model.tokenizer)
        runner = made["runner"]
        return runner, (runner.precision if s.backend == "openvino" else self._precision)

    @property
    def takes_ids(self) -> bool:
        """Whether :meth:`encode` uses the ``ids`` it is given (the ONNX and OpenVINO runners)."""
        if self.runner is None:  # not loaded yet: the backend says which runner it will be
            return self.settings.backend != "torch"
        return bool(getattr(self.runner, "takes_ids", False))

    def _shrink(self, failed_batch: int) -> None:
        """After a CUDA out-of-memory on ``failed_batch`` texts, keep later batches below half of it.

        Idempotent per size (a ``min``), so the halvings of one batch do not compound.
        """
        bound = max(1, failed_batch // 2) * self.identity.max_seq_length
        self.batch_tokens = max(16, min(self.batch_tokens, bound))

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int,
        lengths: np.ndarray | None = None,
        ids: Sequence[np.ndarray] | None = None,
    ) -> np.ndarray:
        """Embed texts in token-budget batches of length-sorted texts.

        Args:
            texts: The texts.
            batch_size: Most texts per batch.
            lengths: Tokens per text without special tokens, when the caller knows them already.
            ids: Token ids per text (no special tokens) from this model's tokenizer
                (:meth:`HFTokenCounter.token_ids`), when the caller has them: the ONNX and OpenVINO
                runners then skip tokenizing the texts again.

        Returns:
            float32 vectors in the order of ``texts``, unit length when ``model.normalize``.
        """
        n = len(texts)
        dim = self.identity.dim
        if not n:
            return np.zeros((0, dim), dtype=np.float32)
        counts = np.asarray(lengths if lengths is not None else self.tokenizer.count(texts), dtype=np.int64)
        padded = np.minimum(counts + self.special_tokens, self.identity.max_seq_length)
        batches = token_batches(padded, self.batch_tokens, batch_size)
        out = np.empty((n, dim), dtype=np.float32)
        if getattr(self, "runner", None) is None:
            self.load()
        with self._lock:  # one caller at a time per process: the devices are busy already
            pairs = (
                self.runner.run_many(texts, batches, ids)
                if ids is not None and self.takes_ids
                else self.runner.run_many(texts, batches)
            )
            for idx, vecs in pairs:
                out[idx] = vecs
        if self.settings.normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            np.divide(out, norms, out=out, where=norms > 0)
        return out


def _lowercases(model: Any) -> bool:
    """Whether the sentence-transformers Transformer module lowercases texts before tokenizing."""
    return bool(getattr(model[0], "do_lower_case", False))


def settings_for_table(settings: ModelSettings, identity: ModelIdentity) -> ModelSettings:
    """Model settings that embed into a table's own vector space: its model, normalisation and backend.

    Used for queries and checks, which must land where the table's vectors are whatever the
    configuration says now. Non-torch backends run on the CPU here.
    """
    update: dict[str, Any] = {
        "name": identity.name,
        "normalize": identity.normalize,
        "backend": identity.backend,
    }
    if identity.backend != "torch":
        update["device"] = "cpu"
        update["devices"] = []
    if identity.backend in {"onnx", "onnx-int8"}:
        update["precision"] = "auto"
    return settings.model_copy(update=update)


EmbedderFactory = Callable[[ModelSettings], Embedder]
_factories: dict[str, EmbedderFactory] = {}
_cache: dict[tuple[Any, ...], Embedder] = {}
_cache_lock = threading.Lock()


def register_embedder(prefix: str, factory: EmbedderFactory) -> None:
    """Route model names starting with ``prefix`` (e.g. ``"fake:"``) to ``factory``.

    Used by tests for a deterministic fake embedder and by plugins for other backends.
    """
    _factories[prefix] = factory


def is_registered(name: str) -> bool:
    """Whether a registered factory (:func:`register_embedder`) serves the model ``name``."""
    return any(name.startswith(prefix) for prefix in _factories)


def resolve_auto(settings: ModelSettings) -> ModelSettings:
    """``model.backend = "auto"`` made concrete as for a new table (other settings unchanged).

    The flows resolve it themselves first, knowing the target table
    (:func:`embedpipe.embedding.auto.choose_backend`); this serves direct use.
    """
    if settings.backend != "auto":
        return settings
    from embedpipe.embedding.auto import choose_backend

    return settings.model_copy(update={"backend": choose_backend(settings).backend})


_CPU_ONLY = ("openvino", "onnx-int8")


def _key(settings: ModelSettings) -> tuple[Any, ...]:
    """The cache key: settings that load the same runtime give the same key.

    The checks and queries embed with the table's settings (:func:`settings_for_table`), which name
    the device a CPU-only backend resolves ``auto`` to and drop the torch device list: without
    this, a run's checks loaded a second copy of the model the run had loaded already.
    """
    values = settings.model_dump(exclude={"batch_size"})
    if values["backend"] != "torch":
        values["devices"] = []  # only torch runs replicas
        if values["backend"] in _CPU_ONLY and values["device"] == "auto":
            values["device"] = "cpu"  # as graph_device resolves it
    return tuple(tuple(v) if isinstance(v, list) else v for v in values.values())


def forget_embedder(settings: ModelSettings) -> None:
    """Drop the process's embedder for these settings (its model is freed once unused)."""
    with _cache_lock:
        _cache.pop(_key(settings), None)


def get_embedder(settings: ModelSettings) -> Embedder:
    """The embedder for these settings, loaded once per process and reused.

    ``model.backend = "auto"`` is resolved first, as for a new table (:func:`resolve_auto`).
    """
    settings = resolve_auto(settings)
    key = _key(settings)
    with _cache_lock:
        if key not in _cache:
            factory: EmbedderFactory = SentenceTransformerEmbedder  # type: ignore[assignment]
            for prefix, f in _factories.items():
                if settings.name.startswith(prefix):
                    factory = f
                    break
            _cache[key] = factory(settings)
        return _cache[key]
