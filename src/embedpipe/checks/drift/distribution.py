"""Location and per-component shift tests: :func:`centroid_shift` and :func:`drifted_components`.

Both compare the distribution of a reference set of vectors with a new one and fire only when the
shift is significant and practically large (see :mod:`embedpipe.checks.drift`).
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike

from embedpipe.checks.drift._base import (
    ZERO_VAR,
    Array,
    as_pair,
    fmt_p,
    mean_and_scatter,
    subsample,
    unusable,
)
from embedpipe.checks.stats import Stat

__all__ = ["centroid_shift", "drifted_components"]


def centroid_shift(
    ref: ArrayLike,
    new: ArrayLike,
    *,
    alpha: float = 0.001,
    min_ratio: float = 1.5,
    min_std_shift: float = 0.05,
) -> Stat:
    """Shift of the mean vector, in units of its expected size when nothing changed.

    The statistic is ``||mean(new) - mean(ref)||^2 / (tr(S) * (1/n_ref + 1/n_new))`` where ``S`` is the
    pooled within-set covariance (both sets centred on their own means). Its expectation is 1 when both
    sets come from the same distribution. Under that null, ``||Δμ||^2`` is a weighted sum of chi-square
    variables with the eigenvalues of ``S`` as weights. Its tail is taken from the Liu–Tang–Zhang
    approximation (a noncentral chi-square matching four cumulants). A two-moment (Welch–Satterthwaite)
    ``chi2(k)`` with ``k = tr(S)^2 / tr(S^2)`` was anti-conservative on real corpora: when one
    direction dominates the spread (English and Chinese sentences in one corpus) the weighted sum has
    a heavier tail than ``chi2(k)``, and random halves of the sample corpus fired in 2 of 100 seeds.
    ``k`` is still reported as the effective number of dimensions.

    The threshold is ``max(min_ratio, the 1 - alpha quantile of that null)``: exceeding it means the shift is
    significant *and* at least ``min_ratio`` times its null expectation. Both are relative to
    sampling noise, which shrinks with ``n`` (with 100k vectors per side a shift of 0.5% of the
    spread would pass them), so the check also needs a practically large shift: the standardised
    shift ``||Δμ|| / sqrt(tr(S))`` must exceed ``min_std_shift`` (default 0.05, about what moving
    10-15% of the content to a new topic does on sentence embeddings; at ~1000 rows per side
    ``min_ratio`` is the binding gate, at large ``n`` this one). Set it to 0 for the purely
    noise-relative test.
    All rows are used (means and a ``d x d`` covariance, streamed in float64).

    Args:
        ref: Reference vectors, shape ``(n_ref, d)``.
        new: New vectors, shape ``(n_new, d)``.
        alpha: Significance level.
        min_ratio: Smallest ratio to the null expectation that may fire.
        min_std_shift: Smallest standardised shift ``||Δμ|| / sqrt(tr(S))`` that may fire.

    Returns:
        ``Stat`` with the ratio as statistic, its p-value, and ``effect = ||Δμ||``.
    """
    r, n = as_pair(ref, new)
    early = unusable(min_ratio, r, n)
    if early:
        return early
    n1, n2 = len(r), len(n)
    mu_r, sc_r, sq_r = mean_and_scatter(r)
    mu_n, sc_n, sq_n = mean_and_scatter(n)
    cov = (sc_r + sc_n) / (n1 + n2 - 2)
    trace = float(np.trace(cov))
    delta = mu_n - mu_r
    shift_sq = float(delta @ delta)
    effect = float(np.sqrt(shift_sq))
    if trace <= ZERO_VAR * max(sq_r, sq_n, 1e-300):
        # Both sets are (numerically) constant: a shift is either nothing or infinitely many sigmas.
        moved = effect > 1e-6 * max(float(np.sqrt(max(sq_r, sq_n))), 1e-12)
        return Stat(
            statistic=float("inf") if moved else 0.0,
            threshold=min_ratio,
            fired=moved,
            p_value=0.0 if moved else 1.0,
            effect=effect,
            detail=f"no variance in either set; |Δμ|={effect:.3g}",
        )
    k = trace**2 / float(np.sum(cov * cov))
    expected = trace * (1.0 / n1 + 1.0 / n2)
    ratio = shift_sq / expected
    p, q_alpha = _weighted_chi2_tail(np.linalg.eigvalsh(cov), ratio * trace, alpha)
    threshold = max(min_ratio, q_alpha / trace)
    std_shift = effect / np.sqrt(trace)
    fired = bool(ratio > threshold and std_shift > min_std_shift)
    return Stat(
        statistic=ratio,
        threshold=threshold,
        fired=fired,
        p_value=p,
        effect=effect,
        detail=f"|Δμ|²={ratio:.3g}x null (k={k:.1f} dims, n={n1}+{n2}), |Δμ|={effect:.3g} "
        f"({std_shift:.3f} of the spread), p={fmt_p(p)}",
    )


def _weighted_chi2_tail(weights: Array, q: float, alpha: float) -> tuple[float, float]:
    """P(sum w_i z_i^2 > q) for standard normal z_i, and the 1 - alpha quantile of that sum.

    Liu, Tang & Zhang (2009), "A new chi-square approximation to the distribution of non-negative
    definite quadratic forms in non-central normal variables": a (noncentral) chi-square matched
    on skewness and kurtosis, then rescaled to the exact mean and variance.
    """
    from scipy import stats as sps

    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    c1, c2, c3, c4 = (float(np.sum(w**j)) for j in (1, 2, 3, 4))
    if c2 <= 0:
        return (0.0 if q > c1 else 1.0), c1
    s1, s2 = c3 / c2**1.5, c4 / c2**2
    if s1 * s1 > s2:
        a = 1.0 / (s1 - np.sqrt(s1 * s1 - s2))
        delta = s1 * a**3 - a * a
        dof = a * a - 2 * delta
    else:
        a, delta = 1.0 / s1, 0.0
        dof = c2**3 / c3**2
    mu_q, sd_q = c1, np.sqrt(2 * c2)
    mu_x, sd_x = dof + delta, np.sqrt(2) * a
    dist = sps.ncx2(dof, delta) if delta > 0 else sps.chi2(dof)
    p = float(dist.sf((q - mu_q) / sd_q * sd_x + mu_x))
    q_alpha = float((dist.isf(alpha) - mu_x) / sd_x * sd_q + mu_q)
    return p, q_alpha


def drifted_components(
    ref: ArrayLike,
    new: ArrayLike,
    *,
    alpha_component: float = 0.01,
    max_share: float = 0.25,
    n_components: int = 32,
    seed: int = 0,
    max_per_side: int = 20_000,
    min_ks: float = 0.05,
) -> Stat:
    """Share of the top principal components whose 1-D distribution shifted (two-sample KS tests).

    The components are fitted on the *pooled* fixed-seed subsample (at most ``max_per_side`` rows per
    side), which is blind to the side labels, so under the null each component's KS p-value is
    valid (fitting on ``ref`` alone would make ``ref`` look tighter than ``new`` along its own top
    components). ``n_components`` is capped at ``min(d, rank)``. Per component, a two-sample KS test;
    a component counts as drifted when ``p < alpha_component`` *and* its KS distance exceeds
    ``min_ks`` (default 0.05: 5% of the mass moved along it). The second condition keeps large
    samples from counting negligible moves (at 20k rows per side KS is significant from D ≈ 0.016);
    at ~1000 rows per side the significance level (D ≈ 0.07) is the binding one. The statistic is
    the share of drifted components.

    Fires when the share exceeds ``max_share``. With 32 components and ``alpha_component = 0.01``
    that needs at least 9 drifted components, which has a binomial probability ~1e-11 under the null
    (reported as ``p_value``; components are uncorrelated but not strictly independent), so the
    check is silent on random halves while a topic mix or model change moves many top components
    (a third to two thirds of them at 1000 rows per side on realistic embeddings).

    Args:
        ref: Reference vectors, shape ``(n_ref, d)``.
        new: New vectors, shape ``(n_new, d)``.
        alpha_component: Per-component KS significance level.
        max_share: Largest share of drifted components that does not fire.
        n_components: Number of principal components tested at most.
        seed: Seed of the subsample.
        max_per_side: Rows drawn per side at most.
        min_ks: Smallest KS distance for a component to count as drifted.

    Returns:
        ``Stat`` with the share as statistic and effect, and a binomial-tail p-value.
    """
    from scipy import stats as sps

    r, n = as_pair(ref, new)
    early = unusable(max_share, r, n)
    if early:
        return early
    rng = np.random.default_rng(seed)
    a = subsample(r, max_per_side, rng)
    b = subsample(n, max_per_side, rng)
    pooled = np.vstack([a, b])
    mean, scatter, sq_norm = mean_and_scatter(pooled)
    evals, evecs = np.linalg.eigh(scatter / (len(pooled) - 1))
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    top = float(evals[0]) if evals.size else 0.0
    if top <= ZERO_VAR * max(sq_norm, 1e-300):
        return Stat(
            statistic=0.0,
            threshold=max_share,
            fired=False,
            p_value=1.0,
            effect=0.0,
            detail=f"no variance in the pooled vectors (n={len(a)}+{len(b)})",
        )
    rank = int(np.count_nonzero(evals > top * 1e-9))
    k = max(1, min(n_components, pooled.shape[1], rank))
    basis = evecs[:, :k]
    za = (a.astype(np.float64) - mean) @ basis
    zb = (b.astype(np.float64) - mean) @ basis
    method = "asymp" if max(len(a), len(b)) > 1000 else "auto"
    with warnings.catch_warnings():
        # "exact calculation unsuccessful, switching to asymp": expected with ties; keep logs clean
        warnings.simplefilter("ignore", RuntimeWarning)
        ks = sps.ks_2samp(za, zb, axis=0, method=method)
    pvals = np.atleast_1d(ks.pvalue)
    moved = (pvals < alpha_component) & (np.atleast_1d(ks.statistic) > min_ks)
    drifted = int(np.count_nonzero(moved))
    share = drifted / k
    p = float(sps.binom.sf(drifted - 1, k, alpha_component))
    worst = ", ".join(f"pc{i + 1}" for i in np.argsort(np.where(moved, pvals, 2.0))[: min(3, drifted)])
    return Stat(
        statistic=share,
        threshold=max_share,
        fired=share > max_share,
        p_value=p,
        effect=share,
        detail=f"{drifted}/{k} components drifted (KS p<{alpha_component:g}, D>{min_ks:g}, "
        f"n={len(a)}+{len(b)})" + (f", most: {worst}" if worst else ""),
    )
