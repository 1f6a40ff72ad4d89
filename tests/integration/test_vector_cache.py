"""A failed run costs only its checks: vectors of discarded versions are found again by the next run.

Real Prefect (test harness) and real LanceDB; the fake model for the flows, the bundled real model
for the failed-gate repro of issue 13.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from embedpipe.flows.reindex import reindex
from embedpipe.schemas import C, vector_matrix
from embedpipe.store import VECTOR_CACHE_TABLE, Store
from tests.fakes import ZERO
from tests.helpers import SAMPLE_CORPUS, make_settings, write
from tests.integration.test_checks_flow import make_corpus, run, settings_for
from tests.integration.test_object_storage import BUCKET, S3Server, _prefix, s3, s3_settings  # noqa: F401

pytestmark = pytest.mark.usefixtures("prefect_harness")


def vectors_of(table, doc_prefix: str) -> dict[str, np.ndarray]:
    rows = table.to_arrow()
    keep = [i for i, d in enumerate(rows.column(C.DOC_ID).to_pylist()) if d.startswith(doc_prefix)]
    sub = rows.take(keep)
    return dict(zip(sub.column(C.CHUNK_ID).to_pylist(), vector_matrix(sub.column(C.VECTOR)), strict=True))


@pytest.mark.parametrize("cache", [True, False])
def test_failed_gate_then_fixed_rerun_embeds_nothing(tmp_path: Path, cache: bool) -> None:
    src = make_corpus(tmp_path / "src", 10)
    settings = settings_for(tmp_path, store={"cache": {"enabled": cache}})
    state, _ = run(src, settings)
    assert state.is_completed(), state.message
    store = Store(settings.store)
    assert VECTOR_CACHE_TABLE not in store.table_names()  # a normal run writes no cache
    make_corpus(src, 6, seed=5, start=100)
    write(src / "farm" / "broken.md", f"Broken. {ZERO}")
    state, failed = run(src, settings)
    assert state.is_failed() and failed.gate == "failed" and failed.served_version == 3
    new_chunks = failed.chunks_embedded - 1  # the broken document is one chunk
    assert new_chunks > 6
    (src / "farm" / "broken.md").unlink()
    state, s = run(src, settings)
    assert state.is_completed() and s.gate == "passed" and s.docs_new == 6
    if cache:
        assert (s.chunks_embedded, s.chunks_reused) == (0, new_chunks)
        # the same vectors as the failed version computed
        before = vectors_of(store.open_version(2), "farm/doc1")
        after = vectors_of(store.open_version(s.table_version), "farm/doc1")
        assert before.keys() == after.keys() and len(after) >= new_chunks
        for cid, vec in after.items():
            np.testing.assert_array_equal(vec, before[cid])
    else:  # the behaviour before the cache: everything the failed run embedded, embedded again
        assert (s.chunks_embedded, s.chunks_reused) == (new_chunks, 0)
        assert VECTOR_CACHE_TABLE not in store.table_names()


def test_rollback_then_rerun_embeds_nothing(tmp_path: Path) -> None:
    src = make_corpus(tmp_path / "src", 10)
    settings = settings_for(tmp_path)
    run(src, settings)
    make_corpus(src, 3, seed=8, start=0)  # three documents edited
    state, edited = run(src, settings)
    assert state.is_completed() and edited.docs_changed == 3 and edited.chunks_embedded > 0
    store = Store(settings.store)
    res = store.rollback("1")
    assert res["version"] == 3 and store.serving_version() == 3
    state, s = run(src, settings)  # the sources still hold the edits
    assert state.is_completed() and s.docs_changed == 3
    assert (s.chunks_embedded, s.chunks_reused) == (0, edited.chunks_embedded + edited.chunks_reused)
    reasons = store.open_table(VECTOR_CACHE_TABLE).to_arrow().column(C.REASON).to_pylist()
    assert set(reasons) == {"rollback"}


def test_reindex_to_another_model_and_back_embeds_nothing(tmp_path: Path) -> None:
    src = make_corpus(tmp_path / "src", 10)
    checks = {"enabled": False}
    model_a = settings_for(tmp_path, checks=checks)
    model_b = settings_for(tmp_path, checks=checks, model={"name": "fake:64:2"})
    state, first = run(src, model_a)
    rows = first.chunks_embedded
    assert state.is_completed() and rows > 0
    to_b = reindex(model_b, return_state=True).result(raise_on_failure=False)
    assert to_b.status == "completed" and to_b.chunks_embedded == rows  # B was never computed
    back = reindex(model_a, return_state=True).result(raise_on_failure=False)
    assert back.status == "completed" and (back.chunks_embedded, back.chunks_reused) == (0, rows)
    again = reindex(model_b, return_state=True).result(raise_on_failure=False)
    assert again.status == "completed" and again.chunks_embedded == 0
    store = Store(model_a.store)
    cached = store.open_table(VECTOR_CACHE_TABLE).to_arrow()
    assert set(cached.column(C.REASON).to_pylist()) == {"reindex"}
    assert len(set(cached.column("model_key").to_pylist())) == 2  # one set of vectors per model


def test_run_failing_after_staging_keeps_its_vectors(tmp_path: Path) -> None:
    src = make_corpus(tmp_path / "src", 10)
    for i in range(4):
        write(src / "empty" / f"e{i}.txt", "")
    settings = settings_for(tmp_path, source={"max_reject_ratio": 0.1})
    state, failed = run(src, settings)
    assert state.is_failed() and "nothing was committed" in failed.message
    assert failed.chunks_embedded > 0 and failed.table_version is None
    store = Store(settings.store)
    assert store.open_table() is None  # nothing written ...
    staging = tmp_path / "db" / "_embedpipe_staging" / "chunks"
    assert not any(staging.glob("*/*.arrow"))  # ... and the staging is gone
    shutil.rmtree(src / "empty")
    state, s = run(src, settings)
    assert state.is_completed() and s.docs_new == 10
    assert (s.chunks_embedded, s.chunks_reused) == (0, failed.chunks_embedded)
    assert set(store.open_table(VECTOR_CACHE_TABLE).to_arrow().column(C.REASON).to_pylist()) == {"failed-run"}


REAL_MODEL = {"name": "sentence-transformers/all-MiniLM-L6-v2", "device": "cpu"}


@pytest.mark.slow
def test_real_model_failed_first_gate_then_fixed_rerun_embeds_nothing(tmp_path: Path) -> None:
    """Issue 13's repro: the first run's gate fails (an impossible golden threshold), the table is
    emptied; the next run, with the gate fixed and the same documents, embeds nothing."""
    src = tmp_path / "src"
    for rel in ("basics/what-are-embeddings.md", "search/ann-indexes.md", "search/faq.csv"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE_CORPUS / rel, src / rel)
    golden = tmp_path / "golden.jsonl"
    golden.write_text(
        json.dumps({"query": "what is an embedding", "relevant": {"basics/what-are-embeddings.md": 1}}) + "\n"
    )
    strict = {"golden": [str(golden)], "gates": {"golden_recall": {"threshold": 1.01}}}
    state, failed = run(src, make_settings(tmp_path, model=REAL_MODEL, checks=strict))
    assert state.is_failed() and failed.gate == "failed" and "golden_recall" in failed.message
    assert "the table was emptied" in failed.message and failed.chunks_embedded > 10
    fixed = make_settings(tmp_path, model=REAL_MODEL, checks={"golden": [str(golden)]})
    assert Store(fixed.store).open_version("latest").count_rows() == 0
    state, s = run(src, fixed)
    assert state.is_completed() and s.gate == "passed" and s.served_version == s.table_version
    assert (s.chunks_embedded, s.chunks_reused) == (0, failed.chunks_embedded)


@pytest.mark.slow
def test_cache_on_object_storage(tmp_path: Path, s3: S3Server) -> None:  # noqa: F811 (the fixture)
    """The same on an s3:// database (moto): a run failing after staging, then a failed gate."""
    src = make_corpus(tmp_path / "src", 6)
    for i in range(3):
        write(src / "empty" / f"e{i}.txt", "")
    db = f"s3://{BUCKET}/{_prefix()}/db"
    settings = s3_settings(tmp_path, s3, db, chunk={"tokens": 40, "overlap": 0}, model={"name": "fake:64"})
    settings = settings.model_copy(
        update={"source": settings.source.model_copy(update={"max_reject_ratio": 0.1})}
    )
    state, failed = run(src, settings)
    assert state.is_failed() and failed.chunks_embedded > 0
    shutil.rmtree(src / "empty")
    state, first = run(src, settings)
    assert state.is_completed(), first.message
    assert (first.chunks_embedded, first.chunks_reused) == (0, failed.chunks_embedded)
    make_corpus(src, 3, seed=4, start=50)
    write(src / "farm" / "broken.md", f"Broken. {ZERO}")
    state, gate = run(src, settings)
    assert state.is_failed() and gate.gate == "failed"
    (src / "farm" / "broken.md").unlink()
    state, s = run(src, settings)
    assert state.is_completed() and s.docs_new == 3
    assert (s.chunks_embedded, s.chunks_reused) == (0, gate.chunks_embedded - 1)
