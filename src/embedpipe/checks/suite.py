"""The check suite: what each check measures on a table version, and how its gate decides.

A version is checked against a *reference*: the pinned baseline tag when one is configured, else
the served version, else the version before it. Checks are grouped in families (one Prefect task
each); a family returns one :class:`~embedpipe.schemas.CheckResult` per check it measures.

Status of a result: ``pass``; ``warn`` or ``fail`` when the check fired (its severity decides
which); ``skipped`` when it does not apply (no reference yet, another model, no golden set) with
the reason in ``detail``; ``error`` when it could not be measured (a malformed golden set). A
version is served only when no check of severity ``fail`` has status ``fail`` or ``error``.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from embedpipe.checks import drift, quality, registry
from embedpipe.checks.integrity import scan_vectors
from embedpipe.checks.stats import Stat
from embedpipe.config import ChecksSettings, ModelSettings
from embedpipe.errors import CheckError, ConfigError, EmbedpipeError
from embedpipe.hashing import sha256_text
from embedpipe.resources.embedder import get_embedder, settings_for_table
from embedpipe.schemas import C, CheckResult, ModelIdentity, vector_matrix
from embedpipe.store import SERVING_TAG, Store, sql_quote, vector_query

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = [C.CHUNK_ID, C.CHUNK_HASH, C.TEXT, C.N_TOKENS, C.VECTOR]
NEIGHBOUR_SAMPLE = 1000
INDEX_QUERIES = 50
MIN_ABSOLUTE = 50


class Skip(Exception):
    """A check that does not apply to this version; the message says why."""


@dataclass
class Side:
    """A fixed-seed sample of one table version."""

    version: int
    rows: int
    vectors: np.ndarray
    tokens: np.ndarray
    texts: list[str]
    text_hashes: list[str]
    chunk_ids: list[str]

    @classmethod
    def from_arrow(cls, version: int, rows: int, data: pa.Table, dim: int) -> Side:
        vectors = vector_matrix(data.column(C.VECTOR)) if data.num_rows else np.zeros((0, dim), np.float32)
        return cls(
            version=version,
            rows=rows,
            vectors=vectors,
            tokens=data.column(C.N_TOKENS).to_numpy(zero_copy_only=False).astype(np.int64),
            texts=data.column(C.TEXT).to_pylist(),
            text_hashes=data.column(C.CHUNK_HASH).to_pylist(),
            chunk_ids=data.column(C.CHUNK_ID).to_pylist(),
        )


@dataclass
class AuditContext:
    """Everything the checks of one version need: samples of it and of its reference."""

    run_id: str
    table: str
    version: int
    identity: ModelIdentity
    model: ModelSettings
    new: Side
    ref: Side | None
    reference_version: int | None
    reference_how: str
    reference_identity: ModelIdentity | None
    reference_stats: dict[str, float] = field(default_factory=dict)
    new_runs: list[str] | None = None
    """Runs whose rows are new since the reference (``None``: no reference, every row is new)."""

    def require_new(self) -> Side:
        if len(self.new.vectors) < 5:
            raise Skip(
                f"{len(self.new.vectors)} rows are new since version {self.reference_version}: "
                "too few to compare distributions"
            )
        return self.new

    @property
    def comparable(self) -> bool:
        """Whether both versions' vectors live in the same space (same model and dimension)."""
        r = self.reference_identity
        return (
            self.ref is not None
            and r is not None
            and r.model_id == self.identity.model_id
            and r.dim == self.identity.dim
        )

    def require_ref(self, same_space: bool = True) -> Side:
        if self.ref is None:
            raise Skip(f"no reference version to compare with ({self.reference_how})")
        if same_space and not self.comparable:
            ri = self.reference_identity
            raise Skip(
                f"reference version {self.reference_version} was embedded by "
                f"{ri.model_id if ri else 'an unknown model'}, this version by {self.identity.model_id}: "
                "the vectors are not comparable (a model change is judged by the quality checks)"
            )
        return self.ref


def reference_for(store: Store, table: Any, version: int, baseline: str | None) -> tuple[int | None, str]:
    """The version to compare ``version`` with, and how it was chosen."""
    tags = table.tags.list()
    versions = {int(v["version"]) for v in table.list_versions()}
    if baseline:
        if baseline in tags:
            return int(tags[baseline]["version"]), f"baseline tag {baseline!r}"
        if baseline.isdigit() and int(baseline) in versions:
            return int(baseline), f"baseline version {baseline}"
        raise ConfigError(
            f"baseline {baseline!r} is neither a tag nor a version of table={table.name}; "
            "create the tag (see `embedpipe versions`) or fix checks.baseline_tag / --baseline"
        )
    served = tags.get(SERVING_TAG)
    if served and int(served["version"]) != version:
        return int(served["version"]), "the served version"
    earlier = sorted(v for v in versions if v < version)
    if earlier:
        return earlier[-1], "the version before it"
    return None, "first version of the table"


def _sample_where(store: Store, table: Any, flt: str, n: int, seed: int, dim: int, version: int) -> Side:
    """A fixed-seed sample of the rows of a pinned table matching ``flt``."""
    ids = table.search().where(flt).select([C.CHUNK_ID]).limit(None).to_arrow().column(0).to_pylist()
    ids.sort()
    if len(ids) > n:
        keep = np.sort(np.random.default_rng(seed).choice(len(ids), size=n, replace=False))
        ids = [ids[i] for i in keep]
    data = store.rows_where_in(table, C.CHUNK_ID, ids, SAMPLE_COLUMNS)
    data = data.take(pa.compute.sort_indices(data, [(C.CHUNK_ID, "ascending")]))
    return Side.from_arrow(version, len(ids), data, dim)


def validate_setup(
    store: Store, checks: ChecksSettings, version: int | None, baseline: str | None = None
) -> None:
    """Fail fast, before any work, on a bad check set file or a baseline that names nothing.

    Args:
        store: The store.
        checks: Check settings.
        version: The version that will be checked (``None``: no table yet, so no baseline to find).
        baseline: A baseline given for this call, else ``checks.baseline_tag``.

    Raises:
        ConfigError: Naming the file (and line) or the baseline.
    """
    quality.validate_sets(checks.golden, checks.triplets, checks.pairs, checks.canary)
    name = baseline or checks.baseline_tag
    if name and version is not None:
        reference_for(store, store.require_table(), version, name)


def load_context(
    store: Store,
    checks: ChecksSettings,
    model: ModelSettings,
    run_id: str,
    version: int,
    baseline: str | None = None,
) -> AuditContext:
    """Draw the fixed-seed samples of ``version`` and of its reference.

    The *new* side is the rows written since the reference (rows of runs the reference does not
    hold): what this version adds is compared with what was served, so an unchanged majority
    neither hides a shift nor makes the two samples overlap. Without a reference every row is new.

    Args:
        store: The store.
        checks: Check settings (sample size, seed, baseline).
        model: Model settings; the name and normalisation are replaced by the table's own.
        run_id: The run doing the checks.
        version: The version to check.
        baseline: A tag or version to compare with instead of ``checks.baseline_tag``.

    Raises:
        ConfigError: The baseline names no tag or version.
    """
    table = store.open_version(version)
    identity = store.table_identity(table=table)
    assert identity is not None
    model = settings_for_table(model, identity)
    n, seed = checks.sample_size, checks.seed
    ref_version, how = reference_for(store, store.require_table(), version, baseline or checks.baseline_tag)
    ref = ref_identity = None
    stats: dict[str, float] = {}
    new_runs: list[str] | None = None
    if ref_version is not None:
        try:
            rt = store.open_version(ref_version)
            ref_identity = store.table_identity(table=rt)
            dim = ref_identity.dim if ref_identity else identity.dim
            ref = Side.from_arrow(
                ref_version, int(rt.count_rows()), store.sample_rows(rt, n, seed, SAMPLE_COLUMNS), dim
            )
            stats = store.recorded_checks(ref_version)
            new_runs = sorted(store.run_ids(table) - store.run_ids(rt))
        except EmbedpipeError as e:  # removed by retention, for example
            how = f"reference version {ref_version} cannot be read: {e}"
            ref_version, ref, ref_identity = None, None, None
    if new_runs is None:
        new = Side.from_arrow(
            version, int(table.count_rows()), store.sample_rows(table, n, seed, SAMPLE_COLUMNS), identity.dim
        )
    elif new_runs:
        flt = f"{C.RUN_ID} IN ({', '.join(sql_quote(r) for r in new_runs)})"
        new = _sample_where(store, table, flt, n, seed, identity.dim, version)
    else:
        empty = pa.table({c: pa.array([], type=table.schema.field(c).type) for c in SAMPLE_COLUMNS})
        new = Side.from_arrow(version, 0, empty, identity.dim)
    return AuditContext(
        run_id=run_id,
        table=store.settings.table,
        version=version,
        identity=identity,
        model=model,
        new=new,
        ref=ref,
        reference_version=ref_version,
        reference_how=how,
        reference_identity=ref_identity,
        reference_stats=stats,
        new_runs=new_runs,
    )


# ------------------------------------------------------------------------------------ families

# Each family's function is named in the check registry and called as fn(family, ctx, checks, store).


def _integrity(family: str, ctx: AuditContext, checks: ChecksSettings, store: Store) -> dict[str, Stat]:
    _, threshold, _ = checks.gate("integrity")
    table = store.open_version(ctx.version)
    q = table.search().select([C.VECTOR]).limit(None)
    if ctx.new_runs is not None:
        if not ctx.new_runs:
            raise Skip(f"no rows are new since version {ctx.reference_version}")
        # Every row the reference does not hold, whichever run wrote it: rows carried over from an
        # unserved version are scanned too.
        q = q.where(f"{C.RUN_ID} IN ({', '.join(sql_quote(r) for r in ctx.new_runs)})")
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


def _canary(family: str, ctx: AuditContext, checks: ChecksSettings, store: Store) -> dict[str, Stat]:
    _, threshold, _ = checks.gate("canary")
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
    return {
        "canary": Stat(
            statistic=median,
            threshold=threshold,
            fired=median < threshold,
            effect=float(cos.min()),
            detail=f"median cosine {median:.6f} (min {cos.min():.6f}) of {len(cos)} probes re-embedded now "
            f"vs stored with version {base_version}",
        )
    }


def _drift(name: str, ctx: AuditContext, checks: ChecksSettings, store: Store) -> dict[str, Stat]:
    ref = ctx.require_ref()
    _, threshold, _ = checks.gate(name)
    a, b = ref.vectors, ctx.require_new().vectors
    if name == "centroid_shift":
        stat = drift.centroid_shift(a, b, alpha=checks.alpha, min_ratio=threshold)
    elif name == "domain_auc":
        stat = drift.domain_auc(a, b, alpha=checks.alpha, min_auc=threshold, seed=checks.seed)
    elif name == "mmd":
        # enough permutations that p can get below alpha at all
        perms = max(1000, math.ceil(2 / checks.alpha))
        stat = drift.mmd(a, b, alpha=checks.alpha, min_effect=threshold, seed=checks.seed, permutations=perms)
    else:
        stat = drift.drifted_components(a, b, max_share=threshold, seed=checks.seed)
    return {name: stat}


def _geometry(name: str, ctx: AuditContext, checks: ChecksSettings, store: Store) -> dict[str, Stat]:
    new = ctx.require_new().vectors
    _, threshold, _ = checks.gate(name)
    if name == "duplicate_vectors":
        return {name: drift.duplicate_vectors(new, ctx.new.text_hashes, max_rate=threshold)}
    ref = ctx.ref.vectors if ctx.comparable and ctx.ref is not None else None
    if ref is None and len(new) < MIN_ABSOLUTE:
        # Without a reference only an absolute collapse test is left, and a handful of
        # similar chunks (a tiny first corpus) would look collapsed.
        raise Skip(f"no reference and only {len(new)} vectors: need {MIN_ABSOLUTE} for an absolute test")
    if name == "anisotropy":
        return {name: drift.anisotropy(ref, new, max_delta=threshold)}
    return {name: drift.effective_rank(ref, new, min_ratio=threshold, seed=checks.seed)}


def _text(name: str, ctx: AuditContext, checks: ChecksSettings, store: Store) -> dict[str, Stat]:
    _, threshold, _ = checks.gate(name)
    if name == "truncation_rate":
        # chunks longer than what the model reads (special tokens take the rest of its window)
        chunking = store.table_chunking(store.open_version(ctx.version))
        special = 2
        if chunking is not None and chunking.tokens >= ctx.identity.max_seq_length:
            special = ctx.identity.max_seq_length - chunking.budget
        limit = max(1, ctx.identity.max_seq_length - special)
        if len(ctx.new.tokens) == 0:
            raise Skip("no rows are new since the reference")
        return {name: drift.truncation_rate(ctx.new.tokens, limit=limit, max_rate=threshold)}
    ref = ctx.require_ref(same_space=False)
    new = ctx.require_new()
    if name == "token_length_psi":
        return {name: drift.token_length_psi(ref.tokens, new.tokens, max_psi=threshold, alpha=checks.alpha)}
    return {name: drift.language_mix(ref.texts, new.texts, alpha=checks.alpha, max_tvd=threshold)}


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


def search_docs(store: Store, table: Any, vector: np.ndarray, k: int) -> list[str]:
    """Document ids of the nearest chunks, best first, each document once (the search path users use)."""
    hits = store.search(vector, k * 5, table=table)
    seen: dict[str, None] = {}
    for h in hits:
        seen.setdefault(h[C.DOC_ID], None)
    return list(seen)[:k]


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
    qv = embedder.encode([q.query for q in golden], batch_size=32)
    ranked = [search_docs(store, table, v, max(k, 10)) for v in qv]
    # A relevant document the table lacks cannot be retrieved: it counts as a miss (as BEIR and
    # ir_measures score it), and the detail names it.
    m = quality.retrieval_metrics(ranked, golden, k)
    n = f"{len(golden)} queries"
    if missing:
        n += (
            f"; {len(missing)} of {len(wanted)} relevant doc_ids not in the table, scored as not "
            f"retrieved: {', '.join(missing[:5])}" + (", ..." if len(missing) > 5 else "")
        )
    if ctx.comparable and ctx.reference_version is not None:
        # Same model: measure the same golden set on the reference now (apples to apples, whatever
        # was recorded before); after a model change the recorded figures are all there is.
        rt = store.open_version(ctx.reference_version)
        ref_ranked = [search_docs(store, rt, v, max(k, 10)) for v in qv]
        rm = quality.retrieval_metrics(ref_ranked, golden, k)
        ctx.reference_stats.update(golden_recall=rm["recall"], golden_mrr=rm["mrr"], golden_ndcg=rm["ndcg"])
    return {
        "golden_recall": _against_reference(
            "golden_recall", m["recall"], ctx, checks, f"recall@{k} over {n}"
        ),
        "golden_mrr": _against_reference("golden_mrr", m["mrr"], ctx, checks, f"MRR over {n}"),
        "golden_ndcg": _against_reference("golden_ndcg", m["ndcg"], ctx, checks, f"nDCG@10 over {n}"),
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
    _, threshold, _ = checks.gate("neighbour_stability")
    return {
        "neighbour_stability": Stat(
            statistic=overlap,
            threshold=threshold,
            fired=overlap < threshold,
            detail=f"mean top-{k} overlap of {len(pairs)} unchanged chunks between versions "
            f"{ctx.reference_version} and {ctx.version}",
        )
    }


def _index_recall(family: str, ctx: AuditContext, checks: ChecksSettings, store: Store) -> dict[str, Stat]:
    table = store.open_version(ctx.version)
    indices = [i for i in table.list_indices() if C.VECTOR in list(getattr(i, "columns", []) or [])]
    if not indices:
        raise Skip("the table has no vector index (searches are exact)")
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
    recalls = []
    for v in queries:
        ann = vector_query(table, v).limit(k)
        exact = vector_query(table, v).limit(k).bypass_vector_index()
        got = {r[C.CHUNK_ID] for r in ann.select([C.CHUNK_ID]).to_list()}
        want = {r[C.CHUNK_ID] for r in exact.select([C.CHUNK_ID]).to_list()}
        recalls.append(len(got & want) / max(1, len(want)))
    recall = float(np.mean(recalls))
    _, threshold, _ = checks.gate("index_recall")
    return {
        "index_recall": Stat(
            statistic=recall,
            threshold=threshold,
            fired=recall < threshold,
            detail=f"recall@{k} of index {indices[0].name} against exact search over {len(queries)} queries",
        )
    }


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def run_family(family: str, ctx: AuditContext, checks: ChecksSettings, store: Store) -> list[CheckResult]:
    """Measure one family of checks and apply their gates. Never raises for a check's own failure."""
    names, fn = registry.FAMILY[family].names, registry.FAMILY[family].measure()
    gates = {n: checks.gate(n) for n in names}
    common = {"table_version": ctx.version, "reference_version": ctx.reference_version}
    active = [n for n in names if gates[n][0] != "off"]
    off = [
        CheckResult(check=n, status="skipped", severity="off", detail="turned off (severity off)", **common)
        for n in names
        if n not in active
    ]
    if not active:
        return off
    try:
        stats = fn(family, ctx, checks, store)
    except Skip as e:
        return off + [
            CheckResult(check=n, status="skipped", severity=gates[n][0], detail=str(e), **common)
            for n in active
        ]
    except Exception as e:  # a check that cannot be measured must not pass silently: it is an error
        msg = str(e) if isinstance(e, EmbedpipeError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, EmbedpipeError):
            log.warning("check family=%s could not be measured: %s", family, msg, exc_info=True)
        return off + [
            CheckResult(check=n, status="error", severity=gates[n][0], detail=msg, **common) for n in active
        ]
    out = list(off)
    for n in active:
        severity = gates[n][0]
        st = stats.get(n)
        if st is None:
            out.append(
                CheckResult(
                    check=n, status="skipped", severity=severity, detail="no reference version", **common
                )
            )
            continue
        out.append(
            CheckResult(
                check=n,
                status=severity if st.fired else "pass",
                severity=severity,
                statistic=_num(st.statistic),
                threshold=_num(st.threshold),
                p_value=_num(st.p_value),
                effect=_num(st.effect),
                detail=st.detail,
                **common,
            )
        )
    return out


def families_to_run(checks: ChecksSettings) -> list[str]:
    """Families with at least one check not turned off."""
    return [f.name for f in registry.FAMILIES if any(checks.gate(n)[0] != "off" for n in f.names)]


def verdict(results: Sequence[CheckResult]) -> tuple[bool, list[str]]:
    """Whether the version may be served, and the checks that block it."""
    blocking = [r.check for r in results if r.blocks]
    return not blocking, blocking
