"""``model.backend = "auto"``: measured once per machine on the real model, kept by existing tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import lance
import pytest

from embedpipe.config import ModelSettings
from embedpipe.embedding import auto as bc
from embedpipe.embedding import query
from embedpipe.flows.reindex import reindex
from embedpipe.flows.sync import sync
from embedpipe.search import Searcher
from embedpipe.store import Store
from tests.helpers import SAMPLE_CORPUS, make_settings, python_json, write

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export folder of the module's own, where the first test measures the backends."""
    return tmp_path_factory.mktemp("auto-exports")


# A process that decides (measuring on a fresh export folder) and then embeds with the choice.
DECIDE = """
import json, sys
from embedpipe.config import ModelSettings
from embedpipe.embedding import auto as bc
from embedpipe.embedding.embedder import get_embedder
model = ModelSettings(name=sys.argv[1], device="cpu", export_dir=sys.argv[2])
choice = bc.choose_backend(model)
get_embedder(model.model_copy(update={"backend": choice.backend})).encode(["an embedded text"], 8)
heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules)
print(json.dumps({"choice": choice.as_dict(), "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def decided_in_a_process(exports: Path) -> dict[str, Any]:
    return python_json(DECIDE, MODEL, str(exports), timeout=900)


@pytest.fixture(scope="module")
def decided(decided_in_a_process: dict[str, Any]) -> bc.BackendChoice:
    return bc.BackendChoice.from_dict(decided_in_a_process["choice"])


def test_measuring_leaves_torch_out_of_the_process_that_runs(decided_in_a_process: dict[str, Any]) -> None:
    """The candidates are measured in a child process; the process that then embeds with an exported
    backend loads it from its verified export, never importing torch."""
    if decided_in_a_process["choice"]["backend"] == "torch":
        pytest.skip("torch was chosen on this machine")
    assert decided_in_a_process["heavy"] == []


def _corpus(base: Path) -> Path:
    for rel in ("basics/what-are-embeddings.md", "search/ann-indexes.md", "zh/embeddings-intro.txt"):
        (base / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE_CORPUS / rel, base / "src" / rel)
    return base / "src"


def test_the_decision_is_measured_guarded_and_cached(decided: bc.BackendChoice, exports: Path) -> None:
    c = decided
    assert c.measured and not c.cached
    by = {x.backend: x for x in c.candidates}
    assert by["torch"].passed and by["torch"].speedup == 1.0 and by["torch"].texts_per_s > 0
    assert set(by) == {"torch", *[b for b in bc.CANDIDATES if bc._installed(b)]}
    for x in c.candidates:
        if x.note.startswith("not usable"):
            continue
        assert x.texts_per_s > 0 and 0.9 < x.mean_cosine <= 1.0 + 1e-6 and x.min_cosine <= x.mean_cosine
        # the guard is exactly the thresholds it states
        assert x.passed == (x.mean_cosine >= bc.GUARD_MEAN_COSINE and x.min_cosine >= bc.GUARD_MIN_COSINE)
    chosen = by[c.backend]
    assert chosen.passed
    if c.backend == "torch":
        assert all(not x.passed or x.speedup < bc.MIN_SPEEDUP for x in c.candidates if x.backend != "torch")
    else:
        assert chosen.speedup >= bc.MIN_SPEEDUP
        fastest = max(x.texts_per_s for x in c.candidates if x.passed and x.speedup >= bc.MIN_SPEEDUP)
        assert chosen.texts_per_s >= (1 - bc.TIE) * fastest
    if "onnx" in by and not by["onnx"].note.startswith("not usable"):
        assert by["onnx"].min_cosine > 0.9999  # the fp32 export is the model itself
    if "onnx-int8" in by and not by["onnx-int8"].note.startswith("not usable"):
        # int8 changes the vectors far more than reduced-precision floats: opt-in, not the default
        assert not by["onnx-int8"].passed and "--backend onnx-int8" in by["onnx-int8"].note
    assert c.probe_texts == len(bc.probe_texts()[0]) + len(bc.probe_texts()[1])

    # Decided once per machine: the next new table reads the cache, measuring nothing.
    again = bc.choose_backend(ModelSettings(name=MODEL, device="cpu", export_dir=str(exports)))
    assert again.cached and again.backend == c.backend and again.candidates == c.candidates
    cache = next(exports.glob("*/backend-choice.json"))
    # Another thread setting (or CPU, runtime version, model) is another measurement.
    key = json.loads(cache.read_text())["key"]
    assert bc._read_cache(cache, key) is not None
    assert bc._read_cache(cache, key | {"threads": 1}) is None
    assert bc._read_cache(cache, key | {"cpu": "another"}) is None


def test_a_new_table_records_the_choice_and_keeps_it(
    tmp_path: Path, decided: bc.BackendChoice, exports: Path
) -> None:
    src = _corpus(tmp_path)
    settings = make_settings(tmp_path, model={"name": MODEL, "device": "cpu", "export_dir": str(exports)})
    assert settings.model.backend == "auto"  # the default
    first = sync([str(src)], settings, return_state=True)
    s = first.result()
    assert first.is_completed(), first.message
    assert s.backend == decided.backend and s.backend_choice is not None
    assert s.backend_choice["backend"] == decided.backend and s.backend_choice["cached"]
    assert {c["backend"] for c in s.backend_choice["candidates"]} == {c.backend for c in decided.candidates}
    suffix = "" if decided.backend == "torch" else f"+{decided.backend}"
    assert s.model_id.endswith(suffix)
    # the table carries the decision and its figures
    md = lance.dataset(str(tmp_path / "db" / "chunks.lance")).schema.metadata
    recorded = json.loads(md[bc.METADATA_KEY.encode()])
    assert recorded["backend"] == decided.backend == md[b"embedpipe.model.backend"].decode()
    assert recorded["candidates"] == [c for c in s.backend_choice["candidates"]]

    # The run made the fast query path while it had the model: the first search uses it.
    # (for every backend here: the probe made the fp32 export a torch table's query path runs)
    if bc._installed("onnx"):
        searcher = Searcher(settings)
        hits = searcher.search("how does an approximate nearest neighbour index work", 2)
        assert searcher.runtime == "onnx" and hits[0]["doc_id"] == "search/ann-indexes.md"

    # An existing table keeps its backend: a later run changes nothing about it.
    write(src / "new.md", "# Added\n\nA new page about cosine similarity between sentence embeddings.")
    later = sync([str(src)], settings, return_state=True).result()
    assert later.status == "completed" and later.chunks_embedded >= 1
    assert later.backend == decided.backend and later.backend_choice is not None
    assert later.backend_choice["reason"].startswith("kept") and not later.backend_choice["candidates"]
    # ... and so does a reindex with auto; its new version keeps the recorded decision out of it
    re = reindex(settings, return_state=True).result()
    assert re.status == "completed" and re.backend == decided.backend
    assert re.backend_choice["reason"].startswith("kept")


def test_an_existing_torch_table_stays_torch_under_auto(tmp_path: Path, exports: Path) -> None:
    src = _corpus(tmp_path)
    model = {"name": MODEL, "device": "cpu", "export_dir": str(exports)}
    built = sync([str(src)], make_settings(tmp_path, model=model | {"backend": "torch"}), return_state=True)
    assert built.is_completed(), built.message
    assert built.result().backend_choice is None
    md = lance.dataset(str(tmp_path / "db" / "chunks.lance")).schema.metadata
    assert bc.METADATA_KEY.encode() not in md  # explicit backends record no decision
    write(src / "more.md", "# More\n\nTables built before auto keep working as they are.")
    s = sync([str(src)], make_settings(tmp_path, model=model), return_state=True).result()
    assert s.status == "completed" and s.backend == "torch" and "+" not in s.model_id
    assert s.backend_choice["backend"] == "torch" and s.backend_choice["reason"].startswith("kept")
    assert Store(make_settings(tmp_path).store).table_identity().backend == "torch"  # type: ignore[union-attr]


def test_auto_asks_nothing_of_other_runtimes_where_it_cannot_choose(tmp_path: Path) -> None:
    fake = bc.choose_backend(ModelSettings(name="fake:32"))
    assert fake.backend == "torch" and not fake.measured and "factory" in fake.reason
    several = bc.choose_backend(ModelSettings(name=MODEL, devices=["cuda:0", "cuda:1"]))
    assert several.backend == "torch" and "replicas" in several.reason
    kept = bc.choose_backend(ModelSettings(name=MODEL), existing_backend="onnx-int8", existing_model=MODEL)
    assert kept.backend == "onnx-int8" and kept.reason.startswith("kept")
    # a table of another model is not "the same table's backend": that run fails on the model anyway
    other = bc.choose_backend(
        ModelSettings(name="fake:32"), existing_backend="onnx-int8", existing_model="another/model"
    )
    assert other.backend == "torch"


def test_quantizing_the_cached_fp32_export_gives_a_working_int8_export(
    decided: bc.BackendChoice, exports: Path
) -> None:
    by = {c.backend: c for c in decided.candidates}
    if "onnx-int8" not in by or by["onnx-int8"].note.startswith("not usable"):
        pytest.skip("onnxruntime is not installed")
    folder = next(p for p in exports.glob("*/onnx-int8-r*") if p.is_dir())
    manifest = json.loads((folder / "manifest.json").read_text())
    fp32 = folder.parent / f"onnx-r{manifest['recipe']}"
    assert manifest["kind"] == "onnx-int8"
    assert (folder / "model.onnx").stat().st_size < 0.5 * (fp32 / "model.onnx").stat().st_size
    assert by["onnx-int8"].mean_cosine > 0.98  # it ran, and reproduced the model as int8 does


def test_query_tolerance_follows_the_tables_precision() -> None:
    from embedpipe.schemas import ModelIdentity

    ident = ModelIdentity(name="m", weights_hash="a" * 64, dim=8, max_seq_length=64, normalize=True)
    assert query.tolerance(ident)["max_abs_diff"] == query.MAX_ABS_DIFF
    bf16 = ident.model_copy(update={"backend": "openvino", "precision": "bf16"})
    assert query.tolerance(bf16) == {
        "max_abs_diff": query.REDUCED_MAX_ABS_DIFF,
        "min_cosine": query.MIN_COSINE,
    }
    folder = query.export_folder(ModelSettings(export_dir="/x"), bf16)
    assert folder is not None and folder.name.startswith("onnx-r")  # OpenVINO's export: the fp32 one
