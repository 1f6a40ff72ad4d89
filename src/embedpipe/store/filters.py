"""Row filters built as expressions, never as hand-quoted SQL text.

Every filter on a LanceDB table is a :class:`lancedb.expr.Expr` built with ``col``/``lit``/``isin``:
values travel as typed literals, so a quote, a backslash, ``%`` or any other character in a path,
id or hash cannot change what the filter means. (Lance-only readers use ``pyarrow.compute``
expressions the same way.) LanceDB is imported when a filter is built, not when this module is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from embedpipe.schemas import C

if TYPE_CHECKING:
    from lancedb.expr import Expr

IN_LIST = 2000
"""Values per ``isin`` filter: bounds the size of one query's plan."""


def eq(column: str, value: str | int | datetime) -> Expr:
    """``column = value``."""
    from lancedb.expr import col, lit

    return col(column) == lit(value)


def isin(column: str, values: Iterable[str]) -> Expr:
    """``column IN (values)`` (sorted, without duplicates, so equal inputs give equal plans)."""
    from lancedb.expr import col, lit

    return col(column).isin([lit(v) for v in sorted(set(values))])


def all_of(exprs: Sequence[Expr]) -> Expr:
    """The conjunction of ``exprs`` (at least one)."""
    out = exprs[0]
    for e in exprs[1:]:
        out = out & e
    return out


def any_of(exprs: Sequence[Expr]) -> Expr | None:
    """The disjunction of ``exprs``; ``None`` when there are none."""
    if not exprs:
        return None
    out = exprs[0]
    for e in exprs[1:]:
        out = out | e
    return out


def docs_filter(docs: Iterable[tuple[str, str]]) -> Expr | None:
    """Rows of these (source, doc_id) documents (a doc_id is only unique within its source)."""
    by_source: dict[str, list[str]] = {}
    for source, doc_id in docs:
        by_source.setdefault(source, []).append(doc_id)
    return any_of([eq(C.SOURCE, src) & isin(C.DOC_ID, ids) for src, ids in sorted(by_source.items())])


def batched(values: Iterable[str], size: int = IN_LIST) -> Iterable[list[str]]:
    """``values`` sorted and without duplicates, in lists of at most ``size``."""
    uniq = sorted(set(values))
    for i in range(0, len(uniq), size):
        yield uniq[i : i + size]
