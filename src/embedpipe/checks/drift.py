"""Calibrated distribution-shift statistics between a reference set of embeddings and a new one.

Every function here is pure (no I/O, no logging, no Prefect) and returns a
:class:`~embedpipe.checks.stats.Stat`. They are publish gates for an embedding index, so each one is
built to be *calibrated*: when ``ref`` and ``new`` are two random halves of the same set of vectors a
check fires at most ~0.1% of the time (the tests and :func:`calibrate` measure this), while a real
shift -- a different topic mix, a swapped embedding model, collapsed vectors -- makes it fire.

A statistical check fires only when it is **both** significant (``p < alpha``) **and** practically
large (its effect size beyond a minimum), so that a very large ``n`` does not turn a negligible
difference into an alarm. The descriptive checks (:func:`anisotropy`, :func:`effective_rank`,
:func:`duplicate_vectors`, :func:`truncation_rate`) compare an estimate with a fixed threshold far
outside its sampling noise at the sizes they run on.

Inputs ``ref`` and ``new`` are ``(n, d)`` float arrays (typically L2-normalised float32 sentence
embeddings). Expensive checks draw a fixed-seed subsample of at most ``max_per_side`` rows per side
(``np.random.default_rng(seed)``), so a given input always gives the same answer. Any input with
fewer than 5 rows on a side returns ``Stat(statistic=nan, fired=False, detail="too few vectors ...")``;
constant vectors and ``d == 1`` are handled without exceptions.

``scipy.stats`` is imported by the functions that use it: every flow imports this module, and most
runs (nothing changed) never run a check.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from embedpipe.checks.registry import COMPARISONS
from embedpipe.checks.stats import Stat

__all__ = [
    "DRIFT_CHECKS",
    "MIN_ROWS",
    "anisotropy",
    "calibrate",
    "centroid_shift",
    "domain_auc",
    "drifted_components",
    "duplicate_vectors",
    "effective_rank",
    "language_mix",
    "mmd",
    "script_of",
    "token_length_psi",
    "truncation_rate",
]

MIN_ROWS = 5
"""Fewer rows than this on either side and a check returns ``nan`` and does not fire."""

_CHUNK = 8192  # rows per block when streaming over large arrays in float64
_ERANK_MAX_ROWS = 20_000
_ZERO_VAR = 1e-12  # variance below this share of the mean squared norm counts as "no variance"

Array = NDArray[Any]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _as_matrix(x: ArrayLike, name: str) -> Array:
    """``x`` as a 2-D array (no copy when possible); an empty input becomes shape ``(0, 0)``."""
    a = np.asarray(x)
    if a.size == 0:
        return a.reshape(0, a.shape[-1] if a.ndim == 2 else 0)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    return a


def _pair(ref: ArrayLike, new: ArrayLike) -> tuple[Array, Array]:
    r, n = _as_matrix(ref, "ref"), _as_matrix(new, "new")
    if len(r) and len(n) and r.shape[1] != n.shape[1]:
        raise ValueError(f"ref and new have different dimensions: {r.shape[1]} != {n.shape[1]}")
    return r, n


def _too_few(threshold: float, *sizes: int) -> Stat | None:
    """The standard "too few vectors" answer when any side has fewer than :data:`MIN_ROWS` rows."""
    if min(sizes) < MIN_ROWS:
        counts = "+".join(str(s) for s in sizes)
        return Stat(
            statistic=float("nan"), threshold=threshold, fired=False, detail=f"too few vectors (n={counts})"
        )
    return None


def _non_finite(threshold: float, *arrays: Array) -> Stat | None:
    for a in arrays:
        if a.size and not np.isfinite(a).all():
            return Stat(
                statistic=float("nan"),
                threshold=threshold,
                fired=False,
                detail="non-finite values in the vectors",
            )
    return None


def _blocks(n: int, size: int = _CHUNK) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _subsample(x: Array, m: int, rng: np.random.Generator) -> Array:
    """At most ``m`` rows of ``x`` drawn without replacement (kept in their original order)."""
    if len(x) <= m:
        return x
    return x[np.sort(rng.choice(len(x), size=m, replace=False))]


def _mean_and_scatter(x: Array) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """Column means, centred scatter matrix ``sum((x - mean)(x - mean)^T)`` and mean squared norm.

    Streams over row blocks in float64 so a (100000, 384) float32 input never needs a full float64 copy.
    """
    mean = x.mean(axis=0, dtype=np.float64)
    d = x.shape[1]
    scatter = np.zeros((d, d))
    sq_norm = 0.0
    for sl in _blocks(len(x)):
        block = x[sl].astype(np.float64)
        sq_norm += float(np.einsum("ij,ij->", block, block))
        block -= mean
        scatter += block.T @ block
    return mean, scatter, sq_norm / max(len(x), 1)


def _fmt_p(p: float) -> str:
    return f"{p:.2g}"


# --------------------------------------------------------------------------------------------------
# vector distribution checks
# --------------------------------------------------------------------------------------------------


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
    r, n = _pair(ref, new)
    early = _too_few(min_ratio, len(r), len(n)) or _non_finite(min_ratio, r, n)
    if early:
        return early
    n1, n2 = len(r), len(n)
    mu_r, sc_r, sq_r = _mean_and_scatter(r)
    mu_n, sc_n, sq_n = _mean_and_scatter(n)
    cov = (sc_r + sc_n) / (n1 + n2 - 2)
    trace = float(np.trace(cov))
    delta = mu_n - mu_r
    shift_sq = float(delta @ delta)
    effect = float(np.sqrt(shift_sq))
    if trace <= _ZERO_VAR * max(sq_r, sq_n, 1e-300):
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
        f"({std_shift:.3f} of the spread), p={_fmt_p(p)}",
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


def _mann_whitney(scores: Array, labels: NDArray[np.bool_]) -> tuple[float, float, float]:
    """Mann–Whitney ``U`` of the positive labels, its null mean and its tie-corrected null variance."""
    from scipy import stats as sps

    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    big_n = n_pos + n_neg
    ranks = sps.rankdata(scores)
    u = float(ranks[labels].sum()) - n_pos * (n_pos + 1) / 2.0
    _, tie_counts = np.unique(scores, return_counts=True)
    tie_term = float(np.sum(tie_counts.astype(np.float64) ** 3 - tie_counts)) / (big_n * (big_n - 1))
    var = max(n_pos * n_neg / 12.0 * ((big_n + 1) - tie_term), 0.0)
    return u, n_pos * n_neg / 2.0, var


def domain_auc(
    ref: ArrayLike,
    new: ArrayLike,
    *,
    alpha: float = 0.001,
    min_auc: float = 0.6,
    seed: int = 0,
    max_per_side: int = 10_000,
    folds: int = 2,
) -> Stat:
    """How well a classifier tells new vectors from reference ones (out-of-fold ROC-AUC).

    A balanced fixed-seed subsample (``min(n_ref, n_new, max_per_side)`` rows per side) is
    standardised and fed to an L2 logistic regression (lbfgs, ``C=0.01``, at most 200 iterations);
    ``folds``-fold stratified cross-validation (shuffled with ``seed``) gives out-of-fold scores for
    every row. The statistic is their ROC-AUC taken within each fold (each fold's held-out rows are
    scored by one model) and pooled over folds, ``AUC = sum(U_f) / sum(n_new_f * n_ref_f)``.

    The p-value is a one-sided Mann–Whitney normal approximation (tie- and continuity-corrected)
    for AUC > 0.5. Each fold's ``U_f`` has the exact Mann–Whitney null given the model that scored
    it, but the folds are *not* independent: a regularised linear model is close to the mean
    difference of its training rows, so every fold's AUC follows the same inner product of the
    folds' mean differences (on random halves the out-of-fold AUC varies ~1.3x more than
    Mann–Whitney says, and a plain pooled test fires ~2x too often). The variance used is therefore
    the Cauchy–Schwarz bound ``(sum_f sd_f)^2``, valid for any dependence between folds; it is
    conservative (on random halves with 2 folds, p < 0.05 on 2% of splits; with 5 folds, 0.5%).

    Fires when ``p < alpha`` and ``auc > min_auc``: an AUC of 0.6 means a random new vector scores
    above a random reference vector 60% of the time, a shift anyone would call real; random halves
    of one set stay at 0.5 ± ~0.01 for 10k rows per side.

    Args:
        ref: Reference vectors, shape ``(n_ref, d)``.
        new: New vectors, shape ``(n_new, d)``.
        alpha: Significance level.
        min_auc: Smallest AUC that may fire.
        seed: Seed of the subsample and of the fold split.
        max_per_side: Rows drawn per side at most.
        folds: Number of cross-validation folds (at least 2).

    Returns:
        ``Stat`` with the AUC as statistic and ``effect = auc - 0.5``.
    """
    from scipy import stats as sps
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    r, n = _pair(ref, new)
    early = _too_few(min_auc, len(r), len(n)) or _non_finite(min_auc, r, n)
    if early:
        return early
    rng = np.random.default_rng(seed)
    m = min(len(r), len(n), max_per_side)
    x = np.vstack([_subsample(r, m, rng), _subsample(n, m, rng)]).astype(np.float32, copy=False)
    labels = np.r_[np.zeros(m, dtype=bool), np.ones(m, dtype=bool)]
    n_folds = int(min(max(folds, 2), m))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=200))
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    u_sum = mean_sum = sd_sum = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        for train, test in cv.split(x, labels):
            fitted = clone(model).fit(x[train], labels[train])
            scores = np.nan_to_num(np.asarray(fitted.decision_function(x[test]), dtype=np.float64))
            u, mean, var = _mann_whitney(scores, labels[test])
            u_sum, mean_sum, sd_sum = u_sum + u, mean_sum + mean, sd_sum + float(np.sqrt(var))
    auc = u_sum / (2.0 * mean_sum)
    tied = sd_sum <= 1e-9 * mean_sum  # all scores tied within every fold
    p = 1.0 if tied else float(sps.norm.sf((u_sum - mean_sum - 0.5) / sd_sum))
    fired = p < alpha and auc > min_auc
    return Stat(
        statistic=auc,
        threshold=min_auc,
        fired=fired,
        p_value=p,
        effect=auc - 0.5,
        detail=f"auc={auc:.3f} (n={m}+{m}, {n_folds}-fold), p={_fmt_p(p)}",
    )


def mmd(
    ref: ArrayLike,
    new: ArrayLike,
    *,
    alpha: float = 0.001,
    min_effect: float = 0.001,
    seed: int = 0,
    max_per_side: int = 1000,
    permutations: int = 1000,
) -> Stat:
    """Maximum mean discrepancy with a Gaussian kernel and a permutation test.

    On fixed-seed subsamples of at most ``max_per_side`` rows per side, the kernel is
    ``exp(-||x - y||^2 / h)`` with ``h`` the median squared distance of the pooled subsample (median
    heuristic). The permutation test shuffles the side labels ``permutations`` times (vectorised:
    with ``K`` the pooled kernel matrix and ``S`` a matrix of ±1/n label signs, one column per
    permutation, the biased statistics are ``sum(S * (K @ S), axis=0)``) and
    ``p = (1 + #{perm >= observed}) / (1 + permutations)``. Memory and time grow with
    ``(2 * max_per_side)^2``: one float32 kernel matrix (16 MB at the default) and
    ``permutations`` matrix-vector products with it (the median uses a fixed-seed sample of a
    million pairs above 2000 pooled rows).

    The reported statistic is the *unbiased* MMD² estimate (off-diagonal means), whose null
    expectation is 0 whatever the sample sizes, so ``min_effect`` means the same thing at any ``n``
    (the biased V-statistic sits at about ``(1/n_ref + 1/n_new) * (1 - mean k)`` under the null;
    the permutation p-value is the same for either form when the sides have equal size). Fires
    when ``p < alpha`` and ``mmd2 > min_effect``.

    Why ``min_effect = 0.001``: in high dimension the median-bandwidth kernel values concentrate
    (for sentence embeddings, cosines mostly in [-0.2, 0.5] give kernel values in ~[0.3, 0.6]), so
    MMD² is small even between unrelated distributions: a model swap (random rotation of
    all-MiniLM-L6-v2 embeddings of Python docstrings) gives ~0.08. A mixture that replaces a share
    ``ε`` of the content has ``MMD² ≈ ε² * MMD²(P, Q)``, so 0.001 is ~11% of the content from another
    model, or roughly a third of the content moved between sub-topics of one domain (re-weighting
    modules of those docstrings gives 0.0012-0.0014; a 15% shift gives 0.0002 and does not fire).
    Random halves give ``MMD²_u`` with a standard deviation of ~1.5e-4 at 1000 rows per side
    (maximum 4e-4 over 30 splits), so the floor is ~7 standard deviations above the null at the
    default subsample, while the p-value gate handles small samples (std ~1.2e-3 at 100 per side).

    Args:
        ref: Reference vectors, shape ``(n_ref, d)``.
        new: New vectors, shape ``(n_new, d)``.
        alpha: Significance level; reachable only when ``permutations >= 1 / alpha`` (the smallest
            p-value is ``1 / (1 + permutations)``).
        min_effect: Smallest unbiased MMD² that may fire.
        seed: Seed of the subsample and of the permutations.
        max_per_side: Rows drawn per side at most.
        permutations: Number of label permutations.

    Returns:
        ``Stat`` with the unbiased MMD² as statistic and as effect, and the permutation p-value.
    """
    r, n = _pair(ref, new)
    early = _too_few(min_effect, len(r), len(n)) or _non_finite(min_effect, r, n)
    if early:
        return early
    rng = np.random.default_rng(seed)
    a = _subsample(r, max_per_side, rng)
    b = _subsample(n, max_per_side, rng)
    m1, m2 = len(a), len(b)
    x = np.vstack([a, b]).astype(np.float32)
    size = m1 + m2
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64).astype(np.float32)
    # one (size x size) float32 buffer: Gram -> squared distances -> kernel, in place
    kern = x @ x.T
    kern *= -2.0
    kern += sq[:, None]
    kern += sq[None, :]
    np.maximum(kern, 0.0, out=kern)
    np.fill_diagonal(kern, 0.0)
    if size <= 2000:
        pairs = kern[np.triu_indices(size, k=1)]
    else:  # median heuristic on a fixed-seed sample of a million pairs
        i = rng.integers(0, size, 1_000_000)
        j = rng.integers(0, size - 1, 1_000_000)
        pairs = kern[i, j + (j >= i)]
    h = float(np.median(pairs))
    if h <= 0.0:
        positive = pairs[pairs > 0]
        h = float(positive.mean()) if positive.size else 0.0
    del pairs
    if h <= 0.0:
        return Stat(
            statistic=0.0,
            threshold=min_effect,
            fired=False,
            p_value=1.0,
            effect=0.0,
            detail=f"all vectors identical (n={m1}+{m2})",
        )
    kern *= np.float32(-1.0 / h)
    np.exp(kern, out=kern)
    kxx = (float(kern[:m1, :m1].sum(dtype=np.float64)) - m1) / (m1 * (m1 - 1))
    kyy = (float(kern[m1:, m1:].sum(dtype=np.float64)) - m2) / (m2 * (m2 - 1))
    kxy = float(kern[:m1, m1:].sum(dtype=np.float64)) / (m1 * m2)
    mmd2 = kxx + kyy - 2.0 * kxy

    base = np.r_[np.full(m1, 1.0 / m1), np.full(m2, -1.0 / m2)].astype(np.float32)
    observed = float(base @ (kern @ base))
    # |stat| <= 4 (kernel values in (0, 1], label weights summing to 2 in absolute value); a
    # permutation within float32 rounding of the observed value counts as a tie (conservative)
    tol = 1e-6
    n_perm = max(int(permutations), 1)
    batch = max(1, min(n_perm, 2_000_000 // (m1 + m2)))  # bounds S and K @ S to ~8 MB each
    exceed = 0
    done = 0
    while done < n_perm:
        cols = min(batch, n_perm - done)
        signs = rng.permuted(np.repeat(base[:, None], cols, axis=1), axis=0)
        perm_stats = np.einsum("ij,ij->j", signs, kern @ signs)
        exceed += int(np.count_nonzero(perm_stats >= observed - tol))
        done += cols
    p = (1 + exceed) / (1 + n_perm)
    fired = p < alpha and mmd2 > min_effect
    return Stat(
        statistic=mmd2,
        threshold=min_effect,
        fired=fired,
        p_value=p,
        effect=mmd2,
        detail=f"mmd²={mmd2:.4f} (n={m1}+{m2}, bandwidth h={h:.3g}), p={_fmt_p(p)} ({n_perm} permutations)",
    )


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

    r, n = _pair(ref, new)
    early = _too_few(max_share, len(r), len(n)) or _non_finite(max_share, r, n)
    if early:
        return early
    rng = np.random.default_rng(seed)
    a = _subsample(r, max_per_side, rng)
    b = _subsample(n, max_per_side, rng)
    pooled = np.vstack([a, b])
    mean, scatter, sq_norm = _mean_and_scatter(pooled)
    evals, evecs = np.linalg.eigh(scatter / (len(pooled) - 1))
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    top = float(evals[0]) if evals.size else 0.0
    if top <= _ZERO_VAR * max(sq_norm, 1e-300):
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


def _mean_cosine(x: Array) -> float:
    """Mean pairwise cosine similarity of the rows of ``x`` (zero rows count as cosine 0)."""
    total = np.zeros(x.shape[1])
    nonzero = 0
    for sl in _blocks(len(x)):
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
    n = _as_matrix(new, "new")
    r = _as_matrix(ref, "ref") if ref is not None else None
    if r is not None and len(r) and len(n) and r.shape[1] != n.shape[1]:
        raise ValueError(f"ref and new have different dimensions: {r.shape[1]} != {n.shape[1]}")
    if r is None or len(r) < MIN_ROWS:
        ceiling = 0.9
        early = _too_few(ceiling, len(n)) or _non_finite(ceiling, n)
        if early:
            return early
        value = _mean_cosine(n)
        return Stat(
            statistic=value,
            threshold=ceiling,
            fired=value > ceiling,
            detail=f"mean cosine={value:.3f} (n={len(n)}, no reference: absolute ceiling {ceiling})",
        )
    early = _too_few(max_delta, len(r), len(n)) or _non_finite(max_delta, r, n)
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
    _, scatter, sq_norm = _mean_and_scatter(x)
    evals = np.clip(np.linalg.eigvalsh(scatter), 0.0, None)
    total = float(evals.sum())
    if total <= _ZERO_VAR * max(sq_norm, 1e-300) * len(x):
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
    n = _as_matrix(new, "new")
    r = _as_matrix(ref, "ref") if ref is not None else None
    if r is not None and len(r) and len(n) and r.shape[1] != n.shape[1]:
        raise ValueError(f"ref and new have different dimensions: {r.shape[1]} != {n.shape[1]}")
    rng = np.random.default_rng(seed)
    if r is None or len(r) < MIN_ROWS:
        floor = min(2.0, float(n.shape[1])) if n.ndim == 2 and n.shape[1] else 2.0
        early = _too_few(floor, len(n)) or _non_finite(floor, n)
        if early:
            return early
        value = _erank(_subsample(n, _ERANK_MAX_ROWS, rng))
        return Stat(
            statistic=value,
            threshold=floor,
            fired=value < floor - 1e-9,
            effect=value,
            detail=f"erank={value:.1f} (n={len(n)}, no reference: floor {floor:g})",
        )
    early = _too_few(min_ratio, len(r), len(n)) or _non_finite(min_ratio, r, n)
    if early:
        return early
    m = min(len(r), len(n), _ERANK_MAX_ROWS)
    before = _erank(_subsample(r, m, rng))
    after = _erank(_subsample(n, m, rng))
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
    x = _as_matrix(vectors, "vectors")
    if len(text_hashes) != len(x):
        raise ValueError(f"{len(text_hashes)} text hashes for {len(x)} vectors")
    early = _too_few(max_rate, len(x))
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
    share = collapsed / len(x)
    return Stat(
        statistic=share,
        threshold=max_rate,
        fired=share > max_rate,
        effect=share,
        detail=f"{collapsed}/{len(x)} rows share their vector with a different text ({len(mixed)} vectors)",
    )


# --------------------------------------------------------------------------------------------------
# token and text checks
# --------------------------------------------------------------------------------------------------


def token_length_psi(
    ref_tokens: ArrayLike,
    new_tokens: ArrayLike,
    *,
    max_psi: float = 0.25,
    bins: int = 10,
    alpha: float = 0.001,
) -> Stat:
    """Population stability index of chunk token lengths.

    Bin edges are the ``bins``-quantiles of the reference lengths, deduplicated (token lengths tie
    heavily, e.g. many chunks exactly at the size limit), with open ends; bins are ``(e_i, e_i+1]``.
    Empty proportions get 1e-4. ``PSI = sum((q - p) ln(q / p))``; 0.25 is the conventional "major
    shift" level. ``p_value`` is the Pearson chi-square test of homogeneity of the same bin counts
    (PSI is to second order that statistic times ``1/n_ref + 1/n_new``, but the epsilon makes PSI
    itself blow up on small samples). Besides ``psi > max_psi`` the check requires ``p < alpha``
    (default 0.001): without it a handful of new chunks would fire on noise alone (with 10 bins,
    30 chunks give PSI ≈ 0.3 on average and 8 chunks leave empty bins worth ~0.7 each).

    Args:
        ref_tokens: Token count of each reference chunk.
        new_tokens: Token count of each new chunk.
        max_psi: Largest PSI that does not fire.
        bins: Number of quantile bins before deduplication.
        alpha: Significance level.

    Returns:
        ``Stat`` with the PSI as statistic and effect.
    """
    from scipy import stats as sps

    r = np.asarray(ref_tokens, dtype=np.float64).ravel()
    n = np.asarray(new_tokens, dtype=np.float64).ravel()
    early = _too_few(max_psi, len(r), len(n))
    if early:
        return early
    qs = np.linspace(0.0, 1.0, max(int(bins), 1) + 1)[1:-1]
    edges = np.unique(np.quantile(r, qs)) if qs.size else np.empty(0)
    n_bins = len(edges) + 1
    c_ref = np.bincount(np.searchsorted(edges, r, side="left"), minlength=n_bins)
    c_new = np.bincount(np.searchsorted(edges, n, side="left"), minlength=n_bins)
    eps = 1e-4
    p_ref = np.maximum(c_ref / len(r), eps)
    p_new = np.maximum(c_new / len(n), eps)
    psi = float(np.sum((p_new - p_ref) * np.log(p_new / p_ref)))
    table = np.vstack([c_ref, c_new])[:, (c_ref + c_new) > 0]
    p = float(sps.chi2_contingency(table, correction=False).pvalue) if table.shape[1] > 1 else 1.0
    fired = psi > max_psi and p < alpha
    return Stat(
        statistic=psi,
        threshold=max_psi,
        fired=fired,
        p_value=p,
        effect=psi,
        detail=f"psi={psi:.3f} over {n_bins} bins, median {np.median(r):g}->{np.median(n):g} tokens, "
        f"p={_fmt_p(p)}",
    )


def truncation_rate(new_tokens: ArrayLike, *, limit: int, max_rate: float = 0.01) -> Stat:
    """Share of chunks whose token count exceeds ``limit`` (the model silently truncates them).

    Args:
        new_tokens: Token count of each chunk.
        limit: The model's maximum sequence length in tokens.
        max_rate: Largest allowed share of truncated chunks.

    Returns:
        ``Stat`` with the share as statistic and effect.
    """
    t = np.asarray(new_tokens).ravel()
    early = _too_few(max_rate, len(t))
    if early:
        return early
    over = int(np.count_nonzero(t > limit))
    share = over / len(t)
    return Stat(
        statistic=share,
        threshold=max_rate,
        fired=share > max_rate,
        effect=share,
        detail=f"{over}/{len(t)} chunks over {limit} tokens",
    )


def _class(*ranges: tuple[int, int]) -> str:
    return "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in ranges)


_SCRIPTS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(f"[{_class(*ranges)}]+"))
    for name, ranges in (
        (
            "latin",
            (
                (0x41, 0x5A),
                (0x61, 0x7A),
                (0xAA, 0xAA),
                (0xBA, 0xBA),
                (0xC0, 0x24F),
                (0x250, 0x2AF),
                (0x1D00, 0x1DBF),
                (0x1E00, 0x1EFF),
                (0x2C60, 0x2C7F),
                (0xA720, 0xA7FF),
                (0xAB30, 0xAB6F),
                (0xFB00, 0xFB06),
                (0xFF21, 0xFF3A),
                (0xFF41, 0xFF5A),
            ),
        ),
        (
            "han",
            (
                (0x2E80, 0x2FDF),
                (0x3005, 0x3007),
                (0x3021, 0x3029),
                (0x3038, 0x303B),
                (0x3400, 0x4DBF),
                (0x4E00, 0x9FFF),
                (0xF900, 0xFAFF),
                (0x20000, 0x323AF),
            ),
        ),
        ("kana", ((0x3040, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9D), (0x1B000, 0x1B16F))),
        (
            "hangul",
            ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7FF), (0xFFA0, 0xFFDC)),
        ),
        ("cyrillic", ((0x400, 0x52F), (0x1C80, 0x1C8F), (0x2DE0, 0x2DFF), (0xA640, 0xA69F))),
        ("greek", ((0x370, 0x3FF), (0x1F00, 0x1FFF))),
        ("arabic", ((0x600, 0x6FF), (0x750, 0x77F), (0x8A0, 0x8FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF))),
        ("hebrew", ((0x590, 0x5FF), (0xFB1D, 0xFB4F))),
        ("devanagari", ((0x900, 0x97F), (0xA8E0, 0xA8FF))),
    )
)
_LETTERS = re.compile(r"[^\W\d_]+")
_ASCII_LETTERS = re.compile(r"[A-Za-z]")
_SCRIPT_PREFIX = 400


def script_of(text: str) -> str:
    """The dominant Unicode script among the letters of the first ~400 characters of ``text``.

    Args:
        text: Any text.

    Returns:
        One of ``"latin"``, ``"han"`` (CJK ideographs), ``"kana"``, ``"hangul"``, ``"cyrillic"``,
        ``"greek"``, ``"arabic"``, ``"hebrew"``, ``"devanagari"``, ``"other"`` (letters of another
        script), or ``"none"`` when there are no letters. Ties go to the script listed first.
    """
    head = text[:_SCRIPT_PREFIX]
    if head.isascii():
        return "latin" if _ASCII_LETTERS.search(head) else "none"
    letters = "".join(_LETTERS.findall(head))  # runs, not single characters: ~10x faster
    if not letters:
        return "none"
    best, best_count, known = "none", 0, 0
    for name, pattern in _SCRIPTS:
        count = sum(map(len, pattern.findall(letters)))
        if 2 * count > len(letters):
            return name  # a strict majority: nothing else can beat it
        known += count
        if count > best_count:
            best, best_count = name, count
    if len(letters) - known > best_count:
        return "other"
    return best


def language_mix(
    ref_texts: Sequence[str], new_texts: Sequence[str], *, alpha: float = 0.001, max_tvd: float = 0.1
) -> Stat:
    """Change in the mix of writing scripts (a proxy for languages) between two sets of texts.

    Each text is assigned its dominant script (:func:`script_of`). The statistic is the total
    variation distance between the two script distributions; the p-value is a chi-square test of
    homogeneity over the scripts present. Fires when ``p < alpha`` and ``tvd > max_tvd`` (10% of the
    texts moved to another script).

    Args:
        ref_texts: Reference texts (or chunks).
        new_texts: New texts (or chunks).
        alpha: Significance level.
        max_tvd: Largest total variation distance that does not fire.

    Returns:
        ``Stat`` with the TVD as statistic and effect; ``detail`` lists the top scripts' shares,
        e.g. ``"latin 0.64->0.10, han 0.36->0.90"``.
    """
    from scipy import stats as sps

    early = _too_few(max_tvd, len(ref_texts), len(new_texts))
    if early:
        return early
    before = Counter(script_of(t) for t in ref_texts)
    after = Counter(script_of(t) for t in new_texts)
    names = sorted(set(before) | set(after), key=lambda s: -(before[s] + after[s]))
    table = np.array([[before[s] for s in names], [after[s] for s in names]], dtype=np.float64)
    share_ref = table[0] / len(ref_texts)
    share_new = table[1] / len(new_texts)
    tvd = float(0.5 * np.abs(share_ref - share_new).sum())
    p = 1.0 if len(names) < 2 else float(sps.chi2_contingency(table, correction=False).pvalue)
    top = sorted(range(len(names)), key=lambda i: -max(share_ref[i], share_new[i]))[:4]
    shares = ", ".join(f"{names[i]} {share_ref[i]:.2f}->{share_new[i]:.2f}" for i in top)
    return Stat(
        statistic=tvd,
        threshold=max_tvd,
        fired=p < alpha and tvd > max_tvd,
        p_value=p,
        effect=tvd,
        detail=f"{shares} (tvd={tvd:.3f}, p={_fmt_p(p)})",
    )


# --------------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------------

DRIFT_CHECKS: dict[str, Callable[..., Stat]] = {
    c.name: globals()[c.statistic.rpartition(":")[2]] for c in COMPARISONS if c.statistic
}
"""The comparison checks by name, as the check registry lists them (``truncation_rate`` is absolute)."""

_SEEDED = frozenset({"domain_auc", "mmd", "drifted_components", "effective_rank"})


def calibrate(
    vectors: ArrayLike,
    tokens: ArrayLike | None,
    texts: Sequence[str] | None,
    text_hashes: Sequence[str] | None,
    *,
    seeds: int = 100,
    **kwargs: Mapping[str, Any],
) -> dict[str, float]:
    """False-alarm rate of every check on random halves of one set.

    For each seed ``s`` in ``range(seeds)`` the rows are split into two random halves A/B with
    ``np.random.default_rng(s)``; each check runs with A as reference and B as new (the subsampling
    checks get ``seed=s``; :func:`duplicate_vectors` runs on B alone). Since A and B come from the
    same distribution, every firing is a false alarm.

    Args:
        vectors: All vectors, shape ``(n, d)``.
        tokens: Token count per row, or ``None`` to skip ``token_length_psi``.
        texts: Text per row, or ``None`` to skip ``language_mix``.
        text_hashes: Text hash per row, or ``None`` to skip ``duplicate_vectors``.
        seeds: Number of random splits.
        **kwargs: Per-check keyword overrides keyed by check name, e.g.
            ``mmd={"permutations": 200, "alpha": 0.005}``.

    Returns:
        ``{check_name: share of seeds on which it fired}``.

    Raises:
        ValueError: On an unknown check name in ``kwargs`` or inputs of different lengths.
    """
    unknown = sorted(set(kwargs) - set(DRIFT_CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; known: {sorted(DRIFT_CHECKS)}")
    x = _as_matrix(vectors, "vectors")
    n = len(x)
    tok = None if tokens is None else np.asarray(tokens).ravel()
    for name, seq in (("tokens", tok), ("texts", texts), ("text_hashes", text_hashes)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} vectors")
    names = [
        name
        for name in DRIFT_CHECKS
        if not (
            (name == "token_length_psi" and tok is None)
            or (name == "language_mix" and texts is None)
            or (name == "duplicate_vectors" and text_hashes is None)
        )
    ]
    fired = dict.fromkeys(names, 0)
    for s in range(seeds):
        order = np.random.default_rng(s).permutation(n)
        ia, ib = np.sort(order[: n // 2]), np.sort(order[n // 2 :])
        for name in names:
            opts: dict[str, Any] = dict(kwargs.get(name, {}))
            if name in _SEEDED:
                opts.setdefault("seed", s)
            if name == "duplicate_vectors":
                assert text_hashes is not None
                result = duplicate_vectors(x[ib], [text_hashes[i] for i in ib], **opts)
            elif name == "token_length_psi":
                assert tok is not None
                result = token_length_psi(tok[ia], tok[ib], **opts)
            elif name == "language_mix":
                assert texts is not None
                result = language_mix([texts[i] for i in ia], [texts[i] for i in ib], **opts)
            else:
                result = DRIFT_CHECKS[name](x[ia], x[ib], **opts)
            fired[name] += int(result.fired)
    return {name: count / max(seeds, 1) for name, count in fired.items()}
