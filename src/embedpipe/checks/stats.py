"""The result type every statistical check function returns (plain Python, no Prefect)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stat:
    """One measured statistic and whether it crossed its threshold.

    Attributes:
        statistic: The measured value (its meaning is documented by the function that made it).
        threshold: The value it was compared with.
        fired: True when the check found a problem (the statistic is on the wrong side of the
            threshold and, for statistical tests, the p-value is below alpha as well).
        p_value: For statistical tests, the p-value of "no difference"; else ``None``.
        effect: An effect size on a scale users can read (for example the AUC minus 0.5); or ``None``.
        detail: One short line for people, e.g. ``"auc=0.71 (n=5000+5000), p=1e-12"``.
    """

    statistic: float
    threshold: float
    fired: bool
    p_value: float | None = None
    effect: float | None = None
    detail: str = ""
