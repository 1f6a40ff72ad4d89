"""What every drift statistic shares: input checks, the standard early answers, streamed helpers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from embedpipe.checks.stats import Stat

MIN_ROWS = 5
"""Fewer rows than this on either side and a check returns ``nan`` and does not fire."""

ZERO_VAR = 1e-12  # variance below this share of the mean squared norm counts as "no variance"
_CHUNK = 8192  # rows per block when streaming over large arrays in float64

Array = NDArray[Any]


def as_matrix(x: ArrayLike, name: str) -> Array:
    """``x`` as a 2-D array (no copy when possible); an empty input becomes shape ``(0, 0)``."""
    a = np.asarray(x)
    if a.size == 0:
        return a.reshape(0, a.shape[-1] if a.ndim == 2 else 0)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    return a


def _same_dim(r: Array, n: Array) -> None:
    if len(r) and len(n) and r.shape[1] != n.shape[1]:
        raise ValueError(f"ref and new have different dimensions: {r.shape[1]} != {n.shape[1]}")


def as_pair(ref: ArrayLike, new: ArrayLike) -> tuple[Array, Array]:
    """``ref`` and ``new`` as 2-D arrays of the same dimension."""
    r, n = as_matrix(ref, "ref"), as_matrix(new, "new")
    _same_dim(r, n)
    return r, n


def optional_pair(ref: ArrayLike | None, new: ArrayLike) -> tuple[Array | None, Array]:
    """Like :func:`as_pair` for the checks that also run without a reference (``ref=None``)."""
    n = as_matrix(new, "new")
    r = as_matrix(ref, "ref") if ref is not None else None
    if r is not None:
        _same_dim(r, n)
    return r, n


def too_few(threshold: float, *sizes: int) -> Stat | None:
    """The standard "too few vectors" answer when any side has fewer than :data:`MIN_ROWS` rows."""
    if min(sizes) < MIN_ROWS:
        counts = "+".join(str(s) for s in sizes)
        return Stat(
            statistic=float("nan"), threshold=threshold, fired=False, detail=f"too few vectors (n={counts})"
        )
    return None


def non_finite(threshold: float, *arrays: Array) -> Stat | None:
    """The standard answer when any of ``arrays`` holds a NaN or an infinity."""
    for a in arrays:
        if a.size and not np.isfinite(a).all():
            return Stat(
                statistic=float("nan"),
                threshold=threshold,
                fired=False,
                detail="non-finite values in the vectors",
            )
    return None


def unusable(threshold: float, *arrays: Array) -> Stat | None:
    """:func:`too_few`, else :func:`non_finite`: the answer for inputs a vector check cannot measure."""
    return too_few(threshold, *(len(a) for a in arrays)) or non_finite(threshold, *arrays)


def share_above(count: int, total: int, max_rate: float, detail: str) -> Stat:
    """The share ``count / total`` of rows with a problem, firing above ``max_rate``."""
    share = count / total
    return Stat(statistic=share, threshold=max_rate, fired=share > max_rate, effect=share, detail=detail)


def row_blocks(n: int, size: int = _CHUNK) -> Iterator[slice]:
    """Slices of at most ``size`` rows covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def subsample(x: Array, m: int, rng: np.random.Generator) -> Array:
    """At most ``m`` rows of ``x`` drawn without replacement (kept in their original order)."""
    if len(x) <= m:
        return x
    return x[np.sort(rng.choice(len(x), size=m, replace=False))]


def mean_and_scatter(x: Array) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """Column means, centred scatter matrix ``sum((x - mean)(x - mean)^T)`` and mean squared norm.

    Streams over row blocks in float64 so a (100000, 384) float32 input never needs a full float64 copy.
    """
    mean = x.mean(axis=0, dtype=np.float64)
    d = x.shape[1]
    scatter = np.zeros((d, d))
    sq_norm = 0.0
    for sl in row_blocks(len(x)):
        block = x[sl].astype(np.float64)
        sq_norm += float(np.einsum("ij,ij->", block, block))
        block -= mean
        scatter += block.T @ block
    return mean, scatter, sq_norm / max(len(x), 1)


def fmt_p(p: float) -> str:
    """A p-value for a ``detail`` line."""
    return f"{p:.2g}"
