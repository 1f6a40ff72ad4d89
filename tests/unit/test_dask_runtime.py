"""The Dask runner's settings, flags, worker pinning and shard task, without starting a cluster.

The flow on a real Dask cluster is in ``tests/integration/test_dask_flow.py``.
"""

from __future__ import annotations

import types
from pathlib import Path

import pyarrow as pa
import pytest

from embedpipe import cli
from embedpipe.config import get_settings
from embedpipe.errors import ConfigError
from embedpipe.flows._dask import local_gpus
from embedpipe.incremental import empty_state
from embedpipe.schemas import C
from embedpipe.store import Store
from embedpipe.tasks.shard import process_shard
from embedpipe.tasks.sources import make_plan
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
    out = process_shard(0, plan.shards[0], settings, empty_state(), RUN, None)
    c = out.counts
    assert c.seen == 2 and c.new == 1 and [r.path for r in c.rejects] == ["bad.txt"]
    assert c.embedded == out.chunks == out.staged.rows > 0
    staged = pa.ipc.open_file(out.staged.uri).read_all()
    assert staged.num_rows == out.staged.rows and set(staged.column(C.RUN_ID).to_pylist()) == {RUN}
    assert Store(settings.store).open_table() is None  # staged, not committed
    assert not any(isinstance(v, pa.Table) for v in vars(out).values())  # nothing bulky goes back
