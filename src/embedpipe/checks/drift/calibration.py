"""False-alarm rate of the comparison checks on random halves of one set (:func:`calibrate`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from embedpipe.checks.drift._base import as_matrix
from embedpipe.checks.drift.geometry import duplicate_vectors
from embedpipe.checks.drift.text import language_mix, token_length_psi
from embedpipe.checks.registry import COMPARISONS
from embedpipe.checks.stats import Stat

__all__ = ["DRIFT_CHECKS", "calibrate"]

DRIFT_CHECKS: dict[str, Callable[..., Stat]] = {c.name: c.statistic_fn() for c in COMPARISONS}
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
    x = as_matrix(vectors, "vectors")
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
