"""Scale-out on Dask: the task runner a flow runs with, and the cluster behind it.

``runtime.runner=dask`` runs each shard as one task on a Dask worker through prefect-dask's
:class:`~prefect_dask.DaskTaskRunner` (see :mod:`embedpipe.tasks.shard`). The cluster is either an
existing one (``runtime.dask_address``) or a local cluster of ``runtime.dask_workers`` processes
bound to 127.0.0.1, started here before the flow and closed after it, so that a cluster that cannot
start or be reached is a one-line error before any work. Where there are GPUs, the local cluster
has one worker per GPU and each worker sees only its own GPU.

Task runs in the workers report to the flow's Prefect API. When no ``PREFECT_API_URL`` is set the
CLI uses Prefect's temporary local server; it is started here (the same server the flow then
uses) and its URL handed to the workers, so that no worker starts a server of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from embedpipe.config import ModelSettings, Settings
from embedpipe.errors import ClusterError, ConfigError, EmbedpipeError

log = logging.getLogger(__name__)

_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
_CONNECT_TIMEOUT_S = 5


@dataclass
class Runtime:
    """How a run executes: the task runner (``None``: the flow's default) and what starting it cost."""

    task_runner: Any = None
    settings: Settings | None = None
    """The settings to run the flow with (per-worker threads and devices filled in)."""
    kind: str = "local"
    address: str | None = None
    workers: int = 0
    threads_per_worker: int = 0
    gpus: list[int] = field(default_factory=list)
    start_seconds: float = 0.0
    api_url: str | None = None

    def describe(self) -> str:
        """One line for the console."""
        if self.kind == "local":
            return "local runner"
        where = "an existing Dask cluster" if self.kind == "dask-existing" else "a local Dask cluster"
        gpus = f", GPUs {','.join(map(str, self.gpus))}" if self.gpus else ""
        threads = f", {self.threads_per_worker} model thread(s) each" if self.threads_per_worker else ""
        return (
            f"{where} at {self.address}: {self.workers} worker(s){threads}{gpus} "
            f"(ready in {self.start_seconds:.1f}s)"
        )


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def local_gpus(model: ModelSettings) -> list[int]:
    """CUDA device indices the local cluster's workers are pinned to (empty: CPU workers)."""
    if model.backend not in {"torch", "auto"} or model.device in {"cpu", "mps"}:  # auto: torch on GPUs
        return []
    if model.devices:
        return [int(d[5:]) for d in model.devices if d.startswith("cuda:")]
    if model.device.startswith("cuda:"):
        return [int(model.device[5:])]
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def default_workers(gpus: Sequence[int]) -> int:
    """One worker per GPU; without GPUs a worker per 4 cores (torch scales well to ~4 threads)."""
    return len(gpus) if gpus else max(1, _cores() // 4)


def _api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def _ensure_api(stack: ExitStack, local_only: bool, address: str | None) -> str:
    """The Prefect API URL the workers report to; starts the temporary server when none is set."""
    url = _api_url()
    if url:
        return url
    host = urlsplit(address).hostname if address else None
    if not local_only and host not in _LOOPBACK:
        raise ConfigError(
            f"runtime.dask_address={address} is another machine, whose workers cannot reach this "
            "process's temporary Prefect server; set PREFECT_API_URL to a Prefect server they can reach"
        )
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer()  # the instance Prefect's own client would start: started once
    server.start()
    url = server.api_url
    stack.enter_context(temporary_settings(updates={PREFECT_API_URL: url}))
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url  # inherited by local worker processes
    stack.callback(_restore_env, "PREFECT_API_URL", previous)
    return url


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _start_local(stack: ExitStack, settings: Settings, rt: Runtime) -> Any:
    import dask
    import distributed

    from embedpipe.flows._dask_worker import PinWorker

    gpus = local_gpus(settings.model)
    n = settings.runtime.dask_workers or default_workers(gpus)
    threads = max(1, _cores() // n)
    model_update: dict[str, Any] = {}
    if gpus:
        model_update.update(device="cuda", devices=[])  # each worker sees exactly one GPU
    if settings.model.threads is None:
        model_update["threads"] = threads
    model = settings.model.model_copy(update=model_update)
    rt.settings = settings.model_copy(update={"model": model})
    rt.gpus, rt.threads_per_worker = gpus, threads
    env = {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    # Dask's nanny writes its pre-spawn variables (OMP_NUM_THREADS=1 ...) into the *parent*
    # process too: the flow process keeps its own threads, the workers get theirs through env.
    # Nor MALLOC_TRIM_THRESHOLD_=65536 (Dask's default): glibc then returns memory to the OS on
    # nearly every free, and torch's forward passes ran ~20% slower in a worker than in the flow
    # process (45 against 58 chunks/s, same threads).
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
        try:
            cluster = distributed.LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                scheduler_port=0,
                dashboard_address="127.0.0.1:0",
                silence_logs=logging.ERROR,
                env=env,
            )
        except Exception as e:
            raise ClusterError(
                f"cannot start a local Dask cluster of runtime.dask_workers={n}: {type(e).__name__}: {e}"
            ) from e
    stack.callback(_close_quietly, cluster)
    client = stack.enter_context(distributed.Client(cluster, set_as_default=False))
    client.register_plugin(PinWorker(gpus, threads))
    rt.kind, rt.address, rt.workers = "dask-local", cluster.scheduler_address, n
    return client


def _close_quietly(cluster: Any) -> None:
    """Close the local cluster; the nanny's "still alive, killing" warning about a worker that has
    finished its work is no news for the console (the run is already committed or failed)."""
    nanny = logging.getLogger("distributed.nanny")
    level = nanny.level
    nanny.setLevel(logging.ERROR)
    try:
        cluster.close()
    finally:
        nanny.setLevel(level)


def _connect(stack: ExitStack, settings: Settings, rt: Runtime) -> Any:
    import distributed

    address = settings.runtime.dask_address
    assert address is not None
    try:
        client = distributed.Client(address, timeout=_CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise ConfigError(
            f"cannot reach the Dask scheduler at runtime.dask_address={address} within "
            f"{_CONNECT_TIMEOUT_S}s ({type(e).__name__}); start it (dask scheduler) or fix the address"
        ) from e
    stack.enter_context(client)
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    if not workers:
        raise ConfigError(
            f"the Dask scheduler at runtime.dask_address={address} has no workers; start some "
            f"(dask worker {address})"
        )
    rt.settings = settings
    rt.kind, rt.address, rt.workers = "dask-existing", address, len(workers)
    return client


@contextmanager
def flow_runtime(settings: Settings) -> Iterator[Runtime]:
    """Set up the runtime ``settings.runtime`` asks for, for the duration of one flow call.

    Usage::

        with flow_runtime(settings) as rt:
            flow = sync if rt.task_runner is None else sync.with_options(task_runner=rt.task_runner)
            flow(sources, rt.settings)

    Raises:
        ConfigError: The existing cluster cannot be reached or has no workers.
        ClusterError: The local cluster cannot start.
    """
    if settings.runtime.runner != "dask":
        yield Runtime(settings=settings)
        return
    from prefect_dask import DaskTaskRunner

    from embedpipe.flows._dask_worker import warm_model

    t0 = time.perf_counter()
    rt = Runtime()
    with ExitStack() as stack:
        local = settings.runtime.dask_address is None
        rt.api_url = _ensure_api(stack, local, settings.runtime.dask_address)
        client = _start_local(stack, settings, rt) if local else _connect(stack, settings, rt)
        assert rt.settings is not None
        # Each worker loads the model now, overlapping the flow's own start-up; the first shard
        # task on a worker then finds it loaded (get_embedder caches per process).
        warm = [
            client.submit(warm_model, rt.settings.model, workers=[w], allow_other_workers=True, pure=False)
            for w in client.scheduler_info(n_workers=-1).get("workers", {})
        ]
        rt.start_seconds = time.perf_counter() - t0
        rt.task_runner = DaskTaskRunner(address=rt.address)
        log.info("dask runtime ready %s", rt.describe())
        try:
            yield rt
        finally:
            cancel_all(warm)


def cancel_all(futures: Sequence[Any]) -> None:
    """Cancel Dask (or prefect-dask) futures that are still pending: the run is ending."""
    for f in futures:
        inner = getattr(f, "wrapped_future", f)
        cancel = getattr(inner, "cancel", None)
        if cancel is not None:
            try:
                cancel()
            except Exception as e:  # the cluster may already be gone; nothing left to stop
                log.debug("cancel failed: %s", e)


def _is_cluster_failure(exc: BaseException) -> bool:
    if isinstance(exc, EmbedpipeError):
        return False
    if isinstance(exc, asyncio.CancelledError):
        return True
    return type(exc).__module__.split(".")[0] == "distributed"


def worker_result(future: Any) -> Any:
    """A shard task's result; a dead worker or a lost scheduler becomes a :class:`ClusterError`."""
    try:
        return future.result()
    except (Exception, asyncio.CancelledError) as e:
        if not _is_cluster_failure(e):
            raise
        raise ClusterError(
            f"the Dask cluster lost a shard task (a worker died or the scheduler went away: "
            f"{type(e).__name__}: {e}); nothing was committed, re-run to complete the work"
        ) from e
