"""The vector cache: keyed by everything that changes a vector, bounded by age and size, shared safely.

Real LanceDB in a temporary folder; vectors from the fake embedder.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from embedpipe.schemas import C, ModelIdentity
from embedpipe.store import VECTOR_CACHE_TABLE, Store
from tests.helpers import make_settings

IDENTITY = ModelIdentity(name="m", weights_hash="a" * 64, dim=4, max_seq_length=128, normalize=True)


def batch(hashes: list[str], dim: int = 4, offset: float = 0.0) -> pa.RecordBatch:
    vecs = np.asarray([[offset + i] * dim for i in range(len(hashes))], dtype=np.float32)
    return pa.record_batch(
        {
            C.CHUNK_HASH: pa.array(hashes, pa.string()),
            C.VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim),
        }
    )


def store_for(tmp_path: Path, table: str = "chunks", **cache) -> Store:
    return Store(make_settings(tmp_path, store={"table": table, "cache": cache}).store)


@pytest.mark.parametrize(
    "change",
    [
        {"weights_hash": "b" * 64},
        {"backend": "onnx"},
        {"normalize": False},
        {"dim": 8},
        {"precision": "fp16"},
        {"max_seq_length": 256},
        {"name": "other"},
    ],
)
def test_vector_key_changes_with_everything_that_changes_vectors(change: dict) -> None:
    assert IDENTITY.model_copy(update=change).vector_key != IDENTITY.vector_key
    assert ModelIdentity(**IDENTITY.model_dump()).vector_key == IDENTITY.vector_key


def test_put_and_lookup_by_model_and_text(tmp_path: Path) -> None:
    cache = store_for(tmp_path).cache
    assert cache.lookup(IDENTITY, ["h0"]) == {}  # no cache table yet: nothing, no error
    assert cache.put(IDENTITY, [batch(["h0", "h1", "h0"], offset=1.0)], "failed-gate") == 2
    got = cache.lookup(IDENTITY, ["h0", "h1", "h2"])
    assert set(got) == {"h0", "h1"}
    np.testing.assert_array_equal(got["h1"], np.full(4, 2.0, np.float32))
    # another model configuration finds nothing, even for the same texts
    other = IDENTITY.model_copy(update={"backend": "onnx"})
    assert other.vector_key != IDENTITY.vector_key and cache.lookup(other, ["h0", "h1"]) == {}
    # writing the same rows again is an upsert, not a duplicate
    assert cache.put(IDENTITY, [batch(["h0", "h1"], offset=1.0)], "rollback") == 2
    rows = cache.store.open_table(VECTOR_CACHE_TABLE).to_arrow()
    assert rows.num_rows == 2 and set(rows.column(C.REASON).to_pylist()) == {"rollback"}


def test_disabled_cache_is_neither_read_nor_filled(tmp_path: Path) -> None:
    store_for(tmp_path).cache.put(IDENTITY, [batch(["h0"])], "failed-gate")
    off = store_for(tmp_path, enabled=False)
    assert off.cache.lookup(IDENTITY, ["h0"]) == {}
    assert store_for(tmp_path).cache.lookup(IDENTITY, ["h0"]).keys() == {"h0"}
    rid = "00000000-0000-0000-0000-000000000000"
    off.stage(rid, 0, pa.table(batch(["h1"])).replace_schema_metadata(IDENTITY.table_metadata()))
    assert off.cache.keep_staged(rid) == 0
    assert store_for(tmp_path).cache.keep_staged(rid) == 1


def test_size_bound_keeps_the_newest_rows(tmp_path: Path) -> None:
    cache = store_for(tmp_path, max_rows=5).cache
    # one insert never takes more than the cache can keep
    assert cache.put(IDENTITY, [batch([f"old{i}" for i in range(8)])], "failed-gate") == 5
    time.sleep(0.01)
    assert cache.put(IDENTITY, [batch([f"new{i}" for i in range(3)])], "rollback") == 3
    table = cache.store.open_table(VECTOR_CACHE_TABLE)
    keys = table.to_arrow().column(C.CHUNK_HASH).to_pylist()
    assert len(keys) == 5
    assert {f"new{i}" for i in range(3)} <= set(keys)  # the newest stay, two of the older ones
    assert sum(k.startswith("old") for k in keys) == 2


def test_ttl_trims_old_rows_on_insert_and_in_retention(tmp_path: Path) -> None:
    cache = store_for(tmp_path, ttl_days=1.0).cache
    cache.put(IDENTITY, [batch(["h0", "h1"])], "failed-gate")
    assert cache.trim() == {"rows_before": 2, "rows_after": 2}
    assert cache.trim(now=datetime.now(UTC) + timedelta(days=1, seconds=1)) == {
        "rows_before": 2,
        "rows_after": 0,
    }
    # the retention step trims too (a cache whose rows are all older than a second)
    short = store_for(tmp_path, ttl_days=1 / 86400)
    short.cache.put(IDENTITY, [batch(["h2", "h3"])], "failed-gate")
    assert short.open_table(VECTOR_CACHE_TABLE).count_rows() == 2
    time.sleep(1.2)
    report = short.apply_retention(keep_versions=1, max_age_hours=1.0)
    assert report[VECTOR_CACHE_TABLE]["rows_after"] == 0
    assert short.open_table(VECTOR_CACHE_TABLE).count_rows() == 0


def test_runs_on_two_tables_fill_the_shared_cache_at_once(tmp_path: Path) -> None:
    stores = [store_for(tmp_path, table=f"t{i}") for i in range(4)]
    stores[0].cache.put(IDENTITY, [batch(["seed"])], "failed-gate")  # the table exists
    start = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def stash(i: int) -> None:
        start.wait()
        try:
            stores[i].cache.put(IDENTITY, [batch([f"t{i}-{j}" for j in range(200)])], "failed-gate")
        except BaseException as e:  # collected and asserted on
            errors.append(e)

    threads = [threading.Thread(target=stash, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    found = stores[0].cache.lookup(IDENTITY, [f"t{i}-{j}" for i in range(4) for j in range(200)])
    assert len(found) == 800
    tables = set(stores[0].open_table(VECTOR_CACHE_TABLE).to_arrow().column(C.TABLE).to_pylist())
    assert tables == {"t0", "t1", "t2", "t3"}
