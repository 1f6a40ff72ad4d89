"""Settings of the checks that gate which version is served (defaults: the check registry)."""

from __future__ import annotations

from pydantic import Field, PrivateAttr, field_validator

from embedpipe.checks.registry import CHECKS, Severity
from embedpipe.config._base import _Group


class GateSettings(_Group):
    """How one check gates publication."""

    severity: Severity | None = Field(
        None, description="fail blocks serving, warn only reports, off skips the check; None: default."
    )
    threshold: float | None = Field(None, description="The check's threshold; None: its default.")
    max_drop: float | None = Field(
        None, ge=0, description="Quality checks: largest allowed drop against the reference version."
    )


class ChecksSettings(_Group):
    """Drift and similarity-quality checks that gate which version is served."""

    enabled: bool = Field(True, description="Check every new version before serving it.")
    baseline_tag: str | None = Field(
        None, description="Compare against this pinned tag (or version number) instead of the served version."
    )
    sample_size: int = Field(
        5000, ge=50, le=10_000_000, description="Vectors per side drawn (fixed seed) for distribution checks."
    )
    seed: int = Field(0, ge=0, description="Seed of every subsample and permutation.")
    alpha: float = Field(
        0.001, gt=0, lt=0.5, description="Significance level of the statistical drift tests."
    )
    golden: list[str] = Field(
        default_factory=list, description="Golden-set JSONL files ({query, relevant: {doc_id: grade}})."
    )
    golden_max_missing: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest share of a golden set's relevant doc_ids the table may lack (scored as not "
        "retrieved and listed); above it the golden checks are an error (a wrong id scheme).",
    )
    triplets: list[str] = Field(
        default_factory=lambda: ["builtin"],
        description="Triplet JSONL files ({anchor, positive, negative, margin}); builtin = the bundled set.",
    )
    pairs: list[str] = Field(
        default_factory=lambda: ["builtin"],
        description="Scored pair JSONL files ({a, b, score}); builtin = the bundled set.",
    )
    canary: str = Field("builtin", description="Text file of canary probes, one per line; builtin = bundled.")
    k: int = Field(10, ge=1, le=1000, description="k of recall@k and of neighbour stability.")
    gates: dict[str, GateSettings] = Field(
        default_factory=dict, description="Per-check overrides of severity, threshold and max_drop."
    )

    _min_recall: float | None = PrivateAttr(None)
    """``index.min_recall``, shared by the root settings: the index_recall gate's default threshold."""

    @field_validator("gates")
    @classmethod
    def _known_checks(cls, value: dict[str, GateSettings]) -> dict[str, GateSettings]:
        unknown = sorted(set(value) - set(CHECKS))
        if unknown:
            raise ValueError(f"unknown check(s) {unknown}; known: {sorted(CHECKS)}")
        return value

    def gate(self, name: str) -> tuple[str, float, float | None]:
        """The effective (severity, threshold, max_drop) of check ``name`` (defaults: the check registry)."""
        severity, threshold, max_drop = CHECKS[name].gate
        if name == "index_recall" and self._min_recall is not None:
            threshold = self._min_recall
        g = self.gates.get(name)
        if g is not None:
            severity = g.severity or severity
            threshold = threshold if g.threshold is None else g.threshold
            max_drop = max_drop if g.max_drop is None else g.max_drop
        return severity, threshold, max_drop
