"""Similarity-quality measures: golden retrieval sets, probe triplets, scored pairs, neighbours.

The files are small JSONL sets people write by hand, so every loader validates each line and
raises :class:`~embedpipe.errors.ConfigError` naming the file, the line and what is wrong.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from embedpipe.errors import ConfigError

T = TypeVar("T")

BUILTIN = "builtin"
MAX_SET_BYTES = 16 * 1024 * 1024
MAX_TEXT_CHARS = 20_000

Encode = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class GoldenQuery:
    query: str
    relevant: dict[str, float]


@dataclass(frozen=True)
class Triplet:
    anchor: str
    positive: str
    negative: str
    margin: float


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    score: float


def _read_text(spec: str, builtin_name: str, what: str) -> tuple[str, str]:
    if spec == BUILTIN:
        data = resources.files("embedpipe.checks").joinpath("data", builtin_name).read_text("utf-8")
        return f"builtin:{builtin_name}", data
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: path={spec}; fix checks.{what} or remove it")
    if path.stat().st_size > MAX_SET_BYTES:
        raise ConfigError(
            f"{what} file too large: path={spec} is {path.stat().st_size} bytes "
            f"(limit {MAX_SET_BYTES}); these are small hand-written sets"
        )
    try:
        return spec, path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} file is not UTF-8: path={spec}: {e}") from e


def _jsonl(spec: str, builtin_name: str, what: str) -> list[tuple[str, int, dict[str, Any]]]:
    name, data = _read_text(spec, builtin_name, what)
    out = []
    for no, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{what} file {name} line {no}: not valid JSON ({e.msg})") from e
        if not isinstance(obj, dict):
            raise ConfigError(
                f"{what} file {name} line {no}: expected a JSON object, got {type(obj).__name__}"
            )
        out.append((name, no, obj))
    if not out:
        raise ConfigError(
            f"{what} file {name} is empty: add at least one line or remove it from checks.{what}"
        )
    return out


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{where}: {key!r} must be a non-empty string, got {v!r:.60}")
    if len(v) > MAX_TEXT_CHARS:
        raise ConfigError(f"{where}: {key!r} has {len(v)} characters (limit {MAX_TEXT_CHARS})")
    return v


def _number(obj: dict[str, Any], key: str, where: str, default: float | None = None) -> float:
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ConfigError(f"{where}: {key!r} must be a finite number, got {v!r:.60}")
    return float(v)


def _records(specs: Sequence[str], what: str, make: Callable[[dict[str, Any], str], T]) -> list[T]:
    """One ``make(obj, where)`` per JSONL line of every file in ``specs`` (``where`` names the line)."""
    return [
        make(obj, f"{what} file {name} line {no}")
        for spec in specs
        for name, no, obj in _jsonl(spec, f"{what}.jsonl", what)
    ]


def _golden(obj: dict[str, Any], where: str) -> GoldenQuery:
    query = _text(obj, "query", where)
    rel = obj.get("relevant")
    if not isinstance(rel, dict) or not rel:
        raise ConfigError(f"{where}: 'relevant' must be a non-empty object of doc_id: grade")
    grades = {}
    for doc_id, grade in rel.items():
        g = _number({"grade": grade}, "grade", f"{where} doc_id {doc_id!r}")
        if g <= 0:
            raise ConfigError(f"{where}: grade of doc_id {doc_id!r} must be > 0, got {g}")
        grades[str(doc_id)] = g
    return GoldenQuery(query=query, relevant=grades)


def load_golden(specs: Sequence[str]) -> list[GoldenQuery]:
    """Golden queries from JSONL files of ``{"query": str, "relevant": {doc_id: grade > 0}}``.

    Raises:
        ConfigError: A missing, empty or malformed file; the message names file and line.
    """
    return _records(specs, "golden", _golden)


def load_triplets(specs: Sequence[str]) -> list[Triplet]:
    """Probe triplets from JSONL files of ``{"anchor", "positive", "negative", "margin"?}``."""

    def make(obj: dict[str, Any], where: str) -> Triplet:
        return Triplet(
            anchor=_text(obj, "anchor", where),
            positive=_text(obj, "positive", where),
            negative=_text(obj, "negative", where),
            margin=_number(obj, "margin", where, 0.0),
        )

    return _records(specs, "triplets", make)


def load_pairs(specs: Sequence[str]) -> list[Pair]:
    """Scored sentence pairs from JSONL files of ``{"a", "b", "score"}``."""
    out = _records(
        specs,
        "pairs",
        lambda obj, where: Pair(
            a=_text(obj, "a", where), b=_text(obj, "b", where), score=_number(obj, "score", where)
        ),
    )
    if len({p.score for p in out}) < 2:
        raise ConfigError("pairs: the scores must not all be equal (a correlation needs variation)")
    return out


def load_canary(spec: str) -> list[str]:
    """Canary probe texts, one per line."""
    name, data = _read_text(spec, "canary.txt", "canary")
    texts = [line.strip() for line in data.splitlines() if line.strip()]
    if not texts:
        raise ConfigError(f"canary file {name} has no probe lines")
    return texts


def validate_sets(golden: Sequence[str], triplets: Sequence[str], pairs: Sequence[str], canary: str) -> None:
    """Load every configured check set once, so a bad file stops a run before it writes anything.

    Raises:
        ConfigError: A missing or malformed file, naming it (and the line).
    """
    if golden:
        load_golden(golden)
    if triplets:
        load_triplets(triplets)
    if pairs:
        load_pairs(pairs)
    load_canary(canary)


# ---------------------------------------------------------------------------------- measures


def retrieval_metrics(
    ranked: Sequence[Sequence[str]], golden: Sequence[GoldenQuery], k: int
) -> dict[str, float]:
    """Mean recall@k, MRR (first relevant within the ranking) and nDCG@10 over queries.

    Args:
        ranked: Per query, document ids best first (duplicates already removed).
        golden: The queries with their graded relevant documents.
        k: Cut-off of recall.

    Every relevant document counts, retrievable or not: one the table does not hold lowers recall
    and the ideal DCG like any other miss.
    """
    recall, rr, ndcg = [], [], []
    for docs, q in zip(ranked, golden, strict=True):
        rel = q.relevant
        recall.append(len(set(docs[:k]) & set(rel)) / len(rel))
        first = next((i for i, d in enumerate(docs) if d in rel), None)
        rr.append(0.0 if first is None else 1.0 / (first + 1))
        gains = [(2 ** rel.get(d, 0.0) - 1) / math.log2(i + 2) for i, d in enumerate(docs[:10])]
        ideal = sorted(rel.values(), reverse=True)[:10]
        idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
        ndcg.append(sum(gains) / idcg if idcg else 0.0)
    return {"recall": float(np.mean(recall)), "mrr": float(np.mean(rr)), "ndcg": float(np.mean(ndcg))}


def _unit(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    n = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(n == 0, 1.0, n)


def triplet_accuracy(encode: Encode, triplets: Sequence[Triplet]) -> tuple[float, float]:
    """Share of triplets with cos(anchor, positive) - cos(anchor, negative) > margin, and the mean gap."""
    a = _unit(encode([t.anchor for t in triplets]))
    p = _unit(encode([t.positive for t in triplets]))
    n = _unit(encode([t.negative for t in triplets]))
    gap = (a * p).sum(1) - (a * n).sum(1)
    margin = np.asarray([t.margin for t in triplets])
    return float((gap > margin).mean()), float(gap.mean())


def pair_spearman(encode: Encode, pairs: Sequence[Pair]) -> float:
    """Spearman correlation between the cosine of each pair and its human score."""
    from scipy.stats import spearmanr

    a = _unit(encode([p.a for p in pairs]))
    b = _unit(encode([p.b for p in pairs]))
    cos = (a * b).sum(1)
    rho = spearmanr(cos, [p.score for p in pairs]).statistic
    return float(rho) if np.isfinite(rho) else 0.0


def knn(vectors: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's ``k`` nearest other rows by cosine (exact, in blocks)."""
    u = _unit(vectors).astype(np.float32)
    n = len(u)
    k = min(k, n - 1)
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, 1024):
        sims = u[start : start + 1024] @ u.T
        rows = np.arange(start, min(start + 1024, n))
        sims[rows - start, rows] = -np.inf
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out[start : start + len(rows)] = idx
    return out


def neighbour_overlap(ref: np.ndarray, new: np.ndarray, k: int) -> float:
    """Mean share of each row's k nearest neighbours that are the same in both vector sets.

    Rows are the same items (unchanged chunks) in the same order in ``ref`` and ``new``.
    """
    a, b = knn(ref, k), knn(new, k)
    return float(np.mean([len(set(x) & set(y)) / a.shape[1] for x, y in zip(a, b, strict=True)]))


def canary_cosines(stored: dict[str, Any], hashes: Sequence[str], vectors: np.ndarray) -> np.ndarray:
    """Cosine between each probe's new vector and its stored vector (probes present in both)."""
    out = []
    for h, v in zip(hashes, vectors, strict=True):
        old = stored.get(h)
        if old is None:
            continue
        old_v = np.asarray(old, dtype=np.float64)
        if old_v.shape != v.shape:
            out.append(0.0)
            continue
        denom = np.linalg.norm(old_v) * np.linalg.norm(v)
        out.append(float(old_v @ v / denom) if denom > 0 else 0.0)
    return np.asarray(out)
