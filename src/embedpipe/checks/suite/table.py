"""Families measured on the stored table version itself: integrity, neighbour stability, index recall.

Each function here is named in the check registry and called as ``fn(family, ctx, checks, store)``;
it returns a ``Stat`` per check name or raises :class:`~embedpipe.checks.suite.context.Skip`.
"""

from __future__ import annotations

import numpy as np

from embedpipe.checks import quality
from embedpipe.checks.integrity import scan_vectors
from embedpipe.checks.stats import Stat
from embedpipe.checks.suite.context import AuditContext, Skip
from embedpipe.checks.suite.run import at_least
from embedpipe.config import ChecksSettings
from embedpipe.schemas import C
from embedpipe.store import Store, vector_query
from embedpipe.store.filters import isin

NEIGHBOUR_SAMPLE = 1000
INDEX_QUERIES = 50


def _integrity(family: str, ctx: AuditContext, checks: ChecksSettings, store: Store) -> dict[str, Stat]:
    _, threshold, _ = checks.gate("integrity")
    table = store.open_version(ctx.version)
    q = table.search().select([C.VECTOR]).limit(None)
    if ctx.new_runs is not None:
        if not ctx.new_runs:
            raise Skip(f"no rows are new since version {ctx.reference_version}")
        # Every row the reference does not hold, whichever run wrote it: rows carried over from an
        # unserved version are scanned too.
        q = q.where(isin(C.RUN_ID, ctx.new_runs))
    vtype = table.schema.field(C.VECTOR).type
    stat = scan_vectors(q.to_batches(16384), C.VECTOR, ctx.identity.dim, ctx.identity.normalize, vtype)
    scope = "all rows" if ctx.new_runs is None else f"rows new since version {ctx.reference_version}"
    type_problem = stat.fired and stat.statistic == 0
    return {
        "integrity": Stat(
            statistic=stat.statistic,
            threshold=threshold,
            fired=type_problem or stat.statistic > threshold,
            effect=stat.effect,
            detail=f"{scope}: {stat.detail}",
        )
    }


def _neighbours(family: str, ctx: AuditContext, checks: ChecksSettings, store: Store) -> dict[str, Stat]:
    ref = ctx.require_ref()
    assert ctx.reference_version is not None
    ids = ref.chunk_ids[:NEIGHBOUR_SAMPLE]
    cols = [C.CHUNK_ID, C.CHUNK_HASH, C.VECTOR]
    new_rows = store.rows_where_in(store.open_version(ctx.version), C.CHUNK_ID, ids, cols).to_pylist()
    ref_rows = {
        r[C.CHUNK_ID]: r
        for r in store.rows_where_in(
            store.open_version(ctx.reference_version), C.CHUNK_ID, ids, cols
        ).to_pylist()
    }
    pairs = [
        (ref_rows[r[C.CHUNK_ID]][C.VECTOR], r[C.VECTOR])
        for r in new_rows
        if r[C.CHUNK_ID] in ref_rows and ref_rows[r[C.CHUNK_ID]][C.CHUNK_HASH] == r[C.CHUNK_HASH]
    ]
    k = checks.k
    if len(pairs) <= k:
        raise Skip(f"only {len(pairs)} unchanged chunks in the sample; need more than k={k}")
    a = np.asarray([p[0] for p in pairs], dtype=np.float32)
    b = np.asarray([p[1] for p in pairs], dtype=np.float32)
    overlap = quality.neighbour_overlap(a, b, k)
    detail = (
        f"mean top-{k} overlap of {len(pairs)} unchanged chunks between versions "
        f"{ctx.reference_version} and {ctx.version}"
    )
    return {"neighbour_stability": at_least("neighbour_stability", overlap, checks, detail)}


def _index_recall(family: str, ctx: AuditContext, checks: ChecksSettings, store: Store) -> dict[str, Stat]:
    """Recall@k of the version's vector index, searched with the parameters it serves with."""
    from embedpipe.store.vector_index import search_params

    table = store.open_version(ctx.version)
    indices = [i for i in table.list_indices() if C.VECTOR in list(getattr(i, "columns", []) or [])]
    if not indices:
        # Not measurable is not a failure: below index.min_rows the table has no vector index and
        # every search is an exact scan (recall 1 by construction).
        raise Skip(
            f"version {ctx.version} has no vector index ({table.count_rows()} rows, below index.min_rows): "
            "searches are exact"
        )
    k = checks.k
    pool = (
        ctx.ref.vectors
        if ctx.comparable and ctx.ref is not None and len(ctx.ref.vectors)
        else ctx.new.vectors
    )
    if len(pool) < 2:
        raise Skip("too few vectors to draw queries from")
    # Queries that are not rows of the table (a stored vector would find itself): midpoints of
    # random pairs of stored vectors, which land among real neighbourhoods.
    rng = np.random.default_rng(checks.seed)
    pairs = rng.integers(0, len(pool), size=(INDEX_QUERIES, 2))
    queries = (pool[pairs[:, 0]] + pool[pairs[:, 1]]) / 2
    params = search_params(table.to_lance().metadata)
    recalls = []
    for v in queries:
        ann = vector_query(table, v, params).limit(k)
        exact = vector_query(table, v, {}).limit(k).bypass_vector_index()
        got = {r[C.CHUNK_ID] for r in ann.select([C.CHUNK_ID]).to_list()}
        want = {r[C.CHUNK_ID] for r in exact.select([C.CHUNK_ID]).to_list()}
        recalls.append(len(got & want) / max(1, len(want)))
    recall = float(np.mean(recalls))
    served = ", ".join(f"{k_}={v_}" for k_, v_ in sorted(params.items())) or "Lance defaults"
    detail = (
        f"recall@{k} of index {indices[0].name} against exact search over {len(queries)} queries, "
        f"searched as served ({served})"
    )
    return {"index_recall": at_least("index_recall", recall, checks, detail)}
