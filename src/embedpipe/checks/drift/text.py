"""Token and text checks: :func:`token_length_psi`, :func:`truncation_rate`, :func:`language_mix`.

They read the chunks' token counts and texts rather than their vectors, so they also compare
versions embedded by different models.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from embedpipe.checks.drift._base import fmt_p, share_above, too_few
from embedpipe.checks.stats import Stat

__all__ = ["language_mix", "script_of", "token_length_psi", "truncation_rate"]


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
    early = too_few(max_psi, len(r), len(n))
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
        f"p={fmt_p(p)}",
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
    early = too_few(max_rate, len(t))
    if early:
        return early
    over = int(np.count_nonzero(t > limit))
    return share_above(over, len(t), max_rate, f"{over}/{len(t)} chunks over {limit} tokens")


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

    early = too_few(max_tvd, len(ref_texts), len(new_texts))
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
        detail=f"{shares} (tvd={tvd:.3f}, p={fmt_p(p)})",
    )
