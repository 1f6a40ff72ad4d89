"""Search's fast path: Lance read directly and the query embedded by ONNX Runtime, checked against torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embedpipe.embedding import query
from embedpipe.embedding.embedder import get_embedder
from embedpipe.errors import NothingServedError, VersionNotFoundError
from embedpipe.flows.sync import sync
from embedpipe.search import Searcher
from embedpipe.store import Store
from embedpipe.store.reader import TableReader
from tests.helpers import ROOT, SAMPLE_CORPUS, make_settings, write

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
QUERIES = (
    "how do vector indexes trade recall for speed",
    "What is an embedding?",
    "kurze Frage über Vektoren",
)
SCORE_TOL = 1e-4


@pytest.fixture(scope="module")
def real_table(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real-model table of three sample documents, and an export folder of its own: (base, export)."""
    base = tmp_path_factory.mktemp("fastsearch")
    for rel in ("basics/what-are-embeddings.md", "search/ann-indexes.md", "ops/index-tuning.parquet"):
        (base / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE_CORPUS / rel, base / "src" / rel)
    settings = make_settings(
        base, model={"name": MODEL, "device": "cpu", "backend": "torch", "export_dir": str(base / "exports")}
    )
    state = sync([str(base / "src")], settings, return_state=True)
    assert state.is_completed(), state.message
    return base, base / "exports"


def _settings(base: Path, exports: Path):  # type: ignore[no-untyped-def]
    return make_settings(
        base, model={"name": MODEL, "device": "cpu", "backend": "torch", "export_dir": str(exports)}
    )


def test_fast_path_gives_the_torch_results(real_table: tuple[Path, Path]) -> None:
    base, exports = real_table
    settings = _settings(base, exports)
    torch_side = Searcher(settings)
    before = {q: torch_side.search(q, 5, mode="vector") for q in QUERIES}
    assert torch_side.runtime == "torch" and torch_side.can_prepare  # no export yet
    torch_side.prepare()
    assert not torch_side.can_prepare

    identity = TableReader(settings.store).identity(TableReader(settings.store).require())
    found = query.fast_record(settings.model, identity)
    assert not isinstance(found, str), found
    record = found[1]
    assert record["passed"] and record["reference"] == "torch" and record["probes"] == len(query.PROBES)
    assert record["max_abs_diff"] <= query.MAX_ABS_DIFF and record["min_cosine"] >= query.MIN_COSINE

    fast = Searcher(settings)
    for q in QUERIES:
        after = fast.search(q, 5, mode="vector")
        assert fast.runtime == "onnx"
        assert [h["chunk_id"] for h in after] == [h["chunk_id"] for h in before[q]], q
        for a, b in zip(after, before[q], strict=True):
            assert abs(a["score"] - b["score"]) <= SCORE_TOL, (q, a["score"], b["score"])

    # Lance read directly returns exactly LanceDB's rows for the same vector (Store.search).
    torch_model = get_embedder(settings.model)
    store = Store(settings.store)
    for q in QUERIES:
        vec = torch_model.encode([q], batch_size=1)[0]
        via_lancedb = store.search(vec, 5, table=store.open_version("serving"))
        reader = TableReader(settings.store)
        assert reader.search(reader.open_version("serving"), vec, 5) == via_lancedb


def test_a_failed_or_stale_check_is_not_used(real_table: tuple[Path, Path], tmp_path: Path) -> None:
    base, exports = real_table
    settings = _settings(base, exports)
    Searcher(settings).search(QUERIES[0], 1)  # the record exists after the previous test or this one
    searcher = Searcher(settings)
    searcher.search(QUERIES[0], 1)
    if searcher.can_prepare:
        searcher.prepare()
    reader = TableReader(settings.store)
    identity = reader.identity(reader.require())
    folder = query.export_folder(settings.model, identity)
    assert folder is not None
    path = folder / query.check_file("torch")
    good = path.read_text(encoding="utf-8")
    try:
        path.write_text(json.dumps(json.loads(good) | {"passed": False}), encoding="utf-8")
        reason = query.fast_embedder(settings.model, identity)
        assert isinstance(reason, str) and "did not reproduce backend=torch" in reason
        failed = Searcher(settings)
        failed.search(QUERIES[0], 1)
        assert failed.runtime == "torch" and not failed.can_prepare  # a failed check is not retried

        record = json.loads(good)
        record["model"]["mtime_ns"] += 1  # the export was rebuilt since the check
        path.write_text(json.dumps(record), encoding="utf-8")
        reason = query.fast_embedder(settings.model, identity)
        assert isinstance(reason, str) and "changed since its query check" in reason
    finally:
        path.write_text(good, encoding="utf-8")
    assert not isinstance(query.fast_embedder(settings.model, identity), str)


def test_search_command_loads_no_torch_prefect_or_lancedb(real_table: tuple[Path, Path]) -> None:
    base, exports = real_table
    settings = _settings(base, exports)
    searcher = Searcher(settings)
    searcher.search(QUERIES[0], 3)
    if searcher.can_prepare:
        searcher.prepare()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDPIPE_", "PREFECT_"))}
    env |= {
        "HF_HUB_OFFLINE": "1",
        "EMBEDPIPE_MODEL__EXPORT_DIR": str(exports),
        "PYTHONPATH": str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", ""),
    }
    code = (
        "import json, sys\n"
        "from embedpipe.cli import main\n"
        f"rc = main(['search', {QUERIES[0]!r}, '--db', {str(base / 'db')!r}, '-k', '3', '--json'])\n"
        "heavy = ('torch', 'transformers', 'sentence_transformers', 'prefect', 'lancedb')\n"
        "print(json.dumps({'rc': rc, 'loaded': sorted(m for m in heavy if m in sys.modules)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=base, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    hits_line, guard_line = out.stdout.strip().splitlines()
    hits = json.loads(hits_line)
    assert len(hits) == 3 and set(hits[0]) == {"doc_id", "chunk_id", "text", "score"}
    assert json.loads(guard_line) == {"rc": 0, "loaded": []}
    assert "preparing the fast query path" not in out.stderr


def test_reader_resolves_versions_as_the_store_does(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    src = tmp_path / "src"
    write(src / "a.md", "Vectors and indexes.")
    assert sync([str(src)], settings, return_state=True).is_completed()
    write(src / "b.md", "A second document about recall.")
    assert sync([str(src)], settings, return_state=True).is_completed()
    store, reader = Store(settings.store), TableReader(settings.store)
    runs = [r for r in store.versions() if r["run_id"]]
    for target in ("serving", None, "latest", "1", 2, runs[0]["run_id"]):
        assert reader.resolve_version(target) == store.resolve_version(target), target
    assert reader.versions() == store.versions()
    for bad in ("99", "no-such-tag"):
        with pytest.raises(VersionNotFoundError, match=f"no version or tag named '{bad}'"):
            reader.resolve_version(bad)
        with pytest.raises(VersionNotFoundError):
            store.resolve_version(bad)
    # Checked, but nothing served: both refuse "serving" the same way.
    store.open_table().tags.delete("serving")
    with pytest.raises(NothingServedError, match="has no served version") as a:
        reader.resolve_version("serving")
    with pytest.raises(NothingServedError) as b:
        store.resolve_version("serving")
    assert str(a.value) == str(b.value)


def test_an_unusable_export_dir_leaves_search_on_torch(
    real_table: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base, _ = real_table
    (tmp_path / "a-file").write_text("not a folder")
    settings = _settings(base, tmp_path / "a-file" / "exports")
    searcher = Searcher(settings)
    hits = searcher.search(QUERIES[0], 3)
    assert len(hits) == 3 and searcher.runtime == "torch" and searcher.can_prepare
    searcher.prepare()  # after the answer: a warning, not an error
    assert "query check not recorded" in caplog.text and "not writable" in caplog.text
    assert searcher.search(QUERIES[0], 3) == hits and searcher.runtime == "torch"


def test_an_onnx_table_is_queried_on_its_own_export(real_table: tuple[Path, Path]) -> None:
    base, exports = real_table
    settings = make_settings(
        base,
        model={"name": MODEL, "device": "cpu", "export_dir": str(exports), "backend": "onnx"},
        store={"table": "chunks_onnx"},
    )
    state = sync([str(base / "src")], settings, return_state=True)
    assert state.is_completed(), state.message
    # The run checked the query path while it had the model loaded: the first search is fast.
    reader = TableReader(settings.store)
    identity = reader.identity(reader.require())
    assert identity.backend == "onnx"
    found = query.fast_record(settings.model, identity)
    assert not isinstance(found, str), found
    assert found[1]["reference"] == "onnx" and found[1]["passed"]
    fast = Searcher(settings)
    after = fast.search(QUERIES[0], 5)
    assert isinstance(fast._embedders[identity], query.OnnxQueryEmbedder) and not fast.can_prepare
    assert fast.runtime == "onnx"
    # ... and it finds what the table's own embedder finds
    own = get_embedder(settings.model)
    before = Store(settings.store).search(own.encode([QUERIES[0]], 1)[0], k=5)
    assert [h["chunk_id"] for h in after] == [h["chunk_id"] for h in before]
    assert all(abs(a["score"] - b["score"]) <= SCORE_TOL for a, b in zip(after, before, strict=True))
