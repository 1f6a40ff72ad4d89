"""Integrity of stored vectors: finite, non-zero, of the declared type, unit length when normalised."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from embedpipe.checks.stats import Stat

NORM_TOLERANCE = 1e-3
"""A normalising model's vectors must have |norm - 1| at most this (float32 rounding is ~1e-7)."""


@dataclass
class IntegrityScan:
    """Counts of bad vectors, accumulated batch by batch."""

    dim: int
    normalize: bool
    rows: int = 0
    nan: int = 0
    inf: int = 0
    zero: int = 0
    norm_off: int = 0
    problems: list[str] = field(default_factory=list)

    def check_type(self, vector_type: pa.DataType) -> None:
        """Record a problem when the column is not ``fixed_size_list<float32>[dim]``."""
        want = pa.list_(pa.float32(), self.dim)
        if not vector_type.equals(want) and not (
            pa.types.is_fixed_size_list(vector_type)
            and vector_type.list_size == self.dim
            and vector_type.value_type == pa.float32()
        ):
            self.problems.append(f"vector column is {vector_type}, expected {want}")

    def add(self, column: pa.Array | pa.ChunkedArray) -> None:
        """Scan one batch of the vector column."""
        if isinstance(column, pa.ChunkedArray):
            for chunk in column.chunks:
                self.add(chunk)
            return
        n = len(column)
        if n == 0:
            return
        self.rows += n
        if column.null_count:
            self.problems.append(f"{column.null_count} null vectors")
        flat = column.flatten().to_numpy(zero_copy_only=False)
        if flat.size != n * self.dim:
            self.problems.append(f"{flat.size // max(n, 1)} values per vector, expected dim={self.dim}")
            return
        m = flat.reshape(n, self.dim).astype(np.float32, copy=False)
        nan_rows = np.isnan(m).any(axis=1)
        inf_rows = np.isinf(m).any(axis=1)
        finite = ~(nan_rows | inf_rows)
        self.nan += int(nan_rows.sum())
        self.inf += int((inf_rows & ~nan_rows).sum())
        norms = np.linalg.norm(m[finite].astype(np.float64), axis=1)
        self.zero += int((norms == 0).sum())
        if self.normalize:
            self.norm_off += int(((norms > 0) & (np.abs(norms - 1.0) > NORM_TOLERANCE)).sum())

    @property
    def bad(self) -> int:
        return self.nan + self.inf + self.zero + self.norm_off

    def result(self) -> Stat:
        """Fires on any bad vector or type problem; the statistic is the number of bad vectors."""
        parts = [f"{self.rows} vectors scanned: nan={self.nan} inf={self.inf} zero={self.zero}"]
        if self.normalize:
            parts.append(f"norm_off={self.norm_off} (|norm-1|>{NORM_TOLERANCE})")
        parts += self.problems
        bad = self.bad + (1 if self.problems else 0)
        rate = self.bad / self.rows if self.rows else 0.0
        return Stat(
            statistic=float(self.bad), threshold=0.0, fired=bad > 0, effect=rate, detail="; ".join(parts)
        )


def scan_vectors(
    batches: Iterable[pa.RecordBatch | pa.Table],
    column: str,
    dim: int,
    normalize: bool,
    vector_type: pa.DataType,
) -> Stat:
    """Scan every vector of ``column`` in ``batches`` (streamed: memory is one batch)."""
    scan = IntegrityScan(dim=dim, normalize=normalize)
    scan.check_type(vector_type)
    for batch in batches:
        scan.add(batch.column(column))
    return scan.result()
