"""Families that compare the sample of a version with the sample of its reference (``drift``).

Each function here is named in the check registry and called as ``fn(family, ctx, checks, store)``;
it returns a ``Stat`` per check name or raises :class:`~embedpipe.checks.suite.context.Skip`.
"""

from __future__ import annotations

import math

from embedpipe.checks.drift.classifier import domain_auc
from embedpipe.checks.drift.distribution import centroid_shift, drifted_components
from embedpipe.checks.drift.geometry import anisotropy, duplicate_vectors, effective_rank
from embedpipe.checks.drift.kernel import mmd
from embedpipe.checks.drift.text import language_mix, token_length_psi, truncation_rate
from embedpipe.checks.stats import Stat
from embedpipe.checks.suite.context import AuditContext, Skip
from embedpipe.config import ChecksSettings
from embedpipe.store import Store

MIN_ABSOLUTE = 50


def _drift(name: str, ctx: AuditContext, checks: ChecksSettings, store: Store) -> dict[str, Stat]:
    ref = ctx.require_ref()
    _, threshold, _ = checks.gate(name)
    a, b = ref.vectors, ctx.require_new().vectors
    if name == "centroid_shift":
        stat = centroid_shift(a, b, alpha=checks.alpha, min_ratio=threshold)
    elif name == "domain_auc":
        stat = domain_auc(a, b, alpha=checks.alpha, min_auc=threshold, seed=checks.seed)
    elif name == "mmd":
        # enough permutations that p can get below alpha at all
        perms = max(1000, math.ceil(2 / checks.alpha))
        stat = mmd(a, b, alpha=checks.alpha, min_effect=threshold, seed=checks.seed, permutations=perms)
    else:
        stat = drifted_components(a, b, max_share=threshold, seed=checks.seed)
    return {name: stat}


def _geometry(name: str, ctx: AuditContext, checks: ChecksSettings, store: Store) -> dict[str, Stat]:
    new = ctx.require_new().vectors
    _, threshold, _ = checks.gate(name)
    if name == "duplicate_vectors":
        return {name: duplicate_vectors(new, ctx.new.text_hashes, max_rate=threshold)}
    ref = ctx.ref.vectors if ctx.comparable and ctx.ref is not None else None
    if ref is None and len(new) < MIN_ABSOLUTE:
        # Without a reference only an absolute collapse test is left, and a handful of
        # similar chunks (a tiny first corpus) would look collapsed.
        raise Skip(f"no reference and only {len(new)} vectors: need {MIN_ABSOLUTE} for an absolute test")
    if name == "anisotropy":
        return {name: anisotropy(ref, new, max_delta=threshold)}
    return {name: effective_rank(ref, new, min_ratio=threshold, seed=checks.seed)}


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
        return {name: truncation_rate(ctx.new.tokens, limit=limit, max_rate=threshold)}
    ref = ctx.require_ref(same_space=False)
    new = ctx.require_new()
    if name == "token_length_psi":
        return {name: token_length_psi(ref.tokens, new.tokens, max_psi=threshold, alpha=checks.alpha)}
    return {name: language_mix(ref.texts, new.texts, alpha=checks.alpha, max_tvd=threshold)}
