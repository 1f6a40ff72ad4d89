"""The vector index's parameters, its record in the table metadata, and the tuning of its search.

Pure functions over a LanceDB table, used by :mod:`embedpipe.store.indexes` (the upkeep) and by
both search paths (:func:`search_params`). docs/indexes.md explains the formulas.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from embedpipe.schemas import C

if TYPE_CHECKING:
    from lancedb.table import Table

log = logging.getLogger(__name__)

VECTOR_META_KEY = "embedpipe.vector_index"
"""The table-metadata key of the vector index's record (:class:`VectorIndexRecord`, as JSON)."""

VECTOR_INDEX = f"{C.VECTOR}_idx"
TEXT_INDEX = f"{C.TEXT}_idx"
TUNE_QUERIES = 32
TUNE_SEED = 7
MIN_ROWS_PER_PARTITION = 256
"""Lance trains a partition from at least this many vectors; more partitions are cut back."""


@dataclass
class VectorIndexRecord:
    """What embedpipe knows of the vector index of one table version (kept in its metadata)."""

    name: str
    type: str
    params: dict[str, Any]
    trained_at_version: int
    trained_rows: int
    rows: int
    changed_rows: int = 0
    nprobes: int | None = None
    refine_factor: int | None = None
    recall: float | None = None
    forced: bool = False
    """The search parameters were set in the settings rather than tuned."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_metadata(cls, metadata: dict[str, str] | None) -> VectorIndexRecord | None:
        raw = (metadata or {}).get(VECTOR_META_KEY)
        if not raw:
            return None
        try:
            return cls(**json.loads(raw))
        except (TypeError, ValueError) as e:
            log.warning("ignoring an unreadable %s entry: %s", VECTOR_META_KEY, e)
            return None


@dataclass
class IndexRefresh:
    """What one refresh did: the table's version afterwards (``None``: nothing changed)."""

    version: int | None = None
    actions: list[str] = field(default_factory=list)
    record: VectorIndexRecord | None = None


def search_params(metadata: dict[str, str] | None) -> dict[str, int]:
    """The served search parameters recorded in a table version's metadata (``{}``: none)."""
    rec = VectorIndexRecord.from_metadata(metadata)
    if rec is None:
        return {}
    out = {}
    if rec.nprobes is not None:
        out["nprobes"] = int(rec.nprobes)
    if rec.refine_factor is not None:
        out["refine_factor"] = int(rec.refine_factor)
    return out


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return next(d for d in range(max(1, min(cap, n)), 0, -1) if n % d == 0)


FLAT_MAX_DIM = 128
"""``auto`` picks IVF_FLAT up to this dimension and IVF_HNSW_SQ above it (docs/indexes.md)."""


def auto_kind(dim: int) -> str:
    """The index type ``index.vector_type = "auto"`` stands for at dimension ``dim``.

    Small vectors are scanned faster than an HNSW graph is walked: IVF_FLAT reads the probed
    partitions' vectors as they are (exact distances, so no re-ranking), and a short vector is
    cheap to compare. IVF_HNSW_SQ walks one graph per probed partition and needs re-ranking over
    its 8-bit codes to reach the recall gate. A flat scan's cost grows with the dimension, so
    above :data:`FLAT_MAX_DIM` the graph is kept.
    """
    return "IVF_FLAT" if dim <= FLAT_MAX_DIM else "IVF_HNSW_SQ"


def vector_params(rows: int, dim: int, kind: str = "auto") -> tuple[str, dict[str, Any]]:
    """The index type and build parameters for ``rows`` vectors of dimension ``dim``.

    ``auto`` is :func:`auto_kind`: IVF_FLAT up to dimension :data:`FLAT_MAX_DIM`, IVF_HNSW_SQ
    above (docs/indexes.md has the measurements). Partitions are ``round(sqrt(rows))`` for
    IVF_PQ and IVF_FLAT, and an eighth of that for IVF_HNSW_SQ (each partition carries its own
    graph, so partitions can be larger), never more than ``rows / 256`` (Lance needs about 256
    vectors to train a partition). IVF_PQ codes ``dim / 8`` sub-vectors (the largest divisor of
    ``dim`` not above it), 8 bits each.

    Args:
        rows: Rows in the table.
        dim: Vector dimension.
        kind: ``auto`` or a LanceDB index type.

    Returns:
        (type as LanceDB names it, build parameters).
    """
    kind = auto_kind(dim) if kind == "auto" else kind
    cap = max(1, rows // MIN_ROWS_PER_PARTITION)
    root = max(1, round(math.sqrt(rows)))
    if kind == "IVF_HNSW_SQ":
        return kind, {"num_partitions": max(1, min(cap, round(root / 8)))}
    params: dict[str, Any] = {"num_partitions": max(1, min(cap, root))}
    if kind == "IVF_PQ":
        params["num_sub_vectors"] = _largest_divisor_at_most(dim, max(1, dim // 8))
        params["num_bits"] = 8
    return kind, params


def _vector_config(kind: str, params: dict[str, Any]) -> Any:
    from lancedb.index import IvfFlat, IvfHnswSq, IvfPq

    if kind == "IVF_PQ":
        return IvfPq(distance_type="cosine", **params)
    if kind == "IVF_HNSW_SQ":
        return IvfHnswSq(distance_type="cosine", **params)
    return IvfFlat(distance_type="cosine", **params)


def fts_config(tokenizer: str) -> Any:
    """LanceDB's FTS (inverted, BM25) configuration for ``index.fts_tokenizer``.

    ``icu`` splits words at Unicode word boundaries, Chinese (no spaces between words) by ICU's
    built-in dictionary, with English stemming: words match as words in both, and a query has
    a few terms, so searches stay fast. ``ngram`` indexes 2- and 3-character n-grams without
    stemming or stop words: any substring of two characters matches, but a 4-word query becomes
    about 40 terms (tens of times slower at 100k rows). ``simple`` and ``whitespace`` split words
    (English stemming and stop words); a run of Chinese characters is then one token and matches
    only whole.
    """
    from lancedb.index import FTS

    if tokenizer == "ngram":
        return FTS(
            base_tokenizer="ngram",
            ngram_min_length=2,
            ngram_max_length=3,
            stem=False,
            remove_stop_words=False,
        )
    return FTS(base_tokenizer=tokenizer)


def _queries(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Queries that are not rows of the table: midpoints of random pairs of stored vectors.

    Measured against other query distributions (docs/indexes.md), midpoints are not a worst
    case: they give the recall of leave-one-out queries (a stored vector, its own row left out)
    within a few hundredths, and with a real model real query texts get the same or a lower
    recall at the same ``nprobes`` (short questions clearly lower), so the recall measured
    here is an upper bound for question-like queries rather than a pessimistic one.
    """
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, len(vectors), size=(n, 2))
    return (vectors[pairs[:, 0]] + vectors[pairs[:, 1]]) / 2


def measure_recall(
    table: Table, queries: np.ndarray, k: int, params: dict[str, int], exact: list[set[str]] | None = None
) -> tuple[float, list[set[str]]]:
    """Mean recall@k of the index searched with ``params`` against exact search, and the exact sets."""
    from embedpipe.store.state import vector_query

    if exact is None:
        exact = []
        for q in queries:
            query = vector_query(table, q, {}).limit(k).bypass_vector_index().select([C.CHUNK_ID])
            exact.append({r[C.CHUNK_ID] for r in query.to_list()})
    recalls = []
    for q, want in zip(queries, exact, strict=True):
        got = {r[C.CHUNK_ID] for r in vector_query(table, q, params).limit(k).select([C.CHUNK_ID]).to_list()}
        recalls.append(len(got & want) / max(1, len(want)))
    return float(np.mean(recalls)) if recalls else 1.0, exact


PROBE_SHARES = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0)
"""Shares of the partitions the tuner probes, cheapest first."""


def candidates(kind: str, partitions: int) -> list[dict[str, int]]:
    """Search parameters to try, cheapest first.

    IVF_FLAT computes exact distances in the partitions it probes, so re-ranking cannot raise its
    recall: only ``nprobes`` is tried. IVF_PQ always re-ranks (10, then 30 candidates per
    result); IVF_HNSW_SQ without, then with a refine factor of 10.
    """
    probes = sorted({max(1, min(partitions, math.ceil(partitions * f))) for f in PROBE_SHARES})
    refines: tuple[int | None, ...] = (
        (10, 30) if kind == "IVF_PQ" else (None,) if kind == "IVF_FLAT" else (None, 10)
    )
    out = []
    for p in probes:
        for r in refines:
            out.append({"nprobes": p} | ({"refine_factor": r} if r is not None else {}))
    return out


def tune(
    table: Table, vectors: np.ndarray, kind: str, partitions: int, k: int, min_recall: float
) -> tuple[dict[str, int], float]:
    """The cheapest search parameters whose recall@k reaches ``min_recall`` (with a small margin:
    the gate draws other queries), else the best found."""
    queries = _queries(vectors, TUNE_QUERIES, TUNE_SEED)
    target = min(1.0, min_recall + 0.02)
    exact: list[set[str]] | None = None
    best: tuple[dict[str, int], float] = ({}, -1.0)
    enough: tuple[dict[str, int], float] | None = None
    for params in candidates(kind, partitions):
        recall, exact = measure_recall(table, queries, k, params, exact)
        if recall >= target:
            return params, recall
        if enough is None and recall >= min_recall:
            enough = (params, recall)
        if recall > best[1]:
            best = (params, recall)
    return enough or best
