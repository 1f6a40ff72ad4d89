"""Shape of the embedding space: :func:`anisotropy`, :func:`effective_rank`, :func:`duplicate_vectors`.

Descriptive checks that compare an estimate with a fixed threshold far outside its sampling noise;
without a usable reference the first two fall back to an absolute test of the new set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
from numpy.typing import ArrayLike

from embedpipe.checks.drift._base import (
    MIN_ROWS,
    ZERO_VAR,
    Array,
    as_matrix,
    mean_and_scatter,
    optional_pair,
    row_blocks,
    share_above,
    subsample,
    too_few,
    unusable,
)
from embedpipe.checks.stats import Stat

__all__ = ["anisotropy", "duplicate_vectors", "effective_rank"]

_ERANK_MAX_ROWS = 20_000


def _mean_cosine(x: Array) -> float:
    """Mean pairwise cosine similarity of the rows of ``x`` (zero rows count as cosine 0)."""
    total = np.zeros(x.shape[1])
    nonzero = 0
    for sl in row_blocks(len(x)):
        block = x[sl].astype(np.float64)
        norms = np.linalg.norm(block, axis=1)
        ok = norms > 0
        nonzero += int(ok.sum())
        total += (block[ok] / norms[ok, None]).sum(axis=0)
    n = len(x)
    return float((total @ total - nonzero) / (n * (n - 1)))


def anisotropy(ref: ArrayLike | None, new: ArrayLike, *, max_delta: float = 0.1) -> Stat:
    """Change of the mean pairwise cosine similarity (how much all vectors point one way).

    Rows are normalised first (so the value is the mean cosine whatever the input scale); for ``n``
    unit vectors it is ``(||sum||^2 - n) / (n (n - 1))``, computed in O(n d). The statistic is the
    new set's value and ``effect = new - ref``; fires when ``|effect| > max_delta``. Random halves
    of one set agree to ~1e-3. A model swap by rotation keeps every cosine and is *not* caught here;
    a common direction added to all vectors (a degenerate model or a broken normalisation) is. When
    ``ref`` is missing or has fewer than 5 rows, the new value is compared with an absolute ceiling
    of 0.9 instead.

    Args:
        ref: Reference vectors, shape ``(n_ref, d)``, or ``None``.
        new: New vectors, shape ``(n_new, d)``.
        max_delta: Largest allowed change of the mean cosine.

    Returns:
        ``Stat`` with the new mean cosine as statistic and the change as effect.
    """
    r, n = optional_pair(ref, new)
    if r is None or len(r) < MIN_ROWS:
        ceiling = 0.9
        early = unusable(ceiling, n)
        if early:
            return early
        value = _mean_cosine(n)
        return Stat(
            statistic=value,
            threshold=ceiling,
            fired=value > ceiling,
            detail=f"mean cosine={value:.3f} (n={len(n)}, no reference: absolute ceiling {ceiling})",
        )
    early = unusable(max_delta, r, n)
    if early:
        return early
    before, after = _mean_cosine(r), _mean_cosine(n)
    delta = after - before
    return Stat(
        statistic=after,
        threshold=max_delta,
        fired=abs(delta) > max_delta,
        effect=delta,
        detail=f"mean cosine {before:.3f}->{after:.3f} (Δ={delta:+.3f}, n={len(r)}+{len(n)})",
    )


def _erank(x: Array) -> float:
    """Roy & Vetterli effective rank of the covariance of ``x``; 0 when there is no variance."""
    _, scatter, sq_norm = mean_and_scatter(x)
    evals = np.clip(np.linalg.eigvalsh(scatter), 0.0, None)
    total = float(evals.sum())
    if total <= ZERO_VAR * max(sq_norm, 1e-300) * len(x):
        return 0.0
    prob = evals[evals > 0] / total
    return float(np.exp(-np.sum(prob * np.log(prob))))


def effective_rank(ref: ArrayLike | None, new: ArrayLike, *, min_ratio: float = 0.5, seed: int = 0) -> Stat:
    """Collapse of the embedding space: effective rank of the new set relative to the reference.

    The effective rank (Roy & Vetterli 2007) is ``exp(H)`` with ``H`` the Shannon entropy of the
    covariance eigenvalues normalised to sum to 1: the number of equally used directions. It is
    computed on a fixed-seed subsample of the *same* size on both sides (at most 20,000 rows), since
    the sample estimate shrinks with ``n`` when ``n`` is not much larger than ``d``. The statistic is
    ``erank(new) / erank(ref)``; fires when it is below ``min_ratio`` (half the directions lost).
    Random halves give ratios within a few percent of 1. Without a usable reference (``None`` or
    fewer than 5 rows) the statistic is ``erank(new)`` and fires below ``min(2, d)``.

    Args:
        ref: Reference vectors, shape ``(n_ref, d)``, or ``None``.
        new: New vectors, shape ``(n_new, d)``.
        min_ratio: Smallest allowed ratio ``erank(new) / erank(ref)``.
        seed: Seed of the subsample.

    Returns:
        ``Stat`` with the ratio (or the new effective rank) as statistic and ``effect = erank(new)``.
    """
    r, n = optional_pair(ref, new)
    rng = np.random.default_rng(seed)
    if r is None or len(r) < MIN_ROWS:
        floor = min(2.0, float(n.shape[1])) if n.ndim == 2 and n.shape[1] else 2.0
        early = unusable(floor, n)
        if early:
            return early
        value = _erank(subsample(n, _ERANK_MAX_ROWS, rng))
        return Stat(
            statistic=value,
            threshold=floor,
            fired=value < floor - 1e-9,
            effect=value,
            detail=f"erank={value:.1f} (n={len(n)}, no reference: floor {floor:g})",
        )
    early = unusable(min_ratio, r, n)
    if early:
        return early
    m = min(len(r), len(n), _ERANK_MAX_ROWS)
    before = _erank(subsample(r, m, rng))
    after = _erank(subsample(n, m, rng))
    if before <= 0.0:
        return Stat(
            statistic=float("nan"),
            threshold=min_ratio,
            fired=False,
            effect=after,
            detail=f"reference has no variance; erank(new)={after:.1f}",
        )
    ratio = after / before
    return Stat(
        statistic=ratio,
        threshold=min_ratio,
        fired=ratio < min_ratio,
        effect=after,
        detail=f"erank {before:.1f}->{after:.1f} (ratio {ratio:.2f}, n={m}+{m})",
    )


def duplicate_vectors(vectors: ArrayLike, text_hashes: Sequence[str], *, max_rate: float = 0.01) -> Stat:
    """Share of rows whose exact vector is shared with a row of a *different* text (collapsed embeddings).

    Rows are grouped by their exact float32 bytes in one hashing pass (O(n)); a row counts when its
    group holds more than one distinct text hash. Identical texts with identical vectors are fine.
    Fires when the share exceeds ``max_rate``.

    Args:
        vectors: Vectors, shape ``(n, d)``.
        text_hashes: One hash of the source text per row.
        max_rate: Largest allowed share of collapsed rows.

    Returns:
        ``Stat`` with the share as statistic and effect.

    Raises:
        ValueError: When ``text_hashes`` does not have one entry per row.
    """
    x = as_matrix(vectors, "vectors")
    if len(text_hashes) != len(x):
        raise ValueError(f"{len(text_hashes)} text hashes for {len(x)} vectors")
    early = too_few(max_rate, len(x))
    if early:
        return early
    rows = np.ascontiguousarray(x, dtype=np.float32)
    width = rows.shape[1] * rows.itemsize
    keys: list[bytes] = (
        cast("list[bytes]", rows.view(np.dtype((np.void, width))).ravel().tolist())
        if width
        else [b""] * len(rows)
    )
    first_hash: dict[bytes, str] = {}
    mixed: set[bytes] = set()
    for key, text_hash in zip(keys, text_hashes, strict=True):
        seen = first_hash.setdefault(key, text_hash)
        if seen != text_hash:
            mixed.add(key)
    collapsed = sum(1 for key in keys if key in mixed) if mixed else 0
    detail = f"{collapsed}/{len(x)} rows share their vector with a different text ({len(mixed)} vectors)"
    return share_above(collapsed, len(x), max_rate, detail)
