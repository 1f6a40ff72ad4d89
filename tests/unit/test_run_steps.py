"""The step results a run adds up (RunCounts, the tally, the shard window) and the summary built from them."""

from __future__ import annotations

import ast
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

from embedpipe.flows._pipeline import Tally, add_outcome, shard_window
from embedpipe.schemas import Audit, CheckResult, ChunkingIdentity, ModelIdentity, Reject, RunCounts
from embedpipe.store import CommitResult, StagedShard
from embedpipe.tasks.prepare import Prepared
from embedpipe.tasks.report import build_summary
from embedpipe.tasks.shard import ShardOutcome
from tests.helpers import ROOT, make_settings


def _counts(base: int, reject: str) -> RunCounts:
    """Counts with every field set to a distinct value (whatever fields RunCounts has)."""
    values: dict[str, object] = {}
    for i, f in enumerate(fields(RunCounts)):
        if f.name == "rejects":
            values[f.name] = [Reject(path=reject, reason="unreadable")]
        elif f.type == "float":
            values[f.name] = base + i + 0.5
        else:
            values[f.name] = base + i
    return RunCounts(**values)  # type: ignore[arg-type]


def test_run_counts_add_every_field_and_append_rejects_in_order() -> None:
    total, shard = _counts(10, "a.txt"), _counts(100, "b.txt")

    total += shard
    total += RunCounts(seen=1)

    for f in fields(RunCounts):
        if f.name == "rejects":
            assert [r.path for r in total.rejects] == ["a.txt", "b.txt"]
        else:
            want = getattr(_counts(10, ""), f.name) + getattr(_counts(100, ""), f.name) + (f.name == "seen")
            assert getattr(total, f.name) == want, f.name
    assert [r.path for r in shard.rejects] == ["b.txt"]  # the added counts are left as they were


def _outcome(shard: int, counts: RunCounts, ids: list[tuple[str, str]]) -> ShardOutcome:
    staged = StagedShard(uri=f"mem://staged/{shard}", rows=counts.embedded + counts.reused)
    return ShardOutcome(shard=shard, staged=staged, counts=counts, seen_ids=ids)


def test_the_tally_adds_discovery_rejects_and_shard_counts_in_order() -> None:
    tally = Tally()
    bad = Reject(path="bad.pdf", reason="unreadable", source="s")
    tally.add_rejects([bad])
    first = RunCounts(seen=2, new=2, embedded=5, reused=1, truncated=1, seconds=0.25)
    later = RunCounts(seen=2, changed=1, unchanged=1, embedded=3, refreshed=2, seconds=0.5)
    later.rejects.append(Reject(path="c.txt", reason="too many chunks", source="s"))

    add_outcome(tally, _outcome(0, first, [("s", "a.txt"), ("s", "b.txt")]))
    add_outcome(tally, _outcome(1, later, [("s", "a.txt"), ("s", "d.txt")]))

    c = tally.counts
    assert (c.seen, c.new, c.changed, c.unchanged) == (5, 2, 1, 1)
    assert (c.embedded, c.reused, c.refreshed, c.truncated, c.seconds) == (8, 1, 2, 1, 0.75)
    # discovery first, then each shard's own, then the duplicate id the later shard repeated
    assert [r.path for r in c.rejects] == ["bad.pdf", "c.txt", "a.txt"]
    assert ("s", "bad.pdf") in tally.protected_files
    assert [s.uri for s in tally.staged] == ["mem://staged/0", "mem://staged/1"]


def test_the_shard_window_keeps_at_most_size_shards_in_flight_and_collects_in_order() -> None:
    submitted: list[int] = []
    collected: list[tuple[int, bool]] = []
    most_in_flight = 0

    def submit() -> object:
        nonlocal most_in_flight
        for shard in range(5):
            submitted.append(shard)
            most_in_flight = max(most_in_flight, len(submitted) - len(collected))
            yield shard

    shard_window(submit(), lambda shard, more: collected.append((shard, more)), 2)  # type: ignore[arg-type]

    assert most_in_flight == 2
    assert collected == [(0, True), (1, True), (2, True), (3, True), (4, False)]


def test_build_summary_reads_the_typed_step_results(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    identity = ModelIdentity(name="m", weights_hash="h" * 64, dim=32, max_seq_length=64, normalize=True)
    chunking = ChunkingIdentity(tokens=64, overlap=8, budget=62, tokenizer_hash="t")
    prepared = Prepared(identity=identity, chunking=chunking, device="cpu", read_version=3)
    counts = RunCounts(
        seen=4, new=1, changed=2, unchanged=1, embedded=6, reused=2, truncated=1, seconds=1.23456
    )
    counts.rejects.append(Reject(path="x.bin", reason="binary"))
    check = CheckResult(check="integrity", status="pass", severity="fail")
    audit = Audit(results=[check], gate="passed", served_version=4)
    started = datetime.now(UTC)

    s = build_summary(
        run_id="r1",
        flow="sync",
        settings=settings,
        sources=["docs"],
        started_at=started,
        status="completed",
        message=None,
        prepared=prepared,
        result=CommitResult(4, 8, 3),
        counts=counts,
        docs_deleted=1,
        audit=audit,
    )

    assert (s.docs_seen, s.docs_rejected, s.docs_new, s.docs_changed, s.docs_unchanged) == (4, 1, 1, 2, 1)
    assert (s.chunks_written, s.chunks_deleted, s.chunks_embedded, s.chunks_reused) == (8, 3, 6, 2)
    assert (s.chunks_truncated, s.embed_seconds, s.docs_deleted) == (1, 1.235, 1)
    assert (s.table_version, s.previous_version, s.served_version, s.gate) == (4, 3, 4, "passed")
    assert (s.model_id, s.dim, s.device, s.backend_choice) == (identity.model_id, 32, "cpu", None)
    assert [r.path for r in s.rejects] == ["x.bin"] and [c.check for c in s.checks] == ["integrity"]

    failed_early = build_summary(
        run_id="r2",
        flow="reindex",
        settings=settings,
        sources=[],
        started_at=started,
        status="failed",
        message="lock timeout",
        prepared=None,
        result=CommitResult(None, 0, 0),
        counts=RunCounts(),
        docs_deleted=0,
    )
    assert (failed_early.model, failed_early.dim, failed_early.previous_version) == ("fake:32", 0, None)
    assert (failed_early.gate, failed_early.checks, failed_early.served_version) == (None, [], None)


def test_tasks_never_import_flows() -> None:
    """Tasks sit below flows: the types flows pass to tasks live in schemas/ (or the tasks' own modules)."""
    offenders = []
    for path in sorted((ROOT / "src" / "embedpipe" / "tasks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("embedpipe.flows")]
    assert not offenders
