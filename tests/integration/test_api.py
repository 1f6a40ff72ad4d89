"""The public Python API: flows as subflows of a user's flow, settings overrides, the read handle."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pytest

import embedpipe
from embedpipe.config import get_settings
from embedpipe.errors import ConfigError, RunFailed, TableNotFoundError, VersionNotFoundError
from tests.helpers import ROOT, write

pytestmark = [pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake model through the environment (as a user's shell would set a model)."""
    monkeypatch.setenv("EMBEDPIPE_MODEL__NAME", "fake:32")
    # the bundled triplets and pairs measure semantic quality, which a bag of hashed words lacks
    monkeypatch.setenv("EMBEDPIPE_CHECKS__TRIPLETS", "[]")
    monkeypatch.setenv("EMBEDPIPE_CHECKS__PAIRS", "[]")


def _corpus(root: Path) -> Path:
    write(root / "ann.md", "Approximate nearest neighbour indexes trade a little recall for speed.")
    write(root / "emb.md", "An embedding maps text to a dense vector.")
    return root


def test_public_names_are_what_all_says() -> None:
    assert set(embedpipe.__all__) == {
        "CheckReport",
        "EmbedpipeError",
        "RunFailed",
        "RunSummary",
        "Settings",
        "Table",
        "__version__",
        "check",
        "make_settings",
        "open",
        "reindex",
        "sync",
    }
    for name in embedpipe.__all__:
        assert getattr(embedpipe, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'flows_sync'"):
        _ = embedpipe.flows_sync  # type: ignore[attr-defined]


@pytest.mark.slow
def test_subflow_example_runs_sync_as_a_child_of_the_users_flow(tmp_path: Path, fake_model: None) -> None:
    spec = importlib.util.spec_from_file_location("subflow_example", ROOT / "examples" / "subflow.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    corpus = _corpus(tmp_path / "src")
    state = example.refresh_and_ask(
        str(corpus), "approximate nearest neighbour recall", db=str(tmp_path / "db"), return_state=True
    )
    assert state.is_completed(), state.message
    out = state.result()
    assert out["served_version"] == 2  # 1: the commit, 2: its full-text index
    assert out["hits"][0]["doc_id"] == "ann.md"
    assert set(out["hits"][0]) == {"doc_id", "chunk_id", "text", "score"}

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        child = client.read_flow_run(UUID(out["run_id"]))
        assert child.parent_task_run_id is not None  # a subflow, not a flow run of its own
        parent_task = client.read_task_run(child.parent_task_run_id)
        assert parent_task.flow_run_id == state.state_details.flow_run_id
    # The run is recorded in the table's runs records as any run is.
    assert out["run_id"] in embedpipe.open(tmp_path / "db").runs().column("run_id").to_pylist()


@pytest.mark.slow
def test_a_failed_sync_raises_run_failed_with_its_summary(tmp_path: Path, fake_model: None) -> None:
    corpus = _corpus(tmp_path / "src")
    write(corpus / "broken.json", "{ not json")
    with pytest.raises(RunFailed, match="reject") as err:
        embedpipe.sync(corpus, db=tmp_path / "db", source={"max_reject_ratio": 0.0})
    assert err.value.exit_code == 6
    assert err.value.result.status == "failed" and err.value.result.docs_rejected == 1
    summary = embedpipe.sync(
        corpus, db=tmp_path / "db", source={"max_reject_ratio": 0.0}, raise_on_failure=False
    )
    assert summary.status == "failed" and summary.exit_code == 6 and summary.table_version is None


@pytest.mark.slow
def test_reindex_and_check_through_the_api(tmp_path: Path, fake_model: None) -> None:
    db = tmp_path / "db"
    embedpipe.sync(_corpus(tmp_path / "src"), db=db)
    rebuilt = embedpipe.reindex(db=db, chunk={"tokens": 64, "overlap": 8})
    # sync: 1 (commit), 2 (full-text index); reindex: 3 (switch), 4 (its full-text index)
    assert rebuilt.flow == "reindex" and rebuilt.table_version == 4 and rebuilt.served_version == 4
    report = embedpipe.check(db=db, version="serving")
    assert isinstance(report, embedpipe.CheckReport)
    assert report.version == 4 and report.gate == "passed" and not report.published
    with pytest.raises(ConfigError, match=r"golden file not found: path=.*missing\.jsonl"):
        embedpipe.check(db=db, version="serving", checks={"golden": [str(tmp_path / "missing.jsonl")]})
    with pytest.raises(VersionNotFoundError, match="no version or tag named '9'"):
        embedpipe.check(db=db, version=9)
    # a gate that fails: a golden set whose relevant document is not in the table
    broken = write(tmp_path / "golden.jsonl", '{"query": "vector", "relevant": {"gone.md": 2}}\n')
    with pytest.raises(RunFailed) as err:
        embedpipe.check(db=db, checks={"golden": [str(broken)]})
    assert err.value.exit_code == 7 and err.value.result.gate == "failed"
    assert "gone.md" in str(err.value)


def test_settings_overrides_map_to_the_groups(tmp_path: Path) -> None:
    s = embedpipe.make_settings(
        db=tmp_path / "db", table="docs", model="fake:8", chunk={"tokens": 64, "overlap": 8}
    )
    assert (s.store.uri, s.store.table, s.model.name) == (str(tmp_path / "db"), "docs", "fake:8")
    assert (s.chunk.tokens, s.chunk.overlap) == (64, 8)
    # explicit settings, then the overrides on top; everything else kept as given
    base = get_settings({"store": {"uri": "elsewhere", "table": "t"}, "model": {"batch_size": 7}})
    over = embedpipe.make_settings(base, db=tmp_path / "db")
    assert (over.store.uri, over.store.table, over.model.batch_size) == (str(tmp_path / "db"), "t", 7)
    group = embedpipe.make_settings(model={"name": "fake:8", "device": "cpu"})
    assert (group.model.name, group.model.device) == ("fake:8", "cpu")
    with pytest.raises(ConfigError, match="unknown settings group chunks"):
        embedpipe.make_settings(chunks={"tokens": 64})
    with pytest.raises(ConfigError, match=r"chunk\.tokens"):
        embedpipe.make_settings(chunk={"tokens": -1})


def test_open_refuses_a_missing_table_and_unsupported_modes(tmp_path: Path, fake_model: None) -> None:
    with pytest.raises(TableNotFoundError, match="table=chunks not found"):
        embedpipe.open(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.slow
def test_the_handle_reads_without_starting_prefect(tmp_path: Path, fake_model: None) -> None:
    db = tmp_path / "db"
    first = embedpipe.sync(_corpus(tmp_path / "src"), db=db)
    write(tmp_path / "src" / "new.md", "A third document, about vector databases.")
    second = embedpipe.sync(tmp_path / "src", db=db)
    # each run: its commit, then its full-text index version (audited, served, tagged with the run)
    assert (first.table_version, second.table_version) == (2, 4)

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    code = f"""
import json, sys
import embedpipe
light = sorted(m for m in ("prefect", "lancedb", "torch", "pyarrow") if m in sys.modules)
from embedpipe.embedding.embedder import register_embedder
from tests.fakes import FakeEmbedder
register_embedder("fake:", FakeEmbedder)
t = embedpipe.open({str(db)!r})
hits = t.search("approximate nearest neighbour recall", k=2)
old = t.search("approximate nearest neighbour recall", k=5, version=1)
try:
    t.search("x", mode="fuzzy")
    mode_error = None
except embedpipe.EmbedpipeError as e:
    mode_error = str(e)
versions = t.versions()
print(json.dumps({{
    "light": light,
    "hits": hits,
    "old_docs": sorted(h["doc_id"] for h in old),
    "served": t.served_version,
    "versions": versions.column("version").to_pylist(),
    "run_ids": versions.column("run_id").to_pylist(),
    "runs": t.runs().column("run_id").to_pylist(),
    "checked_versions": sorted(set(t.checks().column("table_version").to_pylist())),
    "mode_error": mode_error,
    "loaded": sorted(m for m in ("prefect", "lancedb", "torch") if m in sys.modules),
}}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["light"] == []  # import embedpipe alone loads none of them
    assert out["loaded"] == []  # the handle never imported Prefect (nor LanceDB, nor torch)
    assert out["hits"][0]["doc_id"] == "ann.md" and len(out["hits"]) == 2
    assert out["old_docs"] == ["ann.md", "emb.md"]  # version 1 predates new.md
    assert out["served"] == 4 and out["versions"] == [1, 2, 3, 4]
    assert out["run_ids"] == [None, first.run_id, None, second.run_id]
    assert sorted(out["runs"]) == sorted([first.run_id, second.run_id])
    assert out["checked_versions"] == [2, 4]
    assert out["mode_error"] == "mode='fuzzy' is not supported; supported: vector, text, hybrid"
