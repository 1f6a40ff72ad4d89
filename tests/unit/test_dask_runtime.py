"""The Dask runner's settings, flags, worker pinning and shard task, without starting a cluster,
plus the flow on an in-process Dask cluster (fake model) and a worker that dies mid-run."""

from __future__ import annotations

import types
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from embedpipe import cli
from embedpipe.config import get_settings
from embedpipe.errors import ConfigError
from embedpipe.flows._dask import local_gpus
from embedpipe.resources.store import Store
from embedpipe.schemas import C
from embedpipe.tasks.ingest import make_plan
from embedpipe.tasks.shard import process_shard
from tests.fakes import KILL
from tests.helpers import SAMPLE_CORPUS, make_settings, write

RUN = "33333333-3333-3333-3333-333333333333"


def test_runtime_settings_from_env_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_settings().runtime.runner == "local"
    monkeypatch.setenv("EMBEDPIPE_RUNTIME__RUNNER", "dask")
    monkeypatch.setenv("EMBEDPIPE_RUNTIME__DASK_ADDRESS", "tcp://10.0.0.5:8786")
    rt = get_settings().runtime
    assert (rt.runner, rt.dask_address, rt.dask_workers) == ("dask", "tcp://10.0.0.5:8786", None)
    monkeypatch.setenv("EMBEDPIPE_RUNTIME__DASK_WORKERS", "2")
    with pytest.raises(
        ConfigError, match=r"runtime.dask_address=tcp://10.0.0.5:8786 and runtime.dask_workers=2"
    ):
        get_settings()
    monkeypatch.delenv("EMBEDPIPE_RUNTIME__DASK_WORKERS")
    monkeypatch.setenv("EMBEDPIPE_RUNTIME__DASK_ADDRESS", "http://host")
    with pytest.raises(ConfigError, match=r"runtime.dask_address .*'http://host'.*tcp://host:8786"):
        get_settings()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "0"], "runtime.dask_workers (flag --workers): got 0"),
        (
            ["--workers", "2", "--dask-address", "tcp://127.0.0.1:8786"],
            "--dask-address and --workers exclude",
        ),
        (["--runner", "local", "--workers", "2"], "--workers need --runner dask"),
        (["--dask-address", "127.0.0.1"], "expected a scheduler address like tcp://host:8786"),
    ],
)
def test_bad_runtime_flags_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    write(tmp_path / "src" / "a.txt", "hello")
    assert cli.main(["run", str(tmp_path / "src"), "--db", str(tmp_path / "db"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("embedpipe: error:") and message in err[0], err
    assert not (tmp_path / "db").exists()


def test_pin_worker_gives_each_worker_its_gpu_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed")
    from embedpipe.flows._dask_worker import PinWorker

    for var in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    import os

    plugin = PinWorker([2, 5], threads=3)
    plugin.setup(types.SimpleNamespace(name=1))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5" and os.environ["OMP_NUM_THREADS"] == "3"
    plugin.setup(types.SimpleNamespace(name=2))  # more workers than GPUs: round robin
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    assert local_gpus(get_settings({"model": {"device": "cpu"}}).model) == []
    assert local_gpus(get_settings({"model": {"devices": ["cuda:1", "cuda:3"]}}).model) == [1, 3]


def test_process_shard_stages_its_rows_and_returns_only_counts(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    src = tmp_path / "src"
    write(src / "a.md", (SAMPLE_CORPUS / "basics" / "what-are-embeddings.md").read_text())
    write(src / "bad.txt", b"\x00\x00binary")
    plan = make_plan([str(src)], settings)
    out = process_shard(0, plan.shards[0], settings, {}, RUN, None)
    assert out.seen == 2 and out.new == 1 and [r.path for r in out.rejects] == ["bad.txt"]
    assert out.embedded == out.chunks == out.staged.rows > 0
    staged = pa.ipc.open_file(out.staged.uri).read_all()
    assert staged.num_rows == out.staged.rows and set(staged.column(C.RUN_ID).to_pylist()) == {RUN}
    assert Store(settings.store).open_table() is None  # staged, not committed
    assert not any(isinstance(v, pa.Table) for v in vars(out).values())  # nothing bulky goes back


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
            from embedpipe.resources.embedder import register_embedder
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
