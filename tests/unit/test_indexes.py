"""The table's indexes: creation at index.min_rows, incremental refresh, retrain, tuned search
parameters served by both search paths, the FTS tokenizer on Chinese text, and the listing.

Real LanceDB and Lance in a temporary folder; the rows are synthetic (clustered unit vectors), so
the index's behaviour, not a model's, is what is measured.
"""

from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from embedpipe.config import get_settings
from embedpipe.schemas import C
from embedpipe.store import Store
from embedpipe.store.indexes import (
    VECTOR_META_KEY,
    VectorIndexRecord,
    candidates,
    search_params,
    vector_params,
)
from embedpipe.store.reader import TableReader
from embedpipe.store.vector_index import FLAT_MAX_DIM
from tests.helpers import make_settings

DIM = 32


def rows(n: int, start: int = 0, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).standard_normal((12, DIM)).astype(np.float32)
    v = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return pa.table(
        {
            C.CHUNK_ID: [f"c{i}" for i in range(start, start + n)],
            C.DOC_ID: [f"d{i}" for i in range(start, start + n)],
            C.TEXT: [f"chunk number {i} about vectors" for i in range(start, start + n)],
            C.VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), DIM),
        }
    )


def setup(tmp_path: Path, n: int, **index: object):
    settings = make_settings(tmp_path, index={"min_rows": 500, "fts": True, **index})
    db = lancedb.connect(settings.store.uri)
    table = db.create_table(settings.store.table, rows(n))
    return settings, Store(settings.store), table


def vector_row(store: Store) -> dict:
    return next(r for r in store.index_rows(store.require_table()) if r["column"] == C.VECTOR)


def test_params_grow_with_rows_and_respect_the_dimension() -> None:
    kind, p = vector_params(1_000_000, 384, "IVF_PQ")
    assert kind == "IVF_PQ" and p == {"num_partitions": 1000, "num_sub_vectors": 48, "num_bits": 8}
    assert vector_params(1_000, 64, "IVF_PQ")[1]["num_partitions"] == 3  # at most rows / 256
    assert vector_params(10_000, 100, "IVF_PQ")[1]["num_sub_vectors"] == 10  # a divisor of 100
    assert vector_params(1_000_000, 384)[0] == "IVF_HNSW_SQ"
    assert vector_params(1_000_000, 384)[1] == {"num_partitions": 125}
    # auto: small vectors get a flat scan of the probed partitions (sqrt(rows) of them)
    assert vector_params(1_000_000, 64) == ("IVF_FLAT", {"num_partitions": 1000})
    assert vector_params(1_000_000, FLAT_MAX_DIM)[0] == "IVF_FLAT"
    assert vector_params(1_000_000, FLAT_MAX_DIM + 1)[0] == "IVF_HNSW_SQ"
    assert candidates("IVF_PQ", 100)[0] == {"nprobes": 2, "refine_factor": 10}
    assert candidates("IVF_PQ", 100)[-1] == {"nprobes": 100, "refine_factor": 30}
    # exact distances in the probed partitions: re-ranking is never tried for IVF_FLAT
    flat = candidates("IVF_FLAT", 1000)
    assert [c["nprobes"] for c in flat] == [20, 50, 100, 200, 350, 500, 700, 1000]
    assert all("refine_factor" not in c for c in flat)
    assert {"nprobes": 4, "refine_factor": 10} in candidates("IVF_HNSW_SQ", 10)


def test_below_min_rows_only_the_fts_index_is_made(tmp_path: Path) -> None:
    settings, store, _ = setup(tmp_path, 300)
    done = store.refresh_indexes(settings.index)
    assert done.version is not None and done.record is None
    listed = store.index_rows(store.require_table())
    assert [(r["name"], r["column"], r["type"]) for r in listed] == [("text_idx", C.TEXT, "FTS")]
    assert listed[0]["params"]["base_tokenizer"] == "icu" and listed[0]["unindexed_rows"] == 0
    # nothing changed: no new version
    assert store.refresh_indexes(settings.index).version is None


@pytest.mark.parametrize(("vector_type", "kind"), [("auto", "IVF_FLAT"), ("IVF_HNSW_SQ", "IVF_HNSW_SQ")])
def test_created_at_min_rows_then_refreshed_incrementally_then_retrained(
    tmp_path: Path, vector_type: str, kind: str
) -> None:
    settings, store, table = setup(tmp_path, 600, retrain_ratio=0.25, vector_type=vector_type)
    done = store.refresh_indexes(settings.index)
    row = vector_row(store)
    assert row["type"] == kind and row["indexed_rows"] == 600 and row["unindexed_rows"] == 0
    assert row["recall"] >= settings.index.min_recall
    assert row["trained_at_version"] is not None and row["trained_at_version"] <= done.version
    trained = row["trained_at_version"]
    # 10% new rows: folded into the existing index, not retrained
    table.add(rows(60, start=600, seed=1))
    assert vector_row(store)["unindexed_rows"] == 60
    done = store.refresh_indexes(settings.index)
    row = vector_row(store)
    assert row["unindexed_rows"] == 0 and row["indexed_rows"] == 660 and row["trained_at_version"] == trained
    assert any("+60 rows" in a for a in done.actions), done.actions
    # the new rows went into a delta segment: the trained one was not rewritten
    assert store.require_table().index_stats("vector_idx").num_indices == 2
    fts = next(r for r in store.index_rows(store.require_table()) if r["column"] == C.TEXT)
    assert fts["unindexed_rows"] == 0 and fts["indexed_rows"] == 660
    record = VectorIndexRecord.from_metadata(store.require_table().to_lance().metadata)
    assert record is not None and record.changed_rows == 60
    # another 25% changed (replaced and added) since training: past retrain_ratio=0.25 → retrained
    table.delete(f"{C.CHUNK_ID} IN ('c1', 'c2', 'c3', 'c4', 'c5')")
    table.add(rows(150, start=700, seed=2))
    done = store.refresh_indexes(settings.index)
    row = vector_row(store)
    assert any("retrained" in a for a in done.actions), done.actions
    assert row["trained_at_version"] > trained and row["indexed_rows"] == 805
    # --rebuild retrains whatever changed
    done = store.refresh_indexes(settings.index, retrain=True)
    assert any("retrained (rebuild)" in a for a in done.actions) and vector_row(store)["unindexed_rows"] == 0


def test_searches_use_the_served_params_and_never_miss_unindexed_rows(tmp_path: Path) -> None:
    settings, store, table = setup(tmp_path, 800, vector_type="IVF_PQ", nprobes=1, refine_factor=None)
    store.refresh_indexes(settings.index)
    ds = store.require_table().to_lance()
    assert search_params(ds.metadata) == {"nprobes": 1}
    # new rows the index has not absorbed: an exact copy of a new row is found by both search paths
    fresh = rows(5, start=5000, seed=3)
    table.add(fresh)
    target = fresh.column(C.VECTOR)[0].values.to_numpy()
    hit = store.search(target, 1)[0]
    assert hit["chunk_id"] == "c5000"
    reader = TableReader(settings.store)
    assert reader.search(reader.require(), target, 1)[0]["chunk_id"] == "c5000"


def test_a_coarse_index_measures_a_low_recall(tmp_path: Path) -> None:
    coarse = {"vector_type": "IVF_PQ", "nprobes": 1, "refine_factor": None}
    settings, store, _ = setup(tmp_path, 2000, **coarse)
    store.refresh_indexes(settings.index)
    low = vector_row(store)
    assert low["params"]["nprobes"] == 1 and low["params"]["refine_factor"] is None
    assert low["recall"] < settings.index.min_recall
    # tuned (nothing forced): the chosen parameters reach the gate
    tuned = get_settings({**settings.model_dump(), "index": {**settings.index.model_dump(), "nprobes": None}})
    store.refresh_indexes(tuned.index)
    assert vector_row(store)["recall"] >= tuned.index.min_recall


@pytest.mark.parametrize(
    ("tokenizer", "found"),
    [("icu", {"切块", "向量", "嵌入模型"}), ("ngram", {"切块", "向量", "嵌入模型"}), ("simple", set())],
)
def test_fts_tokenizer_on_chinese(tmp_path: Path, tokenizer: str, found: set[str]) -> None:
    settings = make_settings(tmp_path, index={"fts": True, "fts_tokenizer": tokenizer})
    texts = [
        "切块就是把长文档切成合适大小的片段。",
        "嵌入模型把文本变成向量，用于语义检索。",
        "Vector indexes speed up search.",
    ]
    vectors = pa.array([[0.0] * 4] * 3, pa.list_(pa.float32(), 4))
    db = lancedb.connect(settings.store.uri)
    db.create_table(
        settings.store.table, pa.table({C.CHUNK_ID: ["a", "b", "c"], C.TEXT: texts, C.VECTOR: vectors})
    )
    store = Store(settings.store)
    store.refresh_indexes(settings.index)
    table = store.require_table()
    hits = {q for q in ("切块", "向量", "嵌入模型") if table.search(q, query_type="fts").limit(3).to_list()}
    assert hits == found
    assert table.search("vector", query_type="fts").limit(3).to_list()


def test_index_recall_gate_threshold_is_index_min_recall(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, index={"min_recall": 0.9})
    assert settings.checks.gate("index_recall") == ("fail", 0.9, None)
    explicit = make_settings(
        tmp_path, index={"min_recall": 0.9}, checks={"gates": {"index_recall": {"threshold": 0.5}}}
    )
    assert explicit.checks.gate("index_recall")[1] == 0.5


def test_a_record_without_its_index_is_cleared(tmp_path: Path) -> None:
    settings, store, _ = setup(tmp_path, 600)
    store.refresh_indexes(settings.index)
    store.require_table().drop_index("vector_idx")
    store.refresh_indexes(settings.index.model_copy(update={"min_rows": 10_000}))
    assert VECTOR_META_KEY not in store.require_table().to_lance().metadata


def test_delta_segments_are_merged_past_max_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embedpipe.store import indexes

    monkeypatch.setattr(indexes, "MAX_SEGMENTS", 3)
    settings, store, table = setup(tmp_path, 600, retrain_ratio=1.0)
    store.refresh_indexes(settings.index)
    counts = []
    for i in range(4):
        table.add(rows(10, start=1000 + 10 * i, seed=10 + i))
        store.refresh_indexes(settings.index)
        counts.append(store.require_table().index_stats("vector_idx").num_indices)
    assert counts[:2] == [2, 3] and counts[2] < 3, counts
    assert vector_row(store)["unindexed_rows"] == 0 and vector_row(store)["indexed_rows"] == 640


def test_a_flat_index_is_tuned_by_nprobes_alone_and_reaches_the_gate(tmp_path: Path) -> None:
    settings, store, _ = setup(tmp_path, 3000)  # auto at dimension 32: IVF_FLAT
    done = store.refresh_indexes(settings.index)
    record = VectorIndexRecord.from_metadata(store.require_table().to_lance().metadata)
    assert record is not None and record.type == "IVF_FLAT", done.actions
    assert record.refine_factor is None and record.nprobes is not None
    assert record.recall is not None and record.recall >= settings.index.min_recall
    parts = record.params["num_partitions"]
    assert parts == 11  # round(sqrt(3000)) = 55, cut back to 3000 / 256
    # the served parameters, measured with other queries than the tuner's, also pass the gate
    from embedpipe.store.vector_index import _queries, measure_recall

    vectors = np.stack(rows(3000).column(C.VECTOR).to_numpy(zero_copy_only=False)).astype(np.float32)
    recall, _ = measure_recall(
        store.require_table(),
        _queries(vectors, 50, 123),
        10,
        search_params(store.require_table().to_lance().metadata),
    )
    assert recall >= settings.index.min_recall - 0.02
    # probing every partition of a flat index is exact search
    full, _ = measure_recall(store.require_table(), _queries(vectors, 20, 5), 10, {"nprobes": parts})
    assert full == 1.0


def test_an_index_of_the_former_auto_type_is_searched_then_retrained(tmp_path: Path) -> None:
    """A table indexed when auto meant IVF_HNSW_SQ for every dimension keeps serving its index and
    its recorded parameters; the next refresh trains the type auto stands for now."""
    old, store, _ = setup(tmp_path, 800, vector_type="IVF_HNSW_SQ")
    store.refresh_indexes(old.index)
    before = search_params(store.require_table().to_lance().metadata)
    assert before and vector_row(store)["type"] == "IVF_HNSW_SQ"
    target = rows(800).column(C.VECTOR)[7].values.to_numpy()
    assert store.search(target, 1)[0]["chunk_id"] == "c7"
    reader = TableReader(old.store)
    assert reader.search(reader.require(), target, 1)[0]["chunk_id"] == "c7"
    now = old.index.model_copy(update={"vector_type": "auto"})
    done = store.refresh_indexes(now)
    assert any("retrained (stale)" in a for a in done.actions), done.actions
    assert vector_row(store)["type"] == "IVF_FLAT"
    assert "refine_factor" not in search_params(store.require_table().to_lance().metadata)
    assert store.search(target, 1)[0]["chunk_id"] == "c7"
