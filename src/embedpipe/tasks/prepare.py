"""Preparation task: load the model once, refuse an incompatible table, pin the version read."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import get_run_logger, task

from embedpipe.checks.suite.context import validate_setup
from embedpipe.config import Settings
from embedpipe.embedding.auto import AUTO, BackendChoice, choose_backend
from embedpipe.embedding.embedder import get_embedder
from embedpipe.schemas import ChunkingIdentity, ModelIdentity
from embedpipe.store import Store
from embedpipe.tasks._common import TASK_DEFAULTS
from embedpipe.tasks.chunking import chunking_identity


@dataclass(frozen=True)
class Prepared:
    """What a run starts from."""

    identity: ModelIdentity
    chunking: ChunkingIdentity
    device: str
    read_version: int | None
    """The table version the run compares the sources with (``None``: no table yet)."""
    reader: str | None = None
    """The reader identity recorded in that version (:func:`embedpipe.sources.parse.reader_identity`)."""


def resolve_backend(settings: Settings) -> BackendChoice | None:
    """What ``model.backend = "auto"`` means for this run's table; ``None`` for an explicit backend.

    An existing table keeps its backend; a new one gets the fastest installed backend that passes
    the quality guard against torch (:mod:`embedpipe.embedding.auto`).
    """
    if settings.model.backend != AUTO:
        return None
    identity = Store(settings.store).table_identity()
    return choose_backend(
        settings.model,
        existing_backend=identity.backend if identity else None,
        existing_model=identity.name if identity else None,
    )


@task(name="choose-backend", **TASK_DEFAULTS)
def choose_backend_task(settings: Settings) -> BackendChoice | None:
    """Resolve ``model.backend = "auto"`` (see :func:`resolve_backend`)."""
    choice = resolve_backend(settings)
    if choice is not None:
        get_run_logger().info("stage=prepare backend=%s auto: %s", choice.backend, choice.reason)
    return choice


def prepare(settings: Settings, check: bool = True) -> Prepared:
    """Load the model, check that the target table was built with it, and pin the version read.

    Raises:
        ModelError: The model cannot be loaded.
        TableMismatchError: The table holds vectors of another model or other chunking.
        ConfigError: A check set (golden, triplets, pairs, canary) or the baseline is wrong.
    """
    embedder = get_embedder(settings.model)
    chunking = chunking_identity(embedder, settings)
    store = Store(settings.store)
    table = store.snapshot()
    if check:
        store.check_compatible(embedder.identity, chunking, table=table)
    if settings.checks.enabled:
        validate_setup(store, settings.checks, int(table.version) + 1 if table is not None else None)
    store.sweep_staging(settings.runtime.staging_ttl_hours)
    return Prepared(
        identity=embedder.identity,
        chunking=chunking,
        device=embedder.device,
        read_version=int(table.version) if table is not None else None,
        reader=store.table_reader(table) if table is not None else None,
    )


@task(name="prepare", **TASK_DEFAULTS)
def prepare_task(settings: Settings, check: bool = True) -> Prepared:
    """Load the model and check the table (see :func:`prepare`)."""
    p = prepare(settings, check)
    get_run_logger().info(
        "stage=prepare model=%s device=%s dim=%d read_version=%s",
        p.identity.model_id,
        p.device,
        p.identity.dim,
        p.read_version,
    )
    return p
