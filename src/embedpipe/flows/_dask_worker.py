"""Code that runs inside Dask worker processes (imported only when the Dask runner is used)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from distributed import WorkerPlugin

from embedpipe.config import ModelSettings


class PinWorker(WorkerPlugin):
    """Dask worker plugin: pin a local worker to one GPU and to its share of the CPU threads.

    Runs in the worker process when it starts (and again when the nanny restarts it), before any
    task imports torch's CUDA runtime, so ``CUDA_VISIBLE_DEVICES`` still takes effect.
    """

    name = "embedpipe-pin"

    def __init__(self, gpus: Sequence[int], threads: int) -> None:
        self.gpus = list(gpus)
        self.threads = threads

    def setup(self, worker: Any) -> None:
        try:
            index = int(str(worker.name).rsplit("-", 1)[-1])
        except ValueError:
            index = 0
        if self.gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(self.gpus[index % len(self.gpus)])
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(self.threads)


def warm_model(model: ModelSettings) -> str:
    """Load the model in a worker (cached per process) while the flow prepares."""
    from embedpipe.embedding.embedder import get_embedder

    embedder = get_embedder(model)
    load = getattr(embedder, "load", None)  # the real model knows its identity before it loads
    if load is not None:
        load()
    return embedder.identity.model_id
