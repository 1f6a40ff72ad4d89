"""The sync flow end to end under Prefect's test harness, with real LanceDB and the fake model."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pytest

from embedpipe.flows.sync import sync
from embedpipe.schemas import C
from embedpipe.store import RUNS_TABLE, STAGING_DIR, Store
from tests.fakes import EXPLODE
from tests.helpers import make_settings, write

pytestmark = pytest.mark.usefixtures("prefect_harness")

TOPICS = ["cats purr", "engines roar", "rivers flow", "stars shine", "bread rises", "bees buzz"]


def corpus(root: Path, n: int = 24) -> Path:
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        body = "\n\n".join(f"Paragraph {p} of doc {i}: {topic} in many ways. " * 4 for p in range(3))
        write(root / f"dir{i % 3}" / f"doc{i:02d}.txt", body)
    write(
        root / "records.jsonl",
        '{"id": "r1", "text": "a record about bees"}\n{"id": "r2", "text": "rivers"}\n',
    )
    return root


def run(sources: list[Path], settings):
    state = sync([str(s) for s in sources], settings, return_state=True)
    return state, state.result(raise_on_failure=False)


def test_many_shards_one_version_tagged_with_run(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src")
    settings = make_settings(
        tmp_path, runtime={"shard_mb": 0.001, "max_inflight_shards": 2}, chunk={"tokens": 40, "overlap": 8}
    )
    state, s = run([src], settings)
    assert state.is_completed(), state.message
    assert s.status == "completed"
    assert s.docs_seen == 26 and s.docs_rejected == 0
    assert s.chunks_written == s.chunks_embedded > 26
    store = Store(settings.store)
    versions = store.versions()
    assert [v["version"] for v in versions] == [s.table_version]  # 20+ shards, still exactly one version
    assert versions[0]["run_id"] == s.run_id
    table = store.open_table().to_arrow()
    assert table.num_rows == s.chunks_written
    assert len(set(table.column(C.CHUNK_ID).to_pylist())) == table.num_rows
    assert set(table.column(C.RUN_ID).to_pylist()) == {s.run_id}
    assert set(pc.unique(table.column(C.DOC_ID)).to_pylist()) >= {"dir0/doc00.txt", "records.jsonl#r1"}
    assert int(pc.max(table.column(C.N_TOKENS)).as_py()) <= 40 - 2
    runs = store.open_table(RUNS_TABLE).to_arrow().to_pylist()
    assert runs[-1]["run_id"] == s.run_id and runs[-1]["table_version"] == s.table_version
    assert runs[-1]["chunks_written"] == s.chunks_written
    assert not (Path(store.uri) / STAGING_DIR / "chunks" / s.run_id).exists()


def test_rerun_and_edit_leave_no_duplicates_or_stale_chunks(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src", n=6)
    settings = make_settings(tmp_path, chunk={"tokens": 30, "overlap": 4})
    _, s1 = run([src], settings)
    _, s2 = run([src], settings)
    assert s2.table_version is None and s2.chunks_embedded == 0  # nothing changed: no new version
    store = Store(settings.store)
    t = store.open_table().to_arrow()
    assert t.num_rows == s1.chunks_written
    write(src / "dir0" / "doc00.txt", "Now a single short sentence.")
    _, s3 = run([src], settings)
    t = store.open_table().to_arrow()
    texts = t.filter(pc.equal(t.column(C.DOC_ID), "dir0/doc00.txt")).column(C.TEXT).to_pylist()
    assert texts == ["Now a single short sentence."]
    assert len(set(t.column(C.CHUNK_ID).to_pylist())) == t.num_rows
    assert s3.docs_changed == 1 and s3.chunks_embedded == 1 and s3.chunks_deleted >= 1


def test_bad_input_is_quarantined_and_the_run_completes(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src", n=12)
    write(src / "bad" / "binary.txt", b"\x00\x01\x02\xff" * 100)
    write(src / "bad" / "latin1.md", "café crème".encode("latin-1"))
    write(src / "bad" / "empty.txt", "")
    write(src / "bad" / "broken.json", '{"text": "unterminated')
    write(src / "bad" / "lines.jsonl", '{"id": 1, "text": "fine"}\nnot json\n{"id": 3}\n')
    write(src / "bad" / "rows.csv", 'id,text\n1,"good row"\n2,"too",many,fields\n')
    (src / "bad" / "dangling.txt").symlink_to(src / "does-not-exist.txt")
    write(src / "bad" / "huge.txt", "big " * 400_000)
    settings = make_settings(tmp_path, source={"max_file_mb": 1.0})
    state, s = run([src], settings)
    assert state.is_completed(), state.message
    reasons = {r.path: r.reason for r in s.rejects}
    assert "binary" in reasons["bad/binary.txt"]
    assert "invalid UTF-8" in reasons["bad/latin1.md"]
    assert reasons["bad/empty.txt"] == "empty file"
    assert "invalid JSON" in reasons["bad/broken.json"]
    assert "invalid JSON" in reasons["bad/lines.jsonl#2"]
    assert "no field 'text'" in reasons["bad/lines.jsonl#3"]
    assert "expected 2 fields, got 4" in reasons["bad/rows.csv#2"]
    assert "broken symlink" in reasons["bad/dangling.txt"]
    assert "too large" in reasons["bad/huge.txt"]
    assert s.docs_rejected == len(s.rejects) == 9
    store = Store(settings.store)
    doc_ids = set(store.open_table().to_arrow().column(C.DOC_ID).to_pylist())
    assert {"bad/lines.jsonl#1", "bad/rows.csv#1"} <= doc_ids  # good records of mixed files kept
    rejects = store.open_table("rejects").to_arrow()
    assert sorted(rejects.column(C.PATH).to_pylist()) == sorted(reasons)


def test_reject_ratio_over_limit_fails_and_commits_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "ok.txt", "one good document")
    for i in range(3):
        write(src / f"bin{i}.txt", b"\x00" * 10)
    settings = make_settings(tmp_path, source={"max_reject_ratio": 0.5})
    state, s = run([src], settings)
    assert state.is_failed()
    assert "3 of 4 documents rejected" in state.message and "source.max_reject_ratio=0.5" in state.message
    assert s.table_version is None and s.chunks_written == 0
    store = Store(settings.store)
    assert store.open_table() is None
    assert store.open_table(RUNS_TABLE).to_arrow().column("status").to_pylist() == ["failed"]


def test_other_model_is_refused_and_table_unchanged(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src", n=3)
    settings = make_settings(tmp_path, model={"name": "fake:16"})
    _, s1 = run([src], settings)
    other = make_settings(tmp_path, model={"name": "fake:24"})
    state, s2 = run([src], other)
    assert state.is_failed()
    assert "was built with model=fake:16" in state.message and "dim=24" in state.message
    store = Store(settings.store)
    assert [v["version"] for v in store.versions()] == [s1.table_version]
    assert s2.chunks_embedded == 0


def test_crash_mid_run_leaves_previous_version_intact(tmp_path: Path) -> None:
    src = corpus(tmp_path / "src", n=12)
    settings = make_settings(tmp_path, runtime={"shard_mb": 0.001, "max_inflight_shards": 2})
    _, s1 = run([src], settings)
    store = Store(settings.store)
    before = store.open_table().to_arrow()
    for i in range(12):  # change every document, then crash in the model halfway through
        write(src / f"dir{i % 3}" / f"doc{i:02d}.txt", f"rewritten document {i}")
    write(src / "dir2" / "zz-last.txt", f"this one kills the model {EXPLODE}")
    state, s2 = run([src], settings)
    assert state.is_failed()
    assert "fake model crashed" in state.message
    after = store.open_table()
    assert after.version == s1.table_version
    assert after.to_arrow().sort_by(C.CHUNK_ID).equals(before.sort_by(C.CHUNK_ID))
    assert not (Path(store.uri) / STAGING_DIR / "chunks" / s2.run_id).exists()
    (src / "dir2" / "zz-last.txt").unlink()
    state, _s3 = run([src], settings)  # the next run completes the work
    assert state.is_completed()
    t = store.open_table().to_arrow()
    assert sorted(set(t.column(C.TEXT).to_pylist())) == sorted(
        {f"rewritten document {i}" for i in range(12)} | {"a record about bees", "rivers"}
    )
    assert len(set(t.column(C.CHUNK_ID).to_pylist())) == t.num_rows


def test_missing_source_fails_with_clear_message(tmp_path: Path) -> None:
    state, _s = run([tmp_path / "nope"], make_settings(tmp_path))
    assert state.is_failed()
    assert "source not found" in state.message and "nope" in state.message


class _ArrowHighWater:
    """Samples Arrow's allocated bytes each time the model finishes a call."""

    def __init__(self) -> None:
        self.peak = 0

    def start(self) -> None:
        pass

    def add_total(self, n: int) -> None:
        pass

    def advance(self, n: int) -> None:
        import pyarrow as pa

        self.peak = max(self.peak, pa.total_allocated_bytes())

    def close(self) -> None:
        pass


def test_memory_does_not_grow_with_corpus_size(tmp_path: Path) -> None:
    """Shards are released once staged: 4x the documents must not mean 4x the Arrow memory."""
    from embedpipe.progress import chunks_progress

    def peak_for(n_files: int) -> int:
        src = tmp_path / f"src{n_files}"
        for i in range(n_files):
            write(src / f"doc{i:03d}.txt", f"Document {i}. " + "Words about many topics. " * 2000)
        settings = make_settings(
            tmp_path / f"w{n_files}", runtime={"shard_mb": 0.04, "max_inflight_shards": 2}
        )
        probe = _ArrowHighWater()
        chunks_progress.add(probe)
        try:
            state, s = run([src], settings)
        finally:
            chunks_progress.remove(probe)
        assert state.is_completed() and s.docs_seen == n_files
        return probe.peak

    small, large = peak_for(6), peak_for(24)
    assert small > 0
    assert large < 1.6 * small, (small, large)
    print(f"arrow peak bytes: 6 files {small}, 24 files {large}")


def test_run_publishes_prefect_artifacts(tmp_path: Path) -> None:
    """The Prefect UI gets a table of stage statistics and a markdown verdict for the run."""
    from prefect.artifacts import Artifact

    src = corpus(tmp_path / "src", n=3)
    write(src / "bad.txt", b"\x00\x00")
    state, s = run([src], make_settings(tmp_path))
    assert state.is_completed()
    table = Artifact.get("embedpipe-sync-stages")
    md = Artifact.get("embedpipe-sync-summary")
    progress = Artifact.get("embedpipe-sync-progress")
    assert table is not None and md is not None and progress is not None
    assert str(table.flow_run_id) == s.run_id and str(md.flow_run_id) == s.run_id
    assert "chunk+embed" in str(table.data) and str(s.chunks_embedded) in str(table.data)
    assert f"version **{s.table_version}**" in str(md.data) and "rejected `bad.txt`" in str(md.data)
    assert float(progress.data) == 100.0
