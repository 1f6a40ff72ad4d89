"""Search a table: pin the requested version, embed the query the lightest way, find neighbours.

Used by ``embedpipe search`` and :meth:`embedpipe.api.Table.search`. Nothing here imports
Prefect or LanceDB: the table is read through Lance (:mod:`embedpipe.store.reader`), and the
query is embedded by ONNX Runtime where an export of the table's model passed its query check
(:mod:`embedpipe.embedding.query`), else by the table's own embedder (torch for a torch table).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from embedpipe.config import Settings
from embedpipe.errors import ConfigError
from embedpipe.schemas import ModelIdentity
from embedpipe.store.reader import TableReader

log = logging.getLogger(__name__)

SEARCH_MODES = ("vector", "text", "hybrid")
"""Search modes supported; others are refused naming these. ``vector``: nearest chunks by cosine
similarity of embeddings (``score`` is the cosine similarity); ``text``: BM25 over the full-text
index (``score`` is the BM25 score); ``hybrid``: both rankings fused by reciprocal rank fusion
(``score`` is the RRF score, ``sum(1 / (60 + rank))``)."""


def check_mode(mode: str) -> str:
    """``mode`` when it is a supported search mode.

    Raises:
        ConfigError: Any other mode, naming the supported ones.
    """
    if mode not in SEARCH_MODES:
        raise ConfigError(f"mode={mode!r} is not supported; supported: {', '.join(SEARCH_MODES)}")
    return mode


# Why a fast path was not found that making one would change (a failed check is not retried).
_MAKEABLE = ("no query check recorded", "the export in", "query check ")


class Searcher:
    """Searches one store's chunks table; query embedders are loaded once and reused.

    Args:
        settings: The settings (store and model groups are read; the table's own model identity
            decides which model embeds the query).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.reader = TableReader(settings.store)
        self._embedders: dict[ModelIdentity, Any] = {}
        self._pending: dict[ModelIdentity, Any] = {}
        self.runtime: str | None = None
        """``onnx`` or the table's backend: how the last query was embedded."""
        self.mode: str | None = None
        """The search mode of the last search."""
        self.fallback: str | None = None
        """Why the last search fell back from the configured mode to vector search, if it did."""

    def embed(self, query: str, identity: ModelIdentity) -> np.ndarray:
        """The query's vector in the space of a table with ``identity``."""
        from embedpipe.embedding.query import OnnxQueryEmbedder

        emb = self._embedders.get(identity) or self._load(identity)
        if isinstance(emb, OnnxQueryEmbedder):
            self.runtime = "onnx"
            return emb.encode([query])[0]
        self.runtime = identity.backend
        return np.asarray(emb.encode([query], batch_size=1)[0], dtype=np.float32)

    def _load(self, identity: ModelIdentity) -> Any:
        from embedpipe.embedding.embedder import settings_for_table
        from embedpipe.embedding.query import fast_embedder

        model = settings_for_table(self.settings.model, identity)
        found = fast_embedder(model, identity)
        if isinstance(found, str):
            log.info("query embedded by backend=%s: %s", identity.backend, found)
            emb = self._full_embedder(model, identity)
            if found.startswith(_MAKEABLE):
                self._pending[identity] = (emb, model)
        else:
            emb = found
        self._embedders[identity] = emb
        return emb

    def _full_embedder(self, model: Any, identity: ModelIdentity) -> Any:
        from embedpipe.embedding.embedder import get_embedder
        from embedpipe.store import model_mismatch

        emb = get_embedder(model)
        model_mismatch(identity, emb.identity, self.settings.store.table)
        return emb

    def search(
        self, query: str, k: int, version: str | int | None = "serving", mode: str | None = None
    ) -> list[dict[str, Any]]:
        """The ``k`` best chunks for ``query`` at one version of the table, best first.

        Args:
            query: The text to search for: plain words in every mode (nothing in it is query syntax).
            k: How many results.
            version: ``serving`` (the version that passed its checks), ``latest``, a number or a tag.
            mode: ``vector``, ``text`` or ``hybrid`` (see :data:`SEARCH_MODES`); ``None``: the
                configured ``index.search_mode``, which falls back to ``vector`` on a version
                without a full-text index (:attr:`fallback` says so).

        Returns:
            Rows with ``doc_id``, ``chunk_id``, ``text`` and ``score`` (cosine similarity, BM25 or
            RRF score by mode).

        Raises:
            ConfigError: An unsupported mode.
            TableNotFoundError: No such table.
            NothingServedError: No version has passed its checks yet.
            VersionNotFoundError: No such version or tag.
            IndexMissingError: Text or hybrid search asked for on a version without a full-text index.
            ModelMismatchError: The model found for the table's identity has other weights.
        """
        from embedpipe.store import fulltext

        asked = mode is not None
        mode = check_mode(mode or self.settings.index.search_mode)
        # One consistent version (the served one by default): a concurrent run cannot switch underneath.
        ds = self.reader.open_version(version)
        self.fallback = None
        if mode != "vector" and not fulltext.has_text_index(ds):
            if asked:
                fulltext.require_text_index(ds, mode, self.reader.table)  # before loading the model
            # A table written before full-text indexes keeps serving the configured default: by vector.
            self.fallback = (
                f"table={self.reader.table} version {ds.version} has no full-text index: "
                f"index.search_mode={mode} falls back to vector search (`embedpipe index` builds it)"
            )
            log.info(self.fallback)
            mode = "vector"
        self.mode = mode
        if mode == "text":  # no model to load at all
            return self.reader.text_search(ds, query, k)
        vector = self.embed(query, self.reader.identity(ds))
        if mode == "hybrid":
            return self.reader.hybrid_search(ds, vector, query, k)
        return self.reader.search(ds, vector, k)

    @property
    def can_prepare(self) -> bool:
        """Whether a query fell back to the full embedder where a fast path could be made."""
        return bool(self._pending)

    def prepare(self) -> None:
        """Make and check the fast query path for the tables that lacked one (for later searches).

        The model is loaded already; this exports it to ONNX where no export exists, then runs the
        query check (:func:`embedpipe.embedding.query.record_query_check`).
        """
        from embedpipe.embedding.query import record_query_check

        for identity, (emb, model) in list(self._pending.items()):
            record_query_check(emb, identity, model)
            del self._pending[identity]
