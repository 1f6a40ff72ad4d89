"""The sync flow on an in-process Dask cluster (one real worker process, the fake model) against the
local runner's result, and a worker that dies mid-run: nothing is committed.

Prefect's test harness (a temporary server for the session), real LanceDB, real Dask.
"""

from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np
import pytest

from embedpipe.schemas import C
from tests.fakes import KILL
from tests.helpers import SAMPLE_CORPUS, make_settings, write


@pytest.mark.slow
def test_flow_on_dask_matches_local_and_a_dying_worker_commits_nothing(
    tmp_path: Path, prefect_harness: str
) -> None:
    distributed = pytest.importorskip("distributed")
    import dask
    from prefect_dask import DaskTaskRunner

    from embedpipe.flows.sync import sync

    src = tmp_path / "src"
    for p in sorted((SAMPLE_CORPUS / "basics").iterdir())[:4]:
        write(src / p.name, p.read_text())
    shards = {"shard_mb": 0.004, "ramp_shards": 0}
    local = make_settings(tmp_path / "l", runtime=shards, checks={"enabled": False})
    on_dask = make_settings(tmp_path / "d", runtime=shards | {"runner": "dask"}, checks={"enabled": False})
    assert sync([str(src)], local).table_version == 1

    class RegisterFake(distributed.WorkerPlugin):
        def setup(self, worker: object) -> None:
            from embedpipe.embedding.embedder import register_embedder
            from tests.fakes import FakeEmbedder

            register_embedder("fake:", FakeEmbedder)

    # One worker process; a task on a worker that died is not retried elsewhere (fails fast).
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.register_plugin(RegisterFake())
        flow = sync.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        summary = flow([str(src)], on_dask)
        assert summary.status == "completed" and summary.table_version == 1
        a = lancedb.connect(str(tmp_path / "l" / "db")).open_table("chunks").to_arrow().sort_by(C.CHUNK_ID)
        b = lancedb.connect(str(tmp_path / "d" / "db")).open_table("chunks").to_arrow().sort_by(C.CHUNK_ID)
        assert a.column(C.CHUNK_ID).equals(b.column(C.CHUNK_ID)) and a.num_rows > 4
        va = np.asarray(a.column(C.VECTOR).to_pylist())
        vb = np.asarray(b.column(C.VECTOR).to_pylist())
        assert np.allclose(va, vb, atol=1e-6)

        write(src / "zz-dies.txt", f"this document kills the worker {KILL}")
        write(src / "00-new.txt", "a new document in the first shard")
        state = flow([str(src)], on_dask, return_state=True)
    assert state.is_failed()
    failed = state.result(raise_on_failure=False)
    assert failed.exit_code == 1 and "Dask cluster lost a shard task" in failed.message, failed.message
    table = lancedb.connect(str(tmp_path / "d" / "db")).open_table("chunks")
    assert len(table.list_versions()) == 1 and table.count_rows() == a.num_rows  # nothing committed
    assert not any((tmp_path / "d" / "db" / "_embedpipe_staging").rglob("*.arrow"))
