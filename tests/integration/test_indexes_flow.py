"""The index lifecycle through the real sync and reindex flows, and ``embedpipe index``.

Real Prefect (test harness), real LanceDB; the deterministic fake model keeps it fast, and
``index.min_rows`` is lowered to a few hundred rows so the vector index is built at test sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedpipe.cli import main
from embedpipe.flows.reindex import reindex
from embedpipe.flows.sync import sync
from embedpipe.schemas import C
from embedpipe.store import SERVING_TAG, Store
from tests.helpers import make_settings
from tests.integration.test_checks_flow import make_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness")

KEYS = {"name", "column", "type", "params", "indexed_rows", "unindexed_rows", "trained_at_version", "recall"}


def settings_for(tmp_path: Path, **index: object):
    return make_settings(
        tmp_path,
        model={"name": "fake:64"},
        chunk={"tokens": 40, "overlap": 0},
        index={"min_rows": 300, "fts": True, **index},
    )


def run(src: Path, settings):
    state = sync([str(src)], settings, return_state=True)
    return state, state.result(raise_on_failure=False)


def by_column(settings) -> dict[str, dict]:
    store = Store(settings.store)
    return {r["column"]: r for r in store.index_rows(store.open_version(None))}


def test_sync_builds_refreshes_and_serves_the_indexed_version(tmp_path: Path) -> None:
    src = make_corpus(tmp_path / "src", 100)  # 400 chunks: past index.min_rows=300
    settings = settings_for(tmp_path)
    state, s1 = run(src, settings)
    assert state.is_completed(), state.message
    store = Store(settings.store)
    # the audited and served version is the one holding the indexes; the run's tag moved to it
    assert s1.gate == "passed" and s1.served_version == s1.table_version == store.serving_version()
    assert store.open_table().tags.list()[s1.run_id]["version"] == s1.table_version
    recall = next(c for c in s1.checks if c.check == "index_recall")
    assert recall.status == "pass" and recall.severity == "fail" and recall.statistic >= 0.95, recall
    rows = by_column(settings)
    assert set(rows) == {C.VECTOR, C.TEXT} and all(set(r) == KEYS for r in rows.values())
    vec = rows[C.VECTOR]
    # auto at dimension 64: a flat IVF index, searched without re-ranking
    assert vec["type"] == "IVF_FLAT" and vec["indexed_rows"] == 400 and vec["unindexed_rows"] == 0
    assert vec["params"]["refine_factor"] is None and vec["params"]["nprobes"] >= 1
    assert rows[C.TEXT]["type"] == "FTS"
    trained = vec["trained_at_version"]
    # an incremental run: its new rows are folded into the index, which is not retrained
    make_corpus(src, 5, seed=3, start=100)
    state, s2 = run(src, settings)
    assert state.is_completed(), state.message
    assert s2.served_version == s2.table_version > s1.table_version
    vec = by_column(settings)[C.VECTOR]
    assert vec["indexed_rows"] == 420 and vec["unindexed_rows"] == 0 and vec["trained_at_version"] == trained
    # a run that changes nothing makes no version, and no index work
    state, s3 = run(src, settings)
    assert s3.table_version is None and s3.served_version == s2.served_version
    # reindex always retrains
    state = reindex(settings, return_state=True)
    r = state.result(raise_on_failure=False)
    assert state.is_completed(), state.message
    assert by_column(settings)[C.VECTOR]["trained_at_version"] > trained
    assert r.served_version == r.table_version


def test_a_coarse_index_fails_the_recall_gate_and_is_not_served(tmp_path: Path) -> None:
    src = make_corpus(tmp_path / "src", 250)  # 1,000 chunks
    coarse = settings_for(tmp_path, vector_type="IVF_PQ", nprobes=1)
    state, s = run(src, coarse)
    assert state.is_failed() and s.gate == "failed" and "index_recall" in s.message
    check = next(c for c in s.checks if c.check == "index_recall")
    assert check.status == "fail" and check.statistic < 0.95 and "nprobes=1" in check.detail
    assert Store(coarse.store).serving_version() is None


def test_index_command_lists_and_rebuilds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_corpus(tmp_path / "src", 100)
    settings = settings_for(tmp_path)
    run(src, settings)
    # the command reads the same settings from the environment
    for key, value in {
        "MODEL__NAME": "fake:64",
        "CHECKS__TRIPLETS": "[]",
        "CHECKS__PAIRS": "[]",
        "INDEX__MIN_ROWS": "300",
        "INDEX__FTS": "true",
    }.items():
        monkeypatch.setenv(f"EMBEDPIPE_{key}", value)
    db = ["--db", settings.store.uri]
    assert main(["index", *db, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert isinstance(rows, list) and {r["type"] for r in rows} == {"IVF_FLAT", "FTS"}
    assert all(set(r) == KEYS for r in rows)
    assert main(["index", *db]) == 0
    text = capsys.readouterr().out
    assert "vector_idx" in text and "IVF_FLAT" in text and "text_idx" in text
    before = next(r for r in rows if r["column"] == C.VECTOR)["trained_at_version"]
    assert main(["index", *db, "--rebuild", "--json"]) == 0
    rebuilt = json.loads(capsys.readouterr().out)
    store = Store(settings.store)
    after = next(r for r in store.index_rows(store.open_version(None)) if r["column"] == C.VECTOR)
    assert after["trained_at_version"] > before and after in rebuilt
    assert store.open_table().tags.list()[SERVING_TAG]["version"] == store.open_table().version
