"""The bundled real model through every backend: the cached ONNX export, vector quality against
torch, the backend as part of a table's identity (flow and CLI), and the CUDA paths on a GPU.

One export folder serves the whole module, so each export (a few seconds) is made once, and each
backend's embedder is loaded once (``get_embedder`` caches per settings). Tests that rebuild the
export construct :class:`SentenceTransformerEmbedder` directly, past that cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from embedpipe.checks.quality import load_pairs
from embedpipe.cli import _PREFECT_DEFAULTS, main
from embedpipe.config import ModelSettings
from embedpipe.config.pipeline import DEFAULT_MODEL
from embedpipe.embedding.card import resolve_model_path, weights_hash
from embedpipe.embedding.embedder import SentenceTransformerEmbedder, get_embedder
from embedpipe.embedding.exports import EXPORT_RECIPE, ExportKey, cached_export_problem
from embedpipe.flows.sync import sync
from embedpipe.schemas import C
from embedpipe.store import Store
from tests.helpers import SAMPLE_CORPUS, make_settings

pytestmark = pytest.mark.slow

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Approximate nearest neighbour indexes trade a little recall for a lot of speed.",
    "Der Zug nach Hamburg fährt um halb neun ab.",
    "嵌入把文本变成向量。",
    "ok",
    "Chunking splits long documents into pieces that fit the model's context window; overlapping "
    "chunks keep sentences that straddle a boundary searchable from both sides.",
]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def export_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's export cache (never the user's $HF_HOME)."""
    return tmp_path_factory.mktemp("exports")


def model_settings(root: Path, **kw: Any) -> ModelSettings:
    return ModelSettings(**({"name": DEFAULT_MODEL, "device": "cpu", "export_dir": str(root)} | kw))


def export_folder(root: Path, kind: str) -> Path:
    whash = weights_hash(resolve_model_path(DEFAULT_MODEL, offline=True))
    return ExportKey(DEFAULT_MODEL, whash, kind).folder(root)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def row_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (unit(a) * unit(b)).sum(axis=1)


@pytest.fixture(scope="module")
def torch_embedder(export_root: Path) -> Any:
    return get_embedder(model_settings(export_root))


@pytest.fixture(scope="module")
def onnx_first_load(export_root: Path) -> tuple[Any, bool]:
    """The onnx embedder, and whether its export already existed before it was loaded."""
    existed = export_folder(export_root, "onnx").exists()
    return get_embedder(model_settings(export_root, backend="onnx")), existed


@pytest.fixture(scope="module")
def onnx_embedder(onnx_first_load: tuple[Any, bool]) -> Any:
    return onnx_first_load[0]


@pytest.fixture(scope="module")
def int8_embedder(export_root: Path) -> Any:
    return get_embedder(model_settings(export_root, backend="onnx-int8"))


# --------------------------------------------------------------------------- export cache


def test_onnx_export_is_made_once_then_reused(
    export_root: Path, onnx_first_load: tuple[Any, bool], caplog: pytest.LogCaptureFixture
) -> None:
    embedder, existed = onnx_first_load
    folder = export_folder(export_root, "onnx")
    assert not existed and folder.is_dir()
    whash = embedder.identity.weights_hash
    assert folder == export_root / f"sentence-transformers_all-MiniLM-L6-v2-{whash[:16]}" / "onnx-r1"
    # the export, and what loading it without torch needs (its tokenizer, the torch model's vectors)
    names = sorted(p.name for p in folder.iterdir())
    assert names[:3] == ["manifest.json", "model.onnx", "runner-check.json"], names
    assert len(names) == 4 and names[3].startswith("tokenizer-") and names[3].endswith(".json")
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["weights_hash"] == whash and manifest["recipe"] == EXPORT_RECIPE
    assert manifest["kind"] == "onnx" and manifest["name"] == DEFAULT_MODEL
    assert manifest["torch"] == torch.__version__ and manifest["transformers"]
    assert len(manifest["sha256"]) == 64
    assert cached_export_problem(folder, ExportKey(DEFAULT_MODEL, whash, "onnx")) is None
    ident = embedder.identity
    assert (ident.backend, ident.precision, ident.dim) == ("onnx", "fp32", 384)
    assert ident.model_id == f"{DEFAULT_MODEL}@{whash[:12]}+onnx"
    assert embedder.batch_tokens == 1024 and embedder.devices == ["cpu"]

    before = (folder / "model.onnx").stat()
    caplog.set_level(logging.INFO, logger="embedpipe.embedding")
    second = SentenceTransformerEmbedder(model_settings(export_root, backend="onnx"))
    # the model (and its export) loads on the first encode, not when the embedder is made
    np.testing.assert_allclose(second.encode(SENTENCES, 8), embedder.encode(SENTENCES, 8), atol=1e-6)
    after = (folder / "model.onnx").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert "via export and tokenizers (no torch)" in caplog.text and "exported onnx" not in caplog.text


def _truncate(folder: Path) -> str:
    path = folder / "model.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    return "does not match its recorded digest"


def _stale(folder: Path) -> str:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["weights_hash"] = "0" * 64
    path.write_text(json.dumps(manifest))
    return "stale: weights_hash was '0000"


def _garbage_manifest(folder: Path) -> str:
    (folder / "manifest.json").write_text("\x00garbage{")
    return "manifest unreadable"


def _unloadable(folder: Path) -> str:
    """Garbage bytes whose digest the manifest does record: only loading the export can tell."""
    import hashlib

    path = folder / "model.onnx"
    path.write_bytes(b"\x08\x07garbage that is no onnx graph" * 100)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return "cached export failed to load"


@pytest.mark.parametrize(
    "damage",
    [_truncate, _stale, _garbage_manifest, _unloadable],
    ids=["truncated", "stale", "garbage-manifest", "unloadable"],
)
def test_a_broken_or_stale_export_is_rebuilt(
    export_root: Path,
    onnx_embedder: Any,
    torch_embedder: Any,
    caplog: pytest.LogCaptureFixture,
    damage: Any,
) -> None:
    folder = export_folder(export_root, "onnx")
    key = ExportKey(DEFAULT_MODEL, onnx_embedder.identity.weights_hash, "onnx")
    good_size = (folder / "model.onnx").stat().st_size
    reason = damage(folder)
    assert cached_export_problem(folder, key) is not None or reason.startswith("cached export failed")
    caplog.set_level(logging.INFO, logger="embedpipe.embedding.exports")
    rebuilt = SentenceTransformerEmbedder(model_settings(export_root, backend="onnx"))
    rebuilt.load()  # the model and its export load when first needed; here, now
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"rebuilding the onnx export in {folder}" in m and reason in m for m in warnings), warnings
    assert "exported onnx in" in caplog.text
    assert cached_export_problem(folder, key) is None
    assert abs((folder / "model.onnx").stat().st_size - good_size) < good_size * 0.01
    cos = row_cos(rebuilt.encode(SENTENCES, 8), torch_embedder.encode(SENTENCES, 8))
    assert cos.min() >= 0.9999, cos


# --------------------------------------------------------------------------- quality guard


@pytest.fixture(scope="module")
def pair_sentences() -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The bundled scored pairs: unique sentences, index of each pair's a and b, and the scores."""
    pairs = load_pairs(["builtin"])
    sentences = sorted({p.a for p in pairs} | {p.b for p in pairs})
    pos = {s: i for i, s in enumerate(sentences)}
    a = np.array([pos[p.a] for p in pairs])
    b = np.array([pos[p.b] for p in pairs])
    return sentences, a, b, np.array([p.score for p in pairs])


@pytest.fixture(scope="module")
def torch_pair_vecs(torch_embedder: Any, pair_sentences: Any) -> np.ndarray:
    return torch_embedder.encode(pair_sentences[0], 64)


def pair_rho(vecs: np.ndarray, pair_sentences: Any) -> float:
    _, a, b, scores = pair_sentences
    return float(spearmanr(row_cos(vecs[a], vecs[b]), scores).statistic)


def test_onnx_int8_keeps_the_quality_of_torch(
    int8_embedder: Any, torch_pair_vecs: np.ndarray, pair_sentences: Any
) -> None:
    assert len(pair_sentences[0]) >= 50
    vecs = int8_embedder.encode(pair_sentences[0], 64)
    assert vecs.dtype == np.float32 and vecs.shape == torch_pair_vecs.shape
    cos = row_cos(vecs, torch_pair_vecs)
    rho_torch, rho_int8 = pair_rho(torch_pair_vecs, pair_sentences), pair_rho(vecs, pair_sentences)
    print(
        f"\nonnx-int8 vs torch: mean cos {cos.mean():.5f} (min {cos.min():.5f}); "
        f"spearman torch {rho_torch:.4f}, onnx-int8 {rho_int8:.4f} (delta {rho_int8 - rho_torch:+.4f})"
    )
    assert rho_torch >= 0.7  # the pairs gate's own floor: the reference is sound
    assert abs(rho_int8 - rho_torch) <= 0.01
    assert cos.mean() >= 0.99
    ident = int8_embedder.identity
    assert (ident.backend, ident.precision) == ("onnx-int8", "int8")
    assert ident.model_id.endswith("+onnx-int8")
    folder = export_folder(Path(int8_embedder.settings.export_dir), "onnx-int8")
    assert (folder / "model.onnx").is_file()
    # int8 weights: the quantized graph is well under half the fp32 weights
    weights = resolve_model_path(DEFAULT_MODEL, offline=True) / "model.safetensors"
    assert (folder / "model.onnx").stat().st_size < 0.5 * weights.stat().st_size


def test_onnx_fp32_matches_torch(
    onnx_embedder: Any, torch_pair_vecs: np.ndarray, pair_sentences: Any
) -> None:
    cos = row_cos(onnx_embedder.encode(pair_sentences[0], 64), torch_pair_vecs)
    print(f"\nonnx fp32 vs torch: mean cos {cos.mean():.6f} (min {cos.min():.6f})")
    assert cos.mean() >= 0.9999


def test_chunker_token_ids_feed_the_graph_exactly_as_tokenizing_the_text(int8_embedder: Any) -> None:
    """The chunker's token ids give the very inputs the runner's own tokenization gives."""
    from embedpipe.config import get_settings
    from embedpipe.sources.discover import discover
    from embedpipe.sources.parse import read_documents
    from embedpipe.tasks.chunking import chunk_table

    settings = get_settings({"model": int8_embedder.settings.model_dump()})
    refs = discover([str(SAMPLE_CORPUS)], settings.source, 1 << 30)[0]
    docs, _, _ = read_documents(refs, settings.source)
    chunks = chunk_table(docs, 0, settings)
    assert chunks.token_ids is not None and len(chunks.token_ids) == chunks.table.num_rows > 100
    texts = chunks.table.column(C.TEXT).to_pylist()
    tok = int8_embedder.runner._tokenize
    assert tok.template is not None
    for off in range(0, len(texts), 97):  # batches of mixed lengths: the padding must match too
        own = tok(texts[off : off + 97])
        given = tok.from_ids(chunks.token_ids[off : off + 97])
        assert own.keys() == given.keys()
        for name in own:
            np.testing.assert_array_equal(own[name], given[name], err_msg=name)
    some = slice(0, 64)
    with_ids = int8_embedder.encode(texts[some], 32, ids=chunks.token_ids[some])
    np.testing.assert_array_equal(with_ids, int8_embedder.encode(texts[some], 32))
    # Longer than the model takes: cut as the tokenizer's own truncation cuts.
    long_text = " ".join(["embedding"] * 400)
    ids = int8_embedder.tokenizer.token_ids([long_text])
    np.testing.assert_array_equal(tok([long_text])["input_ids"], tok.from_ids(ids)["input_ids"])


def test_openvino_matches_torch(export_root: Path, torch_pair_vecs: np.ndarray, pair_sentences: Any) -> None:
    pytest.importorskip("openvino")
    embedder = get_embedder(model_settings(export_root, backend="openvino"))
    vecs = embedder.encode(pair_sentences[0], 64)
    cos = row_cos(vecs, torch_pair_vecs)
    rho = pair_rho(vecs, pair_sentences)
    print(
        f"\nopenvino ({embedder.identity.precision}) vs torch: mean cos {cos.mean():.5f} "
        f"(min {cos.min():.5f}); spearman {rho:.4f}"
    )
    assert cos.mean() >= 0.99
    assert embedder.identity.precision in {"fp32", "bf16", "fp16"}
    assert embedder.identity.model_id.endswith("+openvino")
    # OpenVINO compiles the fp32 ONNX export: no export of its own
    parent = export_folder(export_root, "onnx").parent
    assert {p.name for p in parent.iterdir() if p.is_dir()} <= {"onnx-r1", "onnx-int8-r1"}
    assert (parent / "onnx-r1" / "model.onnx").is_file()


# --------------------------------------------------------------------------- table identity


@pytest.fixture(scope="module")
def torch_table(
    tmp_path_factory: pytest.TempPathFactory, export_root: Path, prefect_harness: str, torch_embedder: Any
) -> tuple[Path, Path, Any]:
    """A table of the sample corpus's basics/ embedded by torch: (sources, database, run summary)."""
    root = tmp_path_factory.mktemp("torch-table")
    src = root / "src"
    shutil.copytree(SAMPLE_CORPUS / "basics", src)
    model = {"name": DEFAULT_MODEL, "device": "cpu", "backend": "torch", "export_dir": str(export_root)}
    state = sync([str(src)], make_settings(root, model=model), return_state=True)
    summary = state.result()
    assert state.is_completed(), state.message
    assert summary.chunks_written > 5 and "+" not in summary.model_id
    return src, root / "db", summary


@pytest.fixture
def db_copy(tmp_path: Path, torch_table: tuple[Path, Path, Any]) -> Path:
    """This test's own copy of the torch table."""
    shutil.copytree(torch_table[1], tmp_path / "db")
    return tmp_path / "db"


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, export_root: Path) -> None:
    """The in-process CLI writes exports to the module's folder and leaves no Prefect variables set."""
    monkeypatch.setenv("EMBEDPIPE_MODEL__EXPORT_DIR", str(export_root))
    for key, value in _PREFECT_DEFAULTS.items():
        monkeypatch.setenv(key, os.environ.get(key, value))


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``embedpipe ARGS`` in this process (the embedders loaded here are reused): status, stdout, stderr."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_backend_is_part_of_the_table_identity(
    tmp_path: Path,
    export_root: Path,
    torch_table: tuple[Path, Path, Any],
    db_copy: Path,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
    torch_embedder: Any,
    int8_embedder: Any,
) -> None:
    src, _, first = torch_table
    db = str(db_copy)
    model = {"name": DEFAULT_MODEL, "device": "cpu", "backend": "torch", "export_dir": str(export_root)}
    store = Store(make_settings(tmp_path, model=model).store)
    assert store.table_identity().backend == "torch"  # type: ignore[union-attr]

    # The flow refuses to mix onnx-int8 vectors into the torch table; nothing is written.
    int8_settings = make_settings(tmp_path, model=model | {"backend": "onnx-int8"})
    state = sync([str(src)], int8_settings, return_state=True)
    refused = state.result(raise_on_failure=False)
    assert state.is_failed() and refused.status == "failed" and refused.table_version is None
    assert "embedded with model.backend=torch" in str(refused.message)
    assert "embedpipe reindex --backend onnx-int8" in str(refused.message)
    assert [v["version"] for v in store.versions()] == [first.table_version]

    # So does the CLI, saying how to switch (its exit status: test_cli_exit_status_of_a_backend_mismatch).
    code, _, err = cli(capsys, "run", str(src), "--db", db, "--device", "cpu", "--backend", "onnx-int8")
    assert code != 0 and "embedpipe reindex --backend onnx-int8" in err, (code, err)
    assert [v["version"] for v in store.versions()] == [first.table_version]

    # reindex switches the table to onnx-int8 in one new version, served after its checks.
    code, out, err = cli(capsys, "reindex", "--db", db, "--backend", "onnx-int8", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["status"] == "completed" and summary["flow"] == "reindex"
    assert summary["model_id"].endswith("+onnx-int8") and summary["reused_chunk_texts"] is True
    # the switch, then its full-text index (the CLI's defaults build one; the fixture's table had none)
    assert summary["table_version"] == first.table_version + 2
    assert summary["served_version"] == summary["table_version"], summary["checks"]
    ident = store.table_identity()
    assert ident is not None and (ident.backend, ident.precision) == ("onnx-int8", "int8")
    assert ident.weights_hash == torch_embedder.identity.weights_hash
    rows = store.open_table().to_arrow()
    assert rows.num_rows == first.chunks_written
    assert {m.rsplit("+", 1)[-1] for m in rows.column(C.MODEL_ID).to_pylist()} == {"onnx-int8"}
    # every vector was re-embedded by onnx-int8, none kept from torch
    texts = rows.column(C.TEXT).to_pylist()
    stored = np.stack(rows.column(C.VECTOR).to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(stored, int8_embedder.encode(texts, 64), atol=1e-5)
    assert np.abs(stored - torch_embedder.encode(texts, 64)).max() > 1e-3

    # A torch run is now the mismatch, and says how to get back.
    code, _, err = cli(capsys, "run", str(src), "--db", db, "--device", "cpu", "--backend", "torch")
    assert code != 0 and "Run with --backend onnx-int8" in err, (code, err)
    # The default (auto) keeps the table's backend: nothing changed, nothing written.
    code, out, err = cli(capsys, "run", str(src), "--db", db, "--device", "cpu", "--json")
    kept = json.loads(out)
    assert code == 0 and kept["backend"] == "onnx-int8" and kept["table_version"] is None, err
    assert kept["backend_choice"]["reason"].startswith("kept")

    # search embeds the query with the table's backend (no --backend given).
    query = "how similar are two vectors"
    code, out, err = cli(capsys, "search", query, "--db", db, "-k", "3", "--mode", "vector", "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert len(hits) == 3 and hits == sorted(hits, key=lambda h: -h["score"])
    vec = stored[rows.column(C.CHUNK_ID).to_pylist().index(hits[0]["chunk_id"])]
    by_int8 = float(unit(int8_embedder.encode([query], 1))[0] @ vec)
    by_torch = float(unit(torch_embedder.encode([query], 1))[0] @ vec)
    print(f"\nsearch top score {hits[0]['score']:.6f}: onnx-int8 query {by_int8:.6f}, torch {by_torch:.6f}")
    assert abs(by_int8 - by_torch) > 1e-4  # the two query vectors are distinguishable
    assert hits[0]["score"] == pytest.approx(by_int8, abs=2e-5)


def test_cli_exit_status_of_a_backend_mismatch(
    torch_table: tuple[Path, Path, Any],
    db_copy: Path,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
    int8_embedder: Any,
) -> None:
    """docs/cli.md: exit 5 on a model mismatch; the backend is part of the model."""
    src = str(torch_table[0])
    code, out, err = cli(
        capsys, "run", src, "--db", str(db_copy), "--device", "cpu", "--backend", "onnx-int8"
    )
    assert "embedpipe reindex --backend onnx-int8" in err and "failed" in out
    assert code == 5, (code, err)


# --------------------------------------------------------------------------- CUDA


LONG_TEXTS = [
    f"Document {i}: " + " ".join(f"token{(i * 7 + j) % 997} embedding vector search" for j in range(80))
    for i in range(2048)
]


@needs_cuda
def test_torch_fp16_on_cuda_matches_cpu_fp32(export_root: Path, torch_embedder: Any) -> None:
    gpu = get_embedder(model_settings(export_root, device="cuda"))
    assert gpu.identity.precision == "fp16" and gpu.device.startswith("cuda")
    gpu.load()
    assert next(gpu.runner.models[0].parameters()).dtype == torch.float16
    vecs = gpu.encode(SENTENCES, 8)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-3)
    cos = row_cos(vecs, torch_embedder.encode(SENTENCES, 8))
    print(f"\ncuda fp16 vs cpu fp32: min cos {cos.min():.6f}")
    assert cos.min() >= 0.999
    # the identity records the precision, but fp16 and fp32 tables stay compatible (same backend)
    assert gpu.identity.model_id == torch_embedder.identity.model_id


@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_auto_device_uses_every_gpu_and_matches_one(export_root: Path) -> None:
    every = get_embedder(model_settings(export_root, device="auto"))
    assert every.devices == [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    every.load()
    assert [str(next(m.parameters()).device) for m in every.runner.models] == every.devices
    one = get_embedder(model_settings(export_root, device="cuda:0"))
    assert one.devices == ["cuda:0"]
    texts = LONG_TEXTS[:400] + SENTENCES
    # small batches: many of them, spread over the replicas
    a = every.encode(texts, 16)
    b = one.encode(texts, 16)
    cos = row_cos(a, b)
    assert cos.min() >= 0.9999, cos.min()


@needs_cuda
def test_cuda_out_of_memory_halves_the_batch(export_root: Path) -> None:
    settings = model_settings(export_root, device="cuda:0", batch_tokens=16_777_216)
    embedder = SentenceTransformerEmbedder(settings)  # fresh: its batch budget shrinks
    reference = get_embedder(model_settings(export_root, device="cuda:0", batch_tokens=4096))
    _, total = torch.cuda.mem_get_info(0)
    # Cap this process at 0.5 GiB over what it holds now: 2048 texts of 256 tokens in one batch
    # need several GiB of attention scores, so the first batch must run out of memory.
    cap = (torch.cuda.memory_reserved(0) + 0.5 * 2**30) / total
    torch.cuda.set_per_process_memory_fraction(min(cap, 1.0), 0)
    try:
        vecs = embedder.encode(LONG_TEXTS, 4096)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()
    assert embedder.batch_tokens < 16_777_216  # the OOM hook shrank the budget
    ref = reference.encode(LONG_TEXTS, 256)
    cos = row_cos(vecs, ref)
    print(f"\nOOM halving: batch_tokens now {embedder.batch_tokens}, min cos {cos.min():.6f}")
    assert cos.min() >= 0.999
