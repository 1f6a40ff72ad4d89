"""Step results a run adds up and reports: its counts and the audit of its new version.

Plain dataclasses (per-run records, not per-row data) that tasks fill in and flows pass to the run
summary (:func:`embedpipe.tasks.report.build_summary`); they live here so that every layer can
import them downward.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from embedpipe.schemas.records import CheckResult, Reject


@dataclass
class RunCounts:
    """The documents and chunks a run, a shard or a stage counted; ``+=`` adds them up.

    Every field adds: numbers are summed and ``other``'s rejects are appended to this one's list
    (in place), so a run's counts are its shards' counts added in shard order.
    """

    seen: int = 0
    """Documents read, and files rejected before they could be read."""
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    rejects: list[Reject] = field(default_factory=list)
    """Documents and files quarantined, with their reasons, in the order they were found."""
    embedded: int = 0
    """Chunks sent through the model."""
    reused: int = 0
    """Chunks whose vector came from the table or the vector cache."""
    refreshed: int = 0
    """Stored chunks rewritten with new file metadata, without embedding."""
    truncated: int = 0
    """Embedded chunks longer than the model's ``max_seq_length``."""
    seconds: float = 0.0
    """Time spent in the model."""

    def __iadd__(self, other: RunCounts) -> RunCounts:
        for f in fields(self):
            value = getattr(self, f.name)
            value += getattr(other, f.name)  # a list grows in place: no copy per shard
            setattr(self, f.name, value)
        return self


@dataclass
class Audit:
    """What the audit of one version found and did."""

    results: list[CheckResult] = field(default_factory=list)
    gate: str | None = None
    served_version: int | None = None
    blocking: list[str] = field(default_factory=list)
    reference: str = ""
    reference_version: int | None = None
