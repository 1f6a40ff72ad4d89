"""Loading a verified export without torch (:mod:`embedpipe.embedding.fastload`), with the real
bundled model: the record a first load writes, a second process that embeds the same vectors
without importing torch, transformers or sentence-transformers, and every way a record can stop
describing its export (each falls back to the check against torch)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedpipe.config import ModelSettings
from embedpipe.config.pipeline import DEFAULT_MODEL
from embedpipe.embedding import fastload
from embedpipe.embedding.card import resolve_model_path, weights_hash
from embedpipe.embedding.embedder import SentenceTransformerEmbedder
from embedpipe.embedding.exports import VERIFY_TEXTS, ExportKey
from tests.helpers import python_json

pytestmark = pytest.mark.slow

SENTENCES = [
    "Approximate nearest neighbour indexes trade a little recall for a lot of speed.",
    "Der Zug nach Hamburg fährt um halb neun ab.",
    "嵌入把文本变成向量。",
    "ok",
    " ".join(["embedding"] * 400),  # past the model's 256 tokens: truncated alike
]

CHILD = """
import json, sys
from embedpipe.config import ModelSettings
from embedpipe.embedding.embedder import SentenceTransformerEmbedder
model = ModelSettings(name=sys.argv[1], backend=sys.argv[2], export_dir=sys.argv[3])
emb = SentenceTransformerEmbedder(model)
vecs = emb.encode(json.loads(sys.argv[4]), 8)
heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules)
print(json.dumps({"heavy": heavy, "vecs": vecs.tolist(), "precision": emb.identity.precision}))
"""


def settings(root: Path, backend: str) -> ModelSettings:
    return ModelSettings(name=DEFAULT_MODEL, backend=backend, device="cpu", export_dir=str(root))


def key(kind: str) -> ExportKey:
    return ExportKey(DEFAULT_MODEL, weights_hash(resolve_model_path(DEFAULT_MODEL, offline=True)), kind)


def child(root: Path, backend: str) -> dict[str, Any]:
    return python_json(CHILD, DEFAULT_MODEL, backend, str(root), json.dumps(SENTENCES), timeout=240)


@pytest.fixture(scope="module")
def first_load(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A fresh export cache filled by first loads (through sentence-transformers), and their vectors."""
    root = tmp_path_factory.mktemp("exports")
    vecs = {}
    emb = SentenceTransformerEmbedder(settings(root, "onnx"))
    vecs["onnx"] = emb.encode(SENTENCES, 8)
    assert emb._model is not None  # the first load went through torch
    if importlib.util.find_spec("openvino") is not None:
        # OpenVINO compiles the same fp32 export: its first load already needs no torch
        emb = SentenceTransformerEmbedder(settings(root, "openvino"))
        vecs["openvino"] = emb.encode(SENTENCES, 8)
        assert emb._model is None
        torch_path = SentenceTransformerEmbedder(settings(root, "openvino"))
        torch_path._card = None  # as on a machine without a model card: loaded through torch
        torch_path.load()
        assert torch_path._model is not None
        np.testing.assert_allclose(torch_path.encode(SENTENCES, 8), vecs["openvino"], atol=1e-6)
    return root, vecs


def test_a_first_load_records_what_loading_without_torch_needs(
    first_load: tuple[Path, dict[str, np.ndarray]],
) -> None:
    root, _ = first_load
    folder = key("onnx").folder(root)
    record = fastload.read_record(folder, key("onnx"))
    assert isinstance(record, dict), record
    assert np.asarray(record["reference"]).shape == (len(VERIFY_TEXTS), 384)
    assert (folder / record["tokenizer_file"]).is_file()
    # the stored reference is the torch model's: unit vectors
    np.testing.assert_allclose(np.linalg.norm(np.asarray(record["reference"]), axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_a_later_process_embeds_the_same_vectors_without_torch(
    first_load: tuple[Path, dict[str, np.ndarray]], backend: str
) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino")
    root, vecs = first_load
    got = child(root, backend)
    assert got["heavy"] == [], f"{backend}: imported {got['heavy']}"
    np.testing.assert_allclose(np.asarray(got["vecs"], dtype=np.float32), vecs[backend], atol=1e-6)


def test_a_record_whose_reference_the_export_misses_falls_back_to_torch(
    first_load: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    root, vecs = first_load
    folder = key("onnx").folder(root)
    path = folder / fastload.RECORD_FILE
    good = path.read_text(encoding="utf-8")
    record = json.loads(good)
    record["reference"] = (-np.asarray(record["reference"])).tolist()  # the export cannot match it
    path.write_text(json.dumps(record), encoding="utf-8")
    try:
        emb = SentenceTransformerEmbedder(settings(root, "onnx"))
        np.testing.assert_allclose(emb.encode(SENTENCES, 8), vecs["onnx"], atol=1e-6)
        assert emb._model is not None  # checked against torch instead
    finally:
        path.write_text(good, encoding="utf-8")


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"export_sha256": "0" * 64}, "another export"),
        ({"weights_hash": "0" * 64}, "another model"),
        ({"recipe": 0}, "another recipe"),
        ({"texts_sha256": "x"}, "other verification sentences"),
    ],
)
def test_a_record_that_no_longer_describes_the_export_is_not_used(
    first_load: tuple[Path, dict[str, np.ndarray]], change: dict[str, Any], reason: str
) -> None:
    root, _ = first_load
    folder = key("onnx").folder(root)
    path = folder / fastload.RECORD_FILE
    good = path.read_text(encoding="utf-8")
    path.write_text(json.dumps(json.loads(good) | change), encoding="utf-8")
    try:
        found = fastload.read_record(folder, key("onnx"))
        assert isinstance(found, str) and reason in found
    finally:
        path.write_text(good, encoding="utf-8")
    assert isinstance(fastload.read_record(folder, key("onnx")), dict)


def test_fast_tokenizer_reproduces_the_hugging_face_tokenizer(
    first_load: tuple[Path, dict[str, np.ndarray]],
) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(resolve_model_path(DEFAULT_MODEL, offline=True)))
    definition = hf.backend_tokenizer.to_str()
    fast = fastload.FastTokenizer(definition, hf.pad_token_id, hf.pad_token)
    assert fastload.same_tokens(hf, fast, 256)
    # one that does not lowercase (the model's tokenizer does): told apart, and no record is written
    parsed = json.loads(definition)
    parsed["normalizer"]["lowercase"] = False
    other = json.dumps(parsed)
    assert not fastload.same_tokens(hf, fastload.FastTokenizer(other, hf.pad_token_id, hf.pad_token), 256)
    root, _ = first_load
    folder = key("onnx").folder(root)
    record = json.loads((folder / fastload.RECORD_FILE).read_text(encoding="utf-8"))
    facts = {"definition": other, "pad_id": 0, "pad_token": "[PAD]", "padding_side": "right", "lower": False}
    scratch = folder.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    (scratch / "manifest.json").write_text("{}", encoding="utf-8")
    assert not fastload.write_record(scratch, key("onnx"), facts, 256, np.asarray(record["reference"]), hf)
    assert not (scratch / fastload.RECORD_FILE).exists()
