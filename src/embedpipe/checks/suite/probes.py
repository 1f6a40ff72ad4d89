"""Families that embed fixed sets with the table's model: canary, golden set, triplets, scored pairs.

Each function here is named in the check registry and called as ``fn(family, ctx, checks, store)``;
it returns a ``Stat`` per check name or raises :class:`~embedpipe.checks.suite.context.Skip`.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from embedpipe.checks import quality
from embedpipe.checks.stats import Stat
from embedpipe.checks.suite.context import AuditContext, Skip
from embedpipe.checks.suite.run import at_least
from embedpipe.config import ChecksSettings
from embedpipe.embedding.embedder import get_embedder
from embedpipe.errors import CheckError
from embedpipe.hashing import sha256_text
from embedpipe.schemas import C
from embedpipe.search import SEARCH_MODES
from embedpipe.store import Store, fulltext


def _canary(family: str, ctx: AuditContext, checks: ChecksSettings, store: Store) -> dict[str, Stat]:
    texts = quality.load_canary(checks.canary)
    hashes = [sha256_text(t) for t in texts]
    embedder = get_embedder(ctx.model)
    vectors = np.asarray(embedder.encode(texts, batch_size=len(texts)), dtype=np.float64)
    # Keyed by precision too: fp32, fp16 and bf16 runs of one model differ by more than the
    # canary's tolerance, so each precision keeps its own baseline (torch fp32: the plain model_id).
    ident = embedder.identity
    key = ident.model_id if ident.precision in {"fp32", "int8"} else f"{ident.model_id}/{ident.precision}"
    base_version, stored = store.canary_baseline(key, ctx.reference_version)
    own_version, _ = store.canary_baseline(key, ctx.version)
    if own_version != ctx.version:
        from datetime import UTC, datetime

        store.append_canary(ctx.run_id, ctx.version, key, hashes, vectors, datetime.now(UTC))
    if not stored:
        raise Skip(f"no canary stored for model {key} yet; stored now as its baseline")
    cos = quality.canary_cosines(stored, hashes, vectors)
    if len(cos) == 0:
        raise Skip("the stored canary probes differ from the configured ones; stored the new set")
    median = float(np.median(cos))
    detail = (
        f"median cosine {median:.6f} (min {cos.min():.6f}) of {len(cos)} probes re-embedded now "
        f"vs stored with version {base_version}"
    )
    return {"canary": at_least("canary", median, checks, detail, effect=float(cos.min()))}


def _against_reference(
    name: str, value: float, ctx: AuditContext, checks: ChecksSettings, detail: str
) -> Stat:
    _, floor, max_drop = checks.gate(name)
    ref_value = ctx.reference_stats.get(name)
    threshold = floor
    if ref_value is not None and max_drop is not None and math.isfinite(ref_value):
        threshold = max(floor, ref_value - max_drop)
        detail += f"; reference version {ctx.reference_version}: {ref_value:.4f} (allowed drop {max_drop})"
    return Stat(
        statistic=value,
        threshold=threshold,
        fired=value < threshold,
        effect=None if ref_value is None else value - ref_value,
        detail=detail,
    )


def search_docs(
    store: Store, table: Any, vector: np.ndarray, k: int, mode: str = "vector", query: str = ""
) -> list[str]:
    """Document ids of the best chunks in one search mode, best first, each document once (the
    search users get in that mode)."""
    if mode == "text":
        hits = store.text_search(query, k * 5, table=table)
    elif mode == "hybrid":
        hits = store.hybrid_search(vector, query, k * 5, table=table)
    else:
        hits = store.search(vector, k * 5, table=table)
    seen: dict[str, None] = {}
    for h in hits:
        seen.setdefault(h[C.DOC_ID], None)
    return list(seen)[:k]


def _modes(store: Store, table: Any, served: str) -> tuple[list[str], str]:
    """The search modes the golden set is measured in on ``table`` (the served one first), and a
    note on the ones left out.

    A version without a full-text index is served by vector search whatever ``served`` says (as
    ``embedpipe search`` falls back), so that is what its gate judges.
    """
    if fulltext.has_text_index(table.to_lance()):
        return [served, *(m for m in SEARCH_MODES if m != served)], ""
    note = "; text and hybrid not measured: no full-text index"
    if served != "vector":
        note += f" (index.search_mode={served} falls back to vector; `embedpipe index` builds it)"
    return ["vector"], note


def _golden(family: str, ctx: AuditContext, checks: ChecksSettings, store: Store) -> dict[str, Stat]:
    if not checks.golden:
        raise Skip("no golden set configured (checks.golden, or --golden FILE)")
    golden = quality.load_golden(checks.golden)
    table = store.open_version(ctx.version)
    wanted = sorted({d for q in golden for d in q.relevant})
    present = set(store.rows_where_in(table, C.DOC_ID, wanted, [C.DOC_ID]).column(0).to_pylist())
    missing = [d for d in wanted if d not in present]
    share = len(missing) / len(wanted)
    if share > checks.golden_max_missing:
        raise CheckError(
            f"golden set names {len(missing)} of {len(wanted)} relevant doc_ids ({share:.1%}) that "
            f"table={ctx.table} version {ctx.version} does not hold, e.g. {missing[:3]}: more than "
            f"checks.golden_max_missing={checks.golden_max_missing:g}, which suggests the golden set "
            "uses another id scheme than the table (ids are paths relative to the source root, "
            "path#id for records); fix the golden set, or raise checks.golden_max_missing"
        )
    embedder = get_embedder(ctx.model)
    k = checks.k
    texts = [q.query for q in golden]
    qv = embedder.encode(texts, batch_size=32)
    modes, note = _modes(store, table, ctx.search_mode)
    # A relevant document the table lacks cannot be retrieved: it counts as a miss (as BEIR and
    # ir_measures score it), and the detail names it.
    per_mode = {
        mode: quality.retrieval_metrics(
            [search_docs(store, table, v, max(k, 10), mode, t) for v, t in zip(qv, texts, strict=True)],
            golden,
            k,
        )
        for mode in modes
    }
    served = modes[0]
    m = per_mode[served]
    n = f"{len(golden)} queries, {served} search"
    if missing:
        n += (
            f"; {len(missing)} of {len(wanted)} relevant doc_ids not in the table, scored as not "
            f"retrieved: {', '.join(missing[:5])}" + (", ..." if len(missing) > 5 else "")
        )
    if ctx.comparable and ctx.reference_version is not None:
        # Same model: measure the same golden set on the reference now (apples to apples, whatever
        # was recorded before); after a model change the recorded figures are all there is.
        # A reference written before full-text indexes cannot be searched by text: its recorded
        # figures stand.
        rt = store.open_version(ctx.reference_version)
        if served == "vector" or fulltext.has_text_index(rt.to_lance()):
            ref_ranked = [
                search_docs(store, rt, v, max(k, 10), served, t) for v, t in zip(qv, texts, strict=True)
            ]
            rm = quality.retrieval_metrics(ref_ranked, golden, k)
            ctx.reference_stats.update(
                golden_recall=rm["recall"], golden_mrr=rm["mrr"], golden_ndcg=rm["ndcg"]
            )

    def by_mode(metric: str) -> str:
        return "; per mode: " + ", ".join(f"{mode} {v[metric]:.4f}" for mode, v in per_mode.items()) + note

    return {
        "golden_recall": _against_reference(
            "golden_recall", m["recall"], ctx, checks, f"recall@{k} over {n}{by_mode('recall')}"
        ),
        "golden_mrr": _against_reference(
            "golden_mrr", m["mrr"], ctx, checks, f"MRR over {n}{by_mode('mrr')}"
        ),
        "golden_ndcg": _against_reference(
            "golden_ndcg", m["ndcg"], ctx, checks, f"nDCG@10 over {n}{by_mode('ndcg')}"
        ),
    }


_SET_VECTORS: weakref.WeakKeyDictionary[Any, dict[str, np.ndarray]] = weakref.WeakKeyDictionary()
"""Vectors of the fixed check sets (triplets, pairs) per loaded model, by a hash of the texts."""
_SET_VECTORS_LOCK = threading.Lock()


def _encoder(ctx: AuditContext) -> Callable[[Sequence[str]], np.ndarray]:
    """The model of the checked table, as a function of texts to vectors.

    A loaded model gives the same vectors for the same texts, so the vectors of a check set are
    computed once per loaded model and process (the next run of a long-lived process, such as
    ``embedpipe serve``, reuses them). The canary is not cached: it probes the model itself.
    """
    embedder = get_embedder(ctx.model)

    def encode(texts: Sequence[str]) -> np.ndarray:
        key = sha256_text("\x00".join(texts))
        with _SET_VECTORS_LOCK:
            try:
                known = _SET_VECTORS.setdefault(embedder, {})
            except TypeError:  # an embedder that cannot be weakly referenced: no cache
                known = {}
            hit = known.get(key)
        if hit is not None:
            return hit.copy()
        vectors = np.asarray(embedder.encode(list(texts), batch_size=64))
        with _SET_VECTORS_LOCK:
            known[key] = vectors.copy()
        return vectors

    return encode


def _triplets(family: str, ctx: AuditContext, checks: ChecksSettings, store: Store) -> dict[str, Stat]:
    if not checks.triplets:
        raise Skip("no triplet files configured (checks.triplets)")
    triplets = quality.load_triplets(checks.triplets)
    acc, gap = quality.triplet_accuracy(_encoder(ctx), triplets)
    detail = f"{acc:.3f} of {len(triplets)} triplets beat their margin (mean gap {gap:.3f})"
    return {"triplets": _against_reference("triplets", acc, ctx, checks, detail)}


def _pairs(family: str, ctx: AuditContext, checks: ChecksSettings, store: Store) -> dict[str, Stat]:
    if not checks.pairs:
        raise Skip("no scored pair files configured (checks.pairs)")
    pairs = quality.load_pairs(checks.pairs)
    rho = quality.pair_spearman(_encoder(ctx), pairs)
    detail = f"Spearman {rho:.3f} between cosine and score over {len(pairs)} pairs"
    return {"pairs_spearman": _against_reference("pairs_spearman", rho, ctx, checks, detail)}
