"""The one registry of checks: each check's name, family, default gate, and where its function lives.

Settings read the default gates and the set of known names from here (to validate
``checks.gates``), the suite reads the families and their measuring functions, ``drift.calibration``
reads which statistics compare two versions, and the dashboard reads the order in which checks are shown.

This module imports nothing but the standard library, so settings stay light: functions are named
as ``"module:attribute"`` and imported only when :meth:`Family.measure` or :meth:`Check.statistic_fn`
is called. What each threshold means is in the README's checks table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["fail", "warn", "off"]
Gate = tuple[str, float, float | None]
"""(severity, threshold, max_drop): how a check gates publication."""

_SUITE = "embedpipe.checks.suite"
_DRIFT = "embedpipe.checks.drift"


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    return fn


@dataclass(frozen=True)
class Check:
    """One check and its default gate.

    Attributes:
        name: What results, settings (``checks.gates.<name>``) and the checks table call it.
        family: The family (one task) that measures it.
        severity: Default severity: ``fail`` blocks serving, ``warn`` only reports, ``off`` skips.
        threshold: Default threshold.
        max_drop: Quality checks: default largest allowed drop against the reference, else ``None``.
        statistic: ``"module:function"`` of the pure statistic that compares a reference set of
            vectors with a new one (what calibration runs on two halves of one set); ``None`` for
            checks that are not such a comparison.
    """

    name: str
    family: str
    severity: Severity
    threshold: float
    max_drop: float | None = None
    statistic: str | None = None

    @property
    def gate(self) -> Gate:
        """The default (severity, threshold, max_drop)."""
        return self.severity, self.threshold, self.max_drop

    def statistic_fn(self) -> Callable[..., Any]:
        """The comparison statistic (imported now).

        Raises:
            ValueError: The check has no comparison statistic.
        """
        if self.statistic is None:
            raise ValueError(f"check={self.name} has no comparison statistic")
        return _resolve(self.statistic)


@dataclass(frozen=True)
class Family:
    """Checks measured together by one function (one Prefect task).

    Attributes:
        name: The family's name.
        checks: Its checks, in the order results are reported.
        function: ``"module:function"`` that measures them, called as
            ``function(family, ctx, checks_settings, store)`` and returning a ``Stat`` per check name.
    """

    name: str
    checks: tuple[Check, ...]
    function: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks)

    def measure(self) -> Callable[..., Any]:
        """The measuring function (imported now)."""
        return _resolve(self.function)


def _single(name: str, function: str, severity: Severity, threshold: float, **kw: Any) -> Family:
    """A family of one check; ``function`` is ``"module:function"`` in the ``suite`` package."""
    return Family(name, (Check(name, name, severity, threshold, **kw),), f"{_SUITE}.{function}")


def _drift(name: str, function: str, module: str, severity: Severity, threshold: float) -> Family:
    """A family of one comparison check whose statistic is ``name`` in ``module`` of ``drift``."""
    return _single(name, function, severity, threshold, statistic=f"{_DRIFT}.{module}:{name}")


FAMILIES: tuple[Family, ...] = (
    _single("integrity", "table:_integrity", "fail", 0.0),
    _single("canary", "probes:_canary", "fail", 0.9999),
    _drift("centroid_shift", "samples:_drift", "distribution", "warn", 1.5),
    _drift("domain_auc", "samples:_drift", "classifier", "warn", 0.6),
    _drift("mmd", "samples:_drift", "kernel", "warn", 0.001),
    _drift("drifted_components", "samples:_drift", "distribution", "warn", 0.25),
    _drift("anisotropy", "samples:_geometry", "geometry", "warn", 0.1),
    _drift("effective_rank", "samples:_geometry", "geometry", "fail", 0.5),
    _drift("duplicate_vectors", "samples:_geometry", "geometry", "fail", 0.01),
    _single("truncation_rate", "samples:_text", "warn", 0.01),  # absolute: no reference, no comparison
    _drift("token_length_psi", "samples:_text", "text", "warn", 0.25),
    _drift("language_mix", "samples:_text", "text", "warn", 0.1),
    Family(
        "golden",
        (
            Check("golden_recall", "golden", "fail", 0.0, max_drop=0.05),
            Check("golden_mrr", "golden", "fail", 0.0, max_drop=0.05),
            Check("golden_ndcg", "golden", "fail", 0.0, max_drop=0.05),
        ),
        f"{_SUITE}.probes:_golden",
    ),
    Family(
        "triplets", (Check("triplets", "triplets", "fail", 0.9, max_drop=0.02),), f"{_SUITE}.probes:_triplets"
    ),
    Family(
        "pairs", (Check("pairs_spearman", "pairs", "fail", 0.7, max_drop=0.02),), f"{_SUITE}.probes:_pairs"
    ),
    Family(
        "neighbours",
        (Check("neighbour_stability", "neighbours", "fail", 0.9),),
        f"{_SUITE}.table:_neighbours",
    ),
    Family("index", (Check("index_recall", "index", "fail", 0.95),), f"{_SUITE}.table:_index_recall"),
)
"""Every family in the order the suite runs them (and reports their results)."""

CHECKS: dict[str, Check] = {c.name: c for f in FAMILIES for c in f.checks}
"""Every check by name, in the families' order."""

FAMILY: dict[str, Family] = {f.name: f for f in FAMILIES}
"""Every family by name."""

COMPARISONS: tuple[Check, ...] = tuple(c for c in CHECKS.values() if c.statistic is not None)
"""The checks that compare two sets of vectors with a pure statistic of the ``drift`` package."""
