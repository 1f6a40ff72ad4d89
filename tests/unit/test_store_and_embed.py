"""Embedding a chunks table and the LanceDB store: staging, one-version commits, tags, rollback, search.

Real LanceDB in a temporary folder; the fake embedder stands in for the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from embedpipe.config import ModelSettings
from embedpipe.errors import ModelMismatchError, TableNotFoundError, VersionNotFoundError
from embedpipe.schemas import C
from embedpipe.store import STAGING_DIR, Store
from embedpipe.tasks.embedding import embed_chunks
from tests.fakes import FakeEmbedder
from tests.helpers import chunked, commit_at_once, make_settings

RUN_A = "11111111-1111-1111-1111-111111111111"
RUN_B = "22222222-2222-2222-2222-222222222222"


def build(tmp_path: Path, files: dict[str, str], model: str = "fake:16", budget: int = 20):
    settings, embedder, chunks, schema, src = chunked(tmp_path, files, model=model, budget=budget)
    return settings, embedder, chunks, schema, src, sorted(f for f in files)


def test_embed_keeps_row_order_and_counts_truncation(tmp_path: Path) -> None:
    _, embedder, chunks, schema, _, _ = build(tmp_path, {"a.txt": "one two three. " * 40, "b.txt": "short"})
    table, truncated, _, embedded = embed_chunks(chunks, embedder, 4, RUN_A, schema)
    assert embedded == chunks.num_rows
    assert table.schema.equals(schema)
    assert table.column(C.CHUNK_ID).to_pylist() == chunks.column(C.CHUNK_ID).to_pylist()
    direct = embedder.encode(chunks.column(C.TEXT).to_pylist(), 4)
    stored = np.stack(table.column(C.VECTOR).to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(stored, direct, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, rtol=1e-5)
    assert truncated == 0
    # A chunk over the model limit (128 with 2 specials) is counted, not silently cut.
    long_chunks = chunks.set_column(
        chunks.schema.get_field_index(C.N_TOKENS), C.N_TOKENS, pa.array([127] * chunks.num_rows, pa.int32())
    )
    _, truncated, _, _ = embed_chunks(long_chunks, embedder, 4, RUN_A, schema)
    assert truncated == chunks.num_rows


def test_embed_reuses_stored_vectors_by_text_hash(tmp_path: Path) -> None:
    _, embedder, chunks, schema, _, _ = build(tmp_path, {"a.txt": "one two three. " * 40, "b.txt": "short"})
    first_hash = chunks.column(C.CHUNK_HASH)[0].as_py()
    marker = np.full(16, 0.25, dtype=np.float32)
    calls = embedder.calls
    table, _, _, embedded = embed_chunks(chunks, embedder, 4, RUN_A, schema, reuse={first_hash: marker})
    reused_rows = [i for i, h in enumerate(chunks.column(C.CHUNK_HASH).to_pylist()) if h == first_hash]
    assert embedded == chunks.num_rows - len(reused_rows)
    for i in reused_rows:
        np.testing.assert_array_equal(table.column(C.VECTOR)[i].values.to_numpy(), marker)
    all_reused = {h: marker for h in chunks.column(C.CHUNK_HASH).to_pylist()}
    calls = embedder.calls
    _, _, _, embedded = embed_chunks(chunks, embedder, 4, RUN_A, schema, reuse=all_reused)
    assert embedded == 0 and embedder.calls == calls  # the model is not called at all


def test_commit_is_one_version_with_run_tag(tmp_path: Path) -> None:
    settings, embedder, chunks, schema, _src, _paths = build(tmp_path, {"a.txt": "alpha beta. " * 50})
    store = Store(settings.store)
    table, *_ = embed_chunks(chunks, embedder, 8, RUN_A, schema)
    staged = [store.stage(RUN_A, i, table.slice(i * 5, 5)) for i in range((table.num_rows + 4) // 5)]
    assert len(staged) > 1
    assert store.open_table() is None  # staging is invisible
    res = store.commit(RUN_A, staged, schema)
    version = res.version
    assert res.written == table.num_rows and res.deleted == 0
    tbl = store.open_table()
    assert tbl.count_rows() == table.num_rows
    assert [v["version"] for v in store.versions()] == [version]
    assert store.versions()[0]["run_id"] == RUN_A
    assert store.table_identity() == embedder.identity
    store.drop_staging(RUN_A)
    assert not (Path(store.uri) / STAGING_DIR / settings.store.table / RUN_A).exists()


def test_second_commit_replaces_stale_chunks_of_rescanned_files(tmp_path: Path) -> None:
    settings, embedder, chunks, schema, src, _paths = build(
        tmp_path, {"a.txt": "alpha beta gamma. " * 30, "b.txt": "keep me. " * 5}
    )
    store = Store(settings.store)
    t1, *_ = embed_chunks(chunks, embedder, 8, RUN_A, schema)
    v1 = store.commit(RUN_A, [store.stage(RUN_A, 0, t1)], schema).version
    # a.txt shrank: its old chunks must go; b.txt is not replaced and must stay.
    shrunk = chunks.filter(pa.compute.equal(chunks.column(C.PATH), "a.txt")).slice(0, 1)
    t2, *_ = embed_chunks(shrunk, embedder, 8, RUN_B, schema)
    res = store.commit(RUN_B, [store.stage(RUN_B, 0, t2)], schema, replace_docs=[(src, "a.txt")])
    assert res.version == v1 + 1
    assert res.deleted == chunks.column(C.PATH).to_pylist().count("a.txt") - 1
    rows = store.open_table().to_arrow()
    by_path = {p: rows.column(C.PATH).to_pylist().count(p) for p in ("a.txt", "b.txt")}
    assert by_path == {"a.txt": 1, "b.txt": chunks.column(C.PATH).to_pylist().count("b.txt")}
    assert len(set(rows.column(C.CHUNK_ID).to_pylist())) == rows.num_rows


def test_empty_commit_creates_no_version(tmp_path: Path) -> None:
    settings, *_ = build(tmp_path, {"a.txt": "x"})
    store = Store(settings.store)
    assert store.commit(RUN_A, [], None).version is None  # type: ignore[arg-type]
    assert store.open_table() is None


def test_other_model_is_refused(tmp_path: Path) -> None:
    settings, embedder, chunks, schema, _src, _paths = build(tmp_path, {"a.txt": "alpha. " * 20})
    store = Store(settings.store)
    t1, *_ = embed_chunks(chunks, embedder, 8, RUN_A, schema)
    store.commit(RUN_A, [store.stage(RUN_A, 0, t1)], schema)
    other_dim = FakeEmbedder(ModelSettings(name="fake:24"))
    with pytest.raises(ModelMismatchError, match=r"table=chunks was built with model=fake:16.*dim=16"):
        store.check_compatible(other_dim.identity)
    same_dim_other_weights = FakeEmbedder(ModelSettings(name="fake:16:7"))
    with pytest.raises(ModelMismatchError, match="embedpipe reindex --model fake:16:7"):
        store.check_compatible(same_dim_other_weights.identity)
    store.check_compatible(embedder.identity)  # the same model passes


def test_versions_rollback_and_search(tmp_path: Path) -> None:
    settings, embedder, chunks, schema, src, _paths = build(
        tmp_path, {"cats.txt": "cats purr and sleep. " * 5, "cars.txt": "engines and wheels. " * 5}
    )
    store = Store(settings.store)
    t1, *_ = embed_chunks(chunks, embedder, 8, RUN_A, schema)
    v1 = store.commit(RUN_A, [store.stage(RUN_A, 0, t1)], schema).version
    only_cats = t1.filter(pa.compute.equal(t1.column(C.PATH), "cats.txt"))
    store.commit(RUN_B, [store.stage(RUN_B, 0, only_cats)], schema, replace_docs=[(src, "cars.txt")])
    assert store.open_table().count_rows() == only_cats.num_rows
    hits = store.search(embedder.encode(["engines wheels"], 1)[0], k=3)
    assert all(h[C.DOC_ID] == "cats.txt" for h in hits)
    res = store.rollback(RUN_A)  # by tag (the run id)
    assert res["restored"] == v1
    assert store.open_table().count_rows() == t1.num_rows
    query = embedder.encode(["engines wheels"], 1)[0]
    hits = store.search(query, k=1)
    assert hits[0][C.DOC_ID] == "cars.txt"
    stored = t1.filter(pa.compute.equal(t1.column(C.CHUNK_ID), hits[0][C.CHUNK_ID])).column(C.VECTOR)[0]
    assert hits[0]["score"] == pytest.approx(float(np.dot(query, stored.values.to_numpy())), abs=1e-4)
    assert set(hits[0]) == {C.DOC_ID, C.CHUNK_ID, C.TEXT, "score"}
    store.rollback(str(v1 + 1))  # by number
    assert store.open_table().count_rows() == only_cats.num_rows
    with pytest.raises(VersionNotFoundError, match="999"):
        store.rollback("999")
    with pytest.raises(VersionNotFoundError, match="no-such-tag"):
        store.rollback("no-such-tag")


def test_versions_read_without_lancedb_match_lancedbs_listing(tmp_path: Path) -> None:
    """``versions`` opens a local table with ``lance`` alone; it lists what ``lancedb`` lists."""
    settings, embedder, chunks, schema, _src, _paths = build(tmp_path, {"cats.txt": "cats purr. " * 5})
    store = Store(settings.store)
    t1, *_ = embed_chunks(chunks, embedder, 8, RUN_A, schema)
    store.commit(RUN_A, [store.stage(RUN_A, 0, t1)], schema)
    store.rollback(RUN_A)
    table = store.open_table()
    tags = table.tags.list()
    expected = [
        {
            "version": int(v["version"]),
            "timestamp": v["timestamp"].isoformat(),
            "tags": sorted(t for t, info in tags.items() if int(info["version"]) == int(v["version"])),
        }
        for v in table.list_versions()
    ]
    rows = Store(settings.store).versions()
    assert [{k: r[k] for k in ("version", "timestamp", "tags")} for r in rows] == expected
    assert len(rows) == 2 and rows[0]["run_id"] == RUN_A and rows[1]["run_id"] is None
    with pytest.raises(TableNotFoundError, match="table=other not found in database"):
        store.versions("other")  # the database exists, the table does not


def test_missing_table_is_a_clear_error(tmp_path: Path) -> None:
    store = Store(make_settings(tmp_path).store)
    with pytest.raises(TableNotFoundError, match="table=chunks not found"):
        store.versions()


def test_store_and_embedder_pickle_without_connections(tmp_path: Path) -> None:
    import pickle

    store = Store(make_settings(tmp_path).store)
    _ = store.db
    clone = pickle.loads(pickle.dumps(store))
    assert clone.uri == store.uri and clone._db is None


def test_foreign_table_without_identity_is_refused(tmp_path: Path) -> None:
    store = Store(make_settings(tmp_path).store)
    store.db.create_table("chunks", data=pa.table({"vector": [[0.0, 1.0]], "text": ["x"]}))
    with pytest.raises(ModelMismatchError, match="records no embedpipe model identity"):
        store.check_compatible(FakeEmbedder(ModelSettings(name="fake:2")).identity)


def test_database_path_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    from embedpipe.errors import StoreError

    (tmp_path / "db").write_text("not a folder")
    store = Store(make_settings(tmp_path).store)
    with pytest.raises((StoreError, TableNotFoundError)) as exc:
        store.versions()
    assert str(tmp_path / "db") in str(exc.value) or "table=chunks" in str(exc.value)


def test_concurrent_commits_of_the_same_chunks_never_duplicate(tmp_path: Path) -> None:
    """chunk_id is Lance's (unenforced) primary key: racing merge_inserts conflict and retry."""

    files = {f"d{i}.txt": f"Document {i}. " + "alpha beta gamma. " * 400 for i in range(20)}
    settings, embedder, chunks, schema, _, _ = build(tmp_path, files)
    store = Store(settings.store)
    seed, *_ = embed_chunks(chunks.slice(0, 1), embedder, 8, RUN_A, schema)
    store.commit(RUN_A, [store.stage(RUN_A, 0, seed)], schema)
    table, *_ = embed_chunks(chunks, embedder, 8, RUN_B, schema)
    runs = [f"33333333-3333-3333-3333-33333333333{i}" for i in range(4)]
    staged = {r: [store.stage(r, 0, table)] for r in runs}
    errors = commit_at_once(settings, staged, schema)
    assert not errors, errors
    ids = store.open_table().to_arrow().column(C.CHUNK_ID).to_pylist()
    assert len(ids) == len(set(ids)) == chunks.num_rows
    assert (
        store.open_table().schema.field(C.CHUNK_ID).metadata[b"lance-schema:unenforced-primary-key:position"]
    )


def test_the_checks_settings_of_a_table_reuse_the_runs_embedder() -> None:
    """A run loads its model once: the checks' settings for the table (the device a CPU-only backend
    resolves ``auto`` to, no torch device list) give the run's own embedder, not a second copy."""
    from embedpipe.config import ModelSettings
    from embedpipe.embedding.embedder import forget_embedder, get_embedder, settings_for_table

    for backend in ("openvino", "onnx-int8"):
        run = ModelSettings(name="fake:16", backend=backend, device="auto")
        emb = get_embedder(run)
        try:
            table = emb.identity.model_copy(update={"backend": backend})  # a table embedded with it
            assert get_embedder(settings_for_table(run, table)) is emb
            assert get_embedder(run.model_copy(update={"device": "cpu"})) is emb
        finally:
            forget_embedder(run)
    # torch keeps its device in the key: another device is another model
    torch_run = ModelSettings(name="fake:16", backend="torch", device="cpu")
    other = torch_run.model_copy(update={"device": "auto"})
    try:
        assert get_embedder(torch_run) is not get_embedder(other)
    finally:
        forget_embedder(torch_run)
        forget_embedder(other)
