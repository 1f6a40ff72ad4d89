"""The bundled real model (all-MiniLM-L6-v2, offline) on small real documents, through the flow."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from embedpipe.embedding.embedder import get_embedder
from embedpipe.flows.sync import sync
from embedpipe.schemas import C
from embedpipe.store import Store
from tests.helpers import SAMPLE_CORPUS, make_settings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

MODEL = {"name": "sentence-transformers/all-MiniLM-L6-v2", "device": "cpu"}


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """English and Chinese documents in every format, copied from the sample corpus."""
    root = tmp_path_factory.mktemp("corpus")
    for rel in [
        "basics/what-are-embeddings.md",
        "basics/sentence-transformers.html",
        "basics/glossary.jsonl",
        "search/ann-indexes.md",
        "search/faq.csv",
        "search/evaluation-metrics.json",
        "ops/index-tuning.parquet",
        "zh/embeddings-intro.txt",
        "zh/faq.csv",
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE_CORPUS / rel, root / rel)
    return root


def test_real_model_sync_search_and_limits(tmp_path: Path, small_corpus: Path) -> None:
    settings = make_settings(tmp_path, model=MODEL)
    state = sync([str(small_corpus)], settings, return_state=True)
    s = state.result()
    assert state.is_completed(), state.message
    assert s.docs_rejected == 0
    assert s.chunks_truncated == 0  # default settings never exceed max_seq_length
    assert s.dim == 384 and s.model_id.startswith("sentence-transformers/all-MiniLM-L6-v2@")

    embedder = get_embedder(settings.model)
    store = Store(settings.store)
    table = store.open_table().to_arrow()
    texts = table.column(C.TEXT).to_pylist()
    # Every chunk fits the model: count again with the model's own tokenizer, specials included.
    assert int(embedder.tokenizer.count(texts).max()) + embedder.special_tokens <= 256
    vecs = np.stack(table.column(C.VECTOR).to_numpy(zero_copy_only=False))
    assert vecs.dtype == np.float32 and vecs.shape[1] == 384
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    # Stored vectors are what the model gives for the stored text.
    np.testing.assert_allclose(vecs[:4], embedder.encode(texts[:4], 4), atol=1e-5)
    # The HTML page's script and style never reach the chunks.
    html = table.filter(pc.equal(table.column(C.PATH), "basics/sentence-transformers.html"))
    assert html.num_rows >= 1
    html_text = " ".join(html.column(C.TEXT).to_pylist())
    assert "not part of the visible page" not in html_text and "dataLayer" not in html_text
    assert "border-left" not in html_text and "#f3f3f3" not in html_text  # CSS
    # Chinese documents are chunked and stored with their text intact.
    zh = table.filter(pc.equal(table.column(C.PATH), "zh/embeddings-intro.txt")).column(C.TEXT).to_pylist()
    assert zh and all("。" in t or "，" in t for t in zh)

    hits = store.search(embedder.encode(["HNSW graph index recall and latency"], 1)[0], k=3)
    assert hits[0][C.DOC_ID] == "search/ann-indexes.md"
    assert hits == sorted(hits, key=lambda h: -h["score"])
